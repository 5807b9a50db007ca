"""Checks that a UNet has the SD1.x layout the official adapters were trained on."""
from . import TOKEN_DIM
from .blocks import ADAPTER_BLOCKS


class IncompatibleModelError(ValueError):
    pass


def _first_transformer(container):
    for module in container:
        blocks = getattr(module, "transformer_blocks", None)
        if blocks is not None and len(blocks) > 0:
            return blocks[0]
    return None


def check_unet_fits(model_patcher):
    """Raises IncompatibleModelError unless every adapter block exists with the right
    width and a 768-wide text context (SD1.x). Run before sampling, so users never meet
    a shape error deep inside attention. The messages say what is wrong and the fix; the
    caller (a node, the training CLI) adds where."""
    try:
        unet = model_patcher.get_model_object("diffusion_model")
    except AttributeError:
        unet = None
    if unet is None or not hasattr(unet, "output_blocks") or not hasattr(unet, "middle_block"):
        raise IncompatibleModelError("this MODEL is not a UNet (SD1.x expected). SonicDiffusion adapters "
                                     "only fit Stable Diffusion 1.x checkpoints such as SD 1.4 or 1.5.")
    problems = []
    for block in ADAPTER_BLOCKS:
        kind, index = block.comfy_block
        if kind == "middle":
            container = unet.middle_block
        else:
            container = unet.output_blocks[index] if index < len(unet.output_blocks) else []
        tb = _first_transformer(container)
        if tb is None or getattr(tb, "attn2", None) is None:
            problems.append(f"{kind} block {index} has no cross-attention transformer")
            continue
        context = tb.attn2.to_k.in_features
        width = tb.attn2.to_q.in_features
        if context != TOKEN_DIM:
            hint = {1024: " (an SD 2.x model?)", 2048: " (an SDXL model?)"}.get(context, "")
            raise IncompatibleModelError(
                f"this MODEL's cross-attention takes {context}-wide text embeddings{hint}, but "
                f"SonicDiffusion adapters were trained on SD 1.x (768-wide). Load an SD 1.x checkpoint.")
        if width != block.dim:
            problems.append(f"{kind} block {index} is {width} wide, the adapter expects {block.dim}")
    if problems:
        raise IncompatibleModelError(
            "this MODEL does not have the SD 1.x UNet layout the adapter was trained on: "
            + "; ".join(problems[:4]) + ". Use a full SD 1.x checkpoint (SD 1.4/1.5 or a fine-tune of it).")

"""Where the gated audio attention sits: the SD1.x middle block and output blocks 3-11.

One table maps the official diffusers key prefixes, the LDM prefixes of the training
code base, ComfyUI's transformer_options["block"] keys and the block widths.
"""
from dataclasses import dataclass

HEADS = 8


@dataclass(frozen=True)
class AdapterBlock:
    name: str          # our module name, e.g. "output_3"
    comfy_block: tuple  # transformer_options["block"], e.g. ("output", 3)
    diffusers: str     # prefix in the official landscape.pt / greatest_hits.pt
    ldm: str           # prefix in the LDM training code base (without "model.diffusion_model.")
    dim: int           # transformer width d (heads x dim_head = 8 x d/8)

    @property
    def dim_head(self):
        return self.dim // HEADS


def _output_block(k):
    width = {1: 1280, 2: 640, 3: 320}[k // 3]
    return AdapterBlock(
        name=f"output_{k}",
        comfy_block=("output", k),
        # up_blocks.i.attentions.j is output block 3i+j.
        diffusers=f"up_blocks.{k // 3}.attentions.{k % 3}.transformer_blocks.0",
        ldm=f"output_blocks.{k}.1.transformer_blocks.0",
        dim=width,
    )


ADAPTER_BLOCKS = (
    AdapterBlock("middle_0", ("middle", 0), "mid_block.attentions.0.transformer_blocks.0",
                 "middle_block.1.transformer_blocks.0", 1280),
    *(_output_block(k) for k in range(3, 12)),
)

BLOCKS_BY_COMFY_KEY = {b.comfy_block: b for b in ADAPTER_BLOCKS}

# Per-block tensors of the official files, with their shapes as functions of d.
BLOCK_TENSOR_SHAPES = {
    "attn_adapter.to_q.weight": lambda d: (d, d),
    "attn_adapter.to_k.weight": lambda d: (d, 768),
    "attn_adapter.to_v.weight": lambda d: (d, 768),
    "attn_adapter.to_out.0.weight": lambda d: (d, d),
    "attn_adapter.to_out.0.bias": lambda d: (d,),
    "norm_adapter.weight": lambda d: (d,),
    "norm_adapter.bias": lambda d: (d,),
    "gate_adapter": lambda d: (1,),
}


# Per-site weights, one number per entry of ADAPTER_BLOCKS (middle, output 3..11).
# The low-resolution sites shape the layout, the high-resolution ones texture and
# colour (the IPAdapter users' "layout vs. style" split).
BLOCK_PRESETS = {
    "all": (1.0,) * 10,
    "middle only": (1.0,) + (0.0,) * 9,
    "middle + coarse (output 3-5)": (1.0,) * 4 + (0.0,) * 6,
    "coarse (output 3-5)": (0.0,) + (1.0,) * 3 + (0.0,) * 6,
    "medium (output 6-8)": (0.0,) * 4 + (1.0,) * 3 + (0.0,) * 3,
    "fine (output 9-11)": (0.0,) * 7 + (1.0,) * 3,
}
BLOCK_SITE_NAMES = ", ".join(["middle", *(f"output {b.comfy_block[1]}" for b in ADAPTER_BLOCKS[1:])])


class BlockWeightsError(ValueError):
    """A per-block weight list that cannot be used."""


# Every float folded into the adapter's weights (strength, each block weight, each value
# of a strength curve) lies in [-FACTOR_LIMIT, FACTOR_LIMIT]: the folded output projection
# is strength x weight x tanh(gate) x W_out, cast to the UNet's dtype (fp16: max 65504),
# and the curve multiplies the term in that dtype. At the limits (10 x 10 x 10) the fp16
# fast path stays finite and within the fp32 reference's tolerance
# (tests/test_weight_ranges.py); 10x the published strength is far past any useful edit.
FACTOR_LIMIT = 10.0


def check_factor(name, value):
    """float(value), or BlockWeightsError when it is not finite or outside the limit."""
    v = float(value)
    if v != v or not -FACTOR_LIMIT <= v <= FACTOR_LIMIT:
        raise BlockWeightsError(f"{name} {value!r} is outside the supported range "
                                f"{-FACTOR_LIMIT:g}..{FACTOR_LIMIT:g}")
    return v


def parse_block_weights(text):
    """'1, 0.5, ...' (ten numbers, comma or space separated, in the order middle,
    output 3..11) -> a tuple of ten floats, each within +-FACTOR_LIMIT."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if len(parts) != len(ADAPTER_BLOCKS):
        raise BlockWeightsError(f"block_weights needs {len(ADAPTER_BLOCKS)} numbers ({BLOCK_SITE_NAMES}), "
                                f"got {len(parts)}: {text!r}")
    values = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise BlockWeightsError(f"block_weights: {p!r} is not a number (in {text!r})") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise BlockWeightsError(f"block_weights: {p!r} is not a finite number (in {text!r})")
        if not -FACTOR_LIMIT <= v <= FACTOR_LIMIT:
            raise BlockWeightsError(f"block_weights: {p!r} is outside the supported range "
                                    f"{-FACTOR_LIMIT:g}..{FACTOR_LIMIT:g} (in {text!r})")
        values.append(v)
    return tuple(values)

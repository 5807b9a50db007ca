"""Stage 2: the gated audio attention (optionally the projector too), SD frozen.

Per sample: t ~ U{0..999}, noise ~ N(0, I), x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise with
the checkpoint's own alphas_cumprod (from ComfyUI's model_sampling); the caption is
dropped to "" with p = --caption-drop (0.5), the audio to the null audio
Projector(zeros) with p = --audio-drop; loss = |eps_theta(x_t, t, text, audio) - noise|^2.

eps_theta is ComfyUI's own UNet forward (model.model.diffusion_model) with
transformer_options carrying the SonicAudioPatch that inference registers, in its
differentiable mode: training runs the inference patch code, through the same hooks.
"""
import contextlib
import logging

import torch

from .. import AUDIO_EMBED_DIM
from ..adapter import SonicAdapterModel, init_adapter_weights
from ..audio_call import register
from ..audio_rows import AudioTable, PatchRows, RunContext, SonicAudioBatch, attach
from ..checkpoints import bundle_metadata, bundle_tensors, split_bundle
from ..patch import SonicAudioPatch
from ..runtime import SonicAdapter
from . import losses
from .loop import DataOrder, sample_generator
from .stage1 import trainable_projector_params

log = logging.getLogger("sonic_diffusion.train")


def alphas_cumprod(model_sampling):
    """SD1's alphas_cumprod from ComfyUI's sigmas (sigma^2 = (1 - a) / a); ComfyUI keeps
    only the sigmas as buffers."""
    s = model_sampling.sigmas.detach().to("cpu", torch.float64)  # float64 on the CPU only (MPS has none)
    return (1.0 / (1.0 + s * s)).float()


@contextlib.contextmanager
def gradient_checkpointing(unet, enabled=True):
    """Recomputes the ResBlocks and transformers of the middle and output path (where
    the adapters sit and gradients flow) in the backward pass instead of storing their
    activations. ComfyUI's own `checkpoint` helper is a no-op, so the layers' forward is
    wrapped per instance and restored afterwards."""
    if not enabled:
        yield
        return
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock
    from torch.utils.checkpoint import checkpoint

    wrapped = []
    for container in [unet.middle_block, *unet.output_blocks]:
        for layer in container:
            if not isinstance(layer, (ResBlock, SpatialTransformer)):
                continue

            def forward(*a, _orig=layer.forward, **k):
                # The UNet keeps mutating transformer_options (block, block_index): the
                # recomputation must see the values of the first pass, so it gets a copy.
                a = [dict(x) if isinstance(x, dict) else x for x in a]
                k = {n: dict(v) if isinstance(v, dict) else v for n, v in k.items()}
                return checkpoint(_orig, *a, use_reentrant=False, **k)

            layer.forward = forward
            wrapped.append(layer)
    try:
        yield
    finally:
        for layer in wrapped:
            del layer.forward


def build_adapter(args, projector_sd=None, init_sd=None):
    """Fresh adapter (gates 0) or --init weights; --projector replaces the projector."""
    model = SonicAdapterModel().float()
    if init_sd is not None:
        proj, gates = init_sd
        state = {"blocks." + k: v.float() for k, v in gates.items()}
        if proj is not None:
            state.update({"projector." + k: v.float() for k, v in proj.items()})
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or (proj is not None and missing):
            raise ValueError(f"--init: unexpected {unexpected[:3]} / missing {missing[:3]}")
        if proj is None and projector_sd is None:
            raise ValueError("--init holds no projector: give --projector (a stage-1 result or audio_projector_*.pth)")
    else:
        init_adapter_weights(model, torch.Generator().manual_seed(int(args.seed)), gate=0.0)
        if projector_sd is None and not args.train_projector:
            raise ValueError("stage 2 needs a projector: give --projector (the stage-1 result or an official "
                             "audio_projector_*.pth), an --init bundle, or --train-projector to train a fresh one")
    if projector_sd is not None:
        model.projector.load_state_dict({k: v.float() for k, v in projector_sd.items()}, strict=True)
    return model


class Stage2Task:
    stage = "stage2"
    final_name = "sonic_adapter.safetensors"
    rate_unit = "img/s"

    def __init__(self, args, device, items, embeds, latents, text, empty_tokens, model_patcher, adapter_model,
                 sources=()):
        self.args, self.device = args, device
        self.items = items
        self.n_items = len(items)
        self.order = DataOrder(self.n_items, args.seed)
        self.sources = list(sources)
        self.model_patcher = model_patcher
        base = model_patcher.model
        self.unet = base.diffusion_model
        self.base = base
        # SD stays frozen: no UNet/VAE/text weight ever gets a gradient or an update.
        base.requires_grad_(False)
        self.compute_dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
        self.acp = alphas_cumprod(base.model_sampling).to(device)
        self.embeds = torch.stack([embeds[it.stem] for it in items])                       # CPU [N,1024]
        self.latents = torch.stack([latents[it.stem]["latent"] for it in items])           # CPU [N,4,h,w]
        self.latents_flip = (torch.stack([latents[it.stem]["latent_flip"] for it in items])
                             if args.hflip else None)
        self.context = torch.stack([text[it.caption] if it.caption else empty_tokens for it in items])
        self.empty = empty_tokens
        self.adapter_model = adapter_model.to(device).train()
        self.adapter = SonicAdapter(self.adapter_model, name="training")
        self.patch = SonicAudioPatch(self.adapter, None, None, strength=1.0, differentiable=True)
        # Registered exactly as Apply Sonic Adapter does, on a clone; its transformer
        # options are what the UNet receives during sampling.
        clone = model_patcher.clone()
        register(clone, self.patch)
        self.transformer_options = clone.model_options.get("transformer_options", {})
        self.loss_parts = ["gate_tanh_abs"]

    def trainable(self):
        named = [("blocks." + n, p) for n, p in self.adapter_model.blocks.named_parameters()]
        if self.args.train_projector:
            named += trainable_projector_params(self.adapter_model.projector, "projector.")
        keep = {id(p) for _, p in named}
        for p in self.adapter_model.parameters():
            p.requires_grad_(id(p) in keep)
        return named

    def sample(self, positions):
        """Everything random about a batch, from the per-sample generators (CPU)."""
        rows = []
        h, w = self.latents.shape[-2:]
        for p in positions:
            g = sample_generator(self.args.seed, p, salt=21)
            i = self.order.item(p)
            t = int(torch.randint(0, 1000, (1,), generator=g))
            noise = torch.randn((self.latents.shape[1], h, w), generator=g)
            u = torch.rand(3, generator=g)
            rows.append((i, t, noise, bool(u[0] < self.args.caption_drop), bool(u[1] < self.args.audio_drop),
                         bool(u[2] < 0.5) and self.latents_flip is not None))
        return rows

    def loss(self, positions):
        rows = self.sample(list(positions))
        dev, cdt = self.device, self.compute_dtype
        lat = torch.stack([(self.latents_flip if f else self.latents)[i] for i, _, _, _, _, f in rows])
        x0 = self.base.process_latent_in(lat).to(dev, torch.float32)
        t = torch.tensor([r[1] for r in rows], device=dev)
        noise = torch.stack([r[2] for r in rows]).to(dev)
        a = self.acp[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        ctx = torch.stack([self.empty if r[3] else self.context[r[0]] for r in rows]).to(dev)
        # Dropped audio = Projector(zeros): exactly the null audio inference uses.
        emb = torch.stack([torch.zeros(AUDIO_EMBED_DIM) if r[4] else self.embeds[r[0]] for r in rows]).to(dev)
        with torch.set_grad_enabled(bool(self.args.train_projector)):
            tokens = self.adapter_model.projector(emb.float())
        # The tokens (with their gradient) travel with the call, as the audio of a sampling run does.
        table = AudioTable({self.patch.uid: PatchRows(tokens, None, "training")}, RunContext())
        audio = SonicAudioBatch([attach(table.rows, table)])
        opts = dict(self.transformer_options)
        opts["cond_or_uncond"] = [0]
        opts["sigmas"] = ((1 - a) / a).sqrt().view(-1)
        with gradient_checkpointing(self.unet, self.args.grad_checkpointing):
            eps = self.unet(x_t.to(cdt), timesteps=t.float(), context=ctx.to(cdt), transformer_options=opts,
                            sonic_audio=audio)
        per_sample = losses.epsilon_mse(eps, noise)
        gates = torch.stack([b.gate_adapter.detach().float() for b in self.adapter_model.blocks.values()])
        return per_sample.mean(), {"gate_tanh_abs": float(torch.tanh(gates).abs().mean())}

    def after_step(self, step, means):
        pass

    def _bundle(self, step):
        meta = bundle_metadata(self.sources, {"sonic_train_stage": "2", "step": str(step),
                                              "audio_drop": str(self.args.audio_drop),
                                              "train_projector": str(bool(self.args.train_projector))})
        return bundle_tensors(self.adapter_model), meta

    def weights_tensors(self, step):
        return self._bundle(step)

    def final_tensors(self, step):
        return self._bundle(step)

    def load_weights(self, sd):
        proj, gates = split_bundle(sd, "checkpoint")
        state = {"blocks." + k: v for k, v in gates.items()}
        state.update({"projector." + k: v for k, v in proj.items()})
        self.adapter_model.load_state_dict({k: v.to(self.device) for k, v in state.items()}, strict=True)

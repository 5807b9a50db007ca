"""An independent reference of SonicDiffusion's editing, written the authors' way
(docs/design.md section 7): a diffusers UNet2DConditionModel with the same UNet weights and
the adapter's plain formula after the text cross-attention, diffusers' DDIMScheduler, the
DDIM inversion of their preprocess step, and the Plug-and-Play loop over a 3-row batch
[source, uncond, cond] with the injection done by attention processors and a ResBlock
forward, as in the pnp-diffusers code the authors build on. Nothing here uses the pack."""
import torch
import torch.nn as nn

# ComfyUI output block k -> diffusers up_blocks[k // 3], index k % 3 (blocks 0-2 have no attention).
ATTENTION_BLOCKS = [(1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2)]  # output blocks 4-11
RESNET_BLOCKS = [(1, 1), (1, 2)]  # output blocks 4 and 5


class Control:
    """What the hooks read: whether to inject now, and the audio tokens per row (None: off)."""

    def __init__(self):
        self.attention = self.features = False
        self.tokens = None


def _adapter_forward(tb, control):
    def forward(hidden_states, attention_mask=None, encoder_hidden_states=None, *args, **kwargs):
        hs = tb.attn1(tb.norm1(hidden_states)) + hidden_states
        hs = tb.attn2(tb.norm2(hs), encoder_hidden_states=encoder_hidden_states) + hs
        if control.tokens is not None:
            hs = hs + torch.tanh(tb.gate_adapter) * tb.attn_adapter(tb.norm_adapter(hs),
                                                                   encoder_hidden_states=control.tokens)
        return tb.ff(tb.norm3(hs)) + hs
    return forward


class PnPAttention:
    """attn1 processor: plain attention, with the source row's Q and K in every row while injecting."""

    def __init__(self, control):
        self.control = control

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if self.control.attention:
            n = q.shape[0] // 3
            q, k = torch.cat([q[:n]] * 3), torch.cat([k[:n]] * 3)
        b, tokens, dim = q.shape
        q, k, v = (t.view(b, tokens, attn.heads, dim // attn.heads).transpose(1, 2) for t in (q, k, v))
        w = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
        out = (w @ v).transpose(1, 2).reshape(b, tokens, dim)
        return attn.to_out[1](attn.to_out[0](out))


def _resnet_forward(block, control):
    def forward(input_tensor, temb, *args, **kwargs):
        h = block.conv1(block.nonlinearity(block.norm1(input_tensor)))
        h = h + block.time_emb_proj(block.nonlinearity(temb))[:, :, None, None]
        h = block.conv2(block.dropout(block.nonlinearity(block.norm2(h))))
        if control.features:  # the residual branch after conv2, before the skip add
            n = h.shape[0] // 3
            h = torch.cat([h[:n]] * 3)
        x = block.conv_shortcut(input_tensor) if block.conv_shortcut is not None else input_tensor
        return (x + h) / block.output_scale_factor
    return forward


def _unet_weights(checkpoint, unet_config):
    """The checkpoint's UNet in diffusers names, fp32, read key by key (memory: one copy)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        ldm = {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}  # noqa: SIM118 - safe_open is not iterable
    converted = convert_ldm_unet_checkpoint(ldm, unet_config)
    del ldm
    return {k: converted.pop(k).float() for k in list(converted)}


def build_unet(checkpoint, gates):
    """The diffusers UNet with the official adapter modules (loaded strictly by their own key
    names) and the PnP hooks. Returns (unet, control)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    control = Control()
    targets = [unet.mid_block.attentions[0]] + [unet.up_blocks[i].attentions[j] for i in (1, 2, 3) for j in range(3)]
    for spatial in targets:
        tb = spatial.transformer_blocks[0]
        d = tb.norm1.normalized_shape[0]
        with torch.device("meta"):
            tb.attn_adapter = Attention(query_dim=d, cross_attention_dim=768, heads=8, dim_head=d // 8, bias=False)
            tb.norm_adapter = nn.LayerNorm(d)
            tb.gate_adapter = nn.Parameter(torch.zeros(1))
        tb.forward = _adapter_forward(tb, control)
    weights = _unet_weights(checkpoint, dict(unet.config))
    weights.update({k: v.float() for k, v in gates.items()})
    unet.load_state_dict(weights, strict=True, assign=True)
    for i, j in ATTENTION_BLOCKS:
        unet.up_blocks[i].attentions[j].transformer_blocks[0].attn1.set_processor(PnPAttention(control))
    for i, j in RESNET_BLOCKS:
        block = unet.up_blocks[i].resnets[j]
        block.forward = _resnet_forward(block, control)
    return unet.eval(), control


def scheduler(steps):
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1)
    s.set_timesteps(steps)
    return s


@torch.no_grad()
def invert(unet, control, sched, latent, negative):
    """The authors' DDIM inversion: {t: latent at t}, audio off, empty prompt, no guidance."""
    control.tokens, control.attention, control.features = None, False, False
    timesteps = list(reversed(sched.timesteps.tolist()))
    out = {}
    for i, t in enumerate(timesteps):
        a_t = sched.alphas_cumprod[t]
        a_prev = sched.alphas_cumprod[timesteps[i - 1]] if i > 0 else sched.final_alpha_cumprod
        eps = unet(latent, t, encoder_hidden_states=negative).sample
        x0 = (latent - (1 - a_prev) ** 0.5 * eps) / a_prev ** 0.5
        latent = a_t ** 0.5 * x0 + (1 - a_t) ** 0.5 * eps
        out[t] = latent
    return out


@torch.no_grad()
def pnp_edit(unet, control, sched, inverted, negative, positive, tokens, null_tokens, cfg, n_attention, n_features):
    """DDIM from the inverted noise with the batch [source at t, x, x], text [neg, neg, pos],
    audio [null, null, tokens]; returns the VP latent at alphas_cumprod[0]."""
    x = inverted[int(sched.timesteps[0])]
    control.tokens = torch.cat([null_tokens, null_tokens, tokens])
    context = torch.cat([negative, negative, positive])
    for i, t in enumerate(sched.timesteps.tolist()):
        control.attention, control.features = i < n_attention, i < n_features
        eps = unet(torch.cat([inverted[t], x, x]), t, encoder_hidden_states=context).sample
        e_u, e_c = eps[1:2], eps[2:3]
        x = sched.step(e_u + cfg * (e_c - e_u), t, x).prev_sample
    control.attention = control.features = False
    control.tokens = None
    return x

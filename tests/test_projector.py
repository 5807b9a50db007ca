"""The projector against an independent reference written from the spec's layer table."""
import torch
import torch.nn.functional as F

from sonic_diffusion.checkpoints import build_adapter_model, gates_state, projector_state
from sonic_diffusion.safe_load import load_weights_file


def reference_projector(sd, e):
    """spec section 4, written with functional ops on the raw state dict."""
    w = lambda i, s="weight": sd[f"audio_emb_projection.{i}.{s}"]
    x = e[:, None, :]
    x = F.gelu(F.conv1d(x, w(0), w(0, "bias"), stride=1, padding=8))
    x = F.gelu(F.conv1d(x, w(2), w(2, "bias"), stride=1, padding=8))
    x = F.layer_norm(x, (77, 1024), w(4), w(4, "bias"))
    x = F.gelu(F.conv1d(x, w(5), w(5, "bias"), stride=1, padding=8))
    x = F.layer_norm(x, (77, 1024), w(7), w(7, "bias"))
    x = F.gelu(F.conv_transpose1d(x, w(8), w(8, "bias"), stride=3, padding=7))
    x = F.gelu(F.layer_norm(x, (77, 3072), w(10), w(10, "bias")))
    p = F.conv1d(x, w(12), w(12, "bias"), stride=4, padding=7)
    assert p.shape[1:] == (77, 768)
    out = None
    for i in range(4):
        q = p @ sd[f"cross_attention.{i}.to_q_adapter.weight"].T
        k = p @ sd[f"cross_attention.{i}.to_k_adapter.weight"].T
        v = p @ sd[f"cross_attention.{i}.to_v_adapter.weight"].T
        split = lambda t: t.view(t.shape[0], 77, 8, 40).transpose(1, 2)
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 40 ** 0.5, dim=-1) @ split(v)
        att = att.transpose(1, 2).reshape(p.shape[0], 77, 320)
        hidden = F.gelu(att @ sd[f"between_attention.{i}.0.weight"].T + sd[f"between_attention.{i}.0.bias"])
        # Official quirk: each layer reads p, so only the last one counts.
        out = hidden @ sd[f"between_attention.{i}.2.weight"].T + sd[f"between_attention.{i}.2.bias"] + p
    return out @ sd["to_out_adapter.0.weight"].T + sd["to_out_adapter.0.bias"]


def official_loop(projector, e):
    """The official forward, literally: every layer evaluated, each reading p, only the
    last result kept (the module skips layers 0-2, which cannot change the result)."""
    p = projector.audio_emb_projection(e.unsqueeze(1))
    out = p
    for attn, mlp in zip(projector.cross_attention, projector.between_attention):
        out = mlp(attn(p)) + p
    return projector.to_out_adapter(out)


def test_projector_matches_reference(fixture_dir):
    sd, _ = load_weights_file(fixture_dir.projector())
    sd = {k: v.float() for k, v in sd.items()}
    projector = projector_state(sd)
    assert len(projector) == 46
    gates, _ = load_weights_file(fixture_dir.gates())
    model = build_adapter_model(projector, gates_state(gates))
    e = torch.nn.functional.normalize(torch.randn(3, 1024, generator=torch.Generator().manual_seed(1)), dim=-1)
    with torch.no_grad():
        ours = model.projector(e)
        literal = official_loop(model.projector, e)
        ref = reference_projector(sd, e)
    assert ours.shape == (3, 77, 768)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours, literal, rtol=0, atol=0)
    # Null audio tokens are not zero (biases and LayerNorms).
    with torch.no_grad():
        null = model.projector(torch.zeros(1, 1024))
    assert null.abs().max() > 1e-3


def test_many_embeddings_are_projected_in_bounded_chunks(fixture_dir):
    """A long frame sequence (or 1000 mix ratios) is projected PROJECT_CHUNK rows at a time,
    so its activations stay bounded (about 12 MiB per row at once); the result equals
    row-by-row projection. Observed from outside with a forward hook on the projector."""
    from sonic_diffusion.runtime import PROJECT_CHUNK, SonicAdapter

    sd, _ = load_weights_file(fixture_dir.projector())
    gates, _ = load_weights_file(fixture_dir.gates())
    adapter = SonicAdapter(build_adapter_model(projector_state({k: v.float() for k, v in sd.items()}),
                                               gates_state(gates)))
    rows = []
    hook = adapter.model.projector.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    try:
        n = 2 * PROJECT_CHUNK + 3
        e = F.normalize(torch.randn(n, 1024, generator=torch.Generator().manual_seed(4)), dim=-1)
        tokens = adapter.project(e)
    finally:
        hook.remove()
    assert rows == [PROJECT_CHUNK, PROJECT_CHUNK, 3]
    assert tokens.shape == (n, 77, 768)
    with torch.no_grad():
        one = adapter.model.projector(e[-5:-4])
    # Measured max |chunked - single row| = 0 on the CPU (rows are independent).
    torch.testing.assert_close(tokens[-5:-4], one, rtol=0, atol=1e-6)

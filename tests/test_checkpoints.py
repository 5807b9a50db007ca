"""Official formats load by their own key names; our bundle round-trips; bad files are named."""
import pytest
import torch

from sonic_diffusion import checkpoints
from sonic_diffusion.safe_load import load_weights_file


def _model(fixture_dir, spelling="diffusers"):
    proj, _ = load_weights_file(fixture_dir.projector())
    gates, _ = load_weights_file(fixture_dir.gates(spelling=spelling))
    return checkpoints.build_adapter_model(checkpoints.projector_state(proj), checkpoints.gates_state(gates))


def test_diffusers_and_ldm_spellings_load_identically(fixture_dir):
    a = _model(fixture_dir, "diffusers").state_dict()
    b = _model(fixture_dir, "ldm").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_gate_tensors_land_in_the_right_block(fixture_dir):
    gates, _ = load_weights_file(fixture_dir.gates())
    model = _model(fixture_dir)
    # up_blocks.i.attentions.j is output block 3i+j; the middle block is mid_block.attentions.0.
    pairs = {"output_7": "up_blocks.2.attentions.1", "output_11": "up_blocks.3.attentions.2",
             "middle_0": "mid_block.attentions.0", "output_3": "up_blocks.1.attentions.0"}
    for name, prefix in pairs.items():
        key = f"{prefix}.transformer_blocks.0.attn_adapter.to_k.weight"
        assert torch.equal(model.blocks[name].attn_adapter.to_k.weight, gates[key].float())
        assert torch.equal(model.blocks[name].gate_adapter, gates[f"{prefix}.transformer_blocks.0.gate_adapter"].float())


def test_bundle_round_trip(fixture_dir, tmp_path):
    model = _model(fixture_dir)
    path = tmp_path / "bundle.safetensors"
    checkpoints.save_atomic_safetensors(checkpoints.bundle_tensors(model), path, checkpoints.bundle_metadata())
    sd, meta = load_weights_file(path)
    assert meta["format"] == checkpoints.BUNDLE_FORMAT
    proj, gates = checkpoints.split_bundle(sd)
    again = checkpoints.build_adapter_model(proj, gates).state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, again[k]), k
    with pytest.raises(FileExistsError):
        checkpoints.save_atomic_safetensors(checkpoints.bundle_tensors(model), path, checkpoints.bundle_metadata())


def test_missing_and_misshapen_tensors_are_named(fixture_dir):
    gates, _ = load_weights_file(fixture_dir.gates())
    broken = dict(gates)
    del broken["up_blocks.2.attentions.1.transformer_blocks.0.norm_adapter.bias"]
    with pytest.raises(checkpoints.AdapterWeightsError, match="up_blocks.2.attentions.1.transformer_blocks.0.norm_adapter.bias"):
        checkpoints.gates_state(broken)
    wrong = dict(gates)
    wrong["mid_block.attentions.0.transformer_blocks.0.attn_adapter.to_k.weight"] = torch.zeros(1280, 1024)
    with pytest.raises(checkpoints.AdapterWeightsError, match=r"mid_block.attentions.0.transformer_blocks.0.attn_adapter.to_k.weight has shape \[1280, 1024\]"):
        checkpoints.gates_state(wrong)
    proj, _ = load_weights_file(fixture_dir.projector())
    with pytest.raises(checkpoints.AdapterWeightsError, match="not a SonicDiffusion adapter"):
        checkpoints.gates_state(proj)
    with pytest.raises(checkpoints.AdapterWeightsError, match="not a SonicDiffusion audio projector"):
        checkpoints.projector_state(gates)

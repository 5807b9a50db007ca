"""Official formats load by their own key names; our bundle round-trips; bad files are named."""
from pathlib import Path

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
    with pytest.raises(checkpoints.AdapterWeightsError, match=r"up_blocks\.2\.attentions\.1\.transformer_blocks\.0\.norm_adapter\.bias"):
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


# -- hostile and misnamed files: checked from their headers, before tensors exist -------------

def _no_materialising(monkeypatch):
    """Any attempt to read tensors fails the test: torch.load and safetensors' reader."""
    import safetensors

    def refuse(*a, **k):
        raise AssertionError("tensors were materialised")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(safetensors, "safe_open", refuse)


def test_compressed_pth_bomb_is_refused_before_any_tensor(tmp_path, monkeypatch):
    from weight_bombs import deflate_bomb_pth

    from sonic_diffusion.safe_load import WeightsFileError

    bomb = deflate_bomb_pth(tmp_path / "audio_projector_landscape.pth")
    import zipfile
    with zipfile.ZipFile(bomb) as z:  # what torch.load would allocate: 2 GiB from a ~2 MiB file
        assert z.getinfo("archive/data/0").file_size == 2 << 30
    assert bomb.stat().st_size < 3 << 20
    _no_materialising(monkeypatch)
    with pytest.raises(WeightsFileError, match=r"declares 2048.0 MiB of tensor data in a 2.0 MiB file.*bomb"):
        load_weights_file(bomb)
    with pytest.raises(WeightsFileError, match="bomb"):
        checkpoints.load_adapter_file(bomb)


def test_huge_safetensors_header_is_refused_unparsed(tmp_path, monkeypatch):
    from weight_bombs import huge_safetensors_header

    from sonic_diffusion import safe_load

    path, size = huge_safetensors_header(tmp_path / "clap_audio.safetensors", keys=400_000)
    assert size > 30 << 20  # 400k keys: ~34 MB of JSON
    _no_materialising(monkeypatch)
    monkeypatch.setattr(safe_load.json, "loads", lambda *a: pytest.fail("the header was parsed"))
    with pytest.raises(safe_load.WeightsFileError, match=r"header is 3\d.\d MiB, more than the 8 MiB"):
        load_weights_file(path)
    monkeypatch.undo()
    # Under the byte limit but over the tensor count: refused after parsing, before reading.
    path, _ = huge_safetensors_header(tmp_path / "many.safetensors", keys=safe_load.MAX_TENSORS + 1)
    _no_materialising(monkeypatch)
    with pytest.raises(safe_load.WeightsFileError, match=f"declares {safe_load.MAX_TENSORS + 1} tensors"):
        load_weights_file(path)


def test_keys_and_shapes_are_checked_from_the_header(fixture_dir, tmp_path, monkeypatch):
    proj, _ = load_weights_file(fixture_dir.projector())
    bad = dict(proj)
    bad["audio_emb_projection.12.weight"] = torch.zeros(77, 77, 9)
    torch.save(bad, tmp_path / "proj_bad.pth")
    save_file = __import__("safetensors.torch", fromlist=["save_file"]).save_file
    save_file({k: v.contiguous() for k, v in bad.items()}, str(tmp_path / "proj_bad.safetensors"))
    _no_materialising(monkeypatch)
    for name in ("proj_bad.pth", "proj_bad.safetensors"):
        with pytest.raises(checkpoints.AdapterWeightsError, match=r"12.weight has shape \[77, 77, 9\]"):
            checkpoints.load_adapter_file(tmp_path / name)


def test_format_is_read_from_the_bytes_not_the_name(fixture_dir, tmp_path):
    from sonic_diffusion.safe_load import UnsafeWeightsError, WeightsFileError

    model = _model(fixture_dir)
    good = checkpoints.save_atomic_safetensors(checkpoints.bundle_tensors(model), tmp_path / "b.safetensors",
                                               checkpoints.bundle_metadata())
    for name in ("bundle.sft", "bundle.pt", "bundle.pth"):  # a CLAP-listed extension; the converter's output as .pt
        (tmp_path / name).write_bytes(good.read_bytes())
        sd, meta = load_weights_file(tmp_path / name)
        assert meta["format"] == checkpoints.BUNDLE_FORMAT and len(sd) == 126
    # A damaged pickle is "damaged", never "non-tensor objects".
    cut = tmp_path / "cut.pt"
    cut.write_bytes(fixture_dir.gates().read_bytes()[: 1 << 20])
    with pytest.raises(WeightsFileError, match="damaged or truncated") as e:
        load_weights_file(cut)
    assert not isinstance(e.value, UnsafeWeightsError) and "non-tensor" not in str(e.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(WeightsFileError, match=r"neither a \.safetensors file nor a PyTorch"):
        load_weights_file(junk)


def test_atomic_writes_clean_up_and_follow_the_umask(tmp_path):
    import os
    import subprocess
    import sys

    from sonic_diffusion.files import TMP_TAG, write_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited: its temp files are stale
    stale = tmp_path / f".out.bin{TMP_TAG}{dead}-deadbeef"
    stale.write_bytes(b"x" * 1000)
    other = tmp_path / f".other.bin{TMP_TAG}{dead}-deadbeef"  # another destination's: left alone
    other.write_bytes(b"y")
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "out.bin", lambda p: Path(p).write_bytes(b"ok"))
    finally:
        os.umask(old)
    assert (tmp_path / "out.bin").read_bytes() == b"ok"
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == 0o640  # 0666 & ~umask, not mkstemp's 0600
    assert not stale.exists() and other.exists()

    def fails(p):
        Path(p).write_bytes(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "out.bin", fails)
    assert (tmp_path / "out.bin").read_bytes() == b"ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.bin", other.name])


def test_loader_dropdowns_list_each_kind(host, fixture_dir, tmp_path, monkeypatch):
    """Projectors (by name or by their keys) only under projector_name; gates and bundles
    under adapter_name; detection reads headers, never tensors."""
    import nodes

    model = _model(fixture_dir)
    bundle = checkpoints.save_atomic_safetensors(checkpoints.bundle_tensors(model), tmp_path / "b.safetensors",
                                                 checkpoints.bundle_metadata())
    names = {"gates": host.link_model("sonic_diffusion", fixture_dir.gates(), name="dd_gates.pt"),
             "ldm": host.link_model("sonic_diffusion", fixture_dir.gates(spelling="ldm"), name="dd_ldm.pt"),
             "named": host.link_model("sonic_diffusion", fixture_dir.projector(), name="audio_projector_dd.pth"),
             "keyed": host.link_model("sonic_diffusion", fixture_dir.projector(), name="dd_renamed_proj.pth"),
             "bundle": host.link_model("sonic_diffusion", bundle, name="dd_bundle.safetensors")}
    _no_materialising(monkeypatch)
    inputs = {i.id: i for i in nodes.NODE_CLASS_MAPPINGS["SonicAdapterLoader"].define_schema().inputs}
    adapters, projectors = inputs["adapter_name"].options, inputs["projector_name"].options
    assert projectors[0] == "bundled (from the adapter file)"
    for key in ("gates", "ldm", "bundle"):
        assert names[key] in adapters and names[key] not in projectors, key
    for key in ("named", "keyed"):
        assert names[key] in projectors and names[key] not in adapters, key

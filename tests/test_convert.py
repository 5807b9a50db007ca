"""The converter CLI: official pair -> bundle, CLAP -> audio-only; never overwrites."""
import json
import subprocess
import sys

import torch

from conftest import ROOT
from sonic_diffusion import checkpoints
from sonic_diffusion.files import file_sha256
from sonic_diffusion.safe_load import load_weights_file


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sonic_diffusion.convert", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_adapter_pair_to_bundle_and_back(fixture_dir, tmp_path):
    out = tmp_path / "landscape.safetensors"
    r = _cli("adapter", "--gates", fixture_dir.gates(), "--projector", fixture_dir.projector(), "--out", out)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["written"] == str(out)
    sd, meta = load_weights_file(out)
    assert meta["format"] == checkpoints.BUNDLE_FORMAT
    sources = json.loads(meta["sources"])
    assert [s["file"] for s in sources] == [fixture_dir.gates().name, fixture_dir.projector().name]
    assert sources[0]["sha256"] == file_sha256(fixture_dir.gates())
    gates, _ = load_weights_file(fixture_dir.gates())
    for key, value in gates.items():
        assert torch.equal(sd["adapter." + key], value.float()), key
    # A second run refuses to overwrite; --overwrite replaces.
    before = out.read_bytes()
    r = _cli("adapter", "--gates", fixture_dir.gates(), "--projector", fixture_dir.projector(), "--out", out)
    assert r.returncode == 2 and "exists" in r.stderr
    assert out.read_bytes() == before


def test_clap_to_audio_only(fixture_dir, tmp_path):
    out = tmp_path / "clap_audio.safetensors"
    r = _cli("clap", fixture_dir.clap(), "--out", out, "--dtype", "fp16")
    assert r.returncode == 0, r.stderr
    sd, meta = load_weights_file(out)
    assert not any(k.startswith("caption_encoder") for k in sd)
    assert sd["audio_encoder.projection.linear1.weight"].dtype == torch.float16

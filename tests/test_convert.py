"""The converter CLI: official pair -> bundle, CLAP -> audio-only; never overwrites unless
told; one-line errors with exit code 2; runs from any folder with PYTHONPATH=<pack>."""
import hashlib
import json
import os
import subprocess
import sys

import torch
from conftest import ROOT

from sonic_diffusion import checkpoints
from sonic_diffusion.files import TMP_TAG
from sonic_diffusion.safe_load import load_weights_file


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "sonic_diffusion.convert", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert: ") and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_adapter_pair_to_bundle_and_overwrite(fixture_dir, tmp_path):
    out = tmp_path / "landscape.safetensors"
    r = _cli("adapter", "--gates", fixture_dir.gates(), "--projector", fixture_dir.projector(), "--out", out,
             cwd=tmp_path)  # not the pack folder: PYTHONPATH is enough
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["written"] == str(out)
    sd, meta = load_weights_file(out)
    assert meta["format"] == checkpoints.BUNDLE_FORMAT and meta["dtype"] == "float32"
    sources = json.loads(meta["sources"])
    assert [s["file"] for s in sources] == [fixture_dir.gates().name, fixture_dir.projector().name]
    # The recorded hashes are the files' sha256, computed here independently of the pack.
    for s, p in zip(sources, (fixture_dir.gates(), fixture_dir.projector())):
        assert s["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    gates, _ = load_weights_file(fixture_dir.gates())
    for key, value in gates.items():
        assert torch.equal(sd["adapter." + key], value.float()), key
    # A second run refuses to overwrite and names the real flag; the file is untouched.
    before = out.read_bytes()
    r = _cli("adapter", "--gates", fixture_dir.gates(), "--projector", fixture_dir.projector(), "--out", out,
             "--dtype", "fp16")
    _one_line_error(r, "exists", "--overwrite")
    assert out.read_bytes() == before
    # --overwrite replaces it: now the fp16 bundle, equal to the fp32 one rounded.
    r = _cli("adapter", "--gates", fixture_dir.gates(), "--projector", fixture_dir.projector(), "--out", out,
             "--dtype", "fp16", "--overwrite")
    assert r.returncode == 0, r.stderr
    half, meta = load_weights_file(out)
    assert meta["dtype"] == "float16" and out.read_bytes() != before
    for k, v in sd.items():
        assert half[k].dtype == torch.float16 and torch.equal(half[k], v.half()), k


def test_a_killed_write_is_cleaned_by_the_rerun(fixture_dir, tmp_path):
    out = tmp_path / "bundle.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    leftover = tmp_path / f".{out.name}{TMP_TAG}{dead}-0badc0de"  # what a kill mid-write leaves
    leftover.write_bytes(b"\0" * 4096)
    r = _cli("adapter", "--gates", fixture_dir.gates(), "--projector", fixture_dir.projector(), "--out", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_clap_to_audio_only(fixture_dir, tmp_path):
    out = tmp_path / "clap_audio.safetensors"
    r = _cli("clap", fixture_dir.clap(), "--out", out, "--dtype", "fp16")
    assert r.returncode == 0, r.stderr
    sd, _meta = load_weights_file(out)
    assert not any(k.startswith("caption_encoder") for k in sd)
    assert sd["audio_encoder.projection.linear1.weight"].dtype == torch.float16
    assert (out.stat().st_mode & 0o777) == (0o666 & ~_umask())


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_bad_destinations_and_wrong_files_get_one_line(fixture_dir, tmp_path):
    missing = tmp_path / "no_such_folder" / "clap.safetensors"
    _one_line_error(_cli("clap", fixture_dir.clap(), "--out", missing), "does not exist")
    assert not missing.parent.exists()
    folder = tmp_path / "a_folder"
    folder.mkdir()
    _one_line_error(_cli("clap", fixture_dir.clap(), "--out", folder), "is a folder")
    _one_line_error(_cli("adapter", "--gates", fixture_dir.gates(), "--projector", fixture_dir.projector(),
                         "--out", folder, "--overwrite"), "is a folder")
    # A CLAP file given as --gates is named as CLAP; a projector as --gates is named too.
    line = _one_line_error(_cli("adapter", "--gates", fixture_dir.clap(), "--out", tmp_path / "x.safetensors"),
                           "MS-CLAP")
    assert "convert clap" in line
    _one_line_error(_cli("adapter", "--gates", fixture_dir.projector(), "--out", tmp_path / "x.safetensors"),
                    "audio projector", "--projector")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder"]

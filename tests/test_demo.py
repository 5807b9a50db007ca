"""The README's main job, scripts/demo.py (what scripts/demo.sh runs after building the host):
the real ComfyUI server, the audio-to-image workflow, images saved per run, nothing of the
user's touched. Tiny images and one step: the CPU is slow."""
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from PIL import Image

DEMO = ROOT / "scripts" / "demo.py"


def _demo(tmp_path, *args):
    """Runs the demo with its temp folders under tmp_path/tmp; returns the finished process."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp))
    return subprocess.run([sys.executable, str(DEMO), "--size", "64", "--steps", "1", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=600)


def _images(out):
    return sorted(p.relative_to(out) for p in out.rglob("*.png"))


def test_each_run_saves_into_a_new_folder_and_leaves_no_temp_folder(tmp_path):
    out = tmp_path / "out"
    for _ in range(2):
        done = _demo(tmp_path, "--out", out)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "RANDOM stand-in weights" in done.stdout
    images = _images(out)
    assert len(images) == 2 and images[0].parent != images[1].parent, images  # the first run's image kept
    for path in images:
        with Image.open(out / path) as img:
            assert img.size == (64, 64)
    # The server's base folder is gone. (torch itself leaves a tmpXXXX folder per process, with
    # _remote_module_non_scriptable.py from torch.distributed, which is not ours to remove.)
    assert list((tmp_path / "tmp").glob("sonic-demo-*")) == []
    assert len(list((tmp_path / "tmp").iterdir())) == 2  # torch's two: TMPDIR reached the demo


def test_a_real_models_folder_is_used_read_only(tmp_path, fixture_dir):
    models = tmp_path / "models"
    files = {"checkpoints/v1-5-pruned-emaonly-fp16.safetensors": fixture_dir.full_checkpoint(),
             "audio_encoders/CLAP_weights_2022.pth": fixture_dir.clap(),
             "sonic_diffusion/landscape.pt": fixture_dir.gates(),
             "sonic_diffusion/audio_projector_landscape.pth": fixture_dir.projector()}
    for name, src in files.items():
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, models / name)
    before = {p: p.lstat().st_mtime_ns for p in models.rglob("*")}
    audio = fixture_dir.audio("tone440_mono_44k_3s.wav")
    done = _demo(tmp_path, "--models", models, "--audio", audio, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"using the real weights in {models.resolve()}" in done.stdout
    assert "RANDOM" not in done.stdout
    assert len(_images(tmp_path / "out")) == 1
    assert {p: p.lstat().st_mtime_ns for p in models.rglob("*")} == before


@pytest.mark.parametrize(("args", "message"), [
    (["--audio", "no_such_sound.wav"], "[demo] --audio no_such_sound.wav: no such file"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, args, message):
    done = _demo(tmp_path, *args, "--out", tmp_path / "out")
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()

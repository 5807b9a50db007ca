"""Stage 1 (projector) end to end on generated data: overfitting, the output loads in
Sonic Adapter Loader, resume equivalence, atomic checkpoints, two-process DDP.

The CLAP fixture and the reduced SD1.5 checkpoint (full CLIP-L) give real features;
features are cached once for the module, so later runs load neither model."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import nodes
from sonic_diffusion.train import cli
from sonic_diffusion.train.checkpoint import latest_state, state_path, weights_path
from sonic_diffusion.train.synthetic import make_pairs, write_png

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, fixture_dir):
    import numpy as np

    root = tmp_path_factory.mktemp("s1data")
    data = make_pairs(root / "data", n=6)
    # One unreadable pair: skipped and counted, never a crash.
    (data / "zz_bad.wav").write_bytes(b"not audio at all")
    write_png(data / "zz_bad.png", np.random.default_rng(3))
    return {"data": data, "cache": root / "cache", "root": root,
            "ckpt": fixture_dir.reduced_checkpoint(), "clap": fixture_dir.clap()}


def _args(s, out, *extra):
    return ["stage1", "--data", str(s["data"]), "--out", str(out), "--checkpoint", str(s["ckpt"]),
            "--clap", str(s["clap"]), "--cache", str(s["cache"]), "--quiet", "--log-every", "1", *extra]


def _run(s, out, *extra):
    return cli.cmd_train(cli.build_parser().parse_args(_args(s, out, *extra)))


def _log(out):
    with open(Path(out) / "log.csv") as f:
        return list(csv.DictReader(f))


def _same(a, b):
    a, b = load_file(str(a)), load_file(str(b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage1_overfits_and_loads_in_adapter_loader(setup, host, fixture_dir):
    out = setup["root"] / "overfit"
    summary = _run(setup, out, "--steps", "8", "--batch-size", "4", "--lr", "1e-3", "--repeat-first-batch")
    rows = _log(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.5 * first, (first, last)
    assert float(rows[0]["nce"]) > 0 and float(rows[0]["mse"]) > 0
    task = summary["task"]
    assert task.n_items == 6  # the unreadable pair was skipped
    # The result is an official-layout projector: it loads beside the official gates.
    proj = host.link_model("sonic_diffusion", out / "projector.safetensors", name="trained_stage1_projector.safetensors")
    gates = host.link_model("sonic_diffusion", fixture_dir.gates())
    adapter = nodes.NODE_CLASS_MAPPINGS["SonicAdapterLoader"].execute(adapter_name=gates, projector_name=proj).result[0]
    trained = load_file(str(out / "projector.safetensors"))
    for k, v in adapter.model.projector.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_refuses_to_overwrite_without_flag(setup):
    out = setup["root"] / "overfit"
    before = (out / "projector.safetensors").read_bytes()
    assert cli.main(_args(setup, out, "--steps", "1")) == 2
    assert (out / "projector.safetensors").read_bytes() == before


def test_resume_equivalence_and_atomic_save(setup, monkeypatch):
    common = ("--steps", "4", "--batch-size", "2", "--lr", "1e-3", "--save-every", "2", "--keep-checkpoints", "0")
    full = setup["root"] / "full"
    _run(setup, full, *common)

    # Interrupted: the weights write of step 4 dies halfway through.
    import safetensors.torch as st

    real = st.save_file
    calls = {"n": 0}

    def dying_save(tensors, filename, metadata=None):
        calls["n"] += 1
        if "step_00000004" in str(Path(filename).name) or ".step_00000004" in str(filename):
            with open(filename, "wb") as f:
                f.write(b"half a file")
            raise KeyboardInterrupt("simulated crash mid-save")
        return real(tensors, filename, metadata=metadata)

    part = setup["root"] / "part"
    monkeypatch.setattr(st, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _run(setup, part, *common)
    monkeypatch.setattr(st, "save_file", real)
    # The previous checkpoint is intact and the newest; nothing half-written is left.
    assert latest_state(part) == (2, state_path(part, 2))
    assert not weights_path(part, 4).exists() and not state_path(part, 4).exists()
    assert not [p for p in (part / "checkpoints").iterdir() if p.name.startswith(".")]
    load_file(str(weights_path(part, 2)))
    assert not (part / "projector.safetensors").exists()

    _run(setup, part, *common, "--resume")
    assert _same(full / "projector.safetensors", part / "projector.safetensors")
    assert [r["step"] for r in _log(part)] == [r["step"] for r in _log(full)]

    # Stopped cleanly after N/2 steps, then resumed to N: the same result.
    half = setup["root"] / "half"
    _run(setup, half, *common[2:], "--steps", "2")
    _run(setup, half, *common[2:], "--steps", "4", "--resume")
    assert _same(full / "projector.safetensors", half / "projector.safetensors")


def test_two_process_gloo_matches_one_process_with_double_batch(setup):
    """torchrun, 2 CPU processes x batch 2 vs 1 process x batch 4: the same first update.
    Plain SGD with lr 1 makes the update the averaged gradient itself (Adam's first step,
    lr * g / (|g| + eps), would amplify float summation-order noise where |g| ~ eps)."""
    one, two = setup["root"] / "ddp1", setup["root"] / "ddp2"
    common = ["--steps", "1", "--optimizer", "sgd", "--lr", "1", "--negatives", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    r = subprocess.run([*base, "2", "-m", "sonic_diffusion.train", *_args(setup, two, "--batch-size", "2", *common)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"world_size": 2' in (two / "run.json").read_text()
    _run(setup, one, "--batch-size", "4", *common)
    from sonic_diffusion.projector import AudioProjector, init_projector_weights

    init = init_projector_weights(AudioProjector().float(), torch.Generator().manual_seed(0)).state_dict()
    a, b = load_file(str(one / "projector.safetensors")), load_file(str(two / "projector.safetensors"))
    moved = 0
    for k in a:
        da, db = a[k] - init[k], b[k] - init[k]
        scale = float(da.abs().max())
        torch.testing.assert_close(db, da, rtol=1e-3, atol=1e-4 * scale + 2e-7 * float(init[k].abs().max()), msg=k)
        moved += scale > 0
    assert moved > 10  # a real update, not two no-ops


class _Collect(list):
    """A handler on the training logger (which does not propagate), kept by the test."""

    def __enter__(self):
        import logging

        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.append(record.getMessage())
        logging.getLogger("sonic_diffusion.train").addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        import logging

        logging.getLogger("sonic_diffusion.train").removeHandler(self.handler)


def test_resume_falls_back_past_a_damaged_checkpoint_and_cleans_temps(setup):
    from sonic_diffusion.files import TMP_TAG

    common = ("--steps", "6", "--batch-size", "2", "--lr", "1e-3", "--save-every", "2", "--keep-checkpoints", "0")
    full = setup["root"] / "full6"
    _run(setup, full, *common)
    part = setup["root"] / "damaged"
    _run(setup, part, *common[:1], "4", *common[2:])  # checkpoints at 2 and 4
    w4 = weights_path(part, 4)
    w4.write_bytes(w4.read_bytes()[: w4.stat().st_size // 2])  # the newest one is damaged
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    orphans = [part / "checkpoints" / f".step_00000006.safetensors{TMP_TAG}{dead}-0000beef",
               part / f".projector.safetensors{TMP_TAG}{dead}-0000cafe"]
    for o in orphans:
        o.write_bytes(b"\0" * 1024)  # what a kill during a save leaves
    with _Collect() as messages:
        _run(setup, part, *common, "--resume")
    said = "\n".join(messages)
    assert "checkpoint step 4 is damaged" in said and "fell back to the intact checkpoint at step 2" in said
    assert "removed 2 temporary file(s)" in said
    assert not any(o.exists() for o in orphans)
    # Steps 3..6 were redone from step 2: the result is the uninterrupted run's.
    assert _same(full / "projector.safetensors", part / "projector.safetensors")
    # Every checkpoint damaged: a one-line refusal (exit 2), not a traceback or a silent restart.
    for s in (2, 4, 6):
        state_path(part, s).write_bytes(b"PK\x03\x04 damaged")
    assert cli.main(_args(setup, part, *common, "--resume")) == 2


def test_every_image_corrupt_means_no_training(tmp_path, setup, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(setup["data"], data)
    for p in data.glob("*.png"):
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    assert cli.main(["check", "--data", str(data)]) == 1
    assert "0 usable" in capsys.readouterr().out
    args = _args(setup, tmp_path / "out", "--steps", "1")
    args[args.index("--data") + 1] = str(data)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()  # (warnings per skipped pair,) then the refusal
    assert err[-1].startswith("error: no usable pairs") and "train check" in err[-1], err
    assert all("Traceback" not in line for line in err)
    assert not (tmp_path / "out" / "projector.safetensors").exists()


class _Payload:
    marker = None

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_checkpoint_is_refused_in_one_line(setup, tmp_path, capsys):
    _Payload.marker = str(tmp_path / "pwned")
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(2)}, "x": _Payload()}, evil)
    args = _args(setup, tmp_path / "out", "--steps", "1")
    args[args.index("--checkpoint") + 1] = str(evil)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checkpoint" in err[0] and "refused for safety" in err[0], err
    assert not (tmp_path / "pwned").exists()
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    args[args.index("--checkpoint") + 1] = str(empty)
    assert cli.main(args) == 2
    assert "empty (0 bytes)" in capsys.readouterr().err

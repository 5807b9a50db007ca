"""Training checkpoints and the output folder.

OUT/checkpoints/step_00000100.safetensors   the weights at that step (our formats)
OUT/checkpoints/step_00000100.state.pt      optimizer, step, RNG states, data position
OUT/<final>.safetensors                     the result (stage 1: projector, stage 2: bundle)
OUT/log.csv, OUT/tensorboard/, OUT/run.json

Both checkpoint files are written to a temporary name and renamed, weights first: the
state file is the commit marker, so a crash at any point leaves the previous complete
checkpoint as the latest one. --resume picks the newest state whose weights exist
and read back intact; a damaged one is skipped for the next older (and said so).
Temporary files a killed save left behind are removed when the output is prepared.
"""
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import save_atomic_safetensors
from ..files import clean_stale_temps, write_atomic, write_text_atomic

log = logging.getLogger("sonic_diffusion.train")

CKPT_DIR = "checkpoints"
LOG_FILE = "log.csv"
RUN_FILE = "run.json"
TB_DIR = "tensorboard"
_STEP_RE = re.compile(r"^step_(\d{8})\.state\.pt$")


class OutputExistsError(FileExistsError):
    pass


class ResumeMismatchError(ValueError):
    """--resume with settings that change the data stream: refused, never a fallback."""


def weights_path(out, step):
    return Path(out) / CKPT_DIR / f"step_{step:08d}.safetensors"


def state_path(out, step):
    return Path(out) / CKPT_DIR / f"step_{step:08d}.state.pt"


def existing_outputs(out, final_name):
    out = Path(out)
    found = [p for p in (out / final_name, out / LOG_FILE, out / RUN_FILE, out / TB_DIR) if p.exists()]
    ck = out / CKPT_DIR
    if ck.is_dir() and any(ck.iterdir()):
        found.append(ck)
    return found


def prepare_output(out, final_name, resume, overwrite):
    """Refuses to touch earlier results unless told: --resume continues them,
    --overwrite removes them (only the files this tool writes)."""
    out = Path(out)
    found = existing_outputs(out, final_name)
    if found and not resume and not overwrite:
        raise OutputExistsError(
            f"{out} already holds training output ({', '.join(p.name for p in found)}); pass --resume to continue "
            f"that run or --overwrite to start again and replace it")
    if found and overwrite and not resume:
        for p in found:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    (out / CKPT_DIR).mkdir(parents=True, exist_ok=True)
    removed = clean_stale_temps(out / CKPT_DIR) + clean_stale_temps(out)
    if removed:
        log.warning("removed %d temporary file(s) left by an interrupted save: %s", len(removed),
                 ", ".join(p.name for p in removed[:4]))
    return out


def complete_checkpoints(out):
    """Steps (newest first) whose state file and weights file both exist."""
    ck = Path(out) / CKPT_DIR
    if not ck.is_dir():
        return []
    steps = sorted((int(m.group(1)) for m in (_STEP_RE.match(p.name) for p in ck.iterdir()) if m), reverse=True)
    return [s for s in steps if weights_path(out, s).exists()]


def latest_state(out):
    """(step, state path) of the newest complete checkpoint, or None."""
    steps = complete_checkpoints(out)
    return (steps[0], state_path(out, steps[0])) if steps else None


def read_checkpoint(out, step):
    """(state, weights) of one checkpoint, read through the safe loaders; raises
    WeightsFileError (a ValueError) if either file is damaged."""
    from ..safe_load import load_pickle_weights, load_safetensors_weights

    state = load_pickle_weights(state_path(out, step))
    if not isinstance(state, dict) or "optimizer" not in state or "rng" not in state:
        raise ValueError(f"{state_path(out, step).name} holds no training state")
    weights, _ = load_safetensors_weights(weights_path(out, step))
    return state, weights


def newest_intact_checkpoint(out, apply):
    """Reads the newest complete checkpoint and hands it to ``apply(step, state, weights)``;
    a damaged one (unreadable, or refused by ``apply``) is skipped with a warning for the
    next older. Returns the step, None without checkpoints; raises if all are damaged."""
    problems = []
    for step in complete_checkpoints(out):
        try:
            state, weights = read_checkpoint(out, step)
            apply(step, state, weights)
        except ResumeMismatchError:
            raise
        except (ValueError, KeyError, RuntimeError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("--resume: checkpoint step %d is damaged (%s); trying the next older one", step, reason)
            problems.append(f"step {step}: {reason}")
            continue
        if problems:
            log.warning("--resume: fell back to the intact checkpoint at step %d", step)
        return step
    if problems:
        raise ValueError(f"--resume: every checkpoint in {Path(out) / CKPT_DIR} is damaged ({'; '.join(problems)}); "
                         f"pass --overwrite to start again")
    return None


def _atomic_torch_save(obj, path):
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def rng_state():
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        # numpy/python states as plain lists and tensors, so weights_only loading reads them.
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = s["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def save_checkpoint(out, step, tensors, metadata, state, keep=2):
    """Weights, then the state that names them; then drops checkpoints beyond `keep`."""
    w = weights_path(out, step)
    save_atomic_safetensors(tensors, w, metadata, overwrite=True)
    _atomic_torch_save(dict(state, step=step, weights=w.name), state_path(out, step))
    if keep and keep > 0:
        ck = Path(out) / CKPT_DIR
        steps = sorted(int(m.group(1)) for m in (_STEP_RE.match(p.name) for p in ck.iterdir()) if m)
        for s in steps[:-keep]:
            state_path(out, s).unlink(missing_ok=True)
            weights_path(out, s).unlink(missing_ok=True)
    return w


def truncate_log(out, step):
    """Drops log rows after `step` (written by a run that died before its next save)."""
    p = Path(out) / LOG_FILE
    if not p.exists():
        return
    lines = p.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if ln.split(",", 1)[0].isdigit() and int(ln.split(",", 1)[0]) <= step]
    write_text_atomic(p, "".join(keep))

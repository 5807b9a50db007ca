"""The training loop both stages share: data order, accumulation, gradient averaging
over processes, optimizer, logging, checkpoints and --resume.

Determinism: the data order is a function of (seed, epoch), and every random choice
made for a sample (noise, timestep, caption/audio drop, flip, InfoNCE positive) is
drawn from a generator seeded by (seed, the sample's global position in the data
stream). So a run gives the same updates however its global batch is split over
processes or accumulation steps, and a resumed run continues exactly where an
uninterrupted one would be.
"""
import contextlib
import csv
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..files import write_text_atomic
from . import checkpoint as C
from . import distributed as D

log = logging.getLogger("sonic_diffusion.train")

# Settings that fix the data stream: a resumed run must keep them.
STREAM_KEYS = ("stage", "seed", "global_batch", "repeat_first_batch", "items")


@contextlib.contextmanager
def differentiable_attention():
    """While training, every ComfyUI attention call (UNet, adapter, projector: all look
    the function up at call time) goes to PyTorch's scaled_dot_product_attention. Some
    attention backends a ComfyUI install may select are inference-only (sage attention,
    the flash-attn custom op without an autograd formula); SDPA has a backward on every
    device. (The CPU defaults, sub-quadratic/split/basic, were measured to give the same
    gradients as SDPA to 1e-6.)"""
    import comfy.ldm.modules.attention as attention

    sdpa = attention.attention_pytorch
    saved = (attention.optimized_attention, attention.optimized_attention_masked)
    attention.optimized_attention = attention.optimized_attention_masked = sdpa
    try:
        yield
    finally:
        attention.optimized_attention, attention.optimized_attention_masked = saved


def sample_generator(seed, position, salt=0):
    """The per-sample random source (see module docstring)."""
    mixed = (int(seed) * 1_000_003 + int(position) * 7_919 + int(salt) * 104_729) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(mixed)


class DataOrder:
    """Global position -> item index: the concatenation of per-epoch permutations."""

    def __init__(self, n, seed):
        self.n, self.seed = n, int(seed)
        self._perms = {}

    def item(self, position):
        epoch, i = divmod(int(position), self.n)
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.n)
            self._perms = {epoch: perm}  # positions only move forward: keep one epoch
        return int(perm[i])


class RunLog:
    """CSV (always), TensorBoard (if asked and installed), on the main process only."""

    def __init__(self, out, columns, tensorboard, resumed_step):
        self.path = Path(out) / C.LOG_FILE
        self.columns = columns
        self.enabled = D.is_main()
        self.tb = None
        if not self.enabled:
            return
        if resumed_step:
            C.truncate_log(out, resumed_step)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", newline="")  # noqa: SIM115 - held open for the run, closed by close()
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(columns)
            self.file.flush()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out) / C.TB_DIR), purge_step=resumed_step or None)
            except (ImportError, ModuleNotFoundError) as e:
                log.warning("--tensorboard: TensorBoard is not installed (%s); `pip install tensorboard` to get it. "
                            "Continuing with the CSV log only.", e)

    def write(self, row):
        if not self.enabled:
            return
        self.writer.writerow([row.get(c, "") for c in self.columns])
        self.file.flush()
        if self.tb is not None:
            for c in self.columns:
                if c not in ("step", "epoch") and isinstance(row.get(c), (int, float)):
                    self.tb.add_scalar(c, row[c], row["step"])

    def close(self):
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def total_steps(args, n_items, global_batch):
    if args.steps:
        return int(args.steps)
    return max(1, math.ceil(float(args.epochs) * n_items / global_batch))


def _progress(total, initial):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, disable=not D.is_main(), dynamic_ncols=True, file=sys.stderr,
                unit="step")


def _optimizer(args, params):
    if getattr(args, "optimizer", "adam") == "sgd":
        # Plain SGD: the update is lr * gradient, which tests compare across process counts.
        return torch.optim.SGD(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay)


def _check_stream(old, stream):
    diff = {k: (old.get(k), stream[k]) for k in STREAM_KEYS if old.get(k) != stream[k]}
    if diff:
        raise C.ResumeMismatchError(
            "--resume: these settings differ from the run being resumed, so the data stream would not continue: "
            + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
            + " (global_batch = batch size x processes x grad accumulation)")


def _resume(task, args, opt, scaler, stream, total):
    """Loads the newest intact checkpoint of args.out into task, optimizer, scaler and
    the RNGs; returns the step it reached (0 without a checkpoint)."""
    out = Path(args.out)

    def apply(step, state, weights):
        _check_stream(state.get("stream", {}), stream)
        task.load_weights(weights)
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        C.set_rng_state(state["rng"])

    step = C.newest_intact_checkpoint(out, apply)
    if step is None:
        if D.is_main():
            log.info("--resume: no checkpoint in %s, starting from step 0", out / C.CKPT_DIR)
        return 0
    if D.is_main():
        log.info("resumed from %s at step %d of %d", C.state_path(out, step).name, step, total)
        if step >= total:
            log.info("nothing to do: the run already reached step %d (raise --steps/--epochs to go on)", step)
    return step


def _write_run_file(args, stream, total, params):
    if D.is_main():
        record = {"args": vars(args), "stream": stream, "world_size": D.world_size(), "total_steps": total,
                  "trainable_parameters": sum(p.numel() for p in params)}
        write_text_atomic(Path(args.out) / C.RUN_FILE, json.dumps(record, indent=2, default=str))


def _learning_rate(args, step):
    return args.lr * min(1.0, (step + 1) / args.warmup_steps) if args.warmup_steps > 0 else args.lr


class _Trainer:
    """One optimizer step at a time: accumulation, gradient averaging, clipping, update."""

    def __init__(self, task, args, device):
        self.task, self.args, self.device = task, args, device
        self.W, self.R = D.world_size(), D.rank()
        self.B, self.A = int(args.batch_size), int(args.grad_accum)
        self.G = self.B * self.W * self.A
        self.params = [p for _, p in task.trainable()]
        self.opt = _optimizer(args, self.params)
        use_scaler = args.precision == "fp16"
        self.scaler = torch.amp.GradScaler(device.type, enabled=True) if use_scaler else None

    def step(self, step):
        args, opt, scaler = self.args, self.opt, self.scaler
        lr = _learning_rate(args, step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        sums = {k: 0.0 for k in ["loss", *self.task.loss_parts]}
        for m in range(self.A):
            base = (0 if args.repeat_first_batch else step * self.G) + (m * self.W + self.R) * self.B
            loss, parts = self.task.loss(range(base, base + self.B))
            (scaler.scale(loss / self.A) if scaler is not None else loss / self.A).backward()
            sums["loss"] += float(loss.detach()) / self.A
            for k, v in parts.items():
                sums[k] += float(v) / self.A
        D.average_gradients(self.params)
        if scaler is not None:
            scaler.unscale_(opt)
        if args.max_grad_norm and args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, args.max_grad_norm)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        keys = list(sums)
        return dict(zip(keys, D.mean_of([sums[k] for k in keys], self.device))), lr

    def state_dict(self, step, stream):
        return {"optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": C.rng_state(), "stream": stream,
                "data": {"position": step * self.G, "seed": int(self.args.seed)}}


def run(task, args, device):
    """Trains `task` (stage1.Stage1Task or stage2.Stage2Task); returns a summary dict."""
    tr = _Trainer(task, args, device)
    G, n_items, out = tr.G, task.n_items, Path(args.out)
    total = total_steps(args, n_items, G)
    stream = {"stage": task.stage, "seed": int(args.seed), "global_batch": G,
              "repeat_first_batch": bool(args.repeat_first_batch), "items": n_items}
    start = _resume(task, args, tr.opt, tr.scaler, stream, total) if args.resume else 0
    D.broadcast_parameters(tr.params)
    _write_run_file(args, stream, total, tr.params)

    def save(step):
        if D.is_main():
            tensors, meta = task.weights_tensors(step)
            C.save_checkpoint(out, step, tensors, meta, tr.state_dict(step, stream), keep=args.keep_checkpoints)
        D.barrier()

    columns = ["step", "epoch", "loss", *task.loss_parts, "lr", "samples_per_s", "elapsed_s"]
    runlog = RunLog(out, columns, args.tensorboard, start)
    bar = _progress(total, start)
    t_start = time.perf_counter()
    rate, last = None, {}
    try:
        with differentiable_attention():
            for step in range(start, total):
                t0 = time.perf_counter()
                means, lr = tr.step(step)
                s, dt = step + 1, time.perf_counter() - t0
                rate = G / dt if rate is None else 0.9 * rate + 0.1 * G / dt
                last = dict(means, step=s, epoch=round(s * G / n_items, 4), lr=lr, samples_per_s=round(G / dt, 3),
                            elapsed_s=round(time.perf_counter() - t_start, 2))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{means['loss']:.4f}", **{task.rate_unit: f"{rate:.2f}"})
                if s % args.log_every == 0 or s == total or s == start + 1:
                    runlog.write(last)
                task.after_step(s, means)
                if args.save_every and s % args.save_every == 0 and s != total:
                    save(s)
            if total > start or start == 0:
                save(total)
            if D.is_main():
                tensors, meta = task.final_tensors(total)
                C.save_atomic_safetensors(tensors, out / task.final_name, meta, overwrite=True)
            D.barrier()
    finally:
        if bar is not None:
            bar.close()
        runlog.close()
    return {"steps": total, "started_at": start, "final": str(out / task.final_name), "last": last,
            "samples_per_s": rate, "global_batch": G}

"""The patched UNet under torch.compile (what core's TorchCompileModel node does):
graph breaks with and without the adapter (torch._dynamo.explain), then the
compiled patched step against the uncompiled one (max difference and time).

    .build/venv/bin/python bench/compile_check.py [--size 128] [--backend inductor]
"""
import argparse
import copy
import time

import torch
from common import boot, load_adapter, load_unet


def _print_breaks(reports):
    """Graph and break counts per model, where the breaks are, and those at the pack's code."""
    for label, r in reports.items():
        print(f"{label:8s}: {r.graph_count} graph(s), {r.graph_break_count} graph break(s)")
        where = {}
        for reason in r.break_reasons:
            frame = reason.user_stack[-1] if reason.user_stack else None
            key = f"{frame.filename}:{frame.lineno}" if frame else "unknown"
            where[key] = where.get(key, 0) + 1
        for key, count in sorted(where.items(), key=lambda kv: -kv[1]):
            print(f"          {count:3d} break(s) at {key}")
    ours = [r for r in reports["patched"].break_reasons
            if r.user_stack and any("sonic_diffusion" in f.filename for f in r.user_stack)]
    print(f"graph breaks at the pack's own code: {len(ours)}")
    for r in ours:  # named one by one: reason and the pack's frame
        frame = [f for f in r.user_stack if "sonic_diffusion" in f.filename][-1]
        print(f"  {frame.filename.split('sonic_diffusion')[-1]}:{frame.lineno} ({frame.name}): "
              f"{str(r.reason).splitlines()[0][:160]}")
    added = reports["patched"].graph_break_count - reports["plain"].graph_break_count
    print(f"breaks the adapter adds: {added} (of which at the pack's code: {len(ours)}; the rest are host "
          f"breaks repeated in the extra hooks)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    fs = boot()
    import nodes
    from testing.unet import apply_adapter, call_audio

    model = load_unet(fs)
    adapter = load_adapter(fs)
    g = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(1, 1024, generator=g), dim=-1)
    patched = apply_adapter(model, adapter, e)
    # The node a user would add: it must accept the patched model.
    compiled_model = nodes.NODE_CLASS_MAPPINGS["TorchCompileModel"].execute(model=patched, backend="inductor").result[0]
    assert compiled_model is not patched
    lat = args.size // 8
    x = torch.randn(2, 4, lat, lat, generator=g)
    t = torch.full((2,), 500)
    ctx = torch.randn(2, 77, 768, generator=g)

    def options(m):
        to = copy.copy(m.model_options["transformer_options"])
        to.update(cond_or_uncond=[1, 0], sigmas=t.float())
        return to

    dm = model.model.diffusion_model
    audio = {m: call_audio(m, [1, 0], 1) for m in (model, patched)}
    with torch.no_grad():
        eager = dm(x, timesteps=t, context=ctx, transformer_options=options(patched), **audio[patched])
        reports = {}
        for label, m in (("plain", model), ("patched", patched)):
            torch._dynamo.reset()
            reports[label] = torch._dynamo.explain(dm)(x, timesteps=t, context=ctx, transformer_options=options(m),
                                                       **audio[m])
    _print_breaks(reports)

    torch._dynamo.reset()
    compiled = torch.compile(dm, backend=args.backend)
    to = options(patched)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = compiled(x, timesteps=t, context=ctx, transformer_options=to, **audio[patched])
        first = time.perf_counter() - t0
        times = {"eager": [], "compiled": []}
        for _ in range(args.reps):
            for label, fn in (("eager", dm), ("compiled", compiled)):
                t0 = time.perf_counter()
                fn(x, timesteps=t, context=ctx, transformer_options=to, **audio[patched])
                times[label].append(time.perf_counter() - t0)
    diff = (out - eager).abs().max().item()
    print(f"compiled ({args.backend}) vs eager, patched, {args.size}x{args.size} batch 2: max |diff| {diff:.2e} "
          f"(output scale {eager.abs().max().item():.2f}); first call (compile) {first:.1f} s")
    for label, v in times.items():
        print(f"  {label:8s} median step {1e3 * sorted(v)[len(v) // 2]:.0f} ms")


if __name__ == "__main__":
    main()

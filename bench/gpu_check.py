"""One command for a GPU (any device ComfyUI's model management picks), in <= 8 minutes:

    .build/venv/bin/python bench/gpu_check.py --out gpu_check.json
    .build/venv/bin/python bench/gpu_check.py --smoke --out smoke.json   # tiny, on the CPU (CI)

1. exactness in fp16 and bf16 on the device: the rule of tests/test_precision.py (the adapter
   adds no more error than 1.5x the plain UNet's own half-precision error, for the pack's
   cached path and the plain formula, one and several audios, uncond and cond rows);
2. P1: adapter overhead per UNet step, fp16, 512x512, batch 2: summed kernel time from
   torch.profiler and wall-clock time per step (synchronized; at small batch the
   adapter's cost is launch-bound, which kernel time alone hides), interleaved
   repetitions, median and IQR of the per-repetition ratio, against the FLOP-counted
   floor (target <= 2.5%);
3. P2: a 10 s clip to its embedding, batch 1 and 16, real-time factor (target >= 1000x),
   with the front end's device and precision (float32 on a GPU, no CPU round trip);
4. the allocator peak added by the adapter (one patched step) and by CLAP (one encode);
5. one 512x512 20-step audio-to-image run and one edit through the node graph.
Writes one JSON. The device is ComfyUI's (comfy.model_management), never named here.
"""
import argparse
import gc
import json
import time
from pathlib import Path

import common
import torch

SIZES = {"full": dict(exact_latent=64, p1_size=512, p1_reps=15, clap_batches=(1, 16), clap_reps=5,
                      image=512, steps=20, edit_steps=50, halves=("fp16", "bf16")),
         "smoke": dict(exact_latent=8, p1_size=64, p1_reps=1, clap_batches=(1, 2), clap_reps=1,
                       image=64, steps=2, edit_steps=2, halves=("fp16",))}
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def load_unet(fs, dtype, device):
    import comfy.model_management as mm

    model = common.load_unet(fs, dtype=dtype)
    if device.type == "cpu" and dtype != torch.float32:
        # A CPU manual-casts half weights to float32; the smoke run computes in half like a GPU.
        model.model.manual_cast_dtype = None
    mm.load_models_gpu([model])
    return model


def check_exactness(fs, adapter, device, cfg):
    """Per half dtype and case: (adapter error) / (plain UNet error), both vs float32 on the device."""
    from testing import precision as tp

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a true fp32 reference
    latent = cfg["exact_latent"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, latent, latent, generator=g).to(device)
    ctx = torch.randn(2, 77, 768, generator=g).to(device)
    e = torch.nn.functional.normalize(torch.randn(3, 1024, generator=g), dim=-1)
    outs = {}
    halves = cfg["halves"]
    try:
        for label, dtype in (("fp32", torch.float32), *((h, HALF[h]) for h in halves)):
            model = load_unet(fs, dtype, device)
            o = outs[label] = {"plain": tp.unet_out(model, torch.cat([x, x]), ctx, [1, 0])}
            for audios in (1, 3):
                xs = x.expand(2 * audios, -1, -1, -1)
                cs = torch.cat([ctx[:1].expand(audios, -1, -1), ctx[1:].expand(audios, -1, -1)])
                o[("pack", audios)] = tp.unet_out(tp.pack_model(model, adapter, e[:audios]), xs, cs, [1, 0])
                o[("formula", audios)] = tp.unet_out(tp.formula_model(model, adapter, e[:audios]), xs, cs, [1, 0])
            del model
            _unload()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    report = []
    for half in halves:
        for variant in ("pack", "formula"):
            for audios in (1, 3):
                for part, rows, prow in (("uncond", slice(0, audios), 0), ("cond", slice(audios, None), 1)):
                    unet_err = tp.rms(outs[half]["plain"][prow] - outs["fp32"]["plain"][prow])
                    err = tp.rms(outs[half][(variant, audios)][rows] - outs["fp32"][("pack", audios)][rows])
                    report.append(dict(dtype=half, variant=variant, audios=audios, rows=part, unet_error=unet_err,
                                       adapter_error=err, ratio=err / unet_err,
                                       ok=err <= tp.RULE_FACTOR * unet_err))
    return {"latent": latent, "rule_factor": tp.RULE_FACTOR, "cases": report, "ok": all(r["ok"] for r in report)}


def _unload():
    import comfy.model_management as mm

    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()


def _kernel_ms(fn, device):
    """Summed device kernel time of one call (self time of every event), in ms; on the CPU the
    summed self CPU time of the operators."""
    from torch.profiler import ProfilerActivity, profile

    activity = {"cuda": ProfilerActivity.CUDA, "xpu": getattr(ProfilerActivity, "XPU", None)}.get(device.type)
    common.synchronize(device)
    with profile(activities=[activity or ProfilerActivity.CPU]) as prof:
        fn()
        common.synchronize(device)
    if activity is None:
        return sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e3
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e3


def _wall_ms(fn, device):
    """Wall-clock time of one synchronized call, in ms (launch overhead included)."""
    common.synchronize(device)
    t0 = time.perf_counter()
    fn()
    common.synchronize(device)
    return 1e3 * (time.perf_counter() - t0)


def measure_p1(fs, adapter, device, cfg, smoke):
    from torch.utils.flop_counter import FlopCounterMode

    from testing.unet import apply_adapter, unet_runner

    dtype = torch.float32 if smoke else torch.float16
    model = load_unet(fs, dtype, device)
    lat = cfg["p1_size"] // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, lat, lat, generator=g).to(device, dtype)
    t = torch.full((2,), 500, device=device)
    ctx = torch.randn(2, 77, 768, generator=g).to(device, dtype)
    e = torch.nn.functional.normalize(torch.randn(1, 1024, generator=g), dim=-1)
    patched = apply_adapter(model, adapter, e)
    import comfy.model_management as mm

    mm.load_models_gpu([patched])
    plain, ours = unet_runner(model, x, t, ctx), unet_runner(patched, x, t, ctx)
    for fn in (plain, ours) * (1 if smoke else 2):  # warm-up; builds the per-sampling cache
        fn()
    counts = {}
    for name, fn in (("plain", plain), ("sonic", ours)):
        with FlopCounterMode(display=False) as counter:
            fn()
        counts[name] = counter.get_total_flops()
    ms = common.interleaved_measure({"plain": plain, "sonic": ours}, cfg["p1_reps"],
                                    lambda fn: _kernel_ms(fn, device))
    med, q1, q3 = common.ratio_summary(ms["sonic"], ms["plain"])
    floor = 100.0 * (counts["sonic"] / counts["plain"] - 1)
    result = {"dtype": str(dtype), "size": cfg["p1_size"], "batch": 2, "reps": cfg["p1_reps"],
              "plain_ms_median": common.summary(ms["plain"])[0], "sonic_ms_median": common.summary(ms["sonic"])[0],
              "overhead_pct_median": med, "overhead_pct_iqr": [q1, q3], "flop_floor_pct": floor,
              "gflops_per_image": counts["plain"] / 2 / 1e9, "target_pct": 2.5,
              "inside_noise": q1 <= floor <= q3 or q1 <= 0.0 <= q3}
    result["meets_target"] = med <= result["target_pct"]
    wall = common.interleaved_measure({"plain": plain, "sonic": ours}, cfg["p1_reps"],
                                      lambda fn: _wall_ms(fn, device))
    wmed, wq1, wq3 = common.ratio_summary(wall["sonic"], wall["plain"])
    result.update({"wall_plain_ms_median": common.summary(wall["plain"])[0],
                   "wall_sonic_ms_median": common.summary(wall["sonic"])[0],
                   "wall_overhead_pct_median": wmed, "wall_overhead_pct_iqr": [wq1, wq3]})
    peak = _adapter_peak(model, patched, plain, ours, device)
    del model, patched
    _unload()
    return result, peak


def _adapter_peak(model, patched, plain, ours, device):
    """Allocator peak of a plain and of a patched step (weights resident), and the difference."""
    peaks = {}
    for name, fn in (("plain", plain), ("sonic", ours)):
        common.synchronize(device)
        common.reset_peak(device)
        fn()
        common.synchronize(device)
        peaks[name] = common.peak_allocated(device)
    if peaks["plain"] is None:
        return {"tracked": False}
    return {"tracked": True, "plain_step_mib": peaks["plain"] / 2 ** 20, "patched_step_mib": peaks["sonic"] / 2 ** 20,
            "added_mib": (peaks["sonic"] - peaks["plain"]) / 2 ** 20}


def measure_p2(fs, device, cfg):
    from sonic_diffusion.audio_decode import decode_audio
    from sonic_diffusion.audio_prep import prepare_clip
    from sonic_diffusion.clap import ClapEncoder, load_clap_file

    common.synchronize(device)
    common.reset_peak(device)
    before = common.peak_allocated(device)
    encoder = ClapEncoder(load_clap_file(fs.clap()))
    clip = prepare_clip(*decode_audio(fs.audio("noise_stereo_48k_10s_f32.wav")))
    encoder.encode(clip)  # loads onto the device, warm-up
    rows = []
    for batch in cfg["clap_batches"]:
        clips = clip.expand(batch, -1).contiguous()
        encoder.encode(clips)
        times = []
        for _ in range(cfg["clap_reps"]):
            common.synchronize(device)
            t0 = time.perf_counter()
            encoder.encode(clips)
            common.synchronize(device)
            times.append(time.perf_counter() - t0)
        med, q1, q3 = common.summary(times)
        rows.append({"batch": batch, "ms_per_clip": 1e3 * med / batch, "real_time_factor": 10.0 * batch / med,
                     "rtf_iqr": [10.0 * batch / q3, 10.0 * batch / q1]})
    peak = common.peak_allocated(device)
    from sonic_diffusion.clap_frontend import frontend_dtype

    result = {"device": str(encoder.patcher.load_device), "compute_dtype": str(encoder.compute_dtype),
              "frontend_dtype": str(frontend_dtype(encoder.patcher.load_device)),
              "rows": rows, "target_rtf": 1000.0,
              "clap_peak_mib": None if peak is None else (peak - (before or 0)) / 2 ** 20}
    del encoder
    _unload()
    return result


def run_graphs(fs, cfg):
    """One audio-to-image run and one edit through ComfyUI's executor, timed."""
    from comfy_host import Host

    from testing.graphs import audio_graph, edit_graph, link_audio_graph_files, write_source_image

    host = Host()
    n = link_audio_graph_files(host, fs, "noise_stereo_48k_10s_f32.wav")
    g = audio_graph(n, seed=1)
    g["latent"]["inputs"].update(width=cfg["image"], height=cfg["image"])
    g["ks"]["inputs"]["steps"] = cfg["steps"]
    t0 = time.perf_counter()
    run = host.run(g)
    t2i = time.perf_counter() - t0
    image = run.outputs("dec")[0]
    source = write_source_image("sonic_gpu_check_source.png", cfg["image"])
    edit = edit_graph(n, source, steps=cfg["edit_steps"])
    t0 = time.perf_counter()
    run = host.run(edit)
    t_edit = time.perf_counter() - t0
    edited = run.outputs("dec")[0]
    return {"audio_to_image": {"size": cfg["image"], "steps": cfg["steps"], "seconds": t2i,
                               "finite": bool(image.isfinite().all()), "shape": list(image.shape)},
            "edit": {"size": cfg["image"], "steps": cfg["edit_steps"], "seconds": t_edit,
                     "finite": bool(edited.isfinite().all()), "shape": list(edited.shape)}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (what the test suite runs)")
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args(argv)
    cfg = SIZES["smoke" if args.smoke else "full"]
    t_start = time.perf_counter()
    fs = common.boot(cpu=True if args.smoke else None)
    import comfy.model_management as mm

    device = mm.get_torch_device()
    report = {"device": str(device), "device_name": common.device_name(device), "smoke": args.smoke,
              "torch": torch.__version__, "sections_s": {}}
    adapter = common.load_adapter(fs)

    def section(name, fn):
        t0 = time.perf_counter()
        report[name] = fn()
        report["sections_s"][name] = time.perf_counter() - t0
        print(f"[{time.perf_counter() - t_start:6.1f} s] {name}: {json.dumps(report[name], default=str)[:400]}",
              flush=True)

    section("exactness", lambda: check_exactness(fs, adapter, device, cfg))
    p1 = {}
    section("p1_adapter_overhead", lambda: p1.setdefault("r", measure_p1(fs, adapter, device, cfg, args.smoke))[0])
    report["adapter_peak"] = p1["r"][1]
    section("p2_audio_encode", lambda: measure_p2(fs, device, cfg))
    section("graphs", lambda: run_graphs(fs, cfg))
    report["total_s"] = time.perf_counter() - t_start
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out} ({report['total_s']:.0f} s); exactness ok: {report['exactness']['ok']}")
    return report


if __name__ == "__main__":
    main()

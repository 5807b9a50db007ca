"""Re-queueing, with what the pack saves separated from what ComfyUI's own output cache saves.

    .build/venv/bin/python bench/requeue.py [--steps 2]

Every model is loaded once by a warm-up run and stays cached (a "first run" here never
reloads the checkpoint). Then, on the audio-to-image graph:
- new audio: Load Audio, Encode, Apply, KSampler, decode run (checkpoint cached);
- new seed: ComfyUI's output cache skips the audio side; only sampling and decoding run.
The difference is ComfyUI's cache, priced here by the encode and projection calls it skips.
On the edit graph, a cfg change re-runs Audio Edit (ComfyUI's cache cannot help: an input
changed) and the pack's own inversion cache skips the DDIM inversion: that is the pack's saving.
Calls are counted by wrapping the CLAP tower, the projector and sonic_diffusion.edit.sampler.invert from outside.
"""
import argparse
import time

from common import boot


def _print_rows(rows, args):
    """Each run's time and calls, then what ComfyUI's cache and the inversion cache saved."""
    print(f"audio-to-image 64x64, {args.steps} steps; edit {args.edit_steps} steps")
    for label, secs, n, s in rows:
        calls = ", ".join(f"{k} {n[k]} ({s[k]:.2f} s)" for k in n)
        print(f"{label:40s} {secs:7.2f} s   {calls}")
    new, seed, first, cfg = (r[1] for r in rows)
    saved_by_comfy = rows[0][3]["encode"] + rows[0][3]["project"]
    print(f"ComfyUI's output cache on re-queue: {new - seed:.2f} s saved ({100 * (1 - seed / new):.0f}%), of which "
          f"encode + projection {saved_by_comfy:.2f} s; re-encodes/re-projections on re-queue: "
          f"{rows[1][2]['encode'] + rows[1][2]['project']}")
    print(f"the pack's inversion cache on an edit re-queue: {first - cfg:.2f} s saved "
          f"({100 * (1 - cfg / first):.0f}%); inversions on re-queue: {rows[3][2]['invert']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--edit-steps", type=int, default=4)
    args = ap.parse_args()
    fs = boot()
    from comfy_host import Host

    from sonic_diffusion.clap import ClapAudioEncoder
    from sonic_diffusion.edit import sampler as edit_sampler
    from sonic_diffusion.projector import AudioProjector
    from testing.graphs import audio_graph, edit_graph, link_audio_graph_files, write_source_image

    counts = {"encode": 0, "project": 0, "invert": 0}
    seconds = {k: 0.0 for k in counts}

    def wrap(owner, attr, key):
        fn = getattr(owner, attr)

        def wrapper(*a, **k):
            counts[key] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[key] += time.perf_counter() - t0
        setattr(owner, attr, wrapper)

    wrap(ClapAudioEncoder, "forward", "encode")
    wrap(AudioProjector, "forward", "project")
    wrap(edit_sampler, "invert", "invert")  # called by its module global, so this wrapper sees it
    host = Host()
    names = link_audio_graph_files(host, fs, "noise_stereo_48k_10s_f32.wav", "tone440_stereo_44k_10s.flac")
    graph = audio_graph(names, seed=1)
    graph["ks"]["inputs"]["steps"] = args.steps
    host.run(graph)  # warm-up: loads every model once

    rows = []

    def timed(label, g):
        before, sec_before = dict(counts), dict(seconds)
        t0 = time.perf_counter()
        host.run(g)
        rows.append((label, time.perf_counter() - t0, {k: counts[k] - before[k] for k in counts},
                     {k: seconds[k] - sec_before[k] for k in seconds}))

    graph["load_a"]["inputs"]["audio"] = names["b"]
    timed("new audio (checkpoint cached)", graph)
    graph["ks"]["inputs"]["seed"] = 2
    timed("re-queue, seed changed", graph)
    edit = edit_graph(names, write_source_image("sonic_requeue_source.png"), audio=names["b"], steps=args.edit_steps)
    timed("edit, first (inversion runs)", edit)
    edit["edit"]["inputs"]["cfg"] = 5.0
    timed("edit, cfg changed (inversion cached)", edit)
    _print_rows(rows, args)


if __name__ == "__main__":
    main()

"""Writes the example inputs the shipped workflows use into ComfyUI's input folder, made
here from code (no download, no third-party recordings):

    python -m sonic_diffusion.examples [--input-dir ComfyUI/input] [--force]

- sonic_example_thunder.wav: 10 s stereo 44.1 kHz, rumbling brown noise with three claps
- sonic_example_birds.wav: 6 s mono 44.1 kHz, chirps sweeping 2-6 kHz over a faint breeze
- sonic_example_source.png: 512x512 landscape (sky, sun, hills, lake) for the editing workflows
- sonic_example_control.png: 512x512 picture whose edges (Canny) steer the ControlNet workflow

Only numpy, Pillow and the standard library; the same seed gives the same files. Run from
the pack's folder (ComfyUI/custom_nodes/comfyui-sonicdiffusion): without --input-dir the
files go to the input/ folder of the ComfyUI the pack sits in. Existing files are kept
unless --force is given.
"""
import argparse
import sys
import wave
from pathlib import Path

import numpy as np

RATE = 44100
FILES = ("sonic_example_thunder.wav", "sonic_example_birds.wav",
         "sonic_example_source.png", "sonic_example_control.png")


def _smooth(x, width):
    """Moving average over `width` samples (a cheap low-pass)."""
    kernel = np.ones(width) / width
    return np.convolve(x, kernel, mode="same")


def thunder(rng, seconds=10.0):
    n = int(seconds * RATE)
    rumble = np.cumsum(rng.standard_normal(n))  # brown noise: mostly low frequencies
    rumble -= _smooth(rumble, 4410)  # remove the drift below ~10 Hz
    rumble /= np.abs(rumble).max()
    t = np.arange(n) / RATE
    envelope = 0.25 + 0.1 * np.sin(2 * np.pi * 0.3 * t)
    for start in (0.8, 3.9, 7.2):  # claps: a sharp attack, a long decay
        after = np.clip(t - start, 0, None)
        envelope += (t >= start) * 0.9 * np.exp(-after / 1.2)
    crack = _smooth(rng.standard_normal(n), 8) * (envelope - envelope.min())
    left = 0.7 * rumble * envelope + 0.3 * crack
    right = 0.7 * np.roll(rumble, 300) * envelope + 0.3 * np.roll(crack, 120)
    return np.stack([left, right])


def birds(rng, seconds=6.0):
    n = int(seconds * RATE)
    out = 0.01 * _smooth(rng.standard_normal(n), 20)  # breeze
    t = np.arange(n) / RATE
    for start in np.sort(rng.uniform(0, seconds - 0.3, 22)):
        length = rng.uniform(0.06, 0.16)
        f0, f1 = rng.uniform(2000, 4000), rng.uniform(3500, 6000)
        inside = (t >= start) & (t < start + length)
        u = (t[inside] - start) / length
        phase = 2 * np.pi * length * (f0 * u + (f1 - f0) * u ** 2 / 2)  # linear sweep f0 -> f1
        out[inside] += 0.5 * np.sin(phase) * np.sin(np.pi * u) ** 2
    return out[None]


def write_wav(path, channels):
    pcm = (np.clip(channels / max(1e-9, np.abs(channels).max()) * 0.9, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(pcm.shape[0])
        f.setsampwidth(2)
        f.setframerate(RATE)
        f.writeframes(pcm.T.tobytes())


def landscape(rng, size=512):
    y, x = np.mgrid[0:size, 0:size] / size
    sky = np.stack([0.45 + 0.3 * y, 0.65 + 0.2 * y, 0.95 - 0.1 * y], -1)
    sun = np.exp(-(((x - 0.72) ** 2 + (y - 0.22) ** 2) / 0.004))[..., None] * np.array([0.6, 0.45, 0.1])
    img = sky + sun
    for height, phase, colour in ((0.52, 0.0, (0.35, 0.45, 0.55)), (0.62, 1.7, (0.22, 0.45, 0.2))):
        ridge = height + 0.06 * np.sin(2 * np.pi * (1.3 * x + phase)) + 0.03 * np.sin(2 * np.pi * 4.1 * x)
        img = np.where((y > ridge)[..., None], np.array(colour), img)
    lake = (y > 0.8) & (np.abs(x - 0.45) < 0.3 * (y - 0.75) * 4)
    img = np.where(lake[..., None], np.array([0.3, 0.5, 0.75]) + 0.05 * np.sin(80 * y)[..., None], img)
    img = img + 0.02 * rng.standard_normal(img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def control_picture(size=512):
    """Dark ground, a bright sky, a round sun and a winding river: strong edges for Canny."""
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.where(y < 0.45 + 0.08 * np.sin(6 * x), 0.9, 0.2)
    img = np.where((x - 0.3) ** 2 + (y - 0.2) ** 2 < 0.008, 1.0, img)
    river = np.abs(x - 0.5 - 0.15 * np.sin(9 * y)) < 0.02 + 0.08 * np.clip(y - 0.5, 0, None)
    img = np.where(river & (y > 0.5), 0.7, img)
    return (np.stack([img] * 3, -1) * 255).astype(np.uint8)


def write_examples(input_dir, force=False, seed=0):
    """Writes the four files into `input_dir`; returns the paths written (existing ones kept)."""
    from PIL import Image

    input_dir = Path(input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    makers = {
        "sonic_example_thunder.wav": lambda p: write_wav(p, thunder(rng)),
        "sonic_example_birds.wav": lambda p: write_wav(p, birds(rng)),
        "sonic_example_source.png": lambda p: Image.fromarray(landscape(rng)).save(p),
        "sonic_example_control.png": lambda p: Image.fromarray(control_picture()).save(p),
    }
    written = []
    for name in FILES:
        path = input_dir / name
        if path.exists() and not force:
            continue
        makers[name](path)
        written.append(path)
    return written


def default_input_dir():
    """ComfyUI/input when the pack sits in ComfyUI/custom_nodes/<pack>, else None."""
    comfy = Path(__file__).resolve().parents[3]
    return comfy / "input" if (comfy / "main.py").is_file() else None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sonic_diffusion.examples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-dir", type=Path, default=None,
                        help="ComfyUI's input folder (default: the one of the ComfyUI this pack is installed in)")
    parser.add_argument("--force", action="store_true", help="replace files that exist")
    args = parser.parse_args(argv)
    input_dir = args.input_dir or default_input_dir()
    if input_dir is None:
        print("error: the pack is not inside ComfyUI/custom_nodes: pass --input-dir ComfyUI/input", file=sys.stderr)
        return 2
    for path in write_examples(input_dir, force=args.force):
        print("wrote", path)
    print(f"the example inputs are in {input_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

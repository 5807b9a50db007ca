"""Tiny generated training folders (audio tones/noise + images) for tests and smoke runs."""
import wave
from pathlib import Path

import numpy as np


def write_wav(path, samples, rate=8000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def write_png(path, rng, size=64):
    from PIL import Image

    # Smooth-ish random images: a coarse grid upsampled, so latents are not pure noise.
    coarse = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    Image.fromarray(coarse).resize((size, size), Image.BILINEAR).save(path)


def make_pairs(root, n=6, size=64, seed=0, captions=True, labels=True, skip_caption=(1,)):
    """n pairs p0..p{n-1}: even = 'tone' class, odd = 'noise' class; p1 has no caption."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cls = "tone" if i % 2 == 0 else "noise"
        t = np.arange(8000) / 8000.0
        sig = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * t) if cls == "tone" else 0.2 * rng.standard_normal(8000)
        write_wav(root / f"p{i}.wav", sig)
        write_png(root / f"p{i}.png", rng, size)
        if captions and i not in skip_caption:
            (root / f"p{i}.txt").write_text(f"a {cls} picture number {i}")
        rows.append(f"p{i},{cls}")
    if labels:
        (root / "labels.csv").write_text("stem,class\n" + "\n".join(rows) + "\n")
    return root

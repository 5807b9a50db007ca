"""Finding the files: generated images, audio, reference images and labels, by stem."""
import csv
from pathlib import Path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus", ".aif", ".aiff")


class DataError(ValueError):
    pass


def by_stem(folder, exts, what):
    """{stem: path} for the files of ``folder`` (not recursive) with one of ``exts``.
    Two files with the same stem are an error (which one would be meant?)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist")
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."):
            if p.stem in out:
                raise DataError(f"{what}: two files share the stem {p.stem!r}: {out[p.stem].name} and {p.name}")
            out[p.stem] = p
    return out


def read_labels(path):
    """labels.csv: ``stem,class`` per row; an optional header row (``stem,class``);
    blank lines and lines starting with # are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist")
    labels = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise DataError(f"{path}:{n}: expected 'stem,class', got {row!r}")
            stem, cls = row[0].strip(), row[1].strip()
            if n == 1 and stem.lower() == "stem" and cls.lower() in ("class", "label"):
                continue
            if stem in labels and labels[stem] != cls:
                raise DataError(f"{path}:{n}: {stem!r} has two classes ({labels[stem]!r}, {cls!r})")
            labels[stem] = cls
    if not labels:
        raise DataError(f"{path} holds no labels")
    return labels

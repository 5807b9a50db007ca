"""Finding the files: generated images, audio, reference images and labels, by stem."""
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
    """labels.csv: ``stem,class`` per row, or the columns a header row names (any case);
    blank lines and lines starting with # are skipped. The training tool's parser."""
    from ..train.dataset import read_labels as parse_labels

    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist")
    labels, problems = parse_labels(path)
    if problems:
        raise DataError(f"{path}: {problems[0]}")
    if not labels:
        raise DataError(f"{path} holds no labels")
    return labels

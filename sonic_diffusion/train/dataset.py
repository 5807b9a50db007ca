"""The training folder: pairs of files sharing a stem (x.wav + x.png|jpg), an optional
caption x.txt and an optional labels.csv (stem,class).

Files are found recursively (the stem is the path relative to the folder, without
the extension); hidden files and folders (the default cache lives in .sonic_cache)
are ignored. Nothing here needs ComfyUI.
"""
import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_EXT = ".txt"
LABELS_FILE = "labels.csv"


@dataclass
class Item:
    stem: str
    audio: Path
    image: Path
    caption: str | None = None   # None: no caption file
    label: str | None = None


@dataclass
class Scan:
    root: Path
    items: list = field(default_factory=list)            # complete pairs, sorted by stem
    audio_only: list = field(default_factory=list)       # stems with no image
    image_only: list = field(default_factory=list)       # stems with no audio
    ambiguous: list = field(default_factory=list)        # (stem, [files]): two audios or two images
    caption_errors: list = field(default_factory=list)   # (stem, reason)
    orphan_captions: list = field(default_factory=list)  # x.txt without a pair
    label_problems: list = field(default_factory=list)   # messages about labels.csv
    labels_file: Path | None = None
    unlabeled: list = field(default_factory=list)        # pairs with no row in labels.csv


def _is_hidden(rel):
    return any(part.startswith(".") for part in rel.parts)


STEM_COLUMNS = ("stem", "name", "file", "filename", "audio", "path", "id")
CLASS_COLUMNS = ("class", "label", "category", "class_name", "classname")


def label_columns(row):
    """(stem column, class column) named by a header row (any case, any order, extra
    columns allowed), or None when the row is data."""
    names = [c.strip().lower() for c in row]
    stem = next((i for i, c in enumerate(names) if c in STEM_COLUMNS), None)
    cls = next((i for i, c in enumerate(names) if c in CLASS_COLUMNS), None)
    return (stem, cls) if stem is not None and cls is not None else None


def read_labels(path):
    """labels.csv -> ({stem: class}, [problems]). Without a header the columns are
    stem,class; a header row names them (e.g. "Class,Stem" or "file,split,label")."""
    labels, problems = {}, []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        return {}, [f"{path.name} could not be read ({e})"]
    cols, first = (0, 1), True
    for n, row in enumerate(rows, 1):
        row = [c.strip() for c in row]
        if not row or all(not c for c in row) or row[0].startswith("#"):
            continue
        if first:
            first = False
            named = label_columns(row)
            if named is not None:
                cols = named
                continue
        si, ci = cols
        if len(row) <= max(si, ci) or not row[si] or not row[ci]:
            problems.append(f"{path.name} line {n}: expected 'stem,class', got {','.join(row)!r}")
            continue
        stem = os.path.splitext(row[si])[0] if row[si].lower().endswith(AUDIO_EXTS + IMAGE_EXTS) else row[si]
        stem = stem.replace("\\", "/")
        if stem in labels and labels[stem] != row[ci]:
            problems.append(f"{path.name} line {n}: {stem!r} is labelled twice ({labels[stem]!r}, {row[ci]!r})")
        labels[stem] = row[ci]
    return labels, problems


def _files_by_kind(root):
    """{stem: [paths]} of the audio and image files and {stem: path} of the captions under
    root, hidden files and folders skipped, in sorted walk order."""
    audio, image, caption = {}, {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            stem, ext = p.relative_to(root).with_suffix("").as_posix(), p.suffix.lower()
            if ext in AUDIO_EXTS:
                audio.setdefault(stem, []).append(p)
            elif ext in IMAGE_EXTS:
                image.setdefault(stem, []).append(p)
            elif ext == CAPTION_EXT:
                caption[stem] = p
    return audio, image, caption


def _prefer_one_file(scan, kind, found):
    """Stems with several files of one kind are noted; the preferred extension comes first."""
    order = AUDIO_EXTS if kind == "audio" else IMAGE_EXTS
    for stem, files in found.items():
        if len(files) > 1:
            scan.ambiguous.append((stem, [f.name for f in files]))
            files.sort(key=lambda f: order.index(f.suffix.lower()))


def _read_caption(scan, stem, path):
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        scan.caption_errors.append((stem, f"{type(e).__name__}: {e}"))
        return None


def _check_labels(scan, labels, paired):
    """Pairs without a label, and labels without a pair."""
    scan.unlabeled = [it.stem for it in scan.items if it.label is None]
    unknown = sorted(s for s in labels if s not in paired)
    if unknown:
        scan.label_problems.append(f"{len(unknown)} stem(s) in {LABELS_FILE} have no pair: "
                                   + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))


def scan_folder(root):
    """Finds the pairs; reads captions and labels (cheap). Decoding is checked elsewhere."""
    root = Path(root)
    if root.is_file():
        raise NotADirectoryError(f"--data {root} is a file; give the folder that holds the x.wav + x.png pairs")
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    audio, image, caption = _files_by_kind(root)
    scan = Scan(root=root)
    _prefer_one_file(scan, "audio", audio)
    _prefer_one_file(scan, "image", image)
    labels = {}
    if (root / LABELS_FILE).is_file():
        scan.labels_file = root / LABELS_FILE
        labels, scan.label_problems = read_labels(scan.labels_file)
    for stem in sorted(set(audio) | set(image)):
        if stem not in image:
            scan.audio_only.append(stem)
        elif stem not in audio:
            scan.image_only.append(stem)
        else:
            text = _read_caption(scan, stem, caption.get(stem))
            scan.items.append(Item(stem, audio[stem][0], image[stem][0], text, labels.get(stem)))
    paired = {it.stem for it in scan.items}
    scan.orphan_captions = sorted(s for s in caption if s not in paired)
    if labels:
        _check_labels(scan, labels, paired)
    return scan


# -- decoding checks ------------------------------------------------------------------

def check_audio(path):
    """None when the file decodes (first second only: cheap), else the reason."""
    from ..audio_decode import decode_audio

    try:
        wave, _sr = decode_audio(path, 0.0, 1.0)
    except Exception as e:  # any decoder failure means "unreadable": report, never crash
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if wave.numel() == 0:
        return "no samples"
    return None


def load_image(path):
    """RGB PIL image, fully decoded (verify() alone misses truncated data)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def check_image(path):
    try:
        im = load_image(path)
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if im.width < 8 or im.height < 8:
        return f"too small ({im.width}x{im.height})"
    return None


@dataclass
class Report:
    scan: Scan
    unreadable: list  # (stem, file name, reason)
    usable: list      # Items that decode

    @property
    def classes(self):
        counts = {}
        for it in self.usable:
            if it.label is not None:
                counts[it.label] = counts.get(it.label, 0) + 1
        return dict(sorted(counts.items()))

    def as_dict(self):
        s = self.scan
        return {
            "folder": str(s.root),
            "pairs": len(s.items),
            "usable_pairs": len(self.usable),
            "with_caption": sum(it.caption is not None for it in self.usable),
            "without_caption": [it.stem for it in self.usable if it.caption is None],
            "missing_image": s.audio_only,
            "missing_audio": s.image_only,
            "unreadable": [{"stem": a, "file": b, "reason": c} for a, b, c in self.unreadable],
            "ambiguous": [{"stem": a, "files": b} for a, b in s.ambiguous],
            "caption_errors": [{"stem": a, "reason": b} for a, b in s.caption_errors],
            "orphan_captions": s.orphan_captions,
            "labels_file": str(s.labels_file) if s.labels_file else None,
            "classes": self.classes,
            "unlabeled": s.unlabeled,
            "single_item_classes": [c for c, n in self.classes.items() if n == 1],
            "label_problems": s.label_problems,
        }

    def text(self):
        d = self.as_dict()

        def some(xs, n=8):
            return ", ".join(map(str, xs[:n])) + (f" ... (+{len(xs) - n})" if len(xs) > n else "")

        lines = [f"folder: {d['folder']}",
                 f"pairs: {d['pairs']} found, {d['usable_pairs']} usable",
                 f"captions: {d['with_caption']} with, {len(d['without_caption'])} without"
                 + (f" ({some(d['without_caption'])})" if d["without_caption"] else "")]
        if d["missing_image"]:
            lines.append(f"missing image: {len(d['missing_image'])} ({some(d['missing_image'])})")
        if d["missing_audio"]:
            lines.append(f"missing audio: {len(d['missing_audio'])} ({some(d['missing_audio'])})")
        if d["unreadable"]:
            lines.append(f"unreadable: {len(d['unreadable'])} (skipped in training)")
            lines += [f"  {u['file']}: {u['reason']}" for u in d["unreadable"][:20]]
        for a in d["ambiguous"]:
            lines.append(f"ambiguous: {a['stem']} has {', '.join(a['files'])}; using {a['files'][0]}")
        for c in d["caption_errors"]:
            lines.append(f"caption unreadable: {c['stem']}: {c['reason']} (treated as no caption)")
        if d["orphan_captions"]:
            lines.append(f"captions without a pair: {some(d['orphan_captions'])}")
        if d["labels_file"]:
            lines.append(f"classes: {len(d['classes'])} "
                         + ("(" + ", ".join(f"{k}: {v}" for k, v in d["classes"].items()) + ")" if d["classes"] else ""))
            if d["unlabeled"]:
                lines.append(f"pairs without a class: {len(d['unlabeled'])} ({some(d['unlabeled'])})")
            if d["single_item_classes"]:
                lines.append(f"classes with one pair (no InfoNCE positive): {some(d['single_item_classes'])}")
        else:
            lines.append(f"classes: none ({LABELS_FILE} not found; stage 1 then trains the caption MSE only)")
        lines += [f"labels: {p}" for p in d["label_problems"]]
        return "\n".join(lines)

    def json(self):
        return json.dumps(self.as_dict(), indent=2)


def check_folder(root, decode=True):
    """Full report: scan plus a decode test of every audio and image file."""
    scan = scan_folder(root)
    unreadable, usable = [], []
    for it in scan.items:
        bad = False
        if decode:
            for path, check in ((it.audio, check_audio), (it.image, check_image)):
                reason = check(path)
                if reason is not None:
                    unreadable.append((it.stem, path.relative_to(scan.root).as_posix(), reason))
                    bad = True
        if not bad:
            usable.append(it)
    return Report(scan, unreadable, usable)

"""File helpers every writer and cache of the pack shares.

Atomic writes: to a temporary name beside the destination, then renamed into
place, so a crash or a kill never leaves half a file under the real name.

Temporary names are ``.<name>.sonic-tmp-<pid>-<random>``: unique per writer, and
the next write of the same destination (or clean_stale_temps on its folder)
removes what a killed writer left. Files get the permissions of the user's umask
(0666 & ~umask), also when the library that wrote them chose 0600 (safetensors does).
"""
import hashlib
import os
import uuid
from pathlib import Path

TMP_TAG = ".sonic-tmp-"


def temp_path(path):
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _writer_alive(pid):
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return False  # no cheap liveness probe: a leftover of another process counts as stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _stale(entry, prefix):
    if not entry.name.startswith(prefix):
        return False
    pid = entry.name[len(prefix):].split(TMP_TAG, 1)[-1].split("-", 1)[0]
    return not (pid.isdigit() and _writer_alive(int(pid)))


def clean_stale_temps(folder, name=None):
    """Removes temporary files of dead writers in ``folder`` (of destination ``name``
    only, when given). Returns the removed paths."""
    folder = Path(folder)
    prefix = f".{name}{TMP_TAG}" if name else "."
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if TMP_TAG in entry.name and _stale(entry, prefix) and entry.is_file():
            try:
                entry.unlink()
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed


def _umask():
    try:
        with open("/proc/self/status") as fh:  # Linux: read without changing it (thread-safe)
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def check_destination(path, overwrite=False, make_parents=False):
    """Raises a one-line error for a destination that cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name (for example {path / 'out.safetensors'})")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if not path.parent.is_dir():
        if not make_parents:
            raise FileNotFoundError(f"the folder {path.parent} does not exist; create it first or fix the path")
        path.parent.mkdir(parents=True, exist_ok=True)


def write_atomic(path, write, overwrite=True, make_parents=True):
    """Calls ``write(tmp_path)``, then renames tmp_path to ``path``. Returns ``path``."""
    path = Path(path)
    check_destination(path, overwrite, make_parents)
    clean_stale_temps(path.parent, path.name)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path, text, overwrite=True, make_parents=True):
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text), overwrite, make_parents)


def file_sha256(path):
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

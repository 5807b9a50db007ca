"""File checks shared by the pack's readers: confinement to allowed folders and
"is this a regular, non-empty file" (one helper for the audio decoder and the
weight loaders).

A ComfyUI server may be shared: a file name that arrives through the API must not
reach files outside ComfyUI's input, output and temp folders (``../``, absolute
paths, or a symlink placed in input/ that points elsewhere), and must not name a
device or a FIFO (``/dev/zero`` never ends; a FIFO blocks the worker).
"""
import os
import stat


class PathRefusedError(ValueError):
    """The name resolves outside the allowed folders, or to something that is not a file."""


def _real(path):
    return os.path.realpath(os.fspath(path))


def is_inside(path, roots):
    """True when ``path`` (after resolving symlinks and ``..``) lies inside one of ``roots``."""
    real = _real(path)
    for root in roots:
        root = _real(root)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def resolve_confined(path, roots):
    """The real path of ``path`` if it lies inside one of ``roots`` (resolved too);
    otherwise PathRefusedError. Does not check that the file exists."""
    path = os.fspath(path)
    if "\x00" in path:
        raise PathRefusedError("the file name contains a NUL character")
    if not is_inside(path, roots):
        raise PathRefusedError(
            "the file lies outside ComfyUI's input, output and temp folders (after resolving '..' and "
            "symlinks), so it is refused; copy the file into the input folder (a symlink to a file elsewhere "
            "is refused too)")
    return _real(path)


def check_regular_file(path, error=ValueError, what="file", missing_fix="check the name",
                       empty_fix="re-create it"):
    """Raises ``error`` unless ``path`` is an existing, non-empty regular file (after
    following symlinks); returns its size in bytes. Devices, FIFOs and sockets are
    refused: reading them may never end."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path!r}; {missing_fix}") from None
    except (OSError, ValueError) as e:
        raise error(f"{what} {path!r} cannot be read ({e}); {missing_fix}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path!r} is a folder, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path!r} is not a regular file (a device, FIFO or socket), so it is refused; "
                    f"give the path of an ordinary {what}")
    if st.st_size == 0:
        raise error(f"{what} {path!r} is empty (0 bytes); {empty_fix}")
    return st.st_size

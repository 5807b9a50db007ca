"""Lets a further test host reuse another venv's torch stack instead of a second install.

Run with the SOURCE venv's python: `share_torch.py <link dir> <target site-packages>`.
It fills <link dir> with symlinks to the installed files of torch, torchvision, torchaudio,
triton and the nvidia-* wheels (about 7 GB on x86_64, the CUDA build) and writes a .pth
file into the target venv that puts <link dir> on its sys.path. pip in the target venv then
sees those distributions as installed (same pinned versions, scripts/constraints.txt) but
outside its environment, so it never removes or rewrites them; everything else the target
host needs it installs itself. CI machines ran out of disk with two full copies.
"""

import importlib.metadata
import os
import shutil
import sys

SHARED_NAMES = ("torch", "torchvision", "torchaudio", "triton")
PTH_NAME = "sonic_shared_torch.pth"


def _is_shared(name):
    name = name.lower().replace("_", "-")
    return name in SHARED_NAMES or name.startswith("nvidia-")


def _top_level_entries(dist):
    """Top-level names a distribution installed into site-packages (skips ../bin files)."""
    names = set()
    for path in dist.files or ():
        first = path.parts[0]
        if first != ".." and not first.endswith(".pth"):
            names.add(first)
    return names


def main(link_dir, target_site):
    site = None
    entries = set()
    for dist in importlib.metadata.distributions():
        if _is_shared(dist.metadata["Name"]):
            entries |= _top_level_entries(dist)
            site = site or str(dist.locate_file(""))
    if site is None or "torch" not in entries:
        sys.exit(f"share_torch: no torch installed in {sys.prefix}")
    if os.path.isdir(link_dir):
        shutil.rmtree(link_dir)
    os.makedirs(link_dir)
    for name in sorted(entries):
        source = os.path.join(site, name)
        if os.path.exists(source):
            os.symlink(source, os.path.join(link_dir, name))
    with open(os.path.join(target_site, PTH_NAME), "w", encoding="ascii") as handle:
        handle.write(os.path.abspath(link_dir) + "\n")
    print(f"share_torch: {len(entries)} entries from {site} linked into {link_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: share_torch.py <link dir> <target site-packages>")
    main(sys.argv[1], sys.argv[2])

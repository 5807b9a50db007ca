"""Converter CLI: official pickles -> safetensors.

    python -m sonic_diffusion.convert adapter --gates landscape.pt --projector audio_projector_landscape.pth \\
        --out landscape.safetensors
    python -m sonic_diffusion.convert clap CLAP_weights_2022.pth --out clap_audio.safetensors [--dtype fp16]

Run it from the pack's folder, or from anywhere with PYTHONPATH=<pack folder>.
The pickles are read weights-only (safe_load) only, after their keys and
shapes were checked from the archive's own header. Outputs are written atomically
(a kill leaves no half file; a rerun removes the leftover temp file), into an
existing folder only, and never over an existing file unless --overwrite is given.
Every refusal is one line on stderr and exit code 2.
"""
import argparse
import json
import sys
from pathlib import Path

from . import host

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class ConvertError(ValueError):
    pass


def _looks_like_clap(header):
    inner = header.get("model", header) if isinstance(header, dict) else None
    return isinstance(inner, dict) and any(str(k).startswith(("audio_encoder.", "caption_encoder.")) for k in inner)


def _read_adapter_part(path, option):
    """A weight file given as --gates/--projector, checked by its keys and shapes;
    a file of another kind (CLAP, a projector given as --gates...) is named."""
    from . import checkpoints
    from .safe_load import load_weights_file

    def check(header):
        if _looks_like_clap(header):
            raise ConvertError(f"{option} {path}: this is MS-CLAP weights (audio_encoder.* keys), not a SonicDiffusion "
                               f"{'adapter' if option == '--gates' else 'projector'}; convert it with "
                               f"`python -m sonic_diffusion.convert clap {path} --out ...`")
        if option == "--gates" and checkpoints.looks_like_projector(header):
            raise ConvertError(f"--gates {path}: this is an audio projector; give it as --projector and the gate "
                               f"file (landscape.pt or greatest_hits.pt) as --gates")
        if option == "--projector":
            checkpoints.projector_state(header, str(path))
        else:
            checkpoints.check_adapter_header(header, str(path))
    return load_weights_file(path, check=check)[0]


def convert_adapter(gates_path, projector_path, out_path, overwrite=False, dtype="fp32"):
    import torch

    from . import checkpoints
    from .files import check_destination, file_sha256

    check_destination(out_path, overwrite)
    gates_sd = _read_adapter_part(gates_path, "--gates")
    if checkpoints.looks_like_bundle(gates_sd):
        projector, gates = checkpoints.split_bundle(gates_sd, str(gates_path))
    else:
        projector, gates = None, checkpoints.gates_state(gates_sd, str(gates_path))
    sources = [{"file": Path(gates_path).name, "sha256": file_sha256(gates_path)}]
    if projector_path is not None:
        projector = checkpoints.projector_state(_read_adapter_part(projector_path, "--projector"), str(projector_path))
        sources.append({"file": Path(projector_path).name, "sha256": file_sha256(projector_path)})
    if projector is None:
        raise checkpoints.AdapterWeightsError("--projector is required: the gate file holds no projector")
    model = checkpoints.build_adapter_model(projector, gates)
    tensors = checkpoints.bundle_tensors(model, getattr(torch, _DTYPES[dtype]))
    meta = checkpoints.bundle_metadata(sources, {"dtype": _DTYPES[dtype]})
    return checkpoints.save_atomic_safetensors(tensors, out_path, meta, overwrite=overwrite, make_parents=False)


def convert_clap(src, out_path, overwrite=False, dtype="fp32"):
    import torch

    from .clap import convert_clap_to_safetensors
    from .files import check_destination

    check_destination(out_path, overwrite)
    return convert_clap_to_safetensors(src, out_path, getattr(torch, _DTYPES[dtype]), overwrite)


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m sonic_diffusion.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("adapter", help="official gate dict + projector -> one .safetensors bundle")
    a.add_argument("--gates", required=True, help="landscape.pt / greatest_hits.pt (or LDM-named equivalent)")
    a.add_argument("--projector", help="audio_projector_*.pth")
    a.add_argument("--out", required=True, help="the .safetensors to write (its folder must exist)")
    a.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32")
    a.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    c = sub.add_parser("clap", help="CLAP_weights_2022.pth -> audio-tower-only .safetensors")
    c.add_argument("src")
    c.add_argument("--out", required=True, help="the .safetensors to write (its folder must exist)")
    c.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    host.bootstrap()
    try:
        if args.what == "adapter":
            out = convert_adapter(args.gates, args.projector, args.out, args.overwrite, args.dtype)
        else:
            out = convert_clap(args.src, args.out, args.overwrite, args.dtype)
    except (ValueError, OSError) as e:
        print(f"convert: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"written": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

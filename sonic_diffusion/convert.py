"""Converter CLI: official pickles -> safetensors.

    python -m sonic_diffusion.convert adapter --gates landscape.pt --projector audio_projector_landscape.pth \
        --out landscape.safetensors
    python -m sonic_diffusion.convert clap CLAP_weights_2022.pth --out clap_audio.safetensors [--dtype fp16]

The pickles are read with torch.load(weights_only=True) only. Outputs are written
atomically and never overwrite an existing file unless --overwrite is given.
"""
import argparse
import json
import sys
from pathlib import Path

from . import host

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def convert_adapter(gates_path, projector_path, out_path, overwrite=False, dtype="fp32"):
    import torch

    from . import checkpoints
    from .safe_load import load_weights_file

    gates_sd, _ = load_weights_file(gates_path)
    if checkpoints.looks_like_bundle(gates_sd):
        projector, gates = checkpoints.split_bundle(gates_sd, str(gates_path))
    else:
        projector, gates = None, checkpoints.gates_state(gates_sd, str(gates_path))
    sources = [{"file": Path(gates_path).name, "sha256": checkpoints.file_sha256(gates_path)}]
    if projector_path is not None:
        proj_sd, _ = load_weights_file(projector_path)
        projector = checkpoints.projector_state(proj_sd, str(projector_path))
        sources.append({"file": Path(projector_path).name, "sha256": checkpoints.file_sha256(projector_path)})
    if projector is None:
        raise checkpoints.AdapterWeightsError("--projector is required: the gate file holds no projector")
    model = checkpoints.build_adapter_model(projector, gates)
    tensors = checkpoints.bundle_tensors(model, getattr(torch, _DTYPES[dtype]))
    meta = checkpoints.bundle_metadata(sources, {"dtype": _DTYPES[dtype]})
    return checkpoints.save_atomic_safetensors(tensors, out_path, meta, overwrite=overwrite)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sonic_diffusion.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("adapter", help="official gate dict + projector -> one .safetensors bundle")
    a.add_argument("--gates", required=True, help="landscape.pt / greatest_hits.pt (or LDM-named equivalent)")
    a.add_argument("--projector", help="audio_projector_*.pth")
    a.add_argument("--out", required=True)
    a.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32")
    a.add_argument("--overwrite", action="store_true")
    c = sub.add_parser("clap", help="CLAP_weights_2022.pth -> audio-tower-only .safetensors")
    c.add_argument("src")
    c.add_argument("--out", required=True)
    c.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32")
    c.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    host.bootstrap(cpu=True)
    import torch

    try:
        if args.what == "adapter":
            out = convert_adapter(args.gates, args.projector, args.out, args.overwrite, args.dtype)
        else:
            from .clap import convert_clap_to_safetensors

            out = convert_clap_to_safetensors(args.src, args.out, getattr(torch, _DTYPES[args.dtype]), args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"convert: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"written": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

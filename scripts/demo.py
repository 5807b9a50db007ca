"""The headless demo: starts the real ComfyUI server on loopback with this pack,
queues the audio-to-image example workflow and saves the images.

By default every model is a generated RANDOM stand-in (no weights can be
downloaded here), so the images are noise-like. Point --models at a ComfyUI
models folder holding the real files (see weights/README.md) to get real images.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host
import workflow_tools
from comfy_server import ComfyServer, ServerError

ROOT = comfy_host.ROOT
WORKFLOW = ROOT / "workflows" / "sonic_audio_to_image.json"


def stand_in_models(base):
    """Generated random weights under the names the workflow uses."""
    sys.path.insert(0, str(ROOT))
    from sonic_diffusion import host

    host.bootstrap(cpu=True)
    from testing.fixtures import FixtureSet

    fs = FixtureSet(comfy_host.FIXTURES)
    files = {
        ("checkpoints", "v1-5-pruned-emaonly-fp16.safetensors"): fs.full_checkpoint(),
        ("audio_encoders", "CLAP_weights_2022.pth"): fs.clap(),
        ("sonic_diffusion", "landscape.pt"): fs.gates(),
        ("sonic_diffusion", "audio_projector_landscape.pth"): fs.projector(),
    }
    for (folder, name), src in files.items():
        dest = base / "models" / folder / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            os.symlink(src, dest)
    return fs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="a ComfyUI models folder with the REAL weights (read only); default: random stand-ins")
    ap.add_argument("--audio", help="an audio file to use (default: the example thunder clip made by "
                                    "python -m sonic_diffusion.examples)")
    ap.add_argument("--out", default=str(ROOT / "demo_output"),
                    help="each run saves into a new folder <out>/<date-time>/ (default: demo_output/)")
    ap.add_argument("--size", type=int, default=128, help="image size (default 128: a CPU is slow)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="sonic-demo-"))
    try:
        run(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the server's folders and log; the images are copied out


def run_folder(out):
    """A new folder under `out` for this run, so earlier images are never overwritten."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        folder = Path(out) / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise SystemExit(f"[demo] cannot make a new run folder in {out}")


def prepare(args, base):
    """The server's base folder: this pack, the models (stand-ins or --models), the inputs.
    Returns the extra server arguments."""
    for sub in ("custom_nodes", "input", "output", "models"):
        (base / sub).mkdir()
    os.symlink(ROOT, base / "custom_nodes" / comfy_host.PACK_DIR_NAME)
    extra = []
    if args.models:
        yaml = base / "extra_model_paths.yaml"
        m = Path(args.models).resolve()
        folders = ["checkpoints", "audio_encoders", "sonic_diffusion", "loras", "controlnet", "vae"]
        yaml.write_text("real_models:\n" + "".join(f"    {f}: {m / f}\n" for f in folders))
        extra = ["--extra-model-paths-config", str(yaml)]
        print(f"[demo] using the real weights in {m}")
    else:
        stand_in_models(base)
    from sonic_diffusion import examples

    examples.write_examples(base / "input")  # every input the workflows use
    if args.audio:
        if not Path(args.audio).is_file():
            sys.exit(f"[demo] --audio {args.audio}: no such file")
        shutil.copy(args.audio, base / "input" / "sonic_example_thunder.wav")
    return extra


def check_registered(object_info):
    missing = [n for n in ("SonicApplyAdapter", "SonicAudioEncode") if n not in object_info]
    if missing:
        sys.exit(f"[demo] the pack's nodes are not registered ({missing})")


def queue_and_wait(server, prompt, args):
    """Queues the prompt and returns its history entry once it has finished."""
    try:
        answer = server.get_json("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    except urllib.error.HTTPError as e:
        sys.exit(f"[demo] the server refused the workflow: {e.read().decode()[:2000]}")
    pid = answer["prompt_id"]
    print(f"[demo] queued {WORKFLOW.name} as {pid}; sampling {args.steps} steps at {args.size}x{args.size} on the CPU")
    while True:
        hist = server.get_json(f"/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            entry = hist[pid]
            if entry["status"].get("status_str") == "error":
                msgs = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                sys.exit(f"[demo] the workflow failed: {msgs[0][1].get('exception_message') if msgs else entry}")
            if entry.get("outputs"):
                return entry
        if not server.alive():
            sys.exit("[demo] the server died")
        time.sleep(1.0)


def save_images(server, entry, out):
    saved = []
    for node_out in entry["outputs"].values():
        for img in node_out.get("images", []):
            q = urllib.parse.urlencode({"filename": img["filename"], "subfolder": img["subfolder"], "type": img["type"]})
            dest = out / img["filename"]
            dest.write_bytes(server.request(f"/view?{q}"))
            saved.append(dest)
    return saved


REAL_WEIGHTS_HINT = (
    "[demo] NOTE: these images come from RANDOM stand-in weights generated here, so they look like noise.\n"
    "[demo] For real images: put v1-5-pruned-emaonly-fp16.safetensors (models/checkpoints), "
    "CLAP_weights_2022.pth (models/audio_encoders),\n"
    "[demo] landscape.pt and audio_projector_landscape.pth (models/sonic_diffusion) in a models folder and run\n"
    "[demo]   bash scripts/demo.sh --models /path/to/ComfyUI/models --audio my_sound.wav --size 512 --steps 30")


def run(args, base):
    server = ComfyServer(base, prepare(args, base))
    print("[demo] starting the ComfyUI server on 127.0.0.1")
    try:
        with server:
            check_registered(server.object_info)
            workflow_tools.use_object_info(server.object_info)
            prompt = workflow_tools.ui_to_api(workflow_tools.load(WORKFLOW))
            for node in prompt.values():
                if node["class_type"] == "EmptyLatentImage":
                    node["inputs"].update(width=args.size, height=args.size)
                if node["class_type"] == "KSampler":
                    node["inputs"].update(steps=args.steps, seed=args.seed)
            t0 = time.time()
            entry = queue_and_wait(server, prompt, args)
            saved = save_images(server, entry, run_folder(args.out))
    except ServerError as e:  # its message ends with the server's log
        sys.exit(f"[demo] {e}")
    except BaseException:  # the temp folder goes away: show the end of the server's log now
        print("[demo] the server's log ends with:\n" + server.log_tail(3000), file=sys.stderr)
        raise
    print(f"[demo] done in {time.time() - t0:.1f} s; images: " + ", ".join(str(p) for p in saved))
    if not args.models:
        print(REAL_WEIGHTS_HINT)


if __name__ == "__main__":
    main()

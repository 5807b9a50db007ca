"""Writes workflows/<name>.png for every workflows/<name>.json: a picture of the graph with
the graph embedded the way ComfyUI's Save Image does it (PNG tEXt chunks "workflow", the
UI-format JSON, and "prompt", the API-format prompt), so dragging the picture onto ComfyUI's
canvas loads the workflow. The picture is the browser test's screenshot of that workflow.

    .build/venv/bin/python scripts/build_workflow_pngs.py [--screenshots DIR]

--screenshots DIR: take the pictures from DIR/<name>.png (scripts/refresh_screenshots.sh
passes the browser test's fresh screenshots); without it the pixels of the existing
workflows/<name>.png are kept and only the chunks are rewritten (after a JSON changed).
Run it after the scripts/build_*workflows.py builders; tests/test_workflow_pngs.py checks
that every PNG holds its JSON.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host

WORKFLOWS = comfy_host.ROOT / "workflows"


def png_with_graph(picture, ui, prompt, dest):
    """Saves `picture` (a PNG path) to `dest` with only the "prompt" and "workflow" chunks, in
    the order and JSON form ComfyUI's Save Image writes them."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", json.dumps(prompt))
    info.add_text("workflow", json.dumps(ui))
    with Image.open(picture) as im:
        im.load()
        rgb = im.convert("RGB")
    tmp = dest.with_suffix(".png.tmp")
    rgb.save(tmp, format="PNG", pnginfo=info, optimize=True)
    tmp.replace(dest)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--screenshots", type=Path, help="folder with <workflow name>.png screenshots")
    args = ap.parse_args(argv)
    comfy_host.boot(Path(tempfile.mkdtemp(prefix="sonic-build-png-")))
    import workflow_tools

    for path in sorted(WORKFLOWS.glob("*.json")):
        ui = workflow_tools.load(path)
        dest = path.with_suffix(".png")
        picture = (args.screenshots / dest.name) if args.screenshots else dest
        if not picture.is_file():
            sys.exit(f"no picture for {path.name}: {picture} is missing (run scripts/refresh_screenshots.sh)")
        png_with_graph(picture, ui, workflow_tools.ui_to_api(ui), dest)
        print("wrote", dest)


if __name__ == "__main__":
    main()

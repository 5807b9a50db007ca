"""Every shipped workflow is also a picture to drag onto ComfyUI's canvas: workflows/<name>.png
holds its workflows/<name>.json the way ComfyUI's Save Image embeds a graph (tEXt chunks
"workflow", the UI JSON, and "prompt", the API prompt). scripts/build_workflow_pngs.py makes
them; tests/test_browser.py drops each on the page and checks the graph it loads."""
import json
import zlib

import pytest
import workflow_tools
from conftest import ROOT

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


def text_chunks(path):
    """{keyword: text} of a PNG's tEXt (and zTXt) chunks, read by hand: what a browser gets."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    out, pos = {}, 8
    while pos < len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + size]
        if kind == b"tEXt":
            key, _, text = body.partition(b"\0")
            out[key.decode("latin-1")] = text.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        pos += 12 + size
    return out


def test_every_workflow_has_a_png_and_no_png_lacks_its_json():
    pngs = sorted((ROOT / "workflows").glob("*.png"))
    assert [p.stem for p in pngs] == [p.stem for p in WORKFLOWS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_png_embeds_the_workflow_and_its_prompt(path):
    ui = workflow_tools.load(path)
    chunks = text_chunks(path.with_suffix(".png"))
    assert json.loads(chunks["workflow"]) == ui, "stale: rerun scripts/build_workflow_pngs.py"
    assert json.loads(chunks["prompt"]) == workflow_tools.ui_to_api(ui), "stale: rerun scripts/build_workflow_pngs.py"

"""Every node of the pack explains itself in the UI: a description, a tooltip on every
input, and a help page web/docs/<NodeID>.md that covers every input.

Read the way the server builds /object_info (INPUT_TYPES(), DESCRIPTION, the display
name mapping), offline. The frontend (1.32.9 and newer) fetches a custom node's help
page from /extensions/<pack folder>/docs/<NodeID>/<locale>.md, then
/extensions/<pack folder>/docs/<NodeID>.md, and the server maps /extensions/<pack folder>
to the pack's WEB_DIRECTORY; tests/test_browser.py fetches them from the real server.
"""
import re
from pathlib import Path

import pytest
from conftest import PACK_MODULE, ROOT

import nodes

DOCS = ROOT / "web" / "docs"
PACK_NODES = sorted(k for k, v in nodes.NODE_CLASS_MAPPINGS.items() if v.__module__.startswith(PACK_MODULE.__name__))


def _inputs(cls):
    """{name: options} of the visible inputs (required and optional; hidden ones have no UI)."""
    spec = cls.INPUT_TYPES()
    out = {}
    for section in ("required", "optional"):
        for name, entry in (spec.get(section) or {}).items():
            out[name] = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    return out


def test_the_pack_has_nodes():
    assert len(PACK_NODES) >= 6, PACK_NODES


@pytest.mark.parametrize("node_id", PACK_NODES)
def test_node_has_a_description(node_id):
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    description = getattr(cls, "DESCRIPTION", "") or ""
    assert len(description.strip()) >= 40, f"{node_id} has no real description: {description!r}"
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id), f"{node_id} has no display name"


@pytest.mark.parametrize("node_id", PACK_NODES)
def test_every_input_has_a_tooltip(node_id):
    missing = [name for name, opts in _inputs(nodes.NODE_CLASS_MAPPINGS[node_id]).items()
               if not str(opts.get("tooltip") or "").strip()]
    assert not missing, f"{node_id}: inputs without a tooltip: {missing}"


@pytest.mark.parametrize("node_id", PACK_NODES)
def test_help_page_exists_and_covers_every_input(node_id):
    page = DOCS / f"{node_id}.md"
    assert page.is_file(), f"no help page {page.relative_to(ROOT)}"
    text = page.read_text(encoding="utf-8")
    title = nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id]
    assert text.startswith(f"# {title}\n"), f"{page.name} should start with the heading '# {title}'"
    # Each input is named as code (`name`), as the UI shows it on the node.
    missing = [name for name in _inputs(nodes.NODE_CLASS_MAPPINGS[node_id]) if f"`{name}`" not in text]
    assert not missing, f"{page.name} does not mention the inputs {missing}"
    # Relative links and images resolve inside web/docs (the frontend rewrites them against it).
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:|#", target):
            assert (DOCS / target).exists(), f"{page.name} links to a missing file {target}"


def test_no_help_page_for_an_unknown_node():
    stray = [p.name for p in DOCS.glob("*.md") if p.stem not in PACK_NODES]
    assert not stray, f"help pages for nodes the pack does not define: {stray}"


def test_help_pages_are_served_from_the_web_directory():
    """The server side of the lookup: ComfyUI registered web/ under the pack's folder
    name, which is what the frontend derives from the nodes' python_module."""
    web = (ROOT / "web").resolve()
    web_dirs = {name: Path(d).resolve() for name, d in nodes.EXTENSION_WEB_DIRS.items()}
    for node_id in PACK_NODES:
        module = nodes.NODE_CLASS_MAPPINGS[node_id].RELATIVE_PYTHON_MODULE
        parts = module.split(".")
        assert parts[0] == "custom_nodes" and len(parts) >= 2, module
        assert web_dirs.get(parts[1].split("@")[0]) == web, (module, web_dirs)

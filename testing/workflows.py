"""UI-format workflows (what users drag into ComfyUI) to API format (what /prompt and
API clients take), as the web UI's "Export (API)" does: every node gets
``_meta.title`` (its title, or its display name), Reroute nodes are followed,
values fed from a Primitive node stay, bypassed nodes pass their input through and
muted ones are left out.

    python -m testing.workflows to-api FILE [-o OUT] [--server URL | --object-info FILE]

The node definitions come from a running ComfyUI (``--server``, default
http://127.0.0.1:8188, its /object_info) or from a saved /object_info answer. No
ComfyUI import here: scripts/workflow_tools.py adapts this to the in-process host.
"""
import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Frontend-only nodes that never reach the backend.
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MUTED, BYPASSED = 2, 4


class WorkflowError(ValueError):
    pass


def specs_from_info(info):
    """[(name, type, options, required)] of one /object_info entry, in definition order."""
    out = []
    for section in ("required", "optional"):
        for name, entry in (info["input"].get(section) or {}).items():
            typ = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            out.append((name, typ, opts, section == "required"))
    return out


# Newer ComfyUI (0.33.0): a combo whose chosen option brings nested inputs, sent in API
# format as "<name>.<nested name>" and stored in widgets_values right after the combo's value.
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"


def is_widget(typ):
    return isinstance(typ, (list, tuple)) or typ in WIDGET_TYPES or typ == DYNAMIC_COMBO


def _dynamic_option_specs(name, opts, chosen):
    """The nested input specs of the chosen option of a dynamic combo, prefixed by its name."""
    for option in opts.get("options") or []:
        if option.get("key") == chosen:
            nested = specs_from_info({"input": option.get("inputs") or {}})
            return [(f"{name}.{n}", t, o, r) for n, t, o, r in nested]
    return []


def has_control_widget(name, typ, opts):
    """Seeds get an extra 'control after generate' value in widgets_values."""
    return bool(opts.get("control_after_generate")) or (typ == "INT" and name in ("seed", "noise_seed"))


def _source(ui_nodes, links, link_id, out_type):
    """(node, slot) feeding `link_id` after following Reroutes and bypassed nodes; None when
    nothing does (a bypassed node without a matching input); "primitive" for a Primitive node."""
    seen = set()
    while link_id is not None and link_id not in seen:
        seen.add(link_id)
        if link_id not in links:
            raise WorkflowError(f"link {link_id} is missing from the workflow's links")
        _, src_id, slot = links[link_id][:3]
        src = ui_nodes.get(src_id)
        if src is None:
            raise WorkflowError(f"link {link_id} comes from missing node {src_id}")
        if src["type"] == "PrimitiveNode":
            return "primitive"
        if src["type"] == "Reroute":
            link_id = (src.get("inputs") or [{}])[0].get("link")
        elif src.get("mode", 0) == BYPASSED:
            match = [i for i in src.get("inputs", []) if i.get("type") == out_type and i.get("link") is not None]
            link_id = match[0]["link"] if match else None
        else:
            return src, slot
    return None


def _widget_values(node):
    values = node.get("widgets_values") or []
    return (None, values) if isinstance(values, dict) else (list(values), None)


def node_to_api(node, specs, ui_nodes, links):
    """The API inputs of one UI node, given its input specs."""
    values, by_name = _widget_values(node)
    node_inputs = {i["name"]: i for i in node.get("inputs", [])}
    api_inputs = {}
    pending = list(specs)
    while pending:
        name, typ, opts, required = pending.pop(0)
        if is_widget(typ):
            if by_name is not None:
                api_inputs[name] = by_name.get(name, opts.get("default"))
            else:
                api_inputs[name] = values.pop(0) if values else opts.get("default")
                if has_control_widget(name, typ, opts) and values:
                    values.pop(0)
            if typ == DYNAMIC_COMBO:
                pending[:0] = _dynamic_option_specs(name, opts, api_inputs[name])
        link_id = node_inputs.get(name, {}).get("link")
        slot_type = node_inputs.get(name, {}).get("type")
        src = _source(ui_nodes, links, link_id, slot_type) if link_id is not None else None
        if src == "primitive":
            continue  # the widget keeps the value the Primitive node set
        if src is not None:
            api_inputs[name] = [str(src[0]["id"]), src[1]]
        elif not is_widget(typ) and required:
            raise WorkflowError(f"node {node['id']} ({node['type']}): required input {name} is not connected")
    return api_inputs


def ui_to_api(ui, specs_of, title_of):
    """API prompt of a UI workflow. `specs_of(type)` gives the input specs, `title_of(type)`
    the display name used as _meta.title for nodes without their own title."""
    ui_nodes = {n["id"]: n for n in ui["nodes"]}
    links = {link[0]: link for link in ui.get("links", [])}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        prompt[str(node["id"])] = {
            "inputs": node_to_api(node, specs_of(node["type"]), ui_nodes, links),
            "class_type": node["type"],
            "_meta": {"title": node.get("title") or title_of(node["type"])},
        }
    return prompt


def object_info_lookups(object_info):
    """(specs_of, title_of) reading a server's /object_info answer."""
    def info(class_type):
        if class_type not in object_info:
            raise WorkflowError(f"unknown node type {class_type!r} (not registered in this ComfyUI)")
        return object_info[class_type]

    return (lambda t: specs_from_info(info(t))), (lambda t: info(t).get("display_name") or t)


def fetch_object_info(server):
    try:
        with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=60) as r:
            return json.loads(r.read())
    except urllib.error.URLError as e:
        raise WorkflowError(f"cannot reach ComfyUI at {server} ({e.reason}): start it, pass --server URL, "
                            "or pass --object-info with a saved /object_info answer") from e


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m testing.workflows",
                                     description="Workflow tools for ComfyUI.")
    sub = parser.add_subparsers(dest="command", required=True)
    to_api = sub.add_parser("to-api", help="UI workflow -> API format with _meta.title, like Export (API)")
    to_api.add_argument("file", type=Path, help="a UI workflow (.json saved or dragged from ComfyUI)")
    to_api.add_argument("-o", "--out", type=Path, help="where to write (default: print)")
    source = to_api.add_mutually_exclusive_group()
    source.add_argument("--server", default="http://127.0.0.1:8188",
                        help="a running ComfyUI whose /object_info defines the nodes (default: %(default)s)")
    source.add_argument("--object-info", type=Path, help="a saved /object_info answer instead of a server")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    try:
        ui = json.loads(args.file.read_text())
        if "nodes" not in ui:
            raise WorkflowError(f"{args.file} is not a UI workflow (no 'nodes'; an API file needs no conversion)")
        info = json.loads(args.object_info.read_text()) if args.object_info else fetch_object_info(args.server)
        prompt = ui_to_api(ui, *object_info_lookups(info))
    except (OSError, ValueError) as e:  # json and WorkflowError are ValueErrors; URLError an OSError
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(prompt, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out} ({len(prompt)} nodes)")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

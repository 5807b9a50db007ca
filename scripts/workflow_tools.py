"""UI-format workflows (what users drag into ComfyUI) against the host's node
definitions: convert to API format (what /prompt takes) and validate offline.

Needs a booted host (comfy_host.boot) for `nodes.NODE_CLASS_MAPPINGS`.
"""
import json
import sys
from pathlib import Path

if "sonic_diffusion" not in sys.modules:  # the tests alias the copy ComfyUI loaded; else the pack's root
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: its nodes/ must not shadow ComfyUI's
from testing import workflows
from testing.workflows import VIRTUAL_NODES, WorkflowError, has_control_widget, is_widget

_OBJECT_INFO = None


def use_object_info(object_info):
    """Reads node definitions from a server's /object_info answer instead of the
    in-process host (the demo talks to a real server)."""
    global _OBJECT_INFO
    _OBJECT_INFO = object_info


def _node_defs(class_type):
    if _OBJECT_INFO is not None:
        info = _OBJECT_INFO.get(class_type)
        if info is None:
            raise WorkflowError(f"unknown node type {class_type!r} (not registered in this ComfyUI)")
        return info
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS.get(class_type)
    if cls is None:
        raise WorkflowError(f"unknown node type {class_type!r} (not registered in this ComfyUI)")
    return cls


def input_specs(class_type):
    """[(name, type, options, required)] in definition order, as the frontend lays widgets."""
    defs = _node_defs(class_type)
    return workflows.specs_from_info(defs if isinstance(defs, dict) else {"input": defs.INPUT_TYPES()})


def display_name(class_type):
    defs = _node_defs(class_type)
    if isinstance(defs, dict):
        return defs.get("display_name") or class_type
    if hasattr(defs, "GET_NODE_INFO_V1"):  # V3 nodes, as server.py's node_info reads them
        return defs.GET_NODE_INFO_V1().get("display_name") or class_type
    import nodes

    return nodes.NODE_DISPLAY_NAME_MAPPINGS.get(class_type) or class_type


def output_types(class_type):
    defs = _node_defs(class_type)
    return list(defs["output"] if isinstance(defs, dict) else defs.RETURN_TYPES)


def ui_to_api(ui):
    """Converts a UI workflow to an API prompt (with _meta.title), like the frontend's
    Export (API); testing/workflows.py holds the conversion."""
    return workflows.ui_to_api(ui, input_specs, display_name)


def _types_compatible(out_type, in_type):
    if "*" in (out_type, in_type):
        return True
    outs = set(str(out_type).split(","))
    ins = set(str(in_type).split(","))
    return bool(outs & ins)


def _widget_problems(node):
    """The problems of one node: unknown type, or widget values its definition cannot take."""
    try:
        specs = input_specs(node["type"])
    except WorkflowError as e:
        return [f"node {node['id']}: {e}"]
    widgets = [(n, t, o, req) for n, t, o, req in specs if is_widget(t)]
    sizes = [1 + has_control_widget(n, t, o) for n, t, o, _ in widgets]
    expected = sum(sizes)
    # A workflow saved on an older host lacks the optional widgets a newer host appended
    # (0.33.0's CreateVideo bit_depth); the frontend fills those with their defaults.
    last_required = max((i for i, w in enumerate(widgets) if w[3]), default=-1)
    minimum = sum(sizes[:last_required + 1])
    values = node.get("widgets_values") or []
    if isinstance(values, dict):
        return []
    # Upload combos may add trailing frontend-only values (preview, upload button).
    extra_ok = sum(1 for _, t, o, _ in widgets if any(k.endswith("_upload") for k in o)) * 2
    if not minimum <= len(values) <= expected + extra_ok:
        return [f"node {node['id']} ({node['type']}): {len(values)} widget values, the definition has {expected}"]
    return []


def _link_problems(link, by_id):
    """The problems of one link: a missing end or slot, or types that do not connect."""
    link_id, src, src_slot, dst, dst_slot, _typ = link[:6]
    if src not in by_id or dst not in by_id:
        return [f"link {link_id}: connects a missing node ({src} -> {dst})"]
    src_node, dst_node = by_id[src], by_id[dst]
    if src_node["type"] in VIRTUAL_NODES or dst_node["type"] in VIRTUAL_NODES:
        return []
    try:
        outs = output_types(src_node["type"])
    except WorkflowError:
        return []  # reported with the node
    if src_slot >= len(outs):
        return [f"link {link_id}: {src_node['type']} has no output slot {src_slot}"]
    dst_inputs = dst_node.get("inputs", [])
    if dst_slot >= len(dst_inputs):
        return [f"link {link_id}: {dst_node['type']} has no input slot {dst_slot}"]
    name = dst_inputs[dst_slot]["name"]
    specs = {n: t for n, t, _, _ in input_specs(dst_node["type"])}
    if name not in specs:
        return [f"link {link_id}: {dst_node['type']} has no input named {name}"]
    problems = []
    in_type = "COMBO" if isinstance(specs[name], (list, tuple)) else specs[name]
    if not _types_compatible(outs[src_slot], in_type):
        problems.append(f"link {link_id}: {src_node['type']} output {outs[src_slot]} cannot feed "
                        f"{dst_node['type']} input {name} ({in_type})")
    if dst_inputs[dst_slot].get("link") != link_id:
        problems.append(f"link {link_id}: {dst_node['type']} input {name} does not point back to it")
    return problems


def validate_ui(ui):
    """Problems of a UI workflow against the host's definitions (empty list = fine):
    unknown node types, links between incompatible types or to missing slots, and
    widget counts that do not match the node definitions."""
    by_id = {n["id"]: n for n in ui["nodes"]}
    problems = [p for node in ui["nodes"] if node["type"] not in VIRTUAL_NODES for p in _widget_problems(node)]
    return problems + [p for link in ui.get("links", []) for p in _link_problems(link, by_id)]


def load(path):
    return json.loads(Path(path).read_text())


def model_files(ui):
    """{folder: [file names]} listed in the nodes' properties.models."""
    out = {}
    for node in ui["nodes"]:
        for m in node.get("properties", {}).get("models", []):
            out.setdefault(m["directory"], []).append(m["name"])
    return out

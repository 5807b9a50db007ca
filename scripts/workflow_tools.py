"""UI-format workflows (what users drag into ComfyUI) against the host's node
definitions: convert to API format (what /prompt takes) and validate offline.

Needs a booted host (comfy_host.boot) for `nodes.NODE_CLASS_MAPPINGS`.
"""
import json
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Frontend-only nodes that never reach the backend.
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


class WorkflowError(ValueError):
    pass


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
    spec = defs["input"] if isinstance(defs, dict) else defs.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, entry in (spec.get(section) or {}).items():
            typ = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            out.append((name, typ, opts, section == "required"))
    return out


def output_types(class_type):
    defs = _node_defs(class_type)
    return list(defs["output"] if isinstance(defs, dict) else defs.RETURN_TYPES)


def is_widget(typ):
    return isinstance(typ, (list, tuple)) or typ in WIDGET_TYPES


def has_control_widget(name, typ, opts):
    """Seeds get an extra 'control after generate' value in widgets_values."""
    return bool(opts.get("control_after_generate")) or (typ == "INT" and name in ("seed", "noise_seed"))


def _links_by_id(ui):
    return {link[0]: link for link in ui.get("links", [])}


def ui_to_api(ui):
    """Converts a UI workflow to an API prompt, like the frontend's graphToPrompt."""
    links = _links_by_id(ui)
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):
            continue
        values = node.get("widgets_values") or []
        by_name = values if isinstance(values, dict) else None
        values = list(values) if by_name is None else []
        node_inputs = {i["name"]: i for i in node.get("inputs", [])}
        api_inputs = {}
        for name, typ, opts, required in input_specs(node["type"]):
            link_id = node_inputs.get(name, {}).get("link")
            if is_widget(typ):
                if by_name is not None:
                    value = by_name.get(name, opts.get("default"))
                else:
                    value = values.pop(0) if values else opts.get("default")
                    if has_control_widget(name, typ, opts) and values:
                        values.pop(0)
                api_inputs[name] = value
            if link_id is not None:
                if link_id not in links:
                    raise WorkflowError(f"node {node['id']} ({node['type']}) input {name} uses missing link {link_id}")
                link = links[link_id]
                api_inputs[name] = [str(link[1]), link[2]]
            elif not is_widget(typ) and required:
                raise WorkflowError(f"node {node['id']} ({node['type']}): required input {name} is not connected")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": api_inputs}
    return prompt


def _types_compatible(out_type, in_type):
    if "*" in (out_type, in_type):
        return True
    outs = set(str(out_type).split(","))
    ins = set(str(in_type).split(","))
    return bool(outs & ins)


def validate_ui(ui):
    """Problems of a UI workflow against the host's definitions (empty list = fine):
    unknown node types, links between incompatible types or to missing slots, and
    widget counts that do not match the node definitions."""
    problems = []
    by_id = {n["id"]: n for n in ui["nodes"]}
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        try:
            specs = input_specs(node["type"])
        except WorkflowError as e:
            problems.append(f"node {node['id']}: {e}")
            continue
        widgets = [(n, t, o) for n, t, o, _ in specs if is_widget(t)]
        expected = len(widgets) + sum(1 for n, t, o in widgets if has_control_widget(n, t, o))
        values = node.get("widgets_values") or []
        if not isinstance(values, dict):
            # Upload combos may add trailing frontend-only values (preview, upload button).
            extra_ok = sum(1 for _, t, o in widgets if any(k.endswith("_upload") for k in o)) * 2
            if not expected <= len(values) <= expected + extra_ok:
                problems.append(f"node {node['id']} ({node['type']}): {len(values)} widget values, "
                                f"the definition has {expected}")
    for link in ui.get("links", []):
        link_id, src, src_slot, dst, dst_slot, typ = link[:6]
        if src not in by_id or dst not in by_id:
            problems.append(f"link {link_id}: connects a missing node ({src} -> {dst})")
            continue
        src_node, dst_node = by_id[src], by_id[dst]
        if src_node["type"] in VIRTUAL_NODES or dst_node["type"] in VIRTUAL_NODES:
            continue
        try:
            outs = output_types(src_node["type"])
        except WorkflowError:
            continue  # already reported
        if src_slot >= len(outs):
            problems.append(f"link {link_id}: {src_node['type']} has no output slot {src_slot}")
            continue
        dst_inputs = dst_node.get("inputs", [])
        if dst_slot >= len(dst_inputs):
            problems.append(f"link {link_id}: {dst_node['type']} has no input slot {dst_slot}")
            continue
        name = dst_inputs[dst_slot]["name"]
        specs = {n: t for n, t, _, _ in input_specs(dst_node["type"])}
        if name not in specs:
            problems.append(f"link {link_id}: {dst_node['type']} has no input named {name}")
            continue
        in_type = "COMBO" if isinstance(specs[name], (list, tuple)) else specs[name]
        if not _types_compatible(outs[src_slot], in_type):
            problems.append(f"link {link_id}: {src_node['type']} output {outs[src_slot]} cannot feed "
                            f"{dst_node['type']} input {name} ({in_type})")
        if dst_inputs[dst_slot].get("link") != link_id:
            problems.append(f"link {link_id}: {dst_node['type']} input {name} does not point back to it")
    return problems


def load(path):
    return json.loads(Path(path).read_text())


def model_files(ui):
    """{folder: [file names]} listed in the nodes' properties.models."""
    out = {}
    for node in ui["nodes"]:
        for m in node.get("properties", {}).get("models", []):
            out.setdefault(m["directory"], []).append(m["name"])
    return out

"""Helpers that drive ComfyUI's web page for tests/test_browser.py (Playwright pages):
dialogs, dropping a workflow file on the canvas, reading and setting widgets, fit view,
and the page's own Export (API)."""
import json

import pytest
import workflow_tools

# What tells a user that a workflow cannot run as loaded: PrimeVue dialogs (the missing-node
# and missing-model dialogs up to 1.4x) and the canvas error overlay that replaced them (1.5x).
ALERTS = '.p-dialog, [data-testid="error-overlay"]'
DIALOGS_JS = f"""() => [...document.querySelectorAll('{ALERTS}')]
    .filter(d => d.offsetParent !== null || d.getClientRects().length)
    .map(d => d.innerText.slice(0, 600))"""
# The error overlay does not close on Escape: its icon-only close button does.
CLOSE_OVERLAYS_JS = """() => { for (const o of document.querySelectorAll('[data-testid="error-overlay"]'))
    for (const b of o.querySelectorAll('button')) if (!b.innerText.trim()) b.click(); }"""


def open_dialogs(pg):
    return pg.evaluate(DIALOGS_JS)


def close_dialogs(pg):
    for _ in range(5):
        if not open_dialogs(pg):
            return
        pg.keyboard.press("Escape")
        pg.evaluate(CLOSE_OVERLAYS_JS)
        pg.wait_for_timeout(200)


# A point of the canvas (client pixels) where no node lies: a file dropped on a node is that
# node's (LoadImage takes a dropped picture as its image), so a workflow is dropped beside them.
FREE_SPOT_JS = """() => { const c = window.app.canvas, r = c.canvas.getBoundingClientRect();
    for (let i = 1; i < 20; i++) for (let j = 1; j < 20; j++) {
      const x = r.left + (i / 20) * r.width, y = r.top + (1 - j / 20) * r.height;
      const [gx, gy] = c.ds.convertOffsetToCanvas([x - r.left, y - r.top]);
      if (document.elementFromPoint(x, y) === c.canvas && !window.app.graph.getNodeOnPos(gx, gy)) return [x, y];
    }
    return null; }"""


def drop_file(pg, path):
    """Drops a file from disk on the canvas as the browser does for a file manager's drag:
    Chromium's own drag-and-drop (DevTools Input.dispatchDragEvent: trusted dragenter, dragover
    and drop events whose DataTransfer holds the real file), so each frontend handles it with
    whatever listeners that version has."""
    if not hasattr(pg, "cdp_session"):
        pg.cdp_session = pg.context.new_cdp_session(pg)
    # An empty canvas first: the wait for the dropped graph cannot be met by the previous one
    # (two workflows may share node ids and types), and no node lies under the drop.
    pg.evaluate("() => { window.app.graph.clear(); window.app.canvas.setDirty(true, true); }")
    spot = pg.evaluate(FREE_SPOT_JS)
    assert spot, "no free spot of the canvas to drop a file on"
    x, y = spot
    data = {"items": [], "files": [str(path)], "dragOperationsMask": 1 | 2 | 16}  # copy, link, move
    for kind in ("dragEnter", "dragOver", "drop"):
        pg.cdp_session.send("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})


def wait_for_graph(pg, ui):
    """Until the page's graph has the workflow's nodes (ids and types: two workflows can
    share node ids, so ids alone may match the previous graph)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    # Ids as strings: newer frontends keep node ids as strings, older ones as numbers.
    want = sorted([str(n["id"]), n["type"]] for n in ui["nodes"])
    try:
        pg.wait_for_function(
            """([want]) => { const got = window.app.graph.nodes.map(n => [String(n.id), n.type]).sort();
                 return JSON.stringify(got) === JSON.stringify(want); }""", arg=[want], timeout=30_000)
    except PlaywrightTimeout:
        got = pg.evaluate("() => window.app.graph.nodes.map(n => [String(n.id), n.type])")
        raise AssertionError(f"the page's graph did not become the workflow's in 30 s: {sorted(got)} "
                             f"instead of {want}; dialogs: {open_dialogs(pg)}") from None
    pg.wait_for_timeout(500)  # the missing-model check awaits the model lists; let any dialog render


def drop_workflow(pg, ui, path):
    """Writes the UI-format workflow to `path` (a .json file), drops it on the canvas and
    waits for its graph."""
    path.write_text(json.dumps(ui))
    drop_file(pg, path)
    wait_for_graph(pg, ui)


GRAPH_STATE_JS = """() => window.app.graph.nodes.map(n => ({
    id: String(n.id), type: n.type, known: n.type in window.LiteGraph.registered_node_types,
    has_def: !!(window.LiteGraph.registered_node_types[n.type] || {}).nodeData,
    has_errors: !!n.has_errors,
    widgets: (n.widgets || []).map(w => ({name: w.name, type: w.type, value: w.value,
        options: (w.options && Array.isArray(w.options.values)) ? w.options.values : null}))
}))"""


# The page's links as [id, from node, from slot, to node, to input's name, type], ids as
# strings. The target by name: a frontend may list a node's widget inputs as sockets of their
# own (1.32.9 gives EmptyLatentImage three), which moves the slot index, not the input.
LINKS_JS = """() => { const g = window.app.graph, links = g.serialize().links || [];
    return links.map(l => Array.isArray(l) ? l : [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type])
      .map(l => { const t = g.getNodeById(l[3]) || g.nodes.find(n => String(n.id) === String(l[3]));
        return [String(l[0]), String(l[1]), l[2], String(l[3]), t && t.inputs[l[4]] ? t.inputs[l[4]].name : null, l[5]]; }); }"""


def file_links(ui):
    """The workflow file's links in LINKS_JS's form."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    return [[str(lk[0]), str(lk[1]), lk[2], str(lk[3]), nodes[lk[3]]["inputs"][lk[4]]["name"], lk[5]]
            for lk in ui["links"]]


def expected_widgets(node):
    """{widget name: value} from a UI node's positional widgets_values, in definition order."""
    from testing import workflows

    values = list(node.get("widgets_values") or [])
    out = {}
    specs = list(workflow_tools.input_specs(node["type"]))
    while specs:
        name, typ, opts, _ = specs.pop(0)
        if not workflow_tools.is_widget(typ) or not values:
            continue
        out[name] = values.pop(0)
        if typ == workflows.DYNAMIC_COMBO:  # 0.33.0: the chosen option's widgets come next
            specs[:0] = workflows._dynamic_option_specs(name, opts, out[name])
        if workflow_tools.has_control_widget(name, typ, opts) and values:
            out["control_after_generate"] = values.pop(0)
    return out


def set_widgets(pg, node_id, values):
    return pg.evaluate(
        """([id, values]) => { const n = window.app.graph.nodes.find(n => String(n.id) === String(id)); const done = {};
             for (const [k, v] of Object.entries(values)) {
               const w = n.widgets.find(w => w.name === k);
               if (!w) continue;
               w.value = v; if (w.callback) w.callback(v, window.app.canvas, n); done[k] = w.value; }
             window.app.graph.setDirtyCanvas(true, true); return done; }""", [node_id, values])


def fit_view(pg):
    """The UI's own "fit view" command (the "." key), so the screenshot shows the whole graph."""
    pg.evaluate("""async () => { window.app.canvas.deselectAll();
        await window.app.extensionManager.command.execute('Comfy.Canvas.FitView');
        window.app.canvas.setDirty(true, true); }""")
    pg.wait_for_timeout(600)


def compare_with_export_api(page, ui, object_info):
    """The page's own Export (API) (app.graphToPrompt) gives what
    `python -m testing.workflows to-api` gives: the same nodes, classes, _meta titles
    and inputs (the page may add values of its frontend-only widgets, e.g. an upload button)."""
    from testing import workflows

    exported = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    ours = workflows.ui_to_api(ui, *workflows.object_info_lookups(object_info))
    assert sorted(exported) == sorted(ours)
    for node_id, node in ours.items():
        got = exported[node_id]
        assert got["class_type"] == node["class_type"] and got["_meta"] == node["_meta"], (got, node)
        for name, value in node["inputs"].items():
            if value is None:  # 0.33.0's SaveVideo: a hidden optional widget the file holds no value for
                continue
            assert got["inputs"].get(name) == value, (node["class_type"], name, got["inputs"].get(name), value)
        extra = set(got["inputs"]) - set(node["inputs"])
        assert extra <= {"upload", "audioUI"}, (node["class_type"], extra)


def check_nodes_and_widgets(page, ui):
    """Every node of the file is on the page, of a registered type, its widgets holding the
    file's values (each offered by its combo)."""
    state = {n["id"]: n for n in page.evaluate(GRAPH_STATE_JS)}
    for node in ui["nodes"]:
        got = state[str(node["id"])]
        assert got["type"] == node["type"]
        assert got["known"] and got["has_def"] and not got["has_errors"], \
            f"node {node['id']} ({node['type']}) is not a known type: {got}"
        if node["type"] in workflow_tools.VIRTUAL_NODES:
            continue
        widgets = {w["name"]: w for w in got["widgets"]}
        for name, value in expected_widgets(node).items():
            assert name in widgets, f"node {node['id']} ({node['type']}) has no widget {name}: {list(widgets)}"
            w = widgets[name]
            if isinstance(value, float) or isinstance(w["value"], float):
                assert w["value"] == pytest.approx(value), (node["type"], name)
            else:
                assert w["value"] == value, (node["type"], name, w["value"], value)
            if w["options"] is not None and name != "control_after_generate":
                assert value in w["options"], f"{node['type']}.{name}: {value!r} is not offered " \
                                              f"({w['options'][:10]})"

"""Helpers that drive ComfyUI's web page for tests/test_browser.py (Playwright pages):
dialogs, dropping a workflow file on the canvas, reading and setting widgets, fit view,
and the page's own Export (API)."""
import json

import workflow_tools

DIALOGS_JS = """() => [...document.querySelectorAll('.p-dialog')]
    .filter(d => d.offsetParent !== null || d.getClientRects().length)
    .map(d => d.innerText.slice(0, 600))"""


def open_dialogs(pg):
    return pg.evaluate(DIALOGS_JS)


def close_dialogs(pg):
    for _ in range(5):
        if not open_dialogs(pg):
            return
        pg.keyboard.press("Escape")
        pg.wait_for_timeout(200)


def drop_workflow(pg, ui, filename):
    """Drops the workflow file on the canvas, as a user dragging it from a file manager."""
    dt = pg.evaluate_handle(
        """([text, name]) => { const dt = new DataTransfer();
             dt.items.add(new File([text], name, {type: 'application/json'})); return dt; }""",
        [json.dumps(ui), filename])
    target = pg.locator("#graph-canvas")
    target.dispatch_event("dragenter", {"dataTransfer": dt})
    target.dispatch_event("dragover", {"dataTransfer": dt})
    target.dispatch_event("drop", {"dataTransfer": dt})
    # Ids and types: two workflows can share node ids, so ids alone may match the previous graph.
    want = sorted([n["id"], n["type"]] for n in ui["nodes"])
    pg.wait_for_function(
        """([want]) => { const got = window.app.graph.nodes.map(n => [n.id, n.type]).sort((a, b) => a[0] - b[0]);
             return JSON.stringify(got) === JSON.stringify(want); }""", arg=[want], timeout=30_000)
    pg.wait_for_timeout(500)  # the missing-model check awaits the model lists; let any dialog render


GRAPH_STATE_JS = """() => window.app.graph.nodes.map(n => ({
    id: n.id, type: n.type, known: n.type in window.LiteGraph.registered_node_types,
    has_def: !!(window.LiteGraph.registered_node_types[n.type] || {}).nodeData,
    has_errors: !!n.has_errors,
    widgets: (n.widgets || []).map(w => ({name: w.name, type: w.type, value: w.value,
        options: (w.options && Array.isArray(w.options.values)) ? w.options.values : null}))
}))"""


def expected_widgets(node):
    """{widget name: value} from a UI node's positional widgets_values, in definition order."""
    values = list(node.get("widgets_values") or [])
    out = {}
    for name, typ, opts, _ in workflow_tools.input_specs(node["type"]):
        if not workflow_tools.is_widget(typ) or not values:
            continue
        out[name] = values.pop(0)
        if workflow_tools.has_control_widget(name, typ, opts) and values:
            out["control_after_generate"] = values.pop(0)
    return out


def set_widgets(pg, node_id, values):
    return pg.evaluate(
        """([id, values]) => { const n = window.app.graph.getNodeById(id); const done = {};
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
    `python -m sonic_diffusion.workflows to-api` gives: the same nodes, classes, _meta titles
    and inputs (the page may add values of its frontend-only widgets, e.g. an upload button)."""
    from sonic_diffusion import workflows

    exported = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    ours = workflows.ui_to_api(ui, *workflows.object_info_lookups(object_info))
    assert sorted(exported) == sorted(ours)
    for node_id, node in ours.items():
        got = exported[node_id]
        assert got["class_type"] == node["class_type"] and got["_meta"] == node["_meta"], (got, node)
        for name, value in node["inputs"].items():
            assert got["inputs"].get(name) == value, (node["class_type"], name, got["inputs"].get(name), value)
        extra = set(got["inputs"]) - set(node["inputs"])
        assert extra <= {"upload", "audioUI"}, (node["class_type"], extra)

"""Every shipped UI workflow validates offline, converts to API format through the
host's node definitions, and executes (at a tiny size) on generated weights with the
example inputs `python -m sonic_diffusion.examples` writes. The to-api command writes
_meta.title for every node, which API clients (comfy-api-simplified) address nodes by."""
import copy
import json
import subprocess
import sys
import warnings
from collections import Counter

import pytest
import workflow_tools
from conftest import ROOT

import nodes
from sonic_diffusion import examples

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
# Which generated stand-in plays each model file the workflows name.
STAND_INS = {
    "v1-5-pruned-emaonly-fp16.safetensors": lambda fs: fs.full_checkpoint(),
    "CLAP_weights_2022.pth": lambda fs: fs.clap(),
    "landscape.pt": lambda fs: fs.gates(),
    "audio_projector_landscape.pth": lambda fs: fs.projector(),
    "lcm-lora-sdv1-5.safetensors": lambda fs: fs.lora(),
    "control_v11p_sd15_canny_fp16.safetensors": lambda fs: fs.controlnet(),
    "mm_sd_v15_v2.ckpt": lambda fs: fs.motion_module(),
}


@pytest.fixture(scope="module")
def inputs(host, tmp_path_factory):
    """The example inputs, made by the command the README gives, in ComfyUI's input folder."""
    made = tmp_path_factory.mktemp("example-inputs")
    subprocess.run([sys.executable, "-m", "sonic_diffusion.examples", "--input-dir", str(made)],
                   cwd=ROOT, check=True, capture_output=True)
    for name in examples.FILES:
        host.put_input(made / name)


def _input_files(ui):
    """Files a workflow loads from ComfyUI's input folder (Load Image, the audio loaders)."""
    out = []
    for node in ui["nodes"]:
        values = node.get("widgets_values") or []
        specs = [s for s in workflow_tools.input_specs(node["type"]) if workflow_tools.is_widget(s[1])] \
            if node["type"] not in workflow_tools.VIRTUAL_NODES else []
        for (name, _typ, opts, _), value in zip(specs, values):
            if any(k in opts for k in ("image_upload", "audio_upload")) or (node["type"] == "LoadImage" and name == "image"):
                out.append(value)
    return out


def _object_info(ui):
    """The /object_info entries of a workflow's node types, from the in-process host."""
    info = {}
    for node in ui["nodes"]:
        cls = nodes.NODE_CLASS_MAPPINGS.get(node["type"])
        if cls is not None:
            info[node["type"]] = {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES),
                                  "display_name": workflow_tools.display_name(node["type"])}
    return json.loads(json.dumps(info, default=str))


def test_there_are_workflows():
    assert len(WORKFLOWS) >= 4


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_validates_and_lists_its_models(path):
    ui = json.loads(path.read_text())
    assert workflow_tools.validate_ui(ui) == []
    models = workflow_tools.model_files(ui)
    for folder, names in models.items():
        for name in names:
            assert name in STAND_INS, f"{path.name} names {folder}/{name}, which has no stand-in"
    for node in ui["nodes"]:
        for m in node.get("properties", {}).get("models", []):
            assert m["url"].startswith("https://")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_executes(path, host, fixture_dir, inputs):
    """Queued as shipped (only made tiny) with the example inputs: no other file is needed."""
    ui = json.loads(path.read_text())
    for folder, names in workflow_tools.model_files(ui).items():
        for name in names:
            host.link_model(folder, STAND_INS[name](fixture_dir), name)
    prompt = workflow_tools.ui_to_api(ui)
    for node in prompt.values():  # the CPU is slow: tiny images, few steps
        i = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "ImageScale", "SonicLatentFrames"):
            i.update(width=64, height=64)
        if node["class_type"] in ("KSampler", "SonicAudioEdit", "BasicScheduler"):
            i["steps"] = 3
        if node["class_type"] == "SonicAudioEncodeFrames":  # 2 s of audio at 1 fps: 2 frames
            i["fps"] = 1.0
            prompt[i["audio"][0]]["inputs"]["duration"] = 2.0
    run = host.run(prompt)
    saved = [k for k, v in prompt.items() if v["class_type"] in ("SaveImage", "SaveVideo")]
    assert saved, "a workflow should end in SaveImage or SaveVideo"
    images = run.ui(saved[0])["images"]
    assert len(images) >= 1


def test_validator_catches_broken_links_and_unknown_nodes():
    ui = json.loads((ROOT / "workflows" / "sonic_audio_to_image.json").read_text())
    assert workflow_tools.validate_ui(ui) == []
    unknown = copy.deepcopy(ui)
    unknown["nodes"][0]["type"] = "SonicNoSuchNode"
    assert any("unknown node type" in p for p in workflow_tools.validate_ui(unknown))
    broken = copy.deepcopy(ui)
    # Feed the CLIP output where the sampler expects a MODEL.
    ks = next(n for n in broken["nodes"] if n["type"] == "KSampler")
    model_link = next(i["link"] for i in ks["inputs"] if i["name"] == "model")
    link = next(lk for lk in broken["links"] if lk[0] == model_link)
    ckpt = next(n for n in broken["nodes"] if n["type"] == "CheckpointLoaderSimple")
    link[1], link[2] = ckpt["id"], 1
    assert any("cannot feed" in p for p in workflow_tools.validate_ui(broken))
    widgets = copy.deepcopy(ui)
    next(n for n in widgets["nodes"] if n["type"] == "SonicApplyAdapter")["widgets_values"].append(3.0)
    assert any("widget values" in p for p in workflow_tools.validate_ui(widgets))
    # Saved before a host appended an optional widget: accepted (the frontend fills the
    # default). One required value short: reported.
    older = copy.deepcopy(ui)
    apply = next(n for n in older["nodes"] if n["type"] == "SonicApplyAdapter")
    optional = [n for n, t, o, req in workflow_tools.input_specs("SonicApplyAdapter")
                if workflow_tools.is_widget(t) and not req]
    assert optional, "Apply Sonic Adapter's appended widgets are optional"
    del apply["widgets_values"][-len(optional):]
    assert workflow_tools.validate_ui(older) == []
    short = copy.deepcopy(ui)
    del next(n for n in short["nodes"] if n["type"] == "KSampler")["widgets_values"][-1]
    assert any("KSampler): 6 widget values" in p for p in workflow_tools.validate_ui(short))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_inputs_are_made_by_the_examples_command(path):
    names = _input_files(workflow_tools.load(path))
    assert names and set(names) <= set(examples.FILES), names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_nodes_sharing_a_type_have_distinct_titles(path):
    """API clients set inputs by title: two nodes of one type must not share theirs."""
    ui = workflow_tools.load(path)
    titles = Counter((n["type"], n.get("title") or workflow_tools.display_name(n["type"])) for n in ui["nodes"])
    assert [t for t, count in titles.items() if count > 1] == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_to_api_command_writes_meta_titles(path, tmp_path):
    """`python -m testing.workflows to-api FILE --object-info INFO` gives the in-process
    conversion, with _meta.title (the node's title, else its display name) on every node, and
    comfy-api-simplified addresses each node by that title alone."""
    from comfy_api_simplified import ComfyWorkflowWrapper

    ui = workflow_tools.load(path)
    info = tmp_path / "object_info.json"
    info.write_text(json.dumps(_object_info(ui)))
    out = tmp_path / "api.json"
    done = subprocess.run([sys.executable, "-m", "testing.workflows", "to-api", str(path),
                           "--object-info", str(info), "-o", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.returncode == 0, done.stderr
    api = json.loads(out.read_text())
    assert api == workflow_tools.ui_to_api(ui)
    by_id = {str(n["id"]): n for n in ui["nodes"]}
    for node_id, node in api.items():
        assert node["_meta"]["title"] == (by_id[node_id].get("title") or workflow_tools.display_name(node["class_type"]))
    wrapper = ComfyWorkflowWrapper(str(out))
    for node_id, node in api.items():
        title = node["_meta"]["title"]
        assert wrapper.get_node_id(title) == node_id
        widget = next((k for k, v in node["inputs"].items() if not isinstance(v, list)), None)
        if widget is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # it warns when a title is shared
                wrapper.set_node_param(title, widget, f"changed-{node_id}")
            assert [k for k, n in wrapper.items() if n["inputs"].get(widget) == f"changed-{node_id}"] == [node_id]


def test_to_api_follows_reroutes_bypass_and_primitives():
    ui = workflow_tools.load(ROOT / "workflows" / "sonic_audio_to_image.json")
    plain = workflow_tools.ui_to_api(ui)
    ks = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    apply = next(n for n in ui["nodes"] if n["type"] == "SonicApplyAdapter")
    ckpt = next(n for n in ui["nodes"] if n["type"] == "CheckpointLoaderSimple")
    # A Reroute between Apply Sonic Adapter and the KSampler changes nothing.
    rerouted = copy.deepcopy(ui)
    rks = next(n for n in rerouted["nodes"] if n["id"] == ks["id"])
    model_in = next(i for i in rks["inputs"] if i["name"] == "model")
    link = next(lk for lk in rerouted["links"] if lk[0] == model_in["link"])
    reroute_id, new_link = 1000, 1000
    rerouted["nodes"].append({"id": reroute_id, "type": "Reroute", "mode": 0,
                              "inputs": [{"name": "", "type": "*", "link": link[0]}],
                              "outputs": [{"name": "", "type": "MODEL", "links": [new_link]}]})
    rerouted["links"].append([new_link, reroute_id, 0, ks["id"], link[4], "MODEL"])
    link[3], link[4] = reroute_id, 0
    model_in["link"] = new_link
    assert workflow_tools.ui_to_api(rerouted) == plain
    # Bypassing Apply Sonic Adapter feeds the checkpoint's MODEL through; muting drops a node.
    bypassed = copy.deepcopy(ui)
    next(n for n in bypassed["nodes"] if n["id"] == apply["id"])["mode"] = 4
    api = workflow_tools.ui_to_api(bypassed)
    assert str(apply["id"]) not in api and api[str(ks["id"])]["inputs"]["model"] == [str(ckpt["id"]), 0]
    # A value fed by a Primitive node stays the widget's value.
    primed = copy.deepcopy(ui)
    pks = next(n for n in primed["nodes"] if n["id"] == ks["id"])
    pks["inputs"].append({"name": "seed", "type": "INT", "link": 2000, "widget": {"name": "seed"}})
    primed["nodes"].append({"id": 2000, "type": "PrimitiveNode", "mode": 0, "inputs": [],
                            "outputs": [{"name": "INT", "type": "INT", "links": [2000]}], "widgets_values": [42]})
    primed["links"].append([2000, 2000, 0, ks["id"], len(pks["inputs"]) - 1, "INT"])
    assert workflow_tools.ui_to_api(primed) == plain


def test_to_api_command_errors_are_one_line(tmp_path):
    api_file = tmp_path / "api.json"
    api_file.write_text(json.dumps({"1": {"class_type": "KSampler", "inputs": {}}}))
    done = subprocess.run([sys.executable, "-m", "testing.workflows", "to-api", str(api_file),
                           "--server", "http://127.0.0.1:9"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "not a UI workflow" in done.stderr, done.stderr
    ui_file = ROOT / "workflows" / "sonic_audio_to_image.json"
    done = subprocess.run([sys.executable, "-m", "testing.workflows", "to-api", str(ui_file),
                           "--server", "http://127.0.0.1:9"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "cannot reach ComfyUI at http://127.0.0.1:9" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr

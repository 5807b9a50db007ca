"""Every shipped UI workflow validates offline, converts to API format through the
host's node definitions, and executes (at a tiny size) on generated weights."""
import copy
import json

import numpy as np
import pytest
from PIL import Image

import workflow_tools
from conftest import ROOT

WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
# Which generated stand-in plays each model file the workflows name.
STAND_INS = {
    "v1-5-pruned-emaonly-fp16.safetensors": lambda fs: fs.full_checkpoint(clip=True, vae=True),
    "CLAP_weights_2022.pth": lambda fs: fs.clap(),
    "landscape.pt": lambda fs: fs.gates(),
    "audio_projector_landscape.pth": lambda fs: fs.projector(),
    "lcm-lora-sdv1-5.safetensors": lambda fs: fs.lora(),
    "control_v11p_sd15_canny_fp16.safetensors": lambda fs: fs.controlnet(),
}


@pytest.fixture(scope="module")
def inputs(host, fixture_dir, tmp_path_factory):
    host.put_input(fixture_dir.audio("noise_stereo_48k_10s_f32.wav"), "sonic_example_thunder.wav")
    host.put_input(fixture_dir.audio("tone440_mono_44k_3s.wav"), "sonic_example_birds.wav")
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("sonic_example_control.png", "sonic_example_source.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / name)
        host.put_input(d / name)


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
    ui = json.loads(path.read_text())
    for folder, names in workflow_tools.model_files(ui).items():
        for name in names:
            host.link_model(folder, STAND_INS[name](fixture_dir), name)
    prompt = workflow_tools.ui_to_api(ui)
    for node in prompt.values():  # the CPU is slow: tiny images, few steps
        i = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "ImageScale"):
            i.update(width=64, height=64)
        if node["class_type"] in ("KSampler", "SonicAudioEdit", "BasicScheduler"):
            i["steps"] = 3
        if node["class_type"] == "SonicAudioEncodeFrames":  # 2 s of audio at 1 fps: 2 frames
            i["fps"] = 1.0
            prompt[i["audio"][0]]["inputs"]["duration"] = 2.0
    run = host.run(prompt)
    saved = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
    assert saved, "a workflow should end in SaveImage"
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

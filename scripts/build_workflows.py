"""Writes the example workflows in workflows/ (UI format) from short graph specs,
taking every slot type from the host's own node definitions.

    .build/venv/bin/python scripts/build_workflows.py
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_host

OUT = comfy_host.ROOT / "workflows"

SD15 = {"name": "v1-5-pruned-emaonly-fp16.safetensors", "directory": "checkpoints",
        "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors"}
CLAP = {"name": "CLAP_weights_2022.pth", "directory": "audio_encoders",
        "url": "https://huggingface.co/microsoft/msclap/resolve/main/CLAP_weights_2022.pth"}
# The authors link their weights from the repository's README; the anchors keep the two
# URLs distinct (the frontend checks models by URL).
ADAPTER = {"name": "landscape.pt", "directory": "sonic_diffusion",
           "url": "https://github.com/BurakCanBiner/SonicDiffusion#landscape.pt"}
PROJECTOR = {"name": "audio_projector_landscape.pth", "directory": "sonic_diffusion",
             "url": "https://github.com/BurakCanBiner/SonicDiffusion#audio_projector_landscape.pth"}
LORA = {"name": "lcm-lora-sdv1-5.safetensors", "directory": "loras",
        "url": "https://huggingface.co/latent-consistency/lcm-lora-sdv1-5/resolve/main/pytorch_lora_weights.safetensors"}
CONTROLNET = {"name": "control_v11p_sd15_canny_fp16.safetensors", "directory": "controlnet",
              "url": "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/control_v11p_sd15_canny_fp16.safetensors"}

AUDIO_A = "sonic_example_thunder.wav"
AUDIO_B = "sonic_example_birds.wav"
CONTROL_IMAGE = "sonic_example_control.png"
SOURCE_IMAGE = "sonic_example_source.png"


class Graph:
    """A UI-format workflow under construction."""

    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, class_type, widgets=None, pos=(0, 0), title=None, models=()):
        from workflow_tools import has_control_widget, input_specs, is_widget, output_types

        specs = input_specs(class_type)
        widgets = dict(widgets or {})
        values = []
        for name, typ, opts, _ in specs:
            if is_widget(typ):
                default = opts.get("default")
                if default is None and isinstance(typ, (list, tuple)) and typ:
                    default = typ[0]
                values.append(widgets.pop(name, default))
                if has_control_widget(name, typ, opts):
                    values.append("fixed")
        if widgets:
            raise KeyError(f"{class_type} has no widgets {sorted(widgets)}")
        node = {
            "id": len(self.nodes) + 1, "type": class_type, "pos": list(pos), "size": [320, 140],
            "flags": {}, "order": len(self.nodes), "mode": 0,
            "inputs": [{"name": n, "type": "COMBO" if isinstance(t, (list, tuple)) else t, "link": None}
                       for n, t, _, _ in specs if not is_widget(t)],
            "outputs": [{"name": t, "type": t, "links": [], "slot_index": i}
                        for i, t in enumerate(output_types(class_type))],
            "properties": {"Node name for S&R": class_type},
            "widgets_values": values,
        }
        if title:
            node["title"] = title
        if models:
            node["properties"]["models"] = [dict(m) for m in models]
        self.nodes.append(node)
        return node

    def link(self, src, slot, dst, input_name):
        link_id = len(self.links) + 1
        target = next(i for i, inp in enumerate(dst["inputs"]) if inp["name"] == input_name)
        typ = src["outputs"][slot]["type"]
        dst["inputs"][target]["link"] = link_id
        src["outputs"][slot]["links"].append(link_id)
        self.links.append([link_id, src["id"], slot, dst["id"], target, typ])

    def to_json(self):
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(self.links),
            "nodes": self.nodes, "links": self.links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
        }


def audio_to_image(g, prompt="", ratios=None, lora=False, controlnet=False, batch=1):
    ckpt = g.add("CheckpointLoaderSimple", {"ckpt_name": SD15["name"]}, (0, 0), models=[SD15])
    model_out, clip_out = (ckpt, 0), (ckpt, 1)
    if lora:
        lo = g.add("LoraLoader", {"lora_name": LORA["name"], "strength_model": 1.0, "strength_clip": 1.0},
                   (0, 300), models=[LORA])
        g.link(ckpt, 0, lo, "model")
        g.link(ckpt, 1, lo, "clip")
        model_out, clip_out = (lo, 0), (lo, 1)
    pos = g.add("CLIPTextEncode", {"text": prompt}, (420, 0), title="Prompt (empty = audio only)")
    neg = g.add("CLIPTextEncode", {"text": ""}, (420, 260), title="Negative prompt")
    g.link(*clip_out, pos, "clip")
    g.link(*clip_out, neg, "clip")
    enc_loader = g.add("SonicAudioEncoderLoader", {"clap_name": CLAP["name"]}, (0, 560), models=[CLAP])
    # Nodes sharing a type get distinct titles: API clients set inputs by title.
    audio_a = g.add("SonicLoadAudio", {"audio": AUDIO_A}, (0, 720), title="Load Audio A (ratio 0)" if ratios else None)
    encode_a = g.add("SonicAudioEncode", {}, (420, 560), title="Audio Encode A" if ratios else None)
    g.link(enc_loader, 0, encode_a, "audio_encoder")
    g.link(audio_a, 0, encode_a, "audio")
    embeds = (encode_a, 0)
    if ratios:
        audio_b = g.add("SonicLoadAudio", {"audio": AUDIO_B}, (0, 1040), title="Load Audio B (ratio 1)")
        encode_b = g.add("SonicAudioEncode", {}, (420, 800), title="Audio Encode B")
        g.link(enc_loader, 0, encode_b, "audio_encoder")
        g.link(audio_b, 0, encode_b, "audio")
        mix = g.add("SonicAudioEmbedsMix", {"mode": "slerp", "ratios": ratios}, (840, 800))
        g.link(encode_a, 0, mix, "embeds_a")
        g.link(encode_b, 0, mix, "embeds_b")
        embeds = (mix, 0)
    adapter = g.add("SonicAdapterLoader", {"adapter_name": ADAPTER["name"], "projector_name": PROJECTOR["name"]},
                    (420, 1040), models=[ADAPTER, PROJECTOR])
    apply = g.add("SonicApplyAdapter", {}, (1260, 560))
    g.link(*model_out, apply, "model")
    g.link(adapter, 0, apply, "sonic_adapter")
    g.link(*embeds, apply, "audio_embeds")
    positive, negative = (pos, 0), (neg, 0)
    if controlnet:
        cn = g.add("ControlNetLoader", {"control_net_name": CONTROLNET["name"]}, (840, 1100), models=[CONTROLNET])
        image = g.add("LoadImage", {"image": CONTROL_IMAGE}, (840, 1280))
        canny = g.add("Canny", {}, (1260, 1280))
        g.link(image, 0, canny, "image")
        cna = g.add("ControlNetApplyAdvanced", {"strength": 0.8}, (1260, 260))
        g.link(pos, 0, cna, "positive")
        g.link(neg, 0, cna, "negative")
        g.link(cn, 0, cna, "control_net")
        g.link(canny, 0, cna, "image")
        positive, negative = (cna, 0), (cna, 1)
    latent = g.add("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": batch}, (840, 560))
    sampler_widgets = {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "dpmpp_2m", "scheduler": "karras"}
    if lora:
        sampler_widgets.update({"steps": 8, "cfg": 1.5, "sampler_name": "lcm", "scheduler": "sgm_uniform"})
    return ksampler_to_image(g, apply, positive, negative, latent, ckpt, sampler_widgets, "sonic", (2100, 200))


def ksampler_to_image(g, model, positive, negative, latent, ckpt, widgets, prefix, save_at):
    """KSampler -> VAEDecode (the checkpoint's VAE) -> SaveImage; positive and negative are
    (node, output slot)."""
    ks = g.add("KSampler", widgets, (1680, 0))
    g.link(model, 0, ks, "model")
    g.link(*positive, ks, "positive")
    g.link(*negative, ks, "negative")
    g.link(latent, 0, ks, "latent_image")
    dec = g.add("VAEDecode", {}, (2100, 0))
    g.link(ks, 0, dec, "samples")
    g.link(ckpt, 2, dec, "vae")
    save = g.add("SaveImage", {"filename_prefix": prefix}, save_at)
    g.link(dec, 0, save, "images")
    return g


WORKFLOWS = {
    "sonic_audio_to_image.json": lambda: audio_to_image(Graph()),
    "sonic_audio_and_text_to_image.json": lambda: audio_to_image(Graph(), prompt="a landscape photograph, highly detailed"),
    "sonic_audio_interpolation.json": lambda: audio_to_image(Graph(), ratios="0, 0.25, 0.5, 0.75, 1", batch=5),
    "sonic_audio_lora_controlnet.json": lambda: audio_to_image(Graph(), prompt="a landscape", lora=True, controlnet=True),
}


def extra_workflows():
    """Workflows of later features register here (editing adds its graphs)."""
    try:
        import build_edit_workflows
    except ImportError:
        return {}
    return build_edit_workflows.workflows(Graph, globals())


def main():
    comfy_host.boot(Path(tempfile.mkdtemp(prefix="sonic-build-wf-")))
    OUT.mkdir(exist_ok=True)
    for name, build in {**WORKFLOWS, **extra_workflows()}.items():
        (OUT / name).write_text(json.dumps(build().to_json(), indent=1) + "\n")
        print("wrote", OUT / name)


if __name__ == "__main__":
    main()

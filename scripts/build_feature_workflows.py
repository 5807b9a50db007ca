"""Writes the example workflows of the guidance and animation features (UI format):

- sonic_dual_guidance.json: Sonic Dual Guider -> SamplerCustomAdvanced (text and audio
  guidance scales apart)
- sonic_audio_guidance_ksampler.json: Sonic Audio Guidance (KSampler) -> KSampler (the
  same guidance as a model option)
- sonic_audio_animation.json: Audio Encode Frames (Sonic) -> one latent per frame with
  Shared Noise (Sonic) and a Loudness Strength Curve (Sonic) -> frames (SaveImage), an
  animated WEBP and a video with the original audio track (CreateVideo -> SaveVideo)
- sonic_audio_reactive_animatediff.json: AnimateDiff-Evolved (Gen2 motion module, Standard
  Static context options) with Audio Encode Frames (Sonic) and a Loudness Strength Curve (Sonic);
  one timing output sets the latent batch (Empty Latent Frames (Sonic)) and the video's fps
  (Create Video (Sonic), the audio muxed in) -> SaveVideo. Needs AnimateDiff-Evolved in the host
  (scripts/comfy_host.py links ../shared/packs/ComfyUI-AnimateDiff-Evolved).
- sonic_regional_audio.json: two sounds in two halves of one image: Conditioning (Set Area with
  Percentage) -> Audio Conditioning (Sonic) per half -> Conditioning (Combine) -> KSampler

    .build/venv/bin/python scripts/build_feature_workflows.py
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_workflows as bw
import comfy_host

PROMPT = "a landscape photograph, highly detailed"
# The published AnimateDiff v2 motion module (AnimateDiff-Evolved's README links this repository).
MOTION_MODULE = {"name": "mm_sd_v15_v2.ckpt", "directory": "animatediff_models",
                 "url": "https://huggingface.co/guoyww/animatediff/resolve/main/mm_sd_v15_v2.ckpt"}


class Graph(bw.Graph):
    def link_widget(self, src, slot, dst, widget_name):
        """Feeds an output into a widget (as the frontend does when a link is dropped on it)."""
        typ = src["outputs"][slot]["type"]
        dst["inputs"].append({"name": widget_name, "type": typ, "widget": {"name": widget_name}, "link": None})
        self.link(src, slot, dst, widget_name)


def _checkpoint_and_prompts(g):
    """Checkpoint, prompt and empty negative prompt."""
    ckpt = g.add("CheckpointLoaderSimple", {"ckpt_name": bw.SD15["name"]}, (0, 0), models=[bw.SD15])
    pos = g.add("CLIPTextEncode", {"text": PROMPT}, (420, 0), title="Prompt")
    neg = g.add("CLIPTextEncode", {"text": ""}, (420, 260), title="Negative prompt")
    g.link(ckpt, 1, pos, "clip")
    g.link(ckpt, 1, neg, "clip")
    return ckpt, pos, neg


def _common(g, audio_widgets=None):
    """Checkpoint, prompts, audio encoder, audio and adapter: the nodes every graph shares."""
    ckpt, pos, neg = _checkpoint_and_prompts(g)
    enc_loader = g.add("SonicAudioEncoderLoader", {"clap_name": bw.CLAP["name"]}, (0, 560), models=[bw.CLAP])
    audio = g.add("SonicLoadAudio", dict({"audio": bw.AUDIO_A}, **(audio_widgets or {})), (0, 720))
    adapter = g.add("SonicAdapterLoader", {"adapter_name": bw.ADAPTER["name"], "projector_name": bw.PROJECTOR["name"]},
                    (420, 1040), models=[bw.ADAPTER, bw.PROJECTOR])
    return ckpt, pos, neg, enc_loader, audio, adapter


def _sample(g, ckpt, apply, guider, latent, noise, sampler_name, steps, x=1680):
    sampler = g.add("KSamplerSelect", {"sampler_name": sampler_name}, (x, 300))
    sigmas = g.add("BasicScheduler", {"scheduler": "karras", "steps": steps, "denoise": 1.0}, (x, 420))
    g.link(apply, 0, sigmas, "model")
    sca = g.add("SamplerCustomAdvanced", {}, (x + 420, 0))
    g.link(noise, 0, sca, "noise")
    g.link(guider, 0, sca, "guider")
    g.link(sampler, 0, sca, "sampler")
    g.link(sigmas, 0, sca, "sigmas")
    g.link(latent, 0, sca, "latent_image")
    dec = g.add("VAEDecode", {}, (x + 840, 0))
    g.link(sca, 0, dec, "samples")
    g.link(ckpt, 2, dec, "vae")
    return dec


def _guider(g, apply, pos, neg, text_cfg, audio_cfg):
    guider = g.add("SonicDualGuider", {"text_cfg": text_cfg, "audio_cfg": audio_cfg}, (1260, 0))
    g.link(apply, 0, guider, "model")
    g.link(pos, 0, guider, "positive")
    g.link(neg, 0, guider, "negative")
    return guider


def _encode_and_apply(g, ckpt, enc_loader, audio, adapter, encoder="SonicAudioEncode", widgets=None):
    """The audio encoder node and Apply Sonic Adapter fed by it (in that order)."""
    encode = g.add(encoder, widgets or {}, (420, 560))
    g.link(enc_loader, 0, encode, "audio_encoder")
    g.link(audio, 0, encode, "audio")
    apply = g.add("SonicApplyAdapter", {}, (840, 560))
    g.link(ckpt, 0, apply, "model")
    g.link(adapter, 0, apply, "sonic_adapter")
    g.link(encode, 0, apply, "audio_embeds")
    return encode, apply


def dual_guidance():
    g = Graph()
    ckpt, pos, neg, enc_loader, audio, adapter = _common(g)
    _encode, apply = _encode_and_apply(g, ckpt, enc_loader, audio, adapter)
    guider = _guider(g, apply, pos, neg, 7.5, 12.0)
    noise = g.add("RandomNoise", {"noise_seed": 42}, (1680, 160))
    latent = g.add("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, (840, 260))
    dec = _sample(g, ckpt, apply, guider, latent, noise, "dpmpp_2m", 30)
    save = g.add("SaveImage", {"filename_prefix": "sonic_dual"}, (2940, 0))
    g.link(dec, 0, save, "images")
    return g


def ksampler_guidance():
    g = Graph()
    ckpt, pos, neg, enc_loader, audio, adapter = _common(g)
    _encode, apply = _encode_and_apply(g, ckpt, enc_loader, audio, adapter)
    ratio = g.add("SonicAudioGuidance", {"audio_ratio": 1.6}, (1260, 560))
    g.link(apply, 0, ratio, "model")
    latent = g.add("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, (840, 260))
    widgets = {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "dpmpp_2m", "scheduler": "karras"}
    return bw.ksampler_to_image(g, ratio, (pos, 0), (neg, 0), latent, ckpt, widgets, "sonic_ksampler_guidance",
                                (2520, 0))


def audio_animation():
    g = Graph()
    ckpt, pos, neg, enc_loader, audio, adapter = _common(g, {"duration": 4.0})
    frames, apply = _encode_and_apply(g, ckpt, enc_loader, audio, adapter, "SonicAudioEncodeFrames",
                                      {"fps": 8.0, "window_seconds": 10.0, "smoothing_seconds": 0.25})
    # Loud frames act harder: one strength factor per frame, at the frames' fps.
    curve = g.add("SonicLoudnessCurve", {"fps": 8.0}, (0, 1120))
    g.link(audio, 0, curve, "audio")
    g.link_widget(frames, 2, curve, "fps")
    g.link(curve, 0, apply, "strength_curve")
    latent = g.add("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 32}, (840, 260),
                   title="Empty Latent Image (one per frame)")
    g.link_widget(frames, 1, latent, "batch_size")
    guider = _guider(g, apply, pos, neg, 7.5, 7.5)
    noise = g.add("SonicSharedNoise", {"noise_seed": 42}, (1680, 160))
    dec = _sample(g, ckpt, apply, guider, latent, noise, "dpmpp_2m", 25)
    save = g.add("SaveImage", {"filename_prefix": "sonic_frames"}, (2940, 0))
    g.link(dec, 0, save, "images")
    webp = g.add("SaveAnimatedWEBP", {"filename_prefix": "sonic_animation", "fps": 8.0, "lossless": False,
                                      "quality": 90}, (2940, 300))
    g.link(dec, 0, webp, "images")
    g.link_widget(frames, 2, webp, "fps")
    video = g.add("CreateVideo", {"fps": 8.0}, (2940, 640))
    g.link(dec, 0, video, "images")
    g.link(audio, 0, video, "audio")
    g.link_widget(frames, 2, video, "fps")
    save_video = g.add("SaveVideo", {"filename_prefix": "video/sonic_animation"}, (3360, 640))
    g.link(video, 0, save_video, "video")
    return g


def _animatediff(g, model):
    """AnimateDiff-Evolved Gen2: motion module, sliding context windows, evolved sampling."""
    load = g.add("ADE_LoadAnimateDiffModel", {"model_name": MOTION_MODULE["name"]}, (840, 1100),
                 models=[MOTION_MODULE])
    motion = g.add("ADE_ApplyAnimateDiffModelSimple", {}, (1260, 1100))
    g.link(load, 0, motion, "motion_model")
    context = g.add("ADE_StandardStaticContextOptions", {"context_length": 16, "context_overlap": 4}, (1260, 1300))
    evolved = g.add("ADE_UseEvolvedSampling", {"beta_schedule": "autoselect"}, (1680, 1100))
    g.link(model, 0, evolved, "model")
    g.link(motion, 0, evolved, "m_models")
    g.link(context, 0, evolved, "context_options")
    return evolved


def audio_reactive_animatediff():
    g = Graph()
    ckpt, pos, neg, enc_loader, audio, adapter = _common(g, {"duration": 8.0})
    frames, apply = _encode_and_apply(g, ckpt, enc_loader, audio, adapter, "SonicAudioEncodeFrames",
                                      {"fps": 12.0, "window_seconds": 10.0, "hop_seconds": 0.25,
                                       "smoothing_seconds": 0.25})
    curve = g.add("SonicLoudnessCurve", {"fps": 12.0}, (0, 1120))
    g.link(audio, 0, curve, "audio")
    g.link_widget(frames, 2, curve, "fps")
    g.link(curve, 0, apply, "strength_curve")
    evolved = _animatediff(g, apply)
    latent = g.add("SonicLatentFrames", {"width": 512, "height": 512}, (840, 260))
    g.link(frames, 3, latent, "timing")
    widgets = {"seed": 42, "steps": 20, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal"}
    ks = g.add("KSampler", widgets, (2100, 0))
    g.link(evolved, 0, ks, "model")
    g.link(pos, 0, ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(latent, 0, ks, "latent_image")
    dec = g.add("VAEDecode", {}, (2520, 0))
    g.link(ks, 0, dec, "samples")
    g.link(ckpt, 2, dec, "vae")
    video = g.add("SonicCreateVideo", {}, (2940, 0))
    g.link(dec, 0, video, "images")
    g.link(frames, 3, video, "timing")
    g.link(audio, 0, video, "audio")
    save = g.add("SaveVideo", {"filename_prefix": "video/sonic_animatediff"}, (3360, 0))
    g.link(video, 0, save, "video")
    return g


def _region(g, pos, adapter, enc_loader, audio_file, side, x, y):
    """One half of the image with its own sound: audio -> encode -> area -> audio conditioning."""
    audio = g.add("SonicLoadAudio", {"audio": audio_file}, (0, y), title=f"Load Audio ({side} half)")
    encode = g.add("SonicAudioEncode", {}, (420, y), title=f"Audio Encode ({side} half)")
    g.link(enc_loader, 0, encode, "audio_encoder")
    g.link(audio, 0, encode, "audio")
    # Fractions of the image, so the regions follow any latent size.
    area = g.add("ConditioningSetAreaPercentage", {"width": 0.5, "height": 1.0, "x": x, "y": 0.0, "strength": 1.0},
                 (840, y), title=f"Conditioning (Set Area, {side} half)")
    g.link(pos, 0, area, "conditioning")
    sound = g.add("SonicAudioConditioning", {"strength": 1.0}, (1260, y), title=f"Audio Conditioning ({side} half)")
    g.link(area, 0, sound, "conditioning")
    g.link(adapter, 0, sound, "sonic_adapter")
    g.link(encode, 0, sound, "audio_embeds")
    return sound


def regional_audio():
    g = Graph()
    ckpt, pos, neg = _checkpoint_and_prompts(g)
    enc_loader = g.add("SonicAudioEncoderLoader", {"clap_name": bw.CLAP["name"]}, (0, 1360), models=[bw.CLAP])
    adapter = g.add("SonicAdapterLoader", {"adapter_name": bw.ADAPTER["name"], "projector_name": bw.PROJECTOR["name"]},
                    (420, 1360), models=[bw.ADAPTER, bw.PROJECTOR])
    left = _region(g, pos, adapter, enc_loader, bw.AUDIO_A, "left", 0.0, 560)
    right = _region(g, pos, adapter, enc_loader, bw.AUDIO_B, "right", 0.5, 900)
    both = g.add("ConditioningCombine", {}, (1680, 900))
    g.link(left, 0, both, "conditioning_1")
    g.link(right, 0, both, "conditioning_2")
    # The adapter without audio of its own: each half's prompt carries its sound.
    apply = g.add("SonicApplyAdapter", {}, (840, 1360))
    g.link(ckpt, 0, apply, "model")
    g.link(adapter, 0, apply, "sonic_adapter")
    latent = g.add("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, (1680, 560))
    widgets = {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "dpmpp_2m", "scheduler": "karras"}
    return bw.ksampler_to_image(g, apply, (both, 0), (neg, 0), latent, ckpt, widgets, "sonic_regional", (2520, 0))


WORKFLOWS = {
    "sonic_dual_guidance.json": dual_guidance,
    "sonic_audio_guidance_ksampler.json": ksampler_guidance,
    "sonic_audio_animation.json": audio_animation,
    "sonic_audio_reactive_animatediff.json": audio_reactive_animatediff,
    "sonic_regional_audio.json": regional_audio,
}


def main():
    base = Path(tempfile.mkdtemp(prefix="sonic-build-wf-"))
    # Loading an extra_model_paths.yaml imports ComfyUI's utils package first (as main.py
    # does); without it comfy_extras/nodes_images.py (SaveAnimatedWEBP) fails to import here.
    yaml = base / "extra_model_paths.yaml"
    yaml.write_text(f"builder:\n    base_path: {base}\n")
    comfy_host.boot(base, extra_model_paths=yaml)
    bw.OUT.mkdir(exist_ok=True)
    for name, build in WORKFLOWS.items():
        (bw.OUT / name).write_text(json.dumps(build().to_json(), indent=1) + "\n")
        print("wrote", bw.OUT / name)


if __name__ == "__main__":
    main()

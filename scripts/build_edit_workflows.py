"""Example workflows of audio-driven editing, registered with build_workflows.py:

- sonic_audio_edit.json: Load Image -> VAE Encode -> Audio Edit (Sonic) -> VAE Decode
  (DDIM inversion + Plug-and-Play, the paper's editing)
- sonic_audio_img2img.json: the same image through stock KSampler at denoise 0.6 (SDEdit)
- sonic_audio_edit_custom_sampler.json: the same edit as a GUIDER/SAMPLER pair in
  SamplerCustomAdvanced (Sonic Edit Guider, Sonic DDIM Edit Sampler, BasicScheduler
  ddim_uniform, Disable Noise)
"""


def custom_sampler_step(g, apply, pos, neg, vae_enc):
    """Sonic Edit Guider + Sonic DDIM Edit Sampler in SamplerCustomAdvanced."""
    guider = g.add("SonicEditGuider", {"cfg": 7.5}, (1140, 0))
    g.link(apply, 0, guider, "model")
    g.link(pos, 0, guider, "positive")
    g.link(neg, 0, guider, "negative")
    sampler = g.add("SonicDDIMEditSampler", {"attention_injection": 0.8, "feature_injection": 0.8}, (1140, 200))
    sched = g.add("BasicScheduler", {"scheduler": "ddim_uniform", "steps": 50, "denoise": 1.0}, (1140, 430),
                  title="BasicScheduler (ddim_uniform, the paper's DDIM)")
    g.link(apply, 0, sched, "model")
    noise = g.add("DisableNoise", {}, (1140, 660), title="Disable Noise (the edit starts from the inversion)")
    step = g.add("SamplerCustomAdvanced", {}, (1580, 200))
    g.link(noise, 0, step, "noise")
    g.link(guider, 0, step, "guider")
    g.link(sampler, 0, step, "sampler")
    g.link(sched, 0, step, "sigmas")
    g.link(vae_enc, 0, step, "latent_image")
    return step


def edit_graph(Graph, ns, img2img=False, prompt="", custom=False):
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", {"ckpt_name": ns["SD15"]["name"]}, (0, 0), models=[ns["SD15"]])
    pos = g.add("CLIPTextEncode", {"text": prompt}, (380, 0), title="Edit prompt (empty = audio only)")
    neg = g.add("CLIPTextEncode", {"text": ""}, (380, 220), title="Empty prompt (keep it empty)")
    g.link(ckpt, 1, pos, "clip")
    g.link(ckpt, 1, neg, "clip")
    enc_loader = g.add("SonicAudioEncoderLoader", {"clap_name": ns["CLAP"]["name"]}, (0, 440), models=[ns["CLAP"]])
    audio = g.add("SonicLoadAudio", {"audio": ns["AUDIO_A"]}, (0, 600))
    encode = g.add("SonicAudioEncode", {}, (380, 500))
    g.link(enc_loader, 0, encode, "audio_encoder")
    g.link(audio, 0, encode, "audio")
    adapter = g.add("SonicAdapterLoader", {"adapter_name": ns["ADAPTER"]["name"],
                                           "projector_name": ns["PROJECTOR"]["name"]},
                    (380, 760), models=[ns["ADAPTER"], ns["PROJECTOR"]])
    apply = g.add("SonicApplyAdapter", {}, (760, 300))
    g.link(ckpt, 0, apply, "model")
    g.link(adapter, 0, apply, "sonic_adapter")
    g.link(encode, 0, apply, "audio_embeds")
    image = g.add("LoadImage", {"image": ns["SOURCE_IMAGE"]}, (0, 900), title="Source image")
    scale = g.add("ImageScale", {"upscale_method": "lanczos", "width": 512, "height": 512, "crop": "center"},
                  (380, 980))
    g.link(image, 0, scale, "image")
    vae_enc = g.add("VAEEncode", {}, (760, 900))
    g.link(scale, 0, vae_enc, "pixels")
    g.link(ckpt, 2, vae_enc, "vae")
    if img2img:
        step = g.add("KSampler", {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "dpmpp_2m",
                                  "scheduler": "karras", "denoise": 0.6}, (1140, 0), title="KSampler (img2img)")
        g.link(apply, 0, step, "model")
        g.link(pos, 0, step, "positive")
        g.link(neg, 0, step, "negative")
        g.link(vae_enc, 0, step, "latent_image")
    elif custom:
        step = custom_sampler_step(g, apply, pos, neg, vae_enc)
    else:
        step = g.add("SonicAudioEdit", {"steps": 50, "cfg": 7.5, "attention_injection": 0.8,
                                        "feature_injection": 0.8}, (1140, 0))
        g.link(apply, 0, step, "model")
        g.link(pos, 0, step, "positive")
        g.link(neg, 0, step, "negative")
        g.link(vae_enc, 0, step, "latent")
    dec = g.add("VAEDecode", {}, (1960 if custom else 1500, 0))
    g.link(step, 0, dec, "samples")
    g.link(ckpt, 2, dec, "vae")
    save = g.add("SaveImage", {"filename_prefix": "sonic_img2img" if img2img else "sonic_edit"},
                 (2220 if custom else 1760, 0))
    g.link(dec, 0, save, "images")
    return g


def workflows(Graph, ns):
    return {
        "sonic_audio_edit.json": lambda: edit_graph(Graph, ns),
        "sonic_audio_img2img.json": lambda: edit_graph(Graph, ns, img2img=True),
        "sonic_audio_edit_custom_sampler.json": lambda: edit_graph(Graph, ns, custom=True),
    }

"""API-format graphs shared by the tests and the benchmarks: the audio-to-image graph and
its variants (a second audio mixed in, a second adapter stacked), and an Audio Edit of an image."""


def link_audio_graph_files(host, fs, audio_a, audio_b=None):
    """Links the generated stand-ins the audio graph needs into the host's folders and
    returns the names audio_graph() takes."""
    names = {
        "ckpt": host.link_model("checkpoints", fs.full_checkpoint()),
        "gates": host.link_model("sonic_diffusion", fs.gates()),
        "proj": host.link_model("sonic_diffusion", fs.projector()),
        "clap": host.link_model("audio_encoders", fs.clap()),
        "a": host.put_input(fs.audio(audio_a)),
    }
    if audio_b is not None:
        names["b"] = host.put_input(fs.audio(audio_b))
    return names


def audio_graph(n, audio=None, seed=1, batch=1, ratios=None, stack=False, strength=1.0, prompt=""):
    from sonic_diffusion.graphs import audio_to_image

    g = audio_to_image(n["ckpt"], n["clap"], n["gates"], n["proj"], audio or n["a"], seed=seed, batch=batch,
                       strength=strength, prompt=prompt)
    if ratios is not None:
        g["load_b"] = {"class_type": "SonicLoadAudio", "inputs": {"audio": n["b"], "start_time": 0.0,
                                                                  "duration": 0.0, "gain_db": 0.0}}
        g["enc_b"] = {"class_type": "SonicAudioEncode", "inputs": {"audio_encoder": ["clap", 0], "audio": ["load_b", 0],
                                                                   "window": "center", "offset": 0.0}}
        g["mix"] = {"class_type": "SonicAudioEmbedsMix", "inputs": {"embeds_a": ["enc_a", 0], "embeds_b": ["enc_b", 0],
                                                                    "mode": "slerp", "ratio": 0.5, "ratios": ratios}}
        g["apply"]["inputs"]["audio_embeds"] = ["mix", 0]
    if stack:
        g["apply2"] = {"class_type": "SonicApplyAdapter", "inputs": {"model": ["apply", 0], "sonic_adapter": ["adapter", 0],
                                                                     "audio_embeds": ["enc_a", 0], "strength": 1.0,
                                                                     "start_percent": 0.0, "end_percent": 1.0}}
        g["ks"]["inputs"]["model"] = ["apply2", 0]
    return g


def with_defaults(class_type, given):
    """A node's required inputs for an API graph: `given`, the rest at their schema defaults."""
    import nodes

    required = nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()["required"]
    filled = {k: spec[1]["default"] for k, spec in required.items()
              if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]}
    return {**filled, **given}


def write_source_image(name, size=64):
    """A smooth RGB gradient of size x size saved in ComfyUI's input folder as `name`."""
    from pathlib import Path

    import folder_paths
    import numpy as np
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx * 256 // size, yy * 256 // size, (xx + yy) * 128 // size], -1).astype(np.uint8)
    Image.fromarray(img).save(Path(folder_paths.get_input_directory()) / name)
    return name


def edit_graph(n, image, audio=None, prompt="", strength=1.0, **edit_inputs):
    """audio_graph() with its text-to-image tail replaced by an Audio Edit of the input image
    `image`: the edit's inputs `edit_inputs`, the rest at their schema defaults."""
    g = audio_graph(n, audio=audio, prompt=prompt, strength=strength)
    del g["latent"], g["ks"]
    g["img"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    g["venc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}}
    g["edit"] = {"class_type": "SonicAudioEdit", "inputs": with_defaults("SonicAudioEdit", {
        "model": ["apply", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent": ["venc", 0],
        **edit_inputs})}
    g["dec"]["inputs"]["samples"] = ["edit", 0]
    return g

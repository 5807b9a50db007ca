"""API-format graphs shared by the tests and the benchmarks."""


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

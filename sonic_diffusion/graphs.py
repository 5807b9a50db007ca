"""API-format graphs of the pack, built from stock nodes plus the pack's own; shared by
``evaluate --generate``, the tests and the benchmarks (testing/graphs.py adds variants)."""


def audio_to_image(ckpt, clap, adapter, projector, audio, seed=1, steps=2, cfg=5.0, width=64, height=64, batch=1,
                   sampler="euler", scheduler="normal", prompt="", negative="", strength=1.0):
    """workflows/sonic_audio_to_image.json as an API prompt: file names as the loaders list
    them; the decoded image is the output of node "dec" (shown by the PreviewImage "out")."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["ckpt", 1]}},
        "clap": {"class_type": "SonicAudioEncoderLoader", "inputs": {"clap_name": clap}},
        "load_a": {"class_type": "SonicLoadAudio", "inputs": {"audio": audio, "start_time": 0.0,
                                                             "duration": 0.0, "gain_db": 0.0}},
        "enc_a": {"class_type": "SonicAudioEncode", "inputs": {"audio_encoder": ["clap", 0], "audio": ["load_a", 0],
                                                               "window": "center", "offset": 0.0}},
        "adapter": {"class_type": "SonicAdapterLoader", "inputs": {"adapter_name": adapter,
                                                                   "projector_name": projector}},
        "apply": {"class_type": "SonicApplyAdapter", "inputs": {"model": ["ckpt", 0], "sonic_adapter": ["adapter", 0],
                                                                "audio_embeds": ["enc_a", 0], "strength": strength,
                                                                "start_percent": 0.0, "end_percent": 1.0}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height,
                                                                "batch_size": batch}},
        "ks": {"class_type": "KSampler", "inputs": {"model": ["apply", 0], "seed": seed, "steps": steps, "cfg": cfg,
                                                    "sampler_name": sampler, "scheduler": scheduler,
                                                    "positive": ["pos", 0], "negative": ["neg", 0],
                                                    "latent_image": ["latent", 0], "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        # An output node, so that the executor runs the graph.
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}},
    }

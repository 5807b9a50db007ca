"""The stand-in SD1.5 checkpoints, LoRA and ControlNet of testing.fixtures, loaded
and run by ComfyUI's own loaders and nodes: they must be real add-ons for core, not files
that only have the right names (tests/test_fixtures.py checks the official formats)."""
import gc

import numpy as np
import torch


def _stock_graph(ckpt_name, steps=2):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a waterfall", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 7, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def test_reduced_checkpoint_runs_a_stock_graph(host, fixture_dir):
    import comfy.supported_models

    name = host.link_model("checkpoints", fixture_dir.reduced_checkpoint())
    run = host.run(_stock_graph(name))
    model = run.outputs("1")[0]
    assert type(model.model.model_config) is comfy.supported_models.SD15
    image = run.outputs("6")[0]
    assert tuple(image.shape) == (1, 64, 64, 3)
    assert torch.isfinite(image).all()
    assert float(image.std()) > 1e-3  # not a flat image


def test_full_checkpoint_topology(fixture_dir):
    from safetensors import safe_open

    path = fixture_dir.full_checkpoint()
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())

        def shape(k):
            return tuple(f.get_slice(k).get_shape())

        unet = "model.diffusion_model."
        assert shape(unet + "middle_block.1.transformer_blocks.0.attn1.to_q.weight") == (1280, 1280)
        for k, width in zip(range(3, 12), [1280] * 3 + [640] * 3 + [320] * 3):
            p = f"{unet}output_blocks.{k}.1.transformer_blocks.0."
            assert shape(p + "attn1.to_q.weight") == (width, width), k
            assert shape(p + "attn2.to_k.weight") == (width, 768), k
        for k in range(3):
            assert not any(x.startswith(f"{unet}output_blocks.{k}.1.transformer_blocks") for x in keys)
        n_unet = sum(int(np.prod(shape(k))) for k in keys if k.startswith(unet))
        assert 855e6 < n_unet < 865e6
        assert f.get_tensor(unet + "out.2.weight").dtype == torch.float16
    assert "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight" in keys
    assert "first_stage_model.taesd_decoder.1.weight" in keys


def test_lora_applies(host, fixture_dir):
    import comfy.model_management

    try:
        _check_lora(host, fixture_dir)
    finally:
        # The full UNet takes ~3.5 GB in fp32 on the CPU: do not keep it for later tests.
        host.new_executor()
        comfy.model_management.unload_all_models()
        gc.collect()


def _check_lora(host, fixture_dir):
    import comfy.lora
    import comfy.utils

    ckpt = host.link_model("checkpoints", fixture_dir.full_checkpoint())
    lora = host.link_model("loras", fixture_dir.lora())
    g = _stock_graph(ckpt, steps=1)
    g["5"]["inputs"]["cfg"] = 1.0  # no uncond pass: half the full-UNet work
    g["8"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                     "strength_model": 1.0, "strength_clip": 1.0}}
    g["9"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a waterfall", "clip": ["8", 1]}}
    g["10"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["8", 1]}}
    g["11"] = dict(g["5"], inputs=dict(g["5"]["inputs"], model=["8", 0], positive=["9", 0], negative=["10", 0]))
    g["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}}
    g["13"] = {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}}
    run = host.run(g)
    base, with_lora = run.outputs("5")[0]["samples"], run.outputs("11")[0]["samples"]
    assert torch.isfinite(base).all() and torch.isfinite(with_lora).all()
    assert (base - with_lora).abs().max() > 1e-3

    # Every LoRA module maps onto a model key (nothing silently skipped).
    model, clip = run.outputs("1")[0], run.outputs("1")[1]
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    sd = comfy.utils.load_torch_file(str(fixture_dir.lora()), safe_load=True)
    patches = comfy.lora.load_lora(sd, key_map, log_missing=False)
    modules = {k.rsplit(".", 2)[0] for k in sd if k.endswith(".lora_up.weight")}
    assert len(patches) == len(modules) > 100
    assert any(k.startswith("diffusion_model.output_blocks.11.") for k in patches)


def test_controlnet_loads_and_applies(host, fixture_dir):
    import comfy.controlnet

    import nodes

    # The full one through the core loader node (a loader alone is no graph output).
    full = host.link_model("controlnet", fixture_dir.controlnet())
    cn = nodes.NODE_CLASS_MAPPINGS["ControlNetLoader"]().load_controlnet(full)[0]
    assert isinstance(cn, comfy.controlnet.ControlNet)
    assert cn.control_model.input_blocks[11] is not None and len(cn.control_model.zero_convs) == 12

    # The reduced ControlNet matches the reduced checkpoint and changes its output.
    ckpt = host.link_model("checkpoints", fixture_dir.reduced_checkpoint())
    small = host.link_model("controlnet", fixture_dir.controlnet(reduced=True))
    g = _stock_graph(ckpt)
    g["8"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": small}}
    g["9"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xFFFFFF}}
    g["10"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "control_net": ["8", 0], "image": ["9", 0],
        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    g["11"] = dict(g["5"], inputs=dict(g["5"]["inputs"], positive=["10", 0], negative=["10", 1]))
    g["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}}
    g["13"] = {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}}
    run = host.run(g)
    plain, controlled = run.outputs("5")[0]["samples"], run.outputs("11")[0]["samples"]
    assert torch.isfinite(controlled).all()
    assert (plain - controlled).abs().max() > 1e-3

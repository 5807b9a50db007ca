"""Random-weight stand-ins of the evaluation models, in their real formats (tests, smoke runs).

- ``tiny_clip``: a transformers CLIPModel folder (save_pretrained) with a small
  config, CLIP's real BPE tokenizer (ComfyUI's copy in comfy/sd1_tokenizer) and a
  CLIPImageProcessor; loads exactly like openai/clip-vit-*.
- ``random_wav2clip``: a flat state dict under Wav2CLIP.pt's key names.
- ``random_inception``: torch-fidelity's FID Inception-v3 with seeded He-initialised
  weights, saved as its weights file is (built without the download).
"""
import math
from pathlib import Path
from unittest import mock

import torch


def _tokenizer_dir():
    from sonic_diffusion import host

    d = host.locate_comfyui() / "comfy" / "sd1_tokenizer"
    if not (d / "vocab.json").is_file():
        raise FileNotFoundError(f"no CLIP tokenizer files in {d}")
    return d


def tiny_clip(path, patch_size=32, image_size=32, projection_dim=512, hidden=32, layers=2, seed=0):
    """Writes a small random CLIP (Hugging Face format) to ``path``; returns it."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = Path(path)
    tok_dir = _tokenizer_dir()
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim)
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(path, safe_serialization=True)
    image_proc = CLIPImageProcessor(size={"shortest_edge": image_size},
                                    crop_size={"height": image_size, "width": image_size})
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    CLIPProcessor(image_processor=image_proc, tokenizer=tokenizer).save_pretrained(path)
    return path


def _torch_default_init(model):
    """torch.nn's own initialisation, in construction order: the comfy.ops layers the
    model is built from skip it (they expect loaded weights)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            (torch.nn.Linear if isinstance(m, torch.nn.Linear) else torch.nn.Conv2d).reset_parameters(m)
    return model


def random_wav2clip_state_dict(seed=0):
    """Flat dict in the Wav2CLIP.pt layout (audio_encoder.*, audio_transform.*, image_transform.*),
    with non-trivial BatchNorm statistics."""
    from sonic_diffusion.evaluate.wav2clip import AudioTransform, Wav2Clip

    torch.manual_seed(seed)
    model = _torch_default_init(Wav2Clip())
    sd = dict(model.state_dict())
    sd.update({"image_transform." + k: v for k, v in _torch_default_init(AudioTransform()).state_dict().items()})
    g = torch.Generator().manual_seed(seed + 1)
    for k, v in sd.items():
        if k.endswith("running_mean"):
            sd[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(v.shape, generator=g)
    return {k: v.clone() for k, v in sd.items()}


def random_wav2clip(path, seed=0):
    torch.save(random_wav2clip_state_dict(seed), path)
    return Path(path)


def random_inception_state_dict(seed=0):
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    # Build the architecture without its weight download: skip the load step only.
    with mock.patch.object(fe, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", return_value=None):
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("weight") and v.ndim == 4:  # He init keeps activations O(1) through ~100 convs
            fan_in = v.shape[1] * v.shape[2] * v.shape[3]
            sd[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith("running_mean") or (k.endswith("bias") and v.ndim == 1):
            sd[k] = 0.05 * torch.randn(v.shape, generator=g)
        elif k.endswith("weight") and v.ndim == 1:
            sd[k] = 1.0 + 0.05 * torch.randn(v.shape, generator=g)
        elif k == "fc.weight":
            sd[k] = torch.randn(v.shape, generator=g) / math.sqrt(v.shape[1])
        else:
            sd[k] = v.clone()
    return sd


def random_inception(path, seed=0):
    torch.save(random_inception_state_dict(seed), path)
    return Path(path)


def model_folder(root, seed=0):
    """Every evaluation model under ``root`` with the CLI's default names (--models-dir)."""
    from sonic_diffusion.evaluate.models import MODEL_SOURCES

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = {k: root / v[0] for k, v in MODEL_SOURCES.items()}
    if not (names["clip_b32"] / "config.json").is_file():
        tiny_clip(names["clip_b32"], patch_size=32, image_size=32, projection_dim=512, seed=seed)
    if not (names["clip_l14"] / "config.json").is_file():
        tiny_clip(names["clip_l14"], patch_size=14, image_size=28, projection_dim=64, seed=seed + 1)
    if not names["wav2clip"].is_file():
        random_wav2clip(names["wav2clip"], seed)
    if not names["inception"].is_file():
        random_inception(names["inception"], seed)
    return names



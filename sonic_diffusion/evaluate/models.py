"""The evaluation models, loaded from local files only, and their embedders.

- CLIP ViT-B/32 and ViT-L/14: Hugging Face folders (``transformers`` CLIPModel /
  CLIPProcessor, ``local_files_only=True``).
- Wav2CLIP: the published ``Wav2CLIP.pt`` (see ``wav2clip.py``).
- Inception-v3 for FID: torch-fidelity's ``FeatureExtractorInceptionV3`` (the
  TensorFlow FID network ported bit-exactly, with TensorFlow's bilinear resize to
  299) reading ``weights-inception-2015-12-05-6726825d.pth`` from a local path.

A missing file raises ModelMissingError naming the file, where to get it and the
option that points to it. Nothing is ever downloaded.
"""
import os
from pathlib import Path

import numpy as np
import torch

from .cache import model_id

CLIP_B32 = "clip_b32"
CLIP_L14 = "clip_l14"
WAV2CLIP = "wav2clip"
INCEPTION = "inception"

# name -> (default file or folder name under --models-dir, option, where to get it)
MODEL_SOURCES = {
    CLIP_B32: ("clip-vit-base-patch32", "--clip-b32",
               "the Hugging Face folder openai/clip-vit-base-patch32 (config.json, model.safetensors or "
               "pytorch_model.bin, preprocessor_config.json, vocab.json, merges.txt, tokenizer files)"),
    CLIP_L14: ("clip-vit-large-patch14", "--clip-l14",
               "the Hugging Face folder openai/clip-vit-large-patch14 (config.json, model.safetensors or "
               "pytorch_model.bin, preprocessor_config.json, vocab.json, merges.txt, tokenizer files)"),
    WAV2CLIP: ("Wav2CLIP.pt", "--wav2clip",
               "Wav2CLIP.pt from https://github.com/descriptinc/lyrebird-wav2clip/releases/download/"
               "v0.1.0-alpha/Wav2CLIP.pt"),
    INCEPTION: ("weights-inception-2015-12-05-6726825d.pth", "--inception",
                "weights-inception-2015-12-05-6726825d.pth (torch-fidelity's port of the TensorFlow FID "
                "Inception) from https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                "weights-inception-2015-12-05-6726825d.pth"),
}


class ModelMissingError(FileNotFoundError):
    pass


class ModelFileError(ValueError):
    """A model file is there but is not the model it was given as (or is damaged)."""


def _first_line(e):
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def require(kind, path):
    """Checks that the model file/folder exists; returns it as a Path."""
    default, option, source = MODEL_SOURCES[kind]
    p = Path(path)
    ok = (p / "config.json").is_file() if kind in (CLIP_B32, CLIP_L14) else p.is_file()
    if not ok:
        what = "a folder with config.json" if kind in (CLIP_B32, CLIP_L14) else "a file"
        raise ModelMissingError(
            f"{kind}: no model at {p} (expected {what}). Get {source} and put it at {p}, "
            f"or pass {option} PATH (default: --models-dir/{default}). Nothing is downloaded at run time.")
    return p


def pick_device(name=None):
    """--device, or ComfyUI's device (CUDA, MPS, XPU, DirectML... or the CPU) when absent."""
    from .. import host

    host.bootstrap()
    return host.torch_device(name)


def _open_rgb(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


class ClipEmbedder:
    """Image and text embeddings (projected, L2-normalised) of one CLIP folder. The
    model is loaded on first use: a run whose embeddings are all cached never loads it."""

    def __init__(self, kind, path, device):
        self.kind = kind
        self.path = require(kind, path)
        self.device = device
        self._model = self._image_proc = self._tokenizer = None
        files = sorted(self.path.iterdir())
        weights = [f for f in files if f.suffix in (".safetensors", ".bin")
                   or f.name in ("config.json", "preprocessor_config.json")]
        self.image_id = model_id(f"{kind}-image", weights)
        self.text_id = model_id(f"{kind}-text", weights + [f for f in files if f.name in ("vocab.json", "merges.txt", "tokenizer.json")])

    def _load(self):
        if self._model is None:
            from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer, CLIPTokenizerFast

            self._model = CLIPModel.from_pretrained(str(self.path), local_files_only=True).eval().to(self.device)
            # The slow (PIL) image processor: the reference preprocessing of the released models.
            self._image_proc = CLIPImageProcessor.from_pretrained(str(self.path), local_files_only=True)
            tok = CLIPTokenizerFast if (self.path / "tokenizer.json").is_file() else CLIPTokenizer
            self._tokenizer = tok.from_pretrained(str(self.path), local_files_only=True)
        return self._model

    @property
    def dim(self):
        import json

        return int(json.loads((self.path / "config.json").read_text()).get("projection_dim", 512))

    @torch.no_grad()
    def images(self, paths):
        model = self._load()
        pix = self._image_proc(images=[_open_rgb(p) for p in paths], return_tensors="pt")["pixel_values"]
        feats = model.get_image_features(pixel_values=pix.to(self.device))
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()

    @torch.no_grad()
    def texts(self, prompts):
        model = self._load()
        n_ctx = int(model.config.text_config.max_position_embeddings)
        tok = self._tokenizer(list(prompts), return_tensors="pt", padding=True, truncation=True, max_length=n_ctx)
        feats = model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                        attention_mask=tok["attention_mask"].to(self.device))
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


class Wav2ClipEmbedder:
    def __init__(self, path, device, seconds=10.0):
        self.path = require(WAV2CLIP, path)
        self.device = device
        self.seconds = float(seconds)
        self._model = None
        self.id = model_id("wav2clip", [self.path], seconds=self.seconds, window="center", sr=16000)

    @property
    def model(self):
        if self._model is None:
            from .wav2clip import load_wav2clip

            try:
                self._model = load_wav2clip(self.path, self.device)
            except ValueError as e:
                raise ModelFileError(f"--wav2clip {self.path}: {_first_line(e)}") from None
        return self._model

    @torch.no_grad()
    def audios(self, paths):
        from ..audio_decode import decode_audio
        from .wav2clip import prepare_wave

        out = []
        for p in paths:  # clips differ in length: one at a time (the encoder is cheap)
            wav, sr = decode_audio(p)
            try:
                x = prepare_wave(wav, sr, self.seconds)
            except ValueError as e:
                from .data import DataError

                raise DataError(f"{p}: {e}") from None
            e = self.model(x[None].to(self.device))
            out.append(torch.nn.functional.normalize(e.float(), dim=-1)[0].cpu().numpy())
        return np.stack(out)


class InceptionFeatures:
    """2048-d pool features of torch-fidelity's FID Inception-v3 (uint8 RGB input)."""

    def __init__(self, path, device):
        self.path = require(INCEPTION, path)
        self.device = device
        self._model = None
        self.id = model_id("inception-fid", [self.path], layer="2048")

    @property
    def model(self):
        if self._model is None:
            try:
                from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
            except ImportError:
                raise ModelMissingError(
                    "FID needs the torch-fidelity package (pip install torch-fidelity==0.4.0); "
                    "or leave fid out of --metrics") from None
            from unittest import mock

            from ..safe_load import load_weights_file

            # torch-fidelity would unpickle the file itself with weights_only=False. We read
            # it safely (weights_only=True, code refused) and hand torch-fidelity the tensors:
            # its torch.load call is answered with them, so no unsafe unpickling ever happens.
            try:
                state_dict, _ = load_weights_file(self.path)
                with mock.patch("torch.load", lambda *args, **kwargs: state_dict):
                    model = FeatureExtractorInceptionV3(
                        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(self.path))
            except (ValueError, RuntimeError) as e:  # load_state_dict: missing or misshapen tensors
                raise ModelFileError(f"--inception {self.path}: not torch-fidelity's FID Inception weights "
                                     f"({_first_line(e)[:300]})") from None
            self._model = model.to(self.device)
        return self._model

    @torch.no_grad()
    def images(self, paths):
        arrays = [np.asarray(_open_rgb(p), dtype=np.uint8) for p in paths]
        out = [None] * len(arrays)
        by_size = {}
        for i, a in enumerate(arrays):
            by_size.setdefault(a.shape, []).append(i)
        for idx in by_size.values():  # the extractor resizes to 299 itself
            x = torch.from_numpy(np.stack([arrays[i] for i in idx])).permute(0, 3, 1, 2).contiguous()
            (feats,) = self.model(x.to(self.device))
            for i, f in zip(idx, feats.double().cpu().numpy()):
                out[i] = f
        return np.stack(out)


def default_model_paths(models_dir):
    models_dir = Path(models_dir) if models_dir else Path(os.environ.get("SONIC_EVAL_MODELS", "eval_models"))
    return {k: models_dir / v[0] for k, v in MODEL_SOURCES.items()}

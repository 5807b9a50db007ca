"""Wav2CLIP audio encoder (Wu et al., 2022), re-implemented in plain torch.

The PyPI package ``wav2clip`` 0.1.0 needs torchaudio (for one Spectrogram) and
librosa (for framing only), and downloads its checkpoint at run time, so the
architecture lives here and reads the published checkpoint as it is:

``Wav2CLIP.pt`` (release v0.1.0-alpha of descriptinc/lyrebird-wav2clip) is a flat
state dict. ``wav2clip.get_model()`` keeps the keys under ``audio_encoder.``
(a ResNet-18 on a log power spectrogram, torchaudio ``Spectrogram(n_fft=512,
hop_length=353)``, its Hann window stored as ``audio_encoder.spectrogram.window``)
and ``audio_transform.`` (an MLP 512-512-512 whose Linear layers are
``sequential.0`` and ``sequential.3``); other keys (``image_transform.*``) are
ignored. The embedding is ``audio_transform(audio_encoder(wave))``, 512-d, in the
space of CLIP ViT-B/32 image embeddings; input is mono 16 kHz audio.

Normalisation: the package standardises the log spectrogram with the mean and std
of the *whole batch*; ``wav2clip.embed_audio`` is called on one clip, so we
standardise each clip by itself, which equals a batch of one and makes the
embedding independent of batching (and cacheable per file).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 353
EMBED_DIM = 512
DOWNLOAD_URL = ("https://github.com/descriptinc/lyrebird-wav2clip/releases/download/"
                "v0.1.0-alpha/Wav2CLIP.pt")
MIN_SAMPLES = N_FFT  # reflect padding of the centred STFT needs > n_fft/2 samples


class Wav2ClipWeightsError(ValueError):
    """A file is not a (complete) Wav2CLIP checkpoint."""


def _ops():
    """ComfyUI's layer classes (comfy.ops): the same maths as torch.nn, with ComfyUI's
    dtype casting and weight offloading; they skip torch's init (weights are loaded)."""
    import comfy.ops

    return comfy.ops.disable_weight_init


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        ops = _ops()
        self.conv1 = ops.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = ops.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(ops.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + idt)


class _Spectrogram(nn.Module):
    """torchaudio.transforms.Spectrogram(n_fft=512, hop_length=353) with its defaults:
    periodic Hann window, centred reflect padding, power 2, not normalised."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT))

    def forward(self, x):  # [B, T] -> [B, 1, 257, frames]
        spec = torch.stft(x, N_FFT, HOP, N_FFT, self.window, center=True, pad_mode="reflect",
                          normalized=False, onesided=True, return_complex=True)
        return spec.abs().pow(2.0).unsqueeze(1)


class AudioEncoder(nn.Module):
    """The ``audio_encoder.*`` ResNet-18 of Wav2CLIP (one input channel, no fc)."""

    def __init__(self):
        super().__init__()
        self.spectrogram = _Spectrogram()
        self.conv1 = _ops().Conv2d(1, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, planes in enumerate((64, 128, 256, 512), start=1):
            stride = 1 if i == 1 else 2
            layer = nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))
            setattr(self, f"layer{i}", layer)
            inplanes = planes

    def forward(self, x):
        x = torch.log(self.spectrogram(x) + 1e-7)
        # Per clip (see the module docstring), unbiased std as torch.std.
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.flatten(1).std(dim=1).view(-1, 1, 1, 1)
        x = (x - mean) / (std + 1e-9)
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class AudioTransform(nn.Module):
    """``audio_transform.*``: Linear-ReLU-Dropout-Linear (MLPLayers([512, 512, 512]))."""

    def __init__(self, dim=EMBED_DIM):
        super().__init__()
        ops = _ops()
        self.sequential = nn.Sequential(ops.Linear(dim, dim), nn.ReLU(), nn.Dropout(0.1), ops.Linear(dim, dim))

    def forward(self, x):
        return self.sequential(x)


class Wav2Clip(nn.Module):
    def __init__(self):
        super().__init__()
        self.audio_encoder = AudioEncoder()
        self.audio_transform = AudioTransform()

    def forward(self, wave):
        """``wave [B, T]`` mono 16 kHz float -> ``[B, 512]`` (not normalised)."""
        return self.audio_transform(self.audio_encoder(wave))


def published_state_dict(model):
    """Our module's state dict under the published key names (the same names)."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unwrap(sd):
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise Wav2ClipWeightsError(f"expected a dict of tensors, got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_wav2clip(path, device="cpu"):
    """Loads ``Wav2CLIP.pt`` (published format) into an eval-mode ``Wav2Clip``.

    ``num_batches_tracked`` entries are optional; a missing spectrogram window
    falls back to the Hann window torchaudio would have stored. Every other
    encoder and transform tensor must be present with its shape.
    """
    from ..safe_load import load_weights_file

    model = Wav2Clip()
    want = model.state_dict()
    sd = _unwrap(load_weights_file(path, check=lambda header: _checked(_unwrap(header), want, path))[0])
    sd = _checked(sd, want, path)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=False)
    return model.eval().requires_grad_(False).to(device)


def _checked(sd, want, path):
    """The audio tensors of a Wav2CLIP dict (tensors or safe_load's TensorSpecs), checked
    by key and shape against ``want``."""
    sd = {k: v for k, v in sd.items() if k.startswith(("audio_encoder.", "audio_transform."))}
    if not sd:
        raise Wav2ClipWeightsError(
            f"{path} has no audio_encoder.* / audio_transform.* tensors: it is not a Wav2CLIP "
            f"checkpoint (get Wav2CLIP.pt from {DOWNLOAD_URL})")
    missing = [k for k in want if k not in sd and not k.endswith("num_batches_tracked")
               and k != "audio_encoder.spectrogram.window"]
    if missing:
        raise Wav2ClipWeightsError(f"{path} lacks {len(missing)} Wav2CLIP tensors, e.g. {missing[:3]}")
    unexpected = [k for k in sd if k not in want]
    if unexpected:
        raise Wav2ClipWeightsError(f"{path} has unexpected Wav2CLIP tensors, e.g. {unexpected[:3]}")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise Wav2ClipWeightsError(f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(want[k].shape)}")
    return sd


def prepare_wave(waveform, sample_rate, seconds=10.0):
    """``[C, T]`` at any rate -> mono 16 kHz ``[T']``: the centred ``seconds`` window of
    a longer clip (0 = whole clip); shorter clips are used whole (the encoder averages
    over time). Uses the pack's own windowed-sinc resampler (torchaudio's default
    filter) so the embedding does not depend on which resampler is installed."""
    from ..audio_prep import window_start
    from ..resample import output_length, resample_window

    mono = waveform.to(torch.float32).mean(dim=0)
    total = output_length(mono.shape[-1], sample_rate, SAMPLE_RATE)
    want = int(round(seconds * SAMPLE_RATE)) if seconds and seconds > 0 else total
    if total > want:
        start = window_start(total, "center", 0.0, SAMPLE_RATE, want)
    else:
        start, want = 0, total
    y = resample_window(mono, int(sample_rate), SAMPLE_RATE, start, want, backend="sinc")
    if y.shape[-1] < MIN_SAMPLES:
        raise ValueError(f"the clip is too short for Wav2CLIP ({y.shape[-1]} samples at 16 kHz, "
                         f"need at least {MIN_SAMPLES})")
    return y.contiguous()

"""Log-mel front end of the MS-CLAP 2022 audio tower, with torch ops only.

Official (torchlibrosa): conv1d with stored DFT kernels (periodic Hann window
folded in) on a reflect-padded signal, power 2, times the Slaney mel matrix,
``10*log10(max(mel, 1e-10))``. ``torch.stft`` with the same window, centring and
padding computes the same spectrum (float32 noise, ~2e-4 dB); the mel matrix is
the checkpoint's own ``melW`` buffer.
"""
import math

import numpy as np
import torch

SAMPLE_RATE = 44100
N_FFT = 1024
HOP = 320
N_MELS = 64
FMIN = 50.0
FMAX = 14000.0
AMIN = 1e-10


def slaney_mel_matrix(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX):
    """Slaney-style mel filter bank (librosa's default: htk=False, norm='slaney'),
    returned as [n_fft // 2 + 1, n_mels] float32 (the layout of ``melW``)."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]  # slaney area norm
    return torch.from_numpy(weights.T.astype(np.float32))


def dft_kernels(n_fft=N_FFT):
    """What torchlibrosa stores as conv_real / conv_imag: [n_fft//2+1, 1, n_fft]."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
    ang = 2 * np.pi * np.outer(k, n) / n_fft
    real = torch.from_numpy((np.cos(ang) * window).astype(np.float32))[:, None, :]
    imag = torch.from_numpy((-np.sin(ang) * window).astype(np.float32))[:, None, :]
    return real, imag


class ClapFrontEnd(torch.nn.Module):
    """waveform [B, T] at 44.1 kHz -> log-mel [B, frames, 64] in dB, float32 on x's device.

    frames = 1 + T // 320 (centre padding): 441,000 samples -> 1379 frames.
    """

    def __init__(self, mel_matrix=None):
        super().__init__()
        if mel_matrix is None:
            mel_matrix = slaney_mel_matrix()
        self.register_buffer("melW", mel_matrix.detach().to(torch.float32).clone())

    def forward(self, x):
        # float64 spectrum (and window): float32 rounding leaks a loud tone into quiet
        # bins (up to 0.05 dB there); float64 is ~1e-6 dB off librosa, for ~10 ms a clip.
        # float64 runs on the CPU only (MPS has none, and it is slow on most GPUs):
        # the log-mel goes back to the input's device as float32.
        device = x.device
        x = x.detach().to(device="cpu", dtype=torch.float64)
        window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
        spec = torch.stft(x, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window=window,
                          center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [B, 513, frames], |X|^2
        mel = torch.matmul(power.transpose(1, 2), self.melW.to(device="cpu", dtype=torch.float64))  # [B, frames, 64]
        logmel = torch.log10(torch.clamp(mel, min=AMIN)).mul_(10.0)  # ref 1.0, no top_db
        return logmel.to(dtype=torch.float32).to(device=device)

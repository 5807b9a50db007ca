"""Log-mel front end of the MS-CLAP 2022 audio tower, with torch ops only.

Official (torchlibrosa): conv1d with stored DFT kernels (periodic Hann window
folded in) on a reflect-padded signal, power 2, times the Slaney mel matrix,
``10*log10(max(mel, 1e-10))``. ``torch.stft`` with the same window, centring and
padding computes the same spectrum (float32 noise, ~2e-4 dB); the mel matrix is
the checkpoint's own ``melW`` buffer.

Precision: on the CPU the spectrum is float64 (~1e-6 dB off librosa, ~10 ms a clip); on
any other device it stays there in float32 (MPS has no float64, and float64 is slow on
most GPUs): no round trip through the CPU. The float32 path's error against the float64
reference is bounded in tests/test_clap_frontend_precision.py (measured there).
"""

import numpy as np
import torch

SAMPLE_RATE = 44100
N_FFT = 1024
HOP = 320
N_MELS = 64
FMIN = 50.0
FMAX = 14000.0
AMIN = 1e-10


def _hz_to_mel(f):
    # Slaney scale as librosa computes it (htk=False).
    f = np.asanyarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    if f.ndim:
        log_t = f >= min_log_hz
        mels[log_t] = min_log_mel + np.log(f[log_t] / min_log_hz) / logstep
    elif f >= min_log_hz:
        mels = min_log_mel + np.log(f / min_log_hz) / logstep
    return mels


def _mel_to_hz(m):
    m = np.asanyarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = m >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (m[log_t] - min_log_mel))
    return freqs


def slaney_mel_matrix(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX):
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) (Slaney, norm='slaney'),
    re-implemented step for step with librosa's float32 weight array, so it equals
    the checkpoints' stored ``melW`` bit for bit without librosa installed.
    Returned as [n_fft // 2 + 1, n_mels] float32 (the layout of ``melW``)."""
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return torch.from_numpy(weights.T.copy())


def dft_kernels(n_fft=N_FFT):
    """conv_real / conv_imag [n_fft//2+1, 1, n_fft] exactly as torchlibrosa's STFT
    builds them: periodic Hann (scipy's formula) times the DFT matrix computed as
    np.power(exp(-2 pi i / N), n k), then cast to float32."""
    fac = np.linspace(-np.pi, np.pi, n_fft + 1)
    window = (0.5 * np.cos(0 * fac) + 0.5 * np.cos(1 * fac))[:-1]
    x, y = np.meshgrid(np.arange(n_fft), np.arange(n_fft))
    w = np.power(np.exp(-2 * np.pi * 1j / n_fft), x * y)
    bins = n_fft // 2 + 1
    real = np.real(w[:, :bins] * window[:, None]).T
    imag = np.imag(w[:, :bins] * window[:, None]).T
    return (torch.tensor(real, dtype=torch.float32)[:, None, :],
            torch.tensor(imag, dtype=torch.float32)[:, None, :])


class ClapFrontEnd(torch.nn.Module):
    """waveform [B, T] at 44.1 kHz -> log-mel [B, frames, 64] in dB, float32 on x's device.

    frames = 1 + T // 320 (centre padding): 441,000 samples -> 1379 frames.
    """

    def __init__(self, mel_matrix=None):
        super().__init__()
        if mel_matrix is None:
            mel_matrix = slaney_mel_matrix()
        self.register_buffer("melW", mel_matrix.detach().to(torch.float32).clone())

    def forward(self, x, dtype=None):
        """``dtype``: the spectrum's precision; None picks frontend_dtype(x.device)."""
        dtype = frontend_dtype(x.device) if dtype is None else dtype
        x = x.detach().to(dtype=dtype)
        window = torch.hann_window(N_FFT, periodic=True, dtype=dtype, device=x.device)
        spec = torch.stft(x, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window=window,
                          center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [B, 513, frames], |X|^2
        mel = torch.matmul(power.transpose(1, 2), self.melW.to(device=x.device, dtype=dtype))  # [B, frames, 64]
        logmel = torch.log10(torch.clamp(mel, min=AMIN)).mul_(10.0)  # ref 1.0, no top_db
        return logmel.to(dtype=torch.float32)


def frontend_dtype(device):
    """float64 on the CPU (the reference precision, cheap there); float32, the best
    precision every accelerator has, anywhere else."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32

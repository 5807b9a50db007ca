"""The stand-in weights and audio of testing.fixtures.

The expected key names and shapes below are copied from the spec
(docs/sonicdiffusion-spec.md, sections 3-5) on purpose, not read from the
generator: a generator bug must not be able to hide itself.
"""
import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from testing import fixtures

# ---------------------------------------------------------------- spec tables

# Spec sec. 4: the Audio Projector, 46 tensors, 6,130,050 parameters.
PROJECTOR_SHAPES = {
    "audio_emb_projection.0.weight": (77, 1, 17), "audio_emb_projection.0.bias": (77,),
    "audio_emb_projection.2.weight": (77, 77, 17), "audio_emb_projection.2.bias": (77,),
    "audio_emb_projection.4.weight": (77, 1024), "audio_emb_projection.4.bias": (77, 1024),
    "audio_emb_projection.5.weight": (77, 77, 17), "audio_emb_projection.5.bias": (77,),
    "audio_emb_projection.7.weight": (77, 1024), "audio_emb_projection.7.bias": (77, 1024),
    "audio_emb_projection.8.weight": (77, 77, 17), "audio_emb_projection.8.bias": (77,),
    "audio_emb_projection.10.weight": (77, 3072), "audio_emb_projection.10.bias": (77, 3072),
    "audio_emb_projection.12.weight": (77, 77, 17), "audio_emb_projection.12.bias": (77,),
    "to_out_adapter.0.weight": (768, 768), "to_out_adapter.0.bias": (768,),
}
for _i in range(4):
    PROJECTOR_SHAPES.update({
        f"cross_attention.{_i}.to_q_adapter.weight": (320, 768),
        f"cross_attention.{_i}.to_k_adapter.weight": (320, 768),
        f"cross_attention.{_i}.to_v_adapter.weight": (320, 768),
        f"between_attention.{_i}.0.weight": (320, 320), f"between_attention.{_i}.0.bias": (320,),
        f"between_attention.{_i}.2.weight": (768, 320), f"between_attention.{_i}.2.bias": (768,),
    })
PROJECTOR_PARAMS = 6_130_050

# Spec sec. 5: (diffusers prefix, LDM prefix, width) for the 10 adapted blocks.
GATE_BLOCKS = [
    ("mid_block.attentions.0.transformer_blocks.0", "model.diffusion_model.middle_block.1.transformer_blocks.0", 1280),
    ("up_blocks.1.attentions.0.transformer_blocks.0", "model.diffusion_model.output_blocks.3.1.transformer_blocks.0", 1280),
    ("up_blocks.1.attentions.1.transformer_blocks.0", "model.diffusion_model.output_blocks.4.1.transformer_blocks.0", 1280),
    ("up_blocks.1.attentions.2.transformer_blocks.0", "model.diffusion_model.output_blocks.5.1.transformer_blocks.0", 1280),
    ("up_blocks.2.attentions.0.transformer_blocks.0", "model.diffusion_model.output_blocks.6.1.transformer_blocks.0", 640),
    ("up_blocks.2.attentions.1.transformer_blocks.0", "model.diffusion_model.output_blocks.7.1.transformer_blocks.0", 640),
    ("up_blocks.2.attentions.2.transformer_blocks.0", "model.diffusion_model.output_blocks.8.1.transformer_blocks.0", 640),
    ("up_blocks.3.attentions.0.transformer_blocks.0", "model.diffusion_model.output_blocks.9.1.transformer_blocks.0", 320),
    ("up_blocks.3.attentions.1.transformer_blocks.0", "model.diffusion_model.output_blocks.10.1.transformer_blocks.0", 320),
    ("up_blocks.3.attentions.2.transformer_blocks.0", "model.diffusion_model.output_blocks.11.1.transformer_blocks.0", 320),
]


def gate_shapes(spelling):
    out = {}
    for dprefix, lprefix, d in GATE_BLOCKS:
        p = dprefix if spelling == "diffusers" else lprefix
        out.update({
            f"{p}.attn_adapter.to_q.weight": (d, d), f"{p}.attn_adapter.to_k.weight": (d, 768),
            f"{p}.attn_adapter.to_v.weight": (d, 768), f"{p}.attn_adapter.to_out.0.weight": (d, d),
            f"{p}.attn_adapter.to_out.0.bias": (d,), f"{p}.norm_adapter.weight": (d,),
            f"{p}.norm_adapter.bias": (d,), f"{p}.gate_adapter": (1,),
        })
    return out


# Spec sec. 3: every audio_encoder.* key of the MS-CLAP 2022 file.
CNN14_CHANNELS = [1, 64, 128, 256, 512, 1024, 2048]


def clap_audio_shapes():
    b = "audio_encoder.base."
    out = {
        b + "spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
        b + "spectrogram_extractor.stft.conv_imag.weight": (513, 1, 1024),
        b + "logmel_extractor.melW": (513, 64),
        b + "fc1.weight": (2048, 2048), b + "fc1.bias": (2048,),
        b + "fc_audioset.weight": (527, 2048), b + "fc_audioset.bias": (527,),
        "audio_encoder.projection.linear1.weight": (1024, 2048),
        "audio_encoder.projection.linear2.weight": (1024, 1024),
        "audio_encoder.projection.layer_norm.weight": (1024,),
        "audio_encoder.projection.layer_norm.bias": (1024,),
    }

    def bn(p, n):
        out.update({p + ".weight": (n,), p + ".bias": (n,), p + ".running_mean": (n,),
                    p + ".running_var": (n,), p + ".num_batches_tracked": ()})

    bn(b + "bn0", 64)
    for i in range(1, 7):
        cin, cout = CNN14_CHANNELS[i - 1], CNN14_CHANNELS[i]
        out[f"{b}conv_block{i}.conv1.weight"] = (cout, cin, 3, 3)
        out[f"{b}conv_block{i}.conv2.weight"] = (cout, cout, 3, 3)
        bn(f"{b}conv_block{i}.bn1", cout)
        bn(f"{b}conv_block{i}.bn2", cout)
    return out


# Audio axes the clip set must cover (brief of the fixture generator).
AUDIO_AXES = {
    "encoding": {"wav16", "wavf32", "flac", "mp3", "ogg"},
    "sample_rate": {8000, 22050, 44100, 48000, 96000},
    "channels": {1, 2, 6},
    "seconds": {0.5, 3.0, 10.0, 25.0},
    "content": {"tone220", "tone440", "tone880", "noise", "silence"},
}


def load_pickle(path):
    from sonic_diffusion.safe_load import load_pickle_weights

    return load_pickle_weights(path)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- official formats

def test_projector_matches_spec(fixture_dir):
    sd = load_pickle(fixture_dir.projector())
    assert isinstance(sd, dict)
    assert {k: tuple(v.shape) for k, v in sd.items()} == PROJECTOR_SHAPES
    assert len(sd) == 46
    assert sum(v.numel() for v in sd.values()) == PROJECTOR_PARAMS
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in sd.values())
    # A second named file exists for the other dataset and holds other values.
    gh = load_pickle(fixture_dir.projector("audio_projector_gh.pth"))
    assert gh.keys() == sd.keys()
    assert not torch.equal(gh["to_out_adapter.0.weight"], sd["to_out_adapter.0.weight"])


@pytest.mark.parametrize("spelling", ["diffusers", "ldm"])
def test_gates_match_spec(fixture_dir, spelling):
    sd = load_pickle(fixture_dir.gates(spelling=spelling))
    expected = gate_shapes(spelling)
    assert len(expected) == 80
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    n = sum(v.numel() for v in sd.values())
    assert round(n / 1e6, 2) == 28.49
    gates = torch.cat([v for k, v in sd.items() if k.endswith("gate_adapter")])
    assert gates.numel() == 10 and bool((gates >= 0.3).all()) and bool((gates <= 1.0).all())
    for k, v in sd.items():
        assert torch.isfinite(v).all(), k
        if k.endswith("to_q.weight") or k.endswith("to_k.weight"):
            assert 0.01 < float(v.std()) < 0.04, k


def test_gate_spellings_hold_equal_values(fixture_dir):
    d = load_pickle(fixture_dir.gates(spelling="diffusers"))
    ldm = load_pickle(fixture_dir.gates(spelling="ldm"))
    assert fixture_dir.gates(spelling="ldm") != fixture_dir.gates(spelling="diffusers")
    for dprefix, lprefix, _ in GATE_BLOCKS:
        for k in [k for k in d if k.startswith(dprefix + ".")]:
            assert torch.equal(d[k], ldm[lprefix + k[len(dprefix):]]), k


def test_clap_matches_spec(fixture_dir):
    full = load_pickle(fixture_dir.clap())
    assert list(full) == ["model"]
    sd = full["model"]
    expected = clap_audio_shapes()
    audio = {k: tuple(v.shape) for k, v in sd.items() if k.startswith("audio_encoder.")}
    assert audio == expected
    assert any(k.startswith("caption_encoder.") for k in sd) and "logit_scale" in sd
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            assert v.dtype == torch.int64 and v.dim() == 0, k
        else:
            assert v.dtype == torch.float32 and torch.isfinite(v).all(), k
        if k.endswith("running_var"):
            assert bool((v > 0).all()), k


def test_clap_front_end_is_the_real_one(fixture_dir):
    import librosa

    sd = load_pickle(fixture_dir.clap())["model"]
    b = "audio_encoder.base."
    mel = librosa.filters.mel(sr=44100, n_fft=1024, n_mels=64, fmin=50, fmax=14000).T
    # Bit for bit: the fixture takes the real front end's constants, which follow librosa step by step.
    np.testing.assert_array_equal(sd[b + "logmel_extractor.melW"].numpy(), mel)
    # DFT kernels as torchlibrosa's STFT builds them.
    window = librosa.filters.get_window("hann", 1024, fftbins=True)
    x, y = np.meshgrid(np.arange(1024), np.arange(1024))
    w = np.power(np.exp(-2 * np.pi * 1j / 1024), x * y)[:, :513] * window[:, None]
    np.testing.assert_array_equal(sd[b + "spectrogram_extractor.stft.conv_real.weight"][:, 0].numpy(),
                                  np.real(w).T.astype(np.float32))
    np.testing.assert_array_equal(sd[b + "spectrogram_extractor.stft.conv_imag.weight"][:, 0].numpy(),
                                  np.imag(w).T.astype(np.float32))


def _cnn14_embed(sd, wav):
    """A minimal Cnn14 + projection forward (spec sec. 3) over mono 44.1 kHz audio."""
    b = "audio_encoder.base."
    x = F.pad(wav[None, None], (512, 512), mode="reflect")
    re = F.conv1d(x, sd[b + "spectrogram_extractor.stft.conv_real.weight"], stride=320)
    im = F.conv1d(x, sd[b + "spectrogram_extractor.stft.conv_imag.weight"], stride=320)
    power = (re ** 2 + im ** 2).transpose(1, 2)
    logmel = 10 * torch.log10(torch.clamp(power @ sd[b + "logmel_extractor.melW"], min=1e-10))

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                            sd[p + ".bias"], training=False, eps=1e-5)

    h = bn(logmel[:, None].transpose(1, 3), b + "bn0").transpose(1, 3)
    for i in range(1, 7):
        p = f"{b}conv_block{i}"
        h = F.relu(bn(F.conv2d(h, sd[p + ".conv1.weight"], padding=1), p + ".bn1"))
        h = F.relu(bn(F.conv2d(h, sd[p + ".conv2.weight"], padding=1), p + ".bn2"))
        if i < 6:
            h = F.avg_pool2d(h, 2)
    h = h.mean(dim=3)
    h = h.max(dim=2).values + h.mean(dim=2)
    h = F.relu(F.linear(h, sd[b + "fc1.weight"], sd[b + "fc1.bias"]))
    q = "audio_encoder.projection."
    e1 = F.linear(h, sd[q + "linear1.weight"])
    e2 = F.linear(F.gelu(e1), sd[q + "linear2.weight"])
    out = F.layer_norm(e1 + e2, (1024,), sd[q + "layer_norm.weight"], sd[q + "layer_norm.bias"])
    return h, F.normalize(out, dim=-1), power


def test_clap_weights_give_finite_distinct_embeddings(fixture_dir):
    sd = load_pickle(fixture_dir.clap())["model"]
    t = torch.arange(44100) / 44100.0
    clips = {"tone": 0.5 * torch.sin(2 * np.pi * 440 * t),
             "noise": torch.rand(44100, generator=torch.Generator().manual_seed(0)) - 0.5,
             "quiet": 0.05 * torch.sin(2 * np.pi * 440 * t)}
    embs = {}
    with torch.no_grad():
        for name, wav in clips.items():
            h, e, power = _cnn14_embed(sd, wav)
            assert torch.isfinite(h).all() and torch.isfinite(e).all(), name
            assert float(h.std()) > 1e-3 and float(h.abs().max()) < 1e4, name
            embs[name] = e[0]
        # The stored kernels compute the same power spectrum as torch.stft.
        ref = torch.stft(clips["tone"], 1024, 320, 1024, torch.hann_window(1024, periodic=True),
                         center=True, pad_mode="reflect", return_complex=True).abs() ** 2
        _, _, power = _cnn14_embed(sd, clips["tone"])
        torch.testing.assert_close(power[0].T, ref, rtol=1e-3, atol=1e-2)
    assert float(embs["tone"] @ embs["noise"]) < 0.999
    # Gain changes the embedding (no loudness normalisation in the pipeline).
    assert float(embs["tone"] @ embs["quiet"]) < 0.99999


# ---------------------------------------------------------------- audio

def _decode(path):
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        channels = stream.codec_context.layout.nb_channels
        chunks = []
        for frame in container.decode(stream):
            a = frame.to_ndarray()
            a = a if frame.format.is_planar else a.reshape(-1, channels).T
            if a.dtype == np.int16:
                a = a.astype(np.float32) / 32768.0
            elif a.dtype == np.int32:
                a = a.astype(np.float32) / 2.0 ** 31
            chunks.append(a.astype(np.float32))
    return rate, channels, np.concatenate(chunks, axis=1)


def test_audio_set_covers_every_axis(fixture_dir):
    names = fixture_dir.audio_names()
    assert 12 <= len(names) <= 20 and len(set(names)) == len(names)
    specs = [fixture_dir.audio_spec(n) for n in names]
    for axis, values in AUDIO_AXES.items():
        assert {s[axis] for s in specs} == values, axis


@pytest.mark.parametrize("name", [c[0] for c in fixtures.AUDIO_CLIPS])
def test_audio_decodes_as_declared(fixture_dir, name):
    spec = fixture_dir.audio_spec(name)
    rate, channels, data = _decode(fixture_dir.audio(name))
    assert rate == spec["sample_rate"] and channels == spec["channels"]
    n = data.shape[1]
    lossy = spec["encoding"] in ("mp3", "ogg")
    if lossy:
        assert abs(n - spec["frames"]) <= max(2048, 0.01 * spec["frames"]), n
    else:
        assert n == spec["frames"]
        src = fixture_dir.audio_samples(name)
        tol = 1e-7 if spec["encoding"] == "wavf32" else 1.0 / 32767
        np.testing.assert_allclose(data, src, atol=tol)
    if spec["content"] == "silence":
        assert np.abs(data).max() < 1e-3
    elif spec["content"] == "noise":
        assert 0.2 < data.std() < 0.4  # uniform(-0.5, 0.5) has std 0.289
    else:
        mono = data[0] - data[0].mean()
        peak = np.argmax(np.abs(np.fft.rfft(mono))) * rate / n
        assert abs(peak - spec["frequency"]) <= 2.0 * rate / n + 1.0
        if not lossy:
            rms = np.sqrt((data ** 2).mean(axis=1))
            np.testing.assert_allclose(rms / rms[0], 1.0 - 0.1 * np.arange(channels), rtol=1e-2)


# ---------------------------------------------------------------- determinism and CLI

def test_same_seed_same_bytes(tmp_path):
    a = fixtures.FixtureSet(tmp_path / "a")
    b = fixtures.FixtureSet(tmp_path / "b")
    c = fixtures.FixtureSet(tmp_path / "c", seed=fixtures.DEFAULT_SEED + 1)
    assert a.projector() != b.projector()
    assert sha256(a.projector()) == sha256(b.projector())
    assert sha256(a.projector()) != sha256(c.projector())
    # The ogg muxer picks a random stream serial unless told to be bitexact.
    ogg = "silence_stereo_44k_0.5s.ogg"
    assert sha256(a.audio(ogg)) == sha256(b.audio(ogg))
    # Cached files are reused, not rebuilt.
    mtime = a.projector().stat().st_mtime_ns
    assert fixtures.FixtureSet(tmp_path / "a").projector().stat().st_mtime_ns == mtime


def test_cli_builds_targets(tmp_path):
    root = fixtures.__file__.rsplit("/testing/", 1)[0]
    res = subprocess.run(
        [sys.executable, "-m", "testing.fixtures", "--out", str(tmp_path),
         "--only", "projector", "controlnet_reduced", "tone440_mono_44k_3s.wav"],
        cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    v = tmp_path / fixtures.GENERATOR_VERSION
    assert (v / "audio_projector_landscape.pth").is_file()
    assert (v / "sd15_controlnet_reduced.safetensors").is_file()
    assert (v / "audio" / "tone440_mono_44k_3s.wav").is_file()
    # Same bytes in another process: safetensors metadata order must not vary.
    here = fixtures.FixtureSet(tmp_path / "here")
    assert sha256(here.controlnet(reduced=True)) == sha256(v / "sd15_controlnet_reduced.safetensors")


def test_fixtures_are_split_by_kind_and_run_from_anywhere(tmp_path):
    """One module per kind of file; the CLI works from another folder with PYTHONPATH."""
    import importlib
    import os

    for name, makes in (("models", "unet_state_dict"), ("adapter", "gates_state_dict"),
                        ("clap", "clap_state_dict"), ("audio", "write_audio"), ("common", "_save_safetensors")):
        assert hasattr(importlib.import_module(f"testing.fixtures.{name}"), makes)
    root = fixtures.__file__.rsplit("/testing/", 1)[0]
    res = subprocess.run([sys.executable, "-m", "testing.fixtures", "--out", str(tmp_path), "--only",
                          "gates"], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=root), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sha256(tmp_path / fixtures.GENERATOR_VERSION / "landscape.pt") == sha256(fixtures.FixtureSet(
        tmp_path / "in-process").gates())

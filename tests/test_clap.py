"""MS-CLAP 2022 audio tower: front end, embedding vs an independent reference, loaders."""
import importlib.util
import os
import pickle
import sys
import types
from pathlib import Path

import comfy.model_management
import numpy as np
import pytest
import torch

from sonic_diffusion import clap
from sonic_diffusion.clap_frontend import ClapFrontEnd, dft_kernels, slaney_mel_matrix
from sonic_diffusion.safe_load import UnsafeWeightsError, WeightsFileError, load_pickle_weights, load_weights_file

N = 441000


# ---------------------------------------------------------------- helpers

def _signals():
    rng = np.random.default_rng(1234)
    t = np.arange(N) / 44100.0
    tone = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 1e-3 * rng.standard_normal(N)
    noise = 0.1 * rng.standard_normal(N)
    return {"tone": tone.astype(np.float32), "noise": noise.astype(np.float32)}


def _msclap_reference():
    """msclap's own Cnn14 + Projection classes, loaded from the installed package's
    files without importing the package (its __init__ pulls in transformers and
    the text tower). Its imports of the text tower get stand-in modules; the model code runs as is."""
    spec = importlib.util.find_spec("msclap")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("msclap is not installed")
    root = os.path.join(spec.submodule_search_locations[0], "models")
    pkg = types.ModuleType("_msclap_ref")
    pkg.__path__ = [root]
    htsat = types.ModuleType("_msclap_ref.htsat")
    htsat.HTSATWrapper = None  # the 2023 tower; not used by Cnn14
    # clap.py's first import is the text tower's transformers: a stand-in module while it loads.
    tf = types.ModuleType("transformers")
    tf.AutoModel = None
    names = ("_msclap_ref", "_msclap_ref.htsat", "_msclap_ref.audio", "_msclap_ref.clap", "transformers")
    saved = {k: sys.modules.get(k) for k in names}
    sys.modules["_msclap_ref"] = pkg
    sys.modules["_msclap_ref.htsat"] = htsat
    sys.modules["transformers"] = tf
    try:
        aspec = importlib.util.spec_from_file_location("_msclap_ref.audio", os.path.join(root, "audio.py"))
        audio = importlib.util.module_from_spec(aspec)
        sys.modules["_msclap_ref.audio"] = audio
        aspec.loader.exec_module(audio)
        cspec = importlib.util.spec_from_file_location("_msclap_ref.clap", os.path.join(root, "clap.py"))
        clap_mod = importlib.util.module_from_spec(cspec)
        sys.modules["_msclap_ref.clap"] = clap_mod
        cspec.loader.exec_module(clap_mod)
        ns = vars(clap_mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base = audio.Cnn14(44100, 1024, 320, 64, 50, 14000, 527, 2048)
            self.projection = ns["Projection"](2048, 1024)

        def forward(self, x):
            return torch.nn.functional.normalize(self.projection(self.base(x)["embedding"]), dim=-1)

    return Reference


@pytest.fixture(scope="module")
def clap_path(fixture_dir):
    return fixture_dir.clap()


@pytest.fixture(scope="module")
def clap_sd(clap_path):
    sd, _ = load_weights_file(clap_path)
    return sd


@pytest.fixture(scope="module")
def model(clap_path):
    return clap.load_clap_file(clap_path)


@pytest.fixture(scope="module")
def reference(clap_sd):
    ref = _msclap_reference()()
    inner = clap_sd["model"]
    ref.load_state_dict({k[len("audio_encoder."):]: v for k, v in inner.items() if k.startswith("audio_encoder.")},
                        strict=True)
    return ref.eval()


@pytest.fixture(scope="module")
def batch():
    s = _signals()
    return torch.from_numpy(np.stack([s["tone"], s["noise"]]))


@pytest.fixture(scope="module")
def ours(model, batch):
    with torch.no_grad():
        return model(batch)


# ---------------------------------------------------------------- front end

def test_mel_matrix_matches_librosa_and_checkpoint(clap_sd):
    librosa = pytest.importorskip("librosa")
    m = librosa.filters.mel(sr=44100, n_fft=1024, n_mels=64, fmin=50, fmax=14000).T
    assert np.abs(slaney_mel_matrix().numpy() - m).max() < 1e-8
    inner = clap_sd["model"]
    assert torch.allclose(inner["audio_encoder.base.logmel_extractor.melW"], torch.from_numpy(m), atol=1e-8)
    real, imag = dft_kernels()
    assert (inner["audio_encoder.base.spectrogram_extractor.stft.conv_real.weight"] - real).abs().max() < 1e-6
    assert (inner["audio_encoder.base.spectrogram_extractor.stft.conv_imag.weight"] - imag).abs().max() < 1e-6


@pytest.mark.parametrize("name", ["tone", "noise"])
def test_frontend_matches_librosa(name):
    librosa = pytest.importorskip("librosa")
    x = _signals()[name]
    mel_m = librosa.filters.mel(sr=44100, n_fft=1024, n_mels=64, fmin=50, fmax=14000)
    spec = np.abs(librosa.stft(x.astype(np.float64), n_fft=1024, hop_length=320, win_length=1024, window="hann",
                               center=True, pad_mode="reflect")) ** 2
    ref = librosa.power_to_db(mel_m.astype(np.float64) @ spec, ref=1.0, amin=1e-10, top_db=None).T
    fe = ClapFrontEnd(torch.from_numpy(mel_m.T.copy()))
    got = fe(torch.from_numpy(x)[None])
    assert got.shape == (1, 1379, 64) and got.dtype == torch.float32
    err = np.abs(got[0].double().numpy() - ref).max()
    print(f"front end vs librosa ({name}): max {err:.2e} dB")
    assert err < 1e-3


def test_frontend_matches_official_torchlibrosa_on_noise(reference, model, batch):
    # The official front end (torchlibrosa conv STFT, float32) on a broadband signal.
    with torch.no_grad():
        x = batch[1:]
        ref = reference.base.logmel_extractor(reference.base.spectrogram_extractor(x))[:, 0]
        got = model.frontend(x)
    err = (got - ref).abs().max().item()
    print(f"front end vs torchlibrosa (noise): max {err:.2e} dB")
    assert err < 1e-3


# ---------------------------------------------------------------- whole tower

def test_embedding_matches_msclap_reference(reference, ours, batch):
    with torch.no_grad():
        ref = reference(batch)
    assert ours.shape == (2, 1024) and ours.dtype == torch.float32
    err = (ours - ref).abs().max().item()
    print(f"embedding vs msclap reference: max abs diff {err:.2e}")
    assert err < 1e-5
    assert torch.allclose(ours.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert (ours[0] - ours[1]).abs().max() > 1e-2  # the two inputs are told apart


def test_batch_rows_are_independent(model, batch, ours):
    with torch.no_grad():
        one = model(batch[1:])
    assert (one[0] - ours[1]).abs().max() < 1e-5


# ---------------------------------------------------------------- loader

def test_loader_accepts_inner_dict_and_module_prefix(clap_sd, model, batch, ours):
    inner = clap_sd["model"]
    m1 = clap.load_clap_state_dict(inner)
    assert torch.equal(m1.convs[3].weight, model.convs[3].weight)
    prefixed = {"module." + k: v for k, v in inner.items()}
    m2 = clap.load_clap_state_dict({"model": prefixed})
    assert torch.equal(m2.fc1.weight, model.fc1.weight)
    assert torch.equal(m2.bn0_shift, model.bn0_shift)


def test_fc_audioset_and_counters_are_optional(clap_sd, model):
    inner = {k: v for k, v in clap_sd["model"].items()
             if "fc_audioset" not in k and not k.endswith("num_batches_tracked")}
    m = clap.load_clap_state_dict(inner)
    assert torch.equal(m.linear2.weight, model.linear2.weight)


def test_missing_keys_are_named(clap_sd):
    inner = dict(clap_sd["model"])
    gone = ["audio_encoder.base.conv_block3.conv2.weight", "audio_encoder.projection.linear1.weight",
            "audio_encoder.base.bn0.running_var"]
    for k in gone:
        del inner[k]
    with pytest.raises(clap.ClapWeightsError) as e:
        clap.load_clap_state_dict(inner)
    msg = str(e.value)
    assert "missing 3" in msg
    for k in gone:
        assert k in msg


def test_many_missing_keys_are_summarised(clap_sd):
    inner = {k: v for k, v in clap_sd["model"].items() if "conv_block" not in k}
    with pytest.raises(clap.ClapWeightsError) as e:
        clap.load_clap_state_dict(inner)
    assert "in all" in str(e.value) and "missing 60" in str(e.value)


def test_shape_mismatch_is_named(clap_sd):
    inner = dict(clap_sd["model"])
    inner["audio_encoder.projection.linear2.weight"] = torch.zeros(512, 1024)
    with pytest.raises(clap.ClapWeightsError) as e:
        clap.load_clap_state_dict(inner)
    msg = str(e.value)
    assert "audio_encoder.projection.linear2.weight" in msg and "[1024, 1024]" in msg and "[512, 1024]" in msg


def test_caption_only_dict_is_refused_with_a_description(clap_sd):
    inner = {k: v for k, v in clap_sd["model"].items() if not k.startswith("audio_encoder.")}
    with pytest.raises(clap.ClapWeightsError) as e:
        clap.load_clap_state_dict({"model": inner})
    msg = str(e.value)
    assert "caption_encoder" in msg and "audio_encoder.base.conv_block1.conv1.weight" in msg


def test_bare_cnn14_dict_gets_a_hint(clap_sd):
    inner = {k[len("audio_encoder."):]: v for k, v in clap_sd["model"].items() if k.startswith("audio_encoder.")}
    with pytest.raises(clap.ClapWeightsError, match="audio_encoder"):
        clap.load_clap_state_dict(inner)


def test_wrong_metadata_format_is_refused(clap_sd):
    with pytest.raises(clap.ClapWeightsError, match="sonicdiffusion-adapter"):
        clap.load_clap_state_dict(clap_sd, metadata={"format": "sonicdiffusion-adapter"})
    with pytest.raises(clap.ClapWeightsError, match="version"):
        clap.load_clap_state_dict(clap_sd, metadata={"format": clap.FORMAT, "format_version": "9"})


class _Payload:
    marker = None

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"audio_encoder.x": _Payload()}}, f, protocol=2)
    assert not marker.exists()
    with pytest.raises(UnsafeWeightsError, match="refused for safety"):
        load_pickle_weights(path)
    with pytest.raises(UnsafeWeightsError):
        clap.load_clap_file(path)
    assert not marker.exists()
    # The same payload inside a torch.save zip file.
    path2 = tmp_path / "evil2.pt"
    torch.save({"w": torch.zeros(2), "x": _Payload()}, path2)
    with pytest.raises(UnsafeWeightsError):
        load_weights_file(path2)
    assert not marker.exists()
    # Control: the payload is live; a plain unpickler does run it.
    with open(path, "rb") as f:
        pickle.load(f).clear()
    assert marker.exists()


def test_damaged_files_give_clear_errors(tmp_path, clap_path):
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(Path(clap_path).read_bytes()[:4096])
    with pytest.raises(WeightsFileError, match="damaged or truncated"):
        load_weights_file(trunc)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsFileError, match=r"not a valid \.safetensors"):
        load_weights_file(bad)
    with pytest.raises(WeightsFileError, match="not found"):
        load_weights_file(tmp_path / "nope.pth")


def test_converter_roundtrip(tmp_path, clap_path, model, batch, ours):
    dst = tmp_path / "clap_audio.safetensors"
    clap.convert_clap_to_safetensors(clap_path, dst)
    sd, meta = load_weights_file(dst)
    assert meta["format"] == "sonic-clap-audio" and meta["format_version"] == "1"
    assert all(k.startswith("audio_encoder.") for k in sd)
    assert not any("fc_audioset" in k or "caption_encoder" in k for k in sd)
    assert set(sd) == set(clap.audio_tower_shapes())
    m = clap.load_clap_state_dict(sd, metadata=meta)
    for a, b in zip(m.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(FileExistsError):
        clap.convert_clap_to_safetensors(clap_path, dst)
    half = tmp_path / "clap_audio_fp16.safetensors"
    clap.convert_clap_to_safetensors(clap_path, half, dtype=torch.float16)
    sd16, meta16 = load_weights_file(half)
    assert sd16["audio_encoder.base.conv_block6.conv2.weight"].dtype == torch.float16
    assert sd16["audio_encoder.base.logmel_extractor.melW"].dtype == torch.float32
    assert os.path.getsize(half) < 0.6 * os.path.getsize(dst)
    clap.convert_clap_to_safetensors(clap_path, half, dtype=torch.float16, overwrite=True)
    m16 = clap.load_clap_state_dict(sd16, metadata=meta16)
    with torch.no_grad():
        e16 = m16(batch)
    assert (e16 - ours).abs().max() < 5e-3


# ---------------------------------------------------------------- runtime wrapper

def test_clap_encoder_runtime(model, batch, ours):
    enc = clap.ClapEncoder(model)
    assert enc.storage_dtype == torch.float32  # CPU runs float32
    seen = []
    out = enc.encode(batch, progress=seen.append)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (2, 1024)
    assert (out - ours).abs().max() < 1e-6
    assert seen[-1] == 2 and seen == sorted(seen)

    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 2:
            raise comfy.model_management.InterruptProcessingException()

    enc.batch_size = 1
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        enc.encode(batch, check_interrupt=interrupt)
    with pytest.raises(ValueError, match="441000"):
        enc.encode(torch.zeros(1, 1000))

"""What a user can feed the pack: bad audio, wrong or hostile files, wrong models,
repeated queues, interrupts. Each case ends in a clear error naming the node and the
fix, or in a documented result; never a crash, a NaN image or foreign code running."""
import gc
import pickle
from pathlib import Path

import av
import comfy.model_management
import comfy.model_patcher
import numpy as np
import psutil
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_generation import audio_graph, names  # noqa: F401  (module fixture reused)

import nodes
from sonic_diffusion.patch import AudioBatchError, _rows_for_chunk

NODE = nodes.NODE_CLASS_MAPPINGS


def _write(path, samples, rate, codec="pcm_s16le", fmt=None, layout=None):
    """samples [C, T] float in -1..1 -> an audio file through PyAV."""
    channels = samples.shape[0]
    layout = layout or {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        plane = np.ascontiguousarray(samples.T.reshape(1, -1).astype(np.float32))
        sample_fmt = "flt"
        if codec.startswith("pcm_s16"):
            plane = np.clip(plane * 32767, -32768, 32767).astype(np.int16)
            sample_fmt = "s16"
        frame = av.AudioFrame.from_ndarray(plane, format=sample_fmt, layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _tone(rate, seconds, channels=1, amp=0.5, freq=440.0):
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([amp * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)])


@pytest.fixture(scope="module")
def encoder(host, fixture_dir):
    name = host.link_model("audio_encoders", fixture_dir.clap())
    return NODE["SonicAudioEncoderLoader"].execute(clap_name=name).result[0]


def _encode(encoder, audio):
    return NODE["SonicAudioEncode"].execute(audio_encoder=encoder, audio=audio, window="center",
                                            offset=0.0).result[0]


def _load(host, path):
    name = host.put_input(path)
    return NODE["SonicLoadAudio"].execute(audio=name, start_time=0.0, duration=0.0, gain_db=0.0).result[0]


# ------------------------------------------------------------------------- audio

@pytest.mark.parametrize("case", ["empty", "not_audio", "truncated"])
def test_bad_audio_files_name_the_node(host, tmp_path, case):
    path = tmp_path / f"bad_{case}.wav"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "not_audio":
        path.write_bytes(b"this is a text file with an audio extension\n" * 50)
    else:
        good = _write(tmp_path / "good.wav", _tone(44100, 1.0), 44100)
        path.write_bytes(good.read_bytes()[:60])  # the header and a few bytes
    with pytest.raises(ValueError, match=r"Load Audio \(Sonic\):"):
        _load(host, path)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000, 192000])
def test_every_rate_gives_a_finite_unit_embedding(host, encoder, tmp_path, rate):
    audio = _load(host, _write(tmp_path / f"tone_{rate}.wav", _tone(rate, 1.5, 2), rate))
    assert audio["sample_rate"] == rate
    e = _encode(encoder, audio)
    assert e.shape == (1, 1024) and e.isfinite().all()
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(1), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("codec", "ext", "fmt", "channels"), [
    ("pcm_s16le", "wav", None, 6), ("pcm_f32le", "wav", None, 1), ("flac", "flac", None, 2),
    ("aac", "m4a", "mp4", 2), ("libmp3lame", "mp3", None, 2)])
def test_containers_integer_and_float_pcm_and_channel_counts(host, encoder, tmp_path, codec, ext, fmt, channels):
    path = tmp_path / f"clip_{codec}.{ext}"
    try:
        _write(path, _tone(44100, 2.0, channels), 44100, codec=codec, fmt=fmt)
    except (av.error.FFmpegError, ValueError) as e:  # an encoder this PyAV lacks is no pack failure
        pytest.skip(f"PyAV cannot write {codec}: {e}")
    audio = _load(host, path)
    assert audio["waveform"].shape[1] == channels
    assert _encode(encoder, audio).isfinite().all()


def test_silence_loud_clipping_and_float16_are_defined(encoder):
    silence = {"waveform": torch.zeros(1, 2, 44100), "sample_rate": 44100}
    loud = {"waveform": torch.from_numpy(np.clip(_tone(44100, 2.0, 2, amp=30.0), -1, 1) * 8).float()[None],
            "sample_rate": 44100}
    half = {"waveform": torch.from_numpy(_tone(48000, 2.0, 2)).half()[None], "sample_rate": 48000}
    for audio in (silence, loud, half):
        before = audio["waveform"].clone()
        e = _encode(encoder, audio)
        assert e.isfinite().all() and e.shape == (1, 1024)
        assert torch.equal(audio["waveform"], before)  # the AUDIO value is never mutated
    # The same clip in fp32 and fp16 encodes alike (fp16 input is computed in fp32).
    full = {"waveform": half["waveform"].float(), "sample_rate": 48000}
    torch.testing.assert_close(_encode(encoder, half), _encode(encoder, full), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("waveform", "message"), [
    (torch.zeros(1, 1, 0), "empty|zero|no samples"),
    (torch.full((1, 1, 1000), float("nan")), "NaN"),
    (torch.full((1, 1, 1000), float("inf")), "Inf|inf"),
])
def test_unusable_waveforms_are_refused_by_the_encode_node(encoder, waveform, message):
    with pytest.raises(ValueError, match=r"Audio Encode \(Sonic\):") as info:
        _encode(encoder, {"waveform": waveform, "sample_rate": 44100})
    assert any(m in str(info.value) for m in message.split("|"))


def test_a_batch_of_clips_encodes_row_by_row(encoder):
    """A batch (as core nodes make it: equal length, shorter clips padded) gives one
    embedding per row; each equals that clip encoded alone."""
    rows = torch.from_numpy(np.stack([_tone(44100, 2.0, 1, freq=f)[0] for f in (220, 440, 880)])).float()
    batch = {"waveform": rows[:, None, :], "sample_rate": 44100}
    e = _encode(encoder, batch)
    single = _encode(encoder, {"waveform": rows[1:2, None, :], "sample_rate": 44100})
    assert e.shape == (3, 1024)
    torch.testing.assert_close(e[1:2], single, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ weight files

class _Payload:
    marker = None

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _hostile(path, marker):
    _Payload.marker = str(marker)
    with open(path, "wb") as f:
        pickle.dump({"audio_emb_projection.0.weight": _Payload()}, f)
    return path


def test_hostile_pickles_never_run_in_any_loader(host, tmp_path):
    marker = tmp_path / "PWNED"
    evil = host.link_model("sonic_diffusion", _hostile(tmp_path / "evil_adapter.pt", marker))
    clap_evil = host.link_model("audio_encoders", _hostile(tmp_path / "evil_clap.pth", marker))
    with pytest.raises(ValueError, match=r"Sonic Adapter Loader: .*refused for safety"):
        NODE["SonicAdapterLoader"].execute(adapter_name=evil, projector_name="bundled (from the adapter file)")
    with pytest.raises(ValueError, match=r"Audio Encoder Loader \(Sonic\): .*refused for safety"):
        NODE["SonicAudioEncoderLoader"].execute(clap_name=clap_evil)
    assert not marker.exists()


def test_hostile_projector_is_refused(host, fixture_dir, tmp_path):
    marker = tmp_path / "PWNED2"
    gates = host.link_model("sonic_diffusion", fixture_dir.gates())
    evil = host.link_model("sonic_diffusion", _hostile(tmp_path / "evil_projector.pth", marker))
    with pytest.raises(ValueError, match="refused for safety"):
        NODE["SonicAdapterLoader"].execute(adapter_name=gates, projector_name=evil)
    assert not marker.exists()


def test_wrong_kind_of_file_in_each_loader(host, fixture_dir):
    clap = host.link_model("sonic_diffusion", fixture_dir.clap(), "clap_in_wrong_folder.pth")
    proj = host.link_model("sonic_diffusion", fixture_dir.projector())
    gates_as_clap = host.link_model("audio_encoders", fixture_dir.gates(), "landscape_as_clap.pt")
    with pytest.raises(ValueError, match=r"Sonic Adapter Loader: .*not a SonicDiffusion adapter"):
        NODE["SonicAdapterLoader"].execute(adapter_name=clap, projector_name=proj)
    with pytest.raises(ValueError, match=r"Sonic Adapter Loader: .*is an audio projector"):
        NODE["SonicAdapterLoader"].execute(adapter_name=proj, projector_name=proj)
    with pytest.raises(ValueError, match=r"Audio Encoder Loader \(Sonic\):"):
        NODE["SonicAudioEncoderLoader"].execute(clap_name=gates_as_clap)


def test_truncated_safetensors_and_wrong_shapes(host, fixture_dir, tmp_path):
    from sonic_diffusion import checkpoints
    from sonic_diffusion.safe_load import load_weights_file

    proj, _ = load_weights_file(fixture_dir.projector())
    gates, _ = load_weights_file(fixture_dir.gates())
    model = checkpoints.build_adapter_model(checkpoints.projector_state(proj), checkpoints.gates_state(gates))
    good = tmp_path / "bundle_ok.safetensors"
    checkpoints.save_atomic_safetensors(checkpoints.bundle_tensors(model), good, checkpoints.bundle_metadata())
    cut = tmp_path / "bundle_cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    name = host.link_model("sonic_diffusion", cut)
    with pytest.raises(ValueError, match=r"Sonic Adapter Loader: .*(damaged|truncated)"):
        NODE["SonicAdapterLoader"].execute(adapter_name=name, projector_name="bundled (from the adapter file)")
    bad = dict(proj)
    bad["audio_emb_projection.12.weight"] = torch.zeros(77, 77, 9)
    torch.save(bad, tmp_path / "proj_bad.pth")
    name = host.link_model("sonic_diffusion", tmp_path / "proj_bad.pth")
    gname = host.link_model("sonic_diffusion", fixture_dir.gates())
    with pytest.raises(ValueError, match=r"audio_emb_projection.12.weight has shape \[77, 77, 9\]"):
        NODE["SonicAdapterLoader"].execute(adapter_name=gname, projector_name=name)


# ------------------------------------------------------------------------ models

def _meta_unet(context_dim):
    """An SD1-topology UNet whose text context is SD2-wide (1024) or SDXL-wide (2048),
    on the meta device (no memory)."""
    from testing.fixtures import SD15_UNET_CONFIG
    from testing.fixtures import _meta_unet as meta_unet

    class Holder(torch.nn.Module):
        pass

    holder = Holder()
    holder.diffusion_model = meta_unet(dict(SD15_UNET_CONFIG, context_dim=context_dim))
    return comfy.model_patcher.ModelPatcher(holder, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


@pytest.mark.parametrize(("context", "hint"), [(1024, "SD 2.x"), (2048, "SDXL")])
def test_sd2_and_sdxl_like_models_are_refused_before_sampling(host, fixture_dir, context, hint):
    proj = host.link_model("sonic_diffusion", fixture_dir.projector())
    gates = host.link_model("sonic_diffusion", fixture_dir.gates())
    adapter = NODE["SonicAdapterLoader"].execute(adapter_name=gates, projector_name=proj).result[0]
    model = _meta_unet(context)
    with pytest.raises(ValueError, match=rf"Apply Sonic Adapter: .*{context}-wide .*{hint}"):
        NODE["SonicApplyAdapter"].execute(model=model, sonic_adapter=adapter, audio_embeds=torch.ones(1, 1024) / 32,
                                          strength=1.0, start_percent=0.0, end_percent=1.0)


def test_reduced_unet_without_the_adapter_blocks_is_refused(host, fixture_dir):
    import comfy.sd

    proj = host.link_model("sonic_diffusion", fixture_dir.projector())
    gates = host.link_model("sonic_diffusion", fixture_dir.gates())
    adapter = NODE["SonicAdapterLoader"].execute(adapter_name=gates, projector_name=proj).result[0]
    model, *_ = comfy.sd.load_checkpoint_guess_config(str(fixture_dir.reduced_checkpoint()), output_vae=False,
                                                      output_clip=False)
    with pytest.raises(ValueError, match=r"does not have the SD 1\.x UNet layout"):
        NODE["SonicApplyAdapter"].execute(model=model, sonic_adapter=adapter, audio_embeds=torch.ones(1, 1024) / 32,
                                          strength=1.0, start_percent=0.0, end_percent=1.0)


# ----------------------------------------------------------- batches (property)

@settings(max_examples=60, deadline=None)
@given(embeds=st.integers(1, 9), latents=st.integers(1, 9))
def test_batch_mapping_rule_holds_for_any_sizes(embeds, latents):
    tokens = torch.arange(embeds, dtype=torch.float32).view(embeds, 1, 1).expand(embeds, 77, 768)
    if embeds == 1 or embeds == latents:
        rows = _rows_for_chunk(tokens, latents, "Apply Sonic Adapter")
        assert rows.shape[0] == latents
        expected = torch.zeros(latents) if embeds == 1 else torch.arange(latents, dtype=torch.float32)
        assert torch.equal(rows[:, 0, 0], expected)
    else:
        with pytest.raises(AudioBatchError,
                           match=f"Apply Sonic Adapter: {embeds} audio embeddings for a batch of {latents} latents"):
            _rows_for_chunk(tokens, latents, "Apply Sonic Adapter")


# ------------------------------------------------------------------- repetition

def test_twenty_queues_keep_memory_flat_and_the_base_model_unchanged(host, names):

    from testing.unet import unet_call, unet_inputs

    host.new_executor()
    rss = []
    graph = audio_graph(names)
    graph["ks"]["inputs"]["steps"] = 1  # the CPU is slow; one step still runs the whole patched UNet
    for seed in range(20):
        graph["ks"]["inputs"]["seed"] = seed  # only the seed changes, like a user re-queueing
        run = host.run(graph)
        gc.collect()
        rss.append(psutil.Process().memory_info().rss)
        if seed == 0:
            base = run.outputs("ckpt")[0]
            patch_lists = base.model_options["transformer_options"].get("patches", {})
            x, t, ctx, _ = unet_inputs(1)
            reference = unet_call(base, x, t, ctx, [0])
    base = run.outputs("ckpt")[0]
    assert base.model_options["transformer_options"].get("patches", {}) == patch_lists == {}
    assert torch.equal(unet_call(base, x, t, ctx, [0]), reference)
    patched = run.outputs("apply")[0]
    assert len(patched.model_options["transformer_options"]["patches"]["attn2_output_patch"]) == 1
    growth = max(rss[5:]) - rss[5]
    assert growth < 150 * 2 ** 20, f"RSS grew by {growth / 2 ** 20:.0f} MiB over 15 queues"


# --------------------------------------------------------------------- interrupt

def test_interrupt_during_batch_encoding_stops_within_one_step(encoder):
    clips = {"waveform": torch.from_numpy(np.stack([_tone(44100, 1.0, 1)[0]] * 8)).float()[:, None, :],
             "sample_rate": 44100}
    calls = []
    original = encoder.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        comfy.model_management.interrupt_current_processing(True)  # the user presses Cancel
        return original(*args, **kwargs)

    encoder.model.forward = counting_forward
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _encode(encoder, clips)
    finally:
        encoder.model.forward = original
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 1

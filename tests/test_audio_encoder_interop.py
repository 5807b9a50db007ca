"""Core ComfyUI's audio-encoder types (comfy_extras/nodes_audio_encoder.py, the same in 0.3.75
and 0.33.0): Audio Encoder Loader (Sonic)'s second output is an AUDIO_ENCODER that core's
"Audio Encoder Encode" takes (it calls encode_audio(waveform, sample_rate)), and Apply Sonic
Adapter takes the resulting AUDIO_ENCODER_OUTPUT on audio_embeds and negative_audio_embeds.
Through ComfyUI's own validator and executor; runs on both hosts (scripts/run_tests.sh)."""
import sys

import pytest
import torch
from conftest import PACK_MODULE, TORCHAUDIO_BLOCKED

import nodes
from testing.graphs import audio_graph, link_audio_graph_files

AUDIO_A = "tone440_mono_44k_3s.wav"
AUDIO_B = "noise_stereo_48k_10s_f32.wav"


@pytest.fixture(scope="module")
def names(host, fixture_dir):
    if TORCHAUDIO_BLOCKED and "AudioEncoderEncode" not in nodes.NODE_CLASS_MAPPINGS:
        # The no-torchaudio job: core's audio-encoder module imports torchaudio (0.3.75, 0.33.0),
        # so core's node is not there to feed; the pack's side needs no torchaudio.
        pytest.skip("core's Audio Encoder Encode needs torchaudio, blocked in this job")
    return link_audio_graph_files(host, fixture_dir, AUDIO_A, AUDIO_B)


def through_core(names, negative=False):
    """The audio graph with core's Audio Encoder Encode between the pack's CLAP and the adapter."""
    g = audio_graph(names)
    g["core_enc"] = {"class_type": "AudioEncoderEncode", "inputs": {"audio_encoder": ["clap", 1], "audio": ["load_a", 0]}}
    g["apply"]["inputs"]["audio_embeds"] = ["core_enc", 0]
    if negative:
        g["load_b"] = {"class_type": "SonicLoadAudio", "inputs": {"audio": names["b"], "start_time": 0.0,
                                                                  "duration": 0.0, "gain_db": 0.0}}
        g["core_neg"] = {"class_type": "AudioEncoderEncode", "inputs": {"audio_encoder": ["clap", 1],
                                                                        "audio": ["load_b", 0]}}
        g["apply"]["inputs"]["negative_audio_embeds"] = ["core_neg", 0]
    return g


def ours_with_negative(names):
    """The pack's own path, with audio B as the negative audio."""
    g = audio_graph(names)
    g["load_b"] = {"class_type": "SonicLoadAudio", "inputs": {"audio": names["b"], "start_time": 0.0,
                                                              "duration": 0.0, "gain_db": 0.0}}
    g["enc_b"] = {"class_type": "SonicAudioEncode", "inputs": {"audio_encoder": ["clap", 0], "audio": ["load_b", 0],
                                                               "window": "center", "offset": 0.0}}
    g["apply"]["inputs"]["negative_audio_embeds"] = ["enc_b", 0]
    return g


def test_the_core_encode_node_gives_the_packs_embeddings_and_image(host, names):
    """Positive and negative audio through core's node: the same embeddings (3 s mono at
    44.1 kHz and 10 s stereo at 48 kHz) and the same image as through Audio Encode (Sonic).
    (One pair of graphs for both inputs: each run costs 20-45 s on a CPU.)"""
    run = host.run(ours_with_negative(names))  # read before the next run replaces the executor's cache
    ours = {k: run.outputs(k)[0] for k in ("enc_a", "enc_b", "dec")}
    core = host.run(through_core(names, negative=True))
    for core_node, our_node in (("core_enc", "enc_a"), ("core_neg", "enc_b")):
        out = core.outputs(core_node)[0]
        assert set(out) >= {"encoded_audio", "audio_samples"}
        assert out["encoded_audio"].shape == (1, 1024)
        assert torch.equal(out["encoded_audio"], ours[our_node]), core_node
    assert torch.equal(core.outputs("dec")[0], ours["dec"])


def test_the_loader_output_and_adapter_input_types():
    """What the web UI connects by: the loader's second output is core's AUDIO_ENCODER, and
    audio_embeds takes the pack's SONIC_AUDIO_EMBEDS or core's AUDIO_ENCODER_OUTPUT."""
    loader = nodes.NODE_CLASS_MAPPINGS["SonicAudioEncoderLoader"]
    apply = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"]
    assert list(loader.RETURN_TYPES) == ["SONIC_AUDIO_ENCODER", "AUDIO_ENCODER"]
    inputs = apply.INPUT_TYPES()
    for name in ("audio_embeds", "negative_audio_embeds"):  # both optional (prompts may carry the audio)
        assert set(inputs["optional"][name][0].split(",")) == {"SONIC_AUDIO_EMBEDS", "AUDIO_ENCODER_OUTPUT"}
    conditioning = nodes.NODE_CLASS_MAPPINGS["SonicAudioConditioning"].INPUT_TYPES()
    assert set(conditioning["required"]["audio_embeds"][0].split(",")) == {"SONIC_AUDIO_EMBEDS", "AUDIO_ENCODER_OUTPUT"}


def test_another_encoders_output_is_refused_with_the_fix():
    """A wav2vec2 AUDIO_ENCODER_OUTPUT (core's own encoders: per-frame features) is not a CLAP
    embedding: Apply Sonic Adapter names itself, the input and what to connect."""
    common = sys.modules[PACK_MODULE.__name__ + ".nodes.common"]
    wav2vec = {"encoded_audio": torch.zeros(1, 49, 1024), "encoded_audio_all_layers": [], "audio_samples": 16000}
    with pytest.raises(common.NodeInputError, match=r"Apply Sonic Adapter: audio_embeds .*Audio Encoder Loader \(Sonic\)"):
        common.audio_embeds_value("Apply Sonic Adapter", "audio_embeds", wav2vec)
    emb = torch.ones(2, 1024)
    assert common.audio_embeds_value("Apply Sonic Adapter", "audio_embeds", emb) is emb

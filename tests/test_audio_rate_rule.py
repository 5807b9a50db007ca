"""One sample-rate rule for every node of the pack that takes AUDIO (nodes/common.audio_value
over audio_prep.check_sample_rate): a whole number of Hz within 1-768 kHz, refused
otherwise with the node's name before any work; Load Audio (Sonic) applies the same
rule at decode time (tests/test_audio_budget.py)."""
import pytest
import torch
from conftest import PACK_MODULE

import nodes

BAD_RATES = [0, -44100, 999, 768001, 1_000_003, 44100.5, "44100", True, float("nan")]


def _audio_nodes():
    """Every registered node of the pack with an AUDIO input, found from its schema."""
    found = {}
    for key, cls in nodes.NODE_CLASS_MAPPINGS.items():
        if not cls.__module__.startswith(PACK_MODULE.__name__) or not hasattr(cls, "define_schema"):
            continue
        schema = cls.define_schema()
        if any(getattr(i, "io_type", None) == "AUDIO" for i in schema.inputs):
            found[key] = (cls, schema)
    return found


AUDIO_NODES = _audio_nodes()


def test_the_rule_covers_every_audio_node():
    assert {"SonicAudioEncode", "SonicAudioEncodeFrames", "SonicLoudnessCurve"} <= set(AUDIO_NODES)


def _kwargs(schema, audio):
    """The node's defaults (None where an input has none, e.g. the encoder) and the audio."""
    kw = {i.id: getattr(i, "default", None) for i in schema.inputs}
    kw.update({i.id: audio for i in schema.inputs if i.io_type == "AUDIO"})
    return kw


@pytest.mark.parametrize("key", sorted(AUDIO_NODES))
@pytest.mark.parametrize("rate", BAD_RATES, ids=repr)
def test_a_rate_outside_the_rule_is_refused_naming_the_node(key, rate):
    cls, schema = AUDIO_NODES[key]
    audio = {"waveform": torch.zeros(1, 1, 4000), "sample_rate": rate}
    with pytest.raises(ValueError, match=rf"^{schema.display_name.replace('(', r'[(]').replace(')', r'[)]')}: "
                                         r"(the audio's )?sample rate .*(1000-768000 Hz|whole number of Hz)"):
        cls.execute(**_kwargs(schema, audio))


@pytest.mark.parametrize("rate", [1000, 768000])
def test_rates_at_the_limits_are_accepted(rate):
    cls, schema = AUDIO_NODES["SonicLoudnessCurve"]
    audio = {"waveform": torch.rand(1, 1, 2 * rate) - 0.5, "sample_rate": rate}
    curve = cls.execute(**_kwargs(schema, audio)).result[0]
    assert torch.as_tensor(curve).isfinite().all()

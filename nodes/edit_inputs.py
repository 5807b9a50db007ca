"""Inputs shared by Audio Edit (Sonic) and the Sonic Edit Guider / Sonic DDIM Edit Sampler pair,
so the one-node edit and the SamplerCustomAdvanced form cannot drift apart."""
from comfy_api.latest import io


def cfg_input():
    return io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                          tooltip="Guidance scale for text and audio together (7.5 in the authors' demo).")


def injection_inputs():
    return [
        io.Float.Input("attention_injection", default=0.8, min=0.0, max=1.0, step=0.05,
                       tooltip="Fraction of the steps, from the start, in which the source's self-attention "
                               "queries and keys are injected (output blocks 4-11). Higher keeps more of "
                               "the source layout."),
        io.Float.Input("feature_injection", default=0.8, min=0.0, max=1.0, step=0.05,
                       tooltip="Fraction of the steps, from the start, in which the source's ResBlock "
                               "features are injected (output blocks 4 and 5). Higher keeps more of the "
                               "source structure."),
    ]

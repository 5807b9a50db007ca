"""Two-stage training of SonicDiffusion adapters (docs/design.md section 8).

    python -m sonic_diffusion.train check  --data DIR
    python -m sonic_diffusion.train stage1 --checkpoint SD.safetensors --clap CLAP.pth --data DIR --out OUT1
    python -m sonic_diffusion.train stage2 --checkpoint SD.safetensors --clap CLAP.pth --data DIR --out OUT2 \
        --projector OUT1/projector.safetensors

Stage 1 trains the audio projector (InfoNCE over classes + per-token weighted MSE to
the CLIP-L tokens of the pair's caption); stage 2 trains the gated audio attention
(optionally the projector too) with the epsilon-prediction loss through ComfyUI's own
UNet and the same SonicAudioPatch that inference uses. See docs/training.md.

Importing this package needs ComfyUI's `comfy` importable: the CLI bootstraps it.
"""

"""Evaluation of audio-to-image generation: AIS, IIS, AIC and FID (docs/design.md section 9).

``python -m sonic_diffusion.evaluate --help``; see docs/evaluation.md. The metric
code (``metrics``) is independent of the models; ``run.evaluate`` ties files,
cached embeddings and metrics together; ``generate`` renders the images through
the pack's own ComfyUI graph first (``--generate``).
"""

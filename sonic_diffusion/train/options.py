"""The command line of `python -m sonic_diffusion.train` (see cli.py for what it runs)."""
import argparse
from pathlib import Path

# -- arguments ------------------------------------------------------------------------

def _positive_int(v):
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return n


def _probability(v):
    x = float(v)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return x


def build_parser():
    p = argparse.ArgumentParser(prog="python -m sonic_diffusion.train",
                                description="Train SonicDiffusion projectors (stage 1) and adapters (stage 2) "
                                            "from a folder of audio-image pairs. See docs/training.md.")
    sub = p.add_subparsers(dest="command", required=True)
    chk = sub.add_parser("check", help="report the pairs, missing halves, unreadable files and classes of a folder")
    chk.add_argument("--data", type=Path, required=True, help="the folder of x.wav + x.png|jpg (+ x.txt) pairs")
    chk.add_argument("--json", action="store_true", help="print the report as JSON")
    chk.add_argument("--no-decode", action="store_true", help="only look at file names (fast; no decode test)")

    common = _common_options()
    _add_stage1(sub.add_parser("stage1", parents=[common], help="train the audio projector",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    _add_stage2(sub.add_parser("stage2", parents=[common], help="train the gated audio attention adapters",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    return p


def _common_options():
    """The options both stages take: data and models, optimisation, output."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("data and models")
    g.add_argument("--data", type=Path, required=True, help="folder of pairs x.wav + x.png|jpg, optional x.txt "
                   "captions and labels.csv (stem,class)")
    g.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, log, final weights)")
    g.add_argument("--checkpoint", type=Path, required=True, help="SD 1.x checkpoint (.safetensors/.ckpt): its "
                   "text encoder gives the caption tokens; in stage 2 its UNet and VAE are used")
    g.add_argument("--clap", type=Path, required=True, help="MS-CLAP 2022 weights (CLAP_weights_2022.pth or a "
                   "converted .safetensors)")
    g.add_argument("--cache", type=Path, default=None, help="feature cache folder (default: DATA/.sonic_cache)")
    g.add_argument("--window", choices=["center", "start"], default="center",
                   help="which 10 s of longer clips CLAP hears (as Audio Encode (Sonic)); default center")
    g.add_argument("--init", type=Path, nargs="+", default=None, metavar="FILE",
                   help="start from these weights: stage 1 a projector (or bundle); stage 2 a bundle or the "
                        "official pair GATES PROJECTOR (default: fresh weights, gates 0)")
    t = common.add_argument_group("optimisation")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps (or give --epochs)")
    t.add_argument("--epochs", type=float, default=None, help="passes over the data (used when --steps is absent)")
    t.add_argument("--batch-size", type=_positive_int, default=6, help="per process (paper: 6)")
    t.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay (0: Adam)")
    t.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                   help="adam (AdamW; the paper's Adam with --weight-decay 0) or plain sgd")
    t.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up")
    t.add_argument("--max-grad-norm", type=float, default=0.0, help="clip the gradient norm (0: off)")
    t.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="compute precision; weights being trained stay float32 (auto: bf16 on GPUs that have "
                        "it, else fp16 on GPUs, fp32 on the CPU)")
    t.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute UNet activations in the backward pass (stage 2: less memory, ~30%% slower)")
    t.add_argument("--device", default="auto",
                   help="auto: the device ComfyUI picks (CUDA, MPS, XPU, DirectML... or the CPU); or a torch "
                        "device name such as cpu or cuda:1")
    t.add_argument("--repeat-first-batch", action="store_true",
                   help="sanity check: train on the first batch only, with the same noise and drops every step "
                        "(the loss should fall towards 0)")
    o = common.add_argument_group("output")
    o.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (0: only at the end)")
    o.add_argument("--keep-checkpoints", type=int, default=2, help="how many checkpoints to keep (0: all)")
    o.add_argument("--log-every", type=_positive_int, default=10, help="CSV/TensorBoard row every N steps")
    o.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    o.add_argument("--overwrite", action="store_true", help="replace earlier output in --out")
    o.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard (needs tensorboard)")
    o.add_argument("--quiet", action="store_true", help="only warnings")
    return common


def _add_stage1(s1):
    s1.add_argument("--negatives", type=int, default=128,
                    help="InfoNCE negatives per step (fewer when the dataset is smaller)")
    s1.add_argument("--temperature", type=float, default=0.07, help="InfoNCE temperature")
    s1.add_argument("--nce-weight", type=float, default=1.0)
    s1.add_argument("--mse-weight", type=float, default=1.0)
    s1.add_argument("--token-weight-center", type=float, default=20.0,
                    help="reverse-sigmoid token weights: the token index where the weight halves")
    s1.add_argument("--token-weight-scale", type=float, default=5.0, help="... and how fast it falls")


def _add_stage2(s2):
    s2.add_argument("--projector", type=Path, default=None,
                    help="the projector to use: the stage-1 projector.safetensors, an official "
                         "audio_projector_*.pth, or a bundle (its projector)")
    s2.add_argument("--train-projector", action="store_true", help="train the projector too")
    s2.add_argument("--audio-drop", type=_probability, default=0.1,
                    help="probability of the null audio Projector(zeros) (for a separate audio guidance)")
    s2.add_argument("--caption-drop", type=_probability, default=0.5, help="probability of the empty caption")
    s2.add_argument("--resolution", type=int, default=512, help="images: shorter side resized, centre crop")
    s2.add_argument("--no-hflip", dest="hflip", action="store_false", help="no random horizontal flips")

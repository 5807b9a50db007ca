"""Stage 1: the audio projector (docs/design.md section 8).

loss_i = nce_weight * InfoNCE(anchor i; positive: another clip of i's class; negatives:
         a shared pool of up to --negatives clips, those of other classes), on the cosine
         of the audio-dependent token part Projector(e) - Projector(0)
       + mse_weight * per-token weighted MSE(Projector(e_i), CLIP-L tokens of i's caption)

The pool is drawn once per optimizer step (from the step's own seed), so every process
and micro-batch of a step sees the same pool: the per-sample losses, and so the averaged
gradient, do not depend on how the global batch is split. Pairs without a caption
contribute no MSE term; pairs without a class partner (or without labels) no InfoNCE term.
"""
import logging

import torch

from .. import AUDIO_EMBED_DIM
from ..projector import AudioProjector, init_projector_weights
from . import losses
from .loop import DataOrder, sample_generator

log = logging.getLogger("sonic_diffusion.train")

PROJECTOR_FORMAT = "sonicdiffusion-projector"


def trainable_projector_params(projector, prefix=""):
    """The projector's parameters that affect its output: layers 0-2 of the attention
    stack never do (official quirk, see projector.py), so they are not trained."""
    last = len(projector.cross_attention) - 1
    skip = tuple(f"{name}.{i}." for name in ("cross_attention", "between_attention") for i in range(last))
    return [(prefix + n, p) for n, p in projector.named_parameters() if not n.startswith(skip)]


def compute_dtype(precision):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


class Stage1Task:
    stage = "stage1"
    final_name = "projector.safetensors"
    rate_unit = "clips/s"

    def __init__(self, args, device, items, embeds, text, projector_sd=None, sources=()):
        self.args, self.device = args, device
        self.items = items
        self.n_items = len(items)
        self.order = DataOrder(self.n_items, args.seed)
        self.global_batch = None  # set by the CLI once the world size is known
        self.dtype = compute_dtype(args.precision)
        self.sources = list(sources)
        self.embeds = torch.stack([embeds[it.stem] for it in items]).to(device)             # [N,1024]
        zeros = torch.zeros(77, 768)
        self.targets = torch.stack([text[it.caption] if it.caption is not None else zeros for it in items]).to(device)
        self.has_caption = torch.tensor([it.caption is not None for it in items], device=device)
        labels = [it.label for it in items]
        self.use_nce = args.nce_weight > 0 and any(lb is not None for lb in labels)
        names = sorted({lb for lb in labels if lb is not None})
        # Unlabelled pairs get a class of their own: never a positive, always a negative.
        self.class_id = torch.tensor([names.index(lb) if lb is not None else len(names) + i
                                      for i, lb in enumerate(labels)], device=device)
        self.members = {}
        for i, c in enumerate(self.class_id.tolist()):
            self.members.setdefault(c, []).append(i)
        self.negatives = min(int(args.negatives), self.n_items)
        self.token_weights = losses.reverse_sigmoid_weights(77, args.token_weight_center, args.token_weight_scale).to(device)
        if not self.use_nce and not bool(self.has_caption.any()):
            raise ValueError("stage 1 has nothing to learn from: no pair has a caption (x.txt) and no labels.csv "
                             "gives classes; add captions, classes, or both")
        self.projector = AudioProjector().float()
        if projector_sd is not None:
            self.projector.load_state_dict({k: v.float() for k, v in projector_sd.items()}, strict=True)
        else:
            init_projector_weights(self.projector, torch.Generator().manual_seed(int(args.seed)))
        self.projector.to(device).train()
        self.loss_parts = ["mse", "nce"]

    def trainable(self):
        named = trainable_projector_params(self.projector)
        for _, p in named:
            p.requires_grad_(True)
        return named

    def _project(self, idx):
        emb = self.embeds[idx].to(self.dtype)
        return self.projector(emb).float()

    def loss(self, positions):
        positions = list(positions)
        idx = [self.order.item(p) for p in positions]
        step = positions[0] // self.global_batch
        anchors = torch.tensor(idx, device=self.device)
        need = list(idx)
        pos_idx, pool = [], []
        if self.use_nce:
            for p, i in zip(positions, idx):
                mates = [j for j in self.members[int(self.class_id[i])] if j != i]
                if mates:
                    g = sample_generator(self.args.seed, p, salt=11)
                    pos_idx.append(mates[int(torch.randint(len(mates), (1,), generator=g))])
                else:
                    pos_idx.append(-1)
            g = sample_generator(self.args.seed, step, salt=12)
            pool = torch.randperm(self.n_items, generator=g)[: self.negatives].tolist()
            need += [j for j in pos_idx if j >= 0] + pool
        uniq = sorted(set(need))
        where = {j: k for k, j in enumerate(uniq)}
        tokens = self._project(uniq)                                            # [U,77,768]
        mine = tokens[[where[i] for i in idx]]
        mse = losses.token_weighted_mse(mine, self.targets[anchors], self.token_weights)
        mse = mse * self.has_caption[anchors].float()
        nce = torch.zeros_like(mse)
        if self.use_nce:
            null = self.projector(torch.zeros(1, AUDIO_EMBED_DIM, device=self.device, dtype=self.dtype)).float()
            vec = losses.contrastive_vectors(tokens, null)
            has_pos = torch.tensor([j >= 0 for j in pos_idx], device=self.device)
            positive = vec[[where[j] if j >= 0 else where[i] for i, j in zip(idx, pos_idx)]]
            negatives = vec[[where[j] for j in pool]]
            pool_cls = self.class_id[torch.tensor(pool, device=self.device)]
            mask = pool_cls[None, :] != self.class_id[anchors][:, None]
            valid = has_pos & mask.any(1)
            safe_mask = mask | ~valid[:, None]  # rows without a valid term are computed, then zeroed
            nce = losses.info_nce(vec[[where[i] for i in idx]], positive, negatives, safe_mask,
                                  self.args.temperature)
            nce = torch.where(valid, nce, torch.zeros_like(nce))
        per_sample = self.args.mse_weight * mse + self.args.nce_weight * nce
        return per_sample.mean(), {"mse": float(mse.detach().mean()), "nce": float(nce.detach().mean())}

    def after_step(self, step, means):
        pass

    def _state(self):
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.projector.state_dict().items()}

    def _meta(self, step):
        return {"format": PROJECTOR_FORMAT, "format_version": "1", "sonic_train_stage": "1", "step": str(step),
                "sources": str(self.sources)}

    def weights_tensors(self, step):
        return self._state(), self._meta(step)

    def final_tensors(self, step):
        return self._state(), self._meta(step)

    def load_weights(self, sd):
        self.projector.load_state_dict({k: v.to(self.device) for k, v in sd.items()}, strict=True)

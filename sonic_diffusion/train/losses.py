"""Losses. Every function returns one value per sample, so that the batch mean (and
with it the gradient averaged over processes) does not depend on how a global batch
is split between processes or accumulation steps."""
import torch
import torch.nn.functional as F


def reverse_sigmoid_weights(n=77, center=20.0, scale=5.0):
    """w_j = 1 - sigmoid((j - center) / scale), normalised to mean 1: the first tokens
    (BOS and the caption's words) count most, the padding tail least."""
    j = torch.arange(n, dtype=torch.float32)
    w = torch.sigmoid(-(j - center) / scale)
    return w / w.mean()


def token_weighted_mse(pred, target, weights):
    """pred, target [B,77,768], weights [77] -> [B]."""
    per_token = (pred.float() - target.float()).pow(2).mean(-1)
    return (per_token * weights.to(per_token.device)).mean(-1)


def contrastive_vectors(tokens, null_tokens):
    """Projector tokens [N,77,768] -> unit vectors [N,77*768] of their audio-dependent
    part, tokens - Projector(zeros). The projector's output is dominated by a part that
    does not depend on the audio (biases, LayerNorms): raw tokens of different clips have
    a cosine near 1, which would leave InfoNCE flat at log(1 + negatives)."""
    return F.normalize((tokens.float() - null_tokens.float()).flatten(1), dim=-1)


def info_nce(anchor, positive, negatives, negative_mask, temperature=0.07):
    """anchor, positive [B,D] and negatives [K,D] unit vectors; negative_mask [B,K] marks
    the negatives each anchor may use (other classes). -> [B] = -log p(positive)."""
    pos = (anchor * positive).sum(-1, keepdim=True)
    neg = anchor @ negatives.t()
    logits = torch.cat([pos, neg.masked_fill(~negative_mask, float("-inf"))], 1) / temperature
    return -torch.log_softmax(logits, dim=1)[:, 0]


def epsilon_mse(pred, noise):
    """[B,C,H,W] -> [B]."""
    return (pred.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))

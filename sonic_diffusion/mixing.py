"""Sound interpolation: mixing CLAP embeddings (the paper's "sound interpolation")."""
import torch


def _normalize(e):
    return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _pair(a, b):
    if a.shape[0] != b.shape[0]:
        if a.shape[0] == 1:
            a = a.expand(b.shape[0], -1)
        elif b.shape[0] == 1:
            b = b.expand(a.shape[0], -1)
        else:
            raise ValueError(f"cannot pair {a.shape[0]} embeddings with {b.shape[0]}: give one of them a single "
                             f"embedding, or the same count")
    return a.float(), b.float()


def lerp(a, b, t):
    a, b = _pair(a, b)
    return _normalize(torch.lerp(a, b, float(t)))


def slerp(a, b, t):
    """Spherical interpolation; falls back to lerp where a and b are (anti)parallel."""
    a, b = _pair(a, b)
    an, bn = _normalize(a), _normalize(b)
    dot = (an * bn).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(dot)
    so = torch.sin(omega)
    t = float(t)
    safe = so.abs() > 1e-6
    wa = torch.where(safe, torch.sin((1 - t) * omega) / so.clamp_min(1e-12), torch.full_like(so, 1 - t))
    wb = torch.where(safe, torch.sin(t * omega) / so.clamp_min(1e-12), torch.full_like(so, t))
    return _normalize(wa * an + wb * bn)


def weighted_sum(a, b, weight_a, weight_b):
    a, b = _pair(a, b)
    mixed = float(weight_a) * a + float(weight_b) * b
    if bool((mixed.norm(dim=-1) < 1e-8).any()):
        raise ValueError("the weighted sum is zero (the weights cancel); change weight_a or weight_b")
    return _normalize(mixed)


def mix_series(a, b, ratios, mode="slerp"):
    """One mixed embedding per ratio, stacked into a batch [len(ratios), 1024] when a and b are single."""
    fn = slerp if mode == "slerp" else lerp
    return torch.cat([fn(a, b, r) for r in ratios], dim=0)


def parse_ratios(text):
    """'0, 0.25, 0.5' -> [0.0, 0.25, 0.5]; empty -> []. Values must lie in [0, 1]."""
    values = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise ValueError(
                f"'{part}' in ratios is not a number; write numbers between 0 and 1 separated by commas") from None
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"ratio {v} in ratios is outside 0..1; write numbers between 0 and 1")
        values.append(v)
    return values

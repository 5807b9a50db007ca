"""Audio that travels with the conditioning and with each model call (docs/design.md 10.6).

At the start of a sampling run every cond of the guider gets one model cond under
MODEL_COND_KEY: a SonicAudioCond whose `cond` holds row indices [R] into an AudioTable,
the audio of that cond for every Sonic patch of the model. ComfyUI's own machinery then
batches it with the other conds (areas, masks, context windows slice the indices like
any per-latent tensor), and at each call the concatenated SonicAudioBatch reaches the
UNet as a keyword argument, which the pack's diffusion-model wrapper moves into
transformer_options. Nothing here is kept on a patch object: tables live as long as the
run's conds, their derived tensors in the run's RunContext, freed when the run ends.
"""
from dataclasses import dataclass

import comfy.conds
import torch

# model_conds key (becomes the UNet keyword argument) and transformer_options key.
MODEL_COND_KEY = "sonic_audio"
# Key of a conditioning dict: {adapter uid: AttachedAudio}, written by Audio Conditioning (Sonic).
COND_KEY = "sonic_audio"
# Derived tensors kept per run (keys/values, folded projections, row factors) are bounded:
# past this many bytes a run computes them per call instead of caching more.
RUN_CACHE_BYTES = 256 * 2**20


class AudioBatchError(ValueError):
    """The audio embeddings cannot be matched to the latent batch."""


@dataclass(frozen=True)
class AttachedAudio:
    """Audio a CONDITIONING carries for one adapter: tokens [E,77,768] (float32, CPU) and
    per-row factors [F] (strength x curve) or None for 1. `source` names the node."""
    tokens: torch.Tensor
    factors: torch.Tensor | None
    source: str


@dataclass(frozen=True)
class PatchRows:
    """One patch's audio for one cond: tokens [E,77,768] and factors [F] or None."""
    tokens: torch.Tensor
    factors: torch.Tensor | None
    source: str


def _row_count(by_patch):
    """The number of rows R a table maps: every patch's tokens and factors hold 1 or R."""
    counts = {}
    for rows in by_patch.values():
        counts.setdefault(rows.tokens.shape[0], rows.source)
        if rows.factors is not None:
            counts.setdefault(rows.factors.shape[0], rows.source)
    many = sorted(n for n in counts if n != 1)
    if len(many) > 1:
        parts = ", ".join(f"{counts[n]}: {n}" for n in many)
        raise AudioBatchError(f"the audio of one prompt has different per-latent lengths ({parts}); "
                              f"give one audio or the same number of rows everywhere.")
    return many[0] if many else 1


class RunContext:
    """What one sampling run shares between its tables: each patch's sigma window (resolved
    from the model sampling in force when the run started) and the derived tensors."""

    def __init__(self, windows=None, cache_bytes=RUN_CACHE_BYTES):
        self.windows = dict(windows or {})
        self._cache = {}
        self._cache_left = cache_bytes

    def derived(self, key, build):
        """build() once per key while the byte budget lasts; later keys are built per call."""
        value = self._cache.get(key)
        if value is None:
            value = build()
            size = _nbytes(value)
            if size <= self._cache_left:
                self._cache[key] = value
                self._cache_left -= size
        return value

    def release(self):
        """Drop every derived tensor (called when the run ends)."""
        self._cache = {}
        self._cache_left = 0


def _nbytes(value):
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


class AudioTable:
    """The audio of one cond in one run: PatchRows per patch uid, R rows."""

    def __init__(self, by_patch, run):
        self.by_patch = by_patch
        self.run = run
        self.rows = _row_count(by_patch)

    def patch_rows(self, uid):
        return self.by_patch.get(uid)

    def batch_error(self, batch):
        """The error for a table whose R rows do not fit `batch` latents."""
        for rows in self.by_patch.values():
            if rows.tokens.shape[0] == self.rows:
                return AudioBatchError(
                    f"{rows.source}: {self.rows} audio embeddings for a batch of {batch} latents. Give one audio "
                    f"(it serves every latent) or exactly {batch} (one per latent).")
        source = next(iter(self.by_patch.values())).source
        return AudioBatchError(
            f"{source}: a strength curve of {self.rows} values for a batch of {batch} latents. Give one value per "
            f"latent ({batch}), e.g. from Loudness Strength Curve (Sonic) at the fps of Audio Encode Frames (Sonic).")


class SonicAudioCond(comfy.conds.CONDRegular):
    """Model cond of one cond: `cond` is a row-index tensor [R] into `table`, so ComfyUI's
    context windows slice it as any per-latent tensor. `twin` is the same cond's table with
    the negative audio (for the audio/text guidance split), or None."""

    def __init__(self, cond, table, twin=None):
        super().__init__(cond)
        self.table = table
        self.twin = twin

    def _copy_with(self, cond):
        # Indices stay on the CPU: the patch turns them into Python ints once per call.
        return SonicAudioCond(cond.to("cpu"), self.table, self.twin)

    def process_cond(self, batch_size, **kwargs):
        rows = self.cond.shape[0]
        if rows == batch_size:
            return self._copy_with(self.cond)
        if rows == 1:
            return self._copy_with(self.cond.expand(batch_size))
        raise self.table.batch_error(batch_size)

    def can_concat(self, other):
        return isinstance(other, SonicAudioCond)

    def concat(self, others):
        return SonicAudioBatch([self, *others])

    def without_audio(self):
        """The same rows with the negative audio (the twin table), or self when there is none."""
        return self if self.twin is None else SonicAudioCond(self.cond, self.twin)


def attach(index_count, table, twin=None):
    """A SonicAudioCond covering every row of `table`."""
    return SonicAudioCond(torch.arange(index_count), table, twin)


class SonicAudioBatch:
    """The audio of one model call: one (table, row indices) part per batch chunk, in the
    order of transformer_options["cond_or_uncond"]."""

    def __init__(self, conds):
        self.parts = tuple((c.table, tuple(int(i) for i in c.cond.tolist())) for c in conds)
        self.run = self.parts[0][0].run
        self.signature = tuple((id(t), idx) for t, idx in self.parts)

    def rows_of(self, uid):
        """Per part: (PatchRows, row indices) for the patch `uid`."""
        return [(table.patch_rows(uid), idx) for table, idx in self.parts]


def direct_batch(patches, chunks, batch, run=None):
    """The audio of a model call made outside a sampling run (training, tools, direct UNet
    calls): chunk label 1 gets each patch's negative audio, any other label its audio."""
    run = run or RunContext()
    tables = {}
    conds = []
    for label in chunks:
        role = "negative" if label == 1 else "positive"
        if role not in tables:
            tables[role] = AudioTable({p.uid: p.rows_for_role(role) for p in patches}, run)
        table = tables[role]
        cond = attach(table.rows, table)
        conds.append(cond.process_cond(batch))
    return SonicAudioBatch(conds)

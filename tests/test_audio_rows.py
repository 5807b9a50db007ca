"""The per-run audio tables and the sonic_audio model cond, without a UNet (fast)."""
import pytest
import torch

from sonic_diffusion.audio_rows import AudioBatchError, AudioTable, PatchRows, RunContext, SonicAudioBatch, attach


def rows(n_tokens, n_factors=None, source="Apply Sonic Adapter"):
    tokens = torch.arange(n_tokens, dtype=torch.float32).view(-1, 1, 1).expand(n_tokens, 77, 768)
    factors = None if n_factors is None else torch.linspace(0.5, 1.5, n_factors)
    return PatchRows(tokens, factors, source)


def test_a_table_maps_one_or_r_rows_and_refuses_mixed_lengths():
    assert AudioTable({"a": rows(1), "b": rows(1, 8)}, RunContext()).rows == 8
    assert AudioTable({"a": rows(8), "b": rows(1)}, RunContext()).rows == 8
    with pytest.raises(AudioBatchError, match=r"different per-latent lengths \(Audio Conditioning \(Sonic\): 4, Apply Sonic Adapter: 8\)"):
        AudioTable({"a": rows(8), "b": rows(1, 4, "Audio Conditioning (Sonic)")}, RunContext())


def test_process_cond_applies_the_batch_rule_with_the_node_named():
    table = AudioTable({"a": rows(3)}, RunContext())
    cond = attach(table.rows, table)
    assert cond.process_cond(3).cond.tolist() == [0, 1, 2]
    with pytest.raises(AudioBatchError, match="Apply Sonic Adapter: 3 audio embeddings for a batch of 2 latents"):
        cond.process_cond(2)
    single = AudioTable({"a": rows(1)}, RunContext())
    assert attach(1, single).process_cond(4).cond.tolist() == [0, 0, 0, 0]
    curve = AudioTable({"a": rows(1, 3)}, RunContext())
    with pytest.raises(AudioBatchError, match="a strength curve of 3 values for a batch of 2 latents"):
        attach(curve.rows, curve).process_cond(2)


def test_context_window_slices_pick_their_rows():
    """What a context window does to a model cond: index the cond tensor, keep the table."""
    table = AudioTable({"a": rows(8)}, RunContext())
    cond = attach(table.rows, table)
    window = cond._copy_with(cond.cond[[3, 4, 5, 6]])
    batch = SonicAudioBatch([window.process_cond(4)])
    (patch_rows, idx), = batch.rows_of("a")
    assert idx == (3, 4, 5, 6) and patch_rows is table.patch_rows("a")


def test_concat_keeps_chunk_order_and_the_twin():
    run = RunContext()
    pos, neg = AudioTable({"a": rows(1)}, run), AudioTable({"a": rows(1)}, run)
    twin = AudioTable({"a": rows(1)}, run)
    c_pos, c_neg = attach(1, pos, twin).process_cond(2), attach(1, neg).process_cond(2)
    assert c_pos.can_concat(c_neg)
    batch = c_neg.concat([c_pos])
    assert [t for t, _ in batch.parts] == [neg, pos] and batch.run is run
    assert c_pos.without_audio().table is twin and c_neg.without_audio() is c_neg


def test_run_cache_builds_once_within_its_budget_and_is_released():
    run = RunContext(cache_bytes=1000)
    built = []

    def build(n):
        built.append(n)
        return {"t": torch.zeros(n)}  # 4 bytes a value

    assert run.derived("small", lambda: build(100)) is run.derived("small", lambda: build(100))
    assert built == [100]
    big = [run.derived("big", lambda: build(1000)) for _ in range(2)]  # 4000 bytes: over budget, never kept
    assert built == [100, 1000, 1000] and big[0] is not big[1]
    run.release()
    run.derived("small", lambda: build(100))
    assert built == [100, 1000, 1000, 100]  # released, and nothing is kept after the run


def test_audio_conditioning_refuses_factors_outside_the_folded_range():
    """strength x strength_curve multiplies the term in the UNet's dtype: within -10..10, checked
    before anything is projected, with the node named."""
    import types

    import nodes

    node = nodes.NODE_CLASS_MAPPINGS["SonicAudioConditioning"]
    adapter = types.SimpleNamespace(uid="a", project=lambda e: pytest.fail("projected before the range check"))
    cond = [[torch.zeros(1, 77, 768), {}]]
    with pytest.raises(ValueError, match=r"Audio Conditioning \(Sonic\): strength x strength_curve .* -10\.\.10"):
        node.execute(conditioning=cond, sonic_adapter=adapter, audio_embeds=torch.zeros(1, 1024), strength=4.0,
                     strength_curve=torch.tensor([1.0, 3.0]))
    adapter.project = lambda e: torch.zeros(e.shape[0], 77, 768)
    out = node.execute(conditioning=cond, sonic_adapter=adapter, audio_embeds=torch.zeros(1, 1024), strength=4.0,
                       strength_curve=torch.tensor([1.0, 2.5])).result[0]
    attached = out[0][1]["sonic_audio"]["a"]
    assert torch.equal(attached.factors, torch.tensor([4.0, 10.0])) and cond[0][1] == {}  # input left as it was

"""Fast unit checks of the batch rule (batching.py) and the embedding mixes (mixing.py),
written so a flipped comparison, index or sign in either fails (scripts/mutation.sh)."""
import math

import pytest
import torch

from sonic_diffusion import mixing
from sonic_diffusion.batching import rows_for_batch


class Refused(Exception):
    pass


def _refuse(n, batch):
    return Refused(n, batch)


def test_rows_for_batch_maps_serves_and_refuses():
    rows = torch.arange(6.0).view(3, 2)
    assert rows_for_batch(rows, 3, _refuse) is rows  # N == batch: i-th to i-th, untouched
    one = rows[1:2]
    served = rows_for_batch(one, 4, _refuse)
    assert served.shape == (4, 2) and torch.equal(served, one.repeat(4, 1))
    assert served.data_ptr() == one.data_ptr() and served.stride(0) == 0  # a view, no copy
    with pytest.raises(Refused) as e:
        rows_for_batch(rows, 2, _refuse)
    assert e.value.args == (3, 2)
    with pytest.raises(Refused) as e:
        rows_for_batch(torch.zeros(2, 5), 1, _refuse)  # two rows never serve one latent
    assert e.value.args == (2, 1)


def _unit(seed, n=1, d=8):
    e = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return e / e.norm(dim=-1, keepdim=True)


def test_lerp_is_the_normalised_straight_line():
    a, b = _unit(1) * 3.0, _unit(2) * 0.5  # unnormalised inputs: the line is between them as given
    for t in (0.0, 0.3, 1.0):
        ref = (1 - t) * a + t * b
        torch.testing.assert_close(mixing.lerp(a, b, t), (ref / ref.norm()).float())


def test_slerp_follows_the_great_circle_and_falls_back_when_parallel():
    a, b = _unit(3), _unit(4)
    omega = math.acos(float((a * b).sum()))
    for t in (0.0, 0.25, 0.7, 1.0):
        ref = (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)
        torch.testing.assert_close(mixing.slerp(a * 2.0, b, t), ref.float(), rtol=0, atol=1e-6)
    # Parallel and antiparallel: sin(omega) = 0, the weights fall back to (1 - t, t).
    torch.testing.assert_close(mixing.slerp(a, a * 5.0, 0.3), a.float())
    c = a.clone()
    c[0, 0] += 1e-9  # within 1e-6 of antiparallel after normalisation
    mid = mixing.slerp(a, -c, 0.25)
    ref = 0.75 * a - 0.25 * c
    torch.testing.assert_close(mid, (ref / ref.norm()).float())


def test_pairs_expand_a_single_side_and_refuse_other_counts():
    one, three = _unit(5), _unit(6, n=3)
    out = mixing.lerp(one, three, 0.5)
    assert out.shape == (3, 8)
    for i in range(3):
        torch.testing.assert_close(out[i:i + 1], mixing.lerp(one, three[i:i + 1], 0.5))
    out = mixing.lerp(three, one, 0.5)  # the single one on the other side
    for i in range(3):
        torch.testing.assert_close(out[i:i + 1], mixing.lerp(three[i:i + 1], one, 0.5))
    with pytest.raises(ValueError, match="cannot pair 3 embeddings with 2"):
        mixing.lerp(three, _unit(7, n=2), 0.5)
    assert mixing.lerp(one, one, 0.5).dtype == torch.float32


def test_weighted_sum_and_its_zero_refusal():
    a, b = _unit(8), _unit(9)
    ref = 0.3 * a - 1.7 * b
    torch.testing.assert_close(mixing.weighted_sum(a, b, 0.3, -1.7), (ref / ref.norm()).float())
    with pytest.raises(ValueError, match="weighted sum is zero"):
        mixing.weighted_sum(a, a, 2.0, -2.0)
    tiny = mixing.weighted_sum(a, b, 1e-6, 0.0)  # small but not zero: kept, normalised
    torch.testing.assert_close(tiny, a.float())


def test_mix_series_stacks_one_row_per_ratio_in_the_mode_asked():
    a, b = _unit(10), _unit(11)
    ratios = [0.0, 0.4, 1.0]
    torch.testing.assert_close(mixing.mix_series(a, b, ratios),
                               torch.cat([mixing.slerp(a, b, r) for r in ratios]))
    torch.testing.assert_close(mixing.mix_series(a, b, ratios, mode="lerp"),
                               torch.cat([mixing.lerp(a, b, r) for r in ratios]))
    assert not torch.allclose(mixing.mix_series(a, b, [0.4]), mixing.mix_series(a, b, [0.4], mode="lerp"))


def test_parse_ratios_reads_both_separators_and_bounds():
    assert mixing.parse_ratios(" 0, 0.25;0.5 ,, 1 ") == [0.0, 0.25, 0.5, 1.0]
    assert mixing.parse_ratios("") == [] and mixing.parse_ratios(" ; ") == []
    with pytest.raises(ValueError, match="'x' in ratios is not a number"):
        mixing.parse_ratios("0.5, x")
    for bad in ("-0.01", "1.01"):
        with pytest.raises(ValueError, match=f"ratio {float(bad)} in ratios is outside 0..1"):
            mixing.parse_ratios(bad)


def test_equal_counts_mix_row_by_row():
    a, b = _unit(12, n=3), _unit(13, n=3)
    for fn in (mixing.lerp, mixing.slerp):
        out = fn(a, b, 0.3)
        assert out.shape == (3, 8)
        for i in range(3):
            torch.testing.assert_close(out[i:i + 1], fn(a[i:i + 1], b[i:i + 1], 0.3))
    out = mixing.weighted_sum(a, b, 0.5, 2.0)
    for i in range(3):
        torch.testing.assert_close(out[i:i + 1], mixing.weighted_sum(a[i:i + 1], b[i:i + 1], 0.5, 2.0))


def test_antiparallel_fallback_weights_keep_their_sign():
    a = _unit(14)
    # an and bn = -an: the fallback (1 - t) * an + t * bn = (1 - 2t) * an points back past t = 0.5.
    torch.testing.assert_close(mixing.slerp(a, -a, 0.25), a.float())
    torch.testing.assert_close(mixing.slerp(a, -a, 0.75), -a.float())


def test_weighted_sum_refuses_when_any_one_row_cancels():
    a, b = _unit(15, n=2), _unit(16, n=2)
    b[0] = a[0]
    with pytest.raises(ValueError, match="weighted sum is zero"):
        mixing.weighted_sum(a, b, 1.0, -1.0)  # row 0 cancels, row 1 does not

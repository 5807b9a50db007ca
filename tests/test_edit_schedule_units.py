"""Fast unit checks of the edit's DDIM schedule (edit/schedule.py): levels, pairs and refusals."""
import pytest
import torch

from sonic_diffusion.edit import schedule
from sonic_diffusion.edit.schedule import EditInputError, EditSchedule


def test_ddim_timesteps_leading_spacing_and_top_shift():
    assert schedule.ddim_timesteps(1000, 50)[:3] == [981, 961, 941]
    assert schedule.ddim_timesteps(1000, 50)[-1] == 1
    assert schedule.ddim_timesteps(1000, 4) == [751, 501, 251, 1]
    assert schedule.ddim_timesteps(1000, 1) == [1]
    assert schedule.ddim_timesteps(1000, 1000) == list(range(999, -1, -1))  # shifted down by one
    assert schedule.ddim_timesteps(10, 3) == [7, 4, 1]
    assert schedule.ddim_timesteps(10, 10) == list(range(9, -1, -1))
    for steps in (0, 1001):
        with pytest.raises(EditInputError, match=f"{steps} steps exceed the model's 1000 training timesteps"):
            schedule.ddim_timesteps(1000, steps)


class Sampling:
    def __init__(self, n=10):
        self.sigmas = torch.linspace(0.1, 5.0, n, dtype=torch.float64)
        self.sigma_min = 0.1


def test_ddim_sigmas_are_the_table_levels_then_the_lowest():
    ms = Sampling()
    out = schedule.ddim_sigmas(ms, 3)
    table = ms.sigmas.float()
    assert out.dtype == torch.float32
    assert out.tolist() == [float(table[t]) for t in (7, 4, 1)] + [float(table[0])]


def test_injection_steps_rounds_like_the_authors_and_clamps():
    assert schedule.injection_steps(10, 0.7) == 7  # 6.999... is 7
    assert schedule.injection_steps(10, 0.75) == 7
    assert schedule.injection_steps(10, 0.0) == 0
    assert schedule.injection_steps(10, 1.0) == 10
    assert schedule.injection_steps(10, 1.5) == 10
    assert schedule.injection_steps(10, -0.5) == 0


def test_edit_schedule_levels_pairs_and_final_level():
    ms = Sampling()
    s = EditSchedule(torch.tensor([3.0, 2.0, 1.0, 0.5]), ms)
    assert s.sigmas == [3.0, 2.0, 1.0] and s.final_sigma == 0.5 and s.steps == 3
    assert s.sampling_pairs() == [(3.0, 2.0), (2.0, 1.0), (1.0, 0.5)]
    assert s.inversion_pairs() == [(0.5, 1.0), (1.0, 2.0), (2.0, 3.0)]
    z = EditSchedule(torch.tensor([[3.0, 1.0, 0.0]]), ms)  # a last 0 stands for sigma_min
    assert z.sigmas == [3.0, 1.0] and z.final_sigma == 0.1
    single = EditSchedule(torch.tensor([2.0, 0.0]), ms)  # one step is a schedule
    assert single.steps == 1 and single.sampling_pairs() == [(2.0, 0.1)] and single.final_sigma == 0.1
    ms.sigma_min = 0.5
    equal = EditSchedule(torch.tensor([2.0, 0.5, 0.0]), ms)  # last step at the floor itself: allowed
    assert equal.sampling_pairs() == [(2.0, 0.5), (0.5, 0.5)] and equal.inversion_pairs() == [(0.5, 0.5), (0.5, 2.0)]


NO_STEP = "^the SIGMAS hold no step; connect a scheduler with at least 1 step$"
NOT_DESCENDING = (r"^the SIGMAS must descend to the end of sampling \(denoise 1.0\); the edit inverts the source "
                  r"along the same levels$")


@pytest.mark.parametrize(("sigmas", "message"), [
    ([1.0], NO_STEP),
    ([], NO_STEP),
    ([1.0, 2.0, 0.0], NOT_DESCENDING),
    ([2.0, 2.0, 0.0], NOT_DESCENDING),
    ([2.0, 0.05, 0.0], NOT_DESCENDING),  # ends below sigma_min where 0 stands for it
    ([3.0, 2.0, 0.05, 0.0], NOT_DESCENDING),
])
def test_edit_schedule_refuses(sigmas, message):
    with pytest.raises(EditInputError, match=message):
        EditSchedule(torch.tensor(sigmas), Sampling())
    no_floor = Sampling()
    no_floor.sigma_min = 0.0  # a final level of 0 is no level to invert from
    with pytest.raises(EditInputError, match=NOT_DESCENDING):
        EditSchedule(torch.tensor([2.0, 1.0, 0.0]), no_floor)

"""Warm-start shifting and iCEM's coloured noise."""

import math

import pytest
import torch

from dcem.planning import colored_noise, shift_plan


def test_shift_plan_fills_and_never_edits_the_input():
    plan = torch.arange(12.0).view(2, 3, 2)  # (B, H, A)
    before = plan.clone()
    lo, hi = torch.tensor([-1.0, 2.0]), torch.tensor([1.0, 6.0])
    last = shift_plan(plan)
    torch.testing.assert_close(last[:, :2], plan[:, 1:])
    torch.testing.assert_close(last[:, 2], plan[:, 2])
    torch.testing.assert_close(
        shift_plan(plan, fill="zero", lower=lo, upper=hi)[:, 2], torch.tensor([[0.0, 2.0]] * 2)
    )
    torch.testing.assert_close(shift_plan(plan, fill="zero")[:, 2], torch.zeros(2, 2))
    torch.testing.assert_close(
        shift_plan(plan, fill="mid", lower=lo, upper=hi)[:, 2], torch.tensor([[0.0, 4.0]] * 2)
    )
    two = shift_plan(plan, steps=2, fill="last")
    torch.testing.assert_close(two[:, 0], plan[:, 2])
    torch.testing.assert_close(two[:, 1:], plan[:, 2:].expand(2, 2, 2))
    same = shift_plan(plan, steps=0)
    torch.testing.assert_close(same, plan)
    assert same.data_ptr() != plan.data_ptr()
    torch.testing.assert_close(plan, before)
    # any leading shape, dtype follows
    p = torch.zeros(4, 5, 6, 1, dtype=torch.float64)
    assert shift_plan(p).shape == p.shape and shift_plan(p).dtype == torch.float64


@pytest.mark.parametrize("H", [1, 2, 7, 20])
def test_colored_noise_has_unit_variance_and_the_right_colour(H):
    g = torch.Generator().manual_seed(0)
    white = colored_noise((4000, H, 2), 0.0, generator=g, dtype=torch.float64)
    red = colored_noise((4000, H, 2), 2.0, generator=g, dtype=torch.float64)
    assert red.shape == white.shape == (4000, H, 2)
    for x in (white, red):
        assert float(x.mean().abs()) < 0.05
        torch.testing.assert_close(x.var(0), torch.ones(H, 2, dtype=torch.float64), atol=0.1, rtol=0)
    if H > 2:
        lag1 = lambda x: float((x[:, 1:] * x[:, :-1]).mean())  # noqa: E731
        assert abs(lag1(white)) < 0.05 and lag1(red) > 0.3  # correlated along time only
        assert abs(float((red[..., 0] * red[..., 1]).mean())) < 0.05


def test_colored_noise_spectrum_follows_the_power_law():
    x = colored_noise((20000, 32, 1), 1.0, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    psd = torch.fft.rfft(x[..., 0], dim=-1).abs().pow(2).mean(0)
    f = torch.arange(1, 17, dtype=torch.float64)
    A = torch.stack((torch.ones_like(f), f.log()), -1)
    coef = torch.linalg.lstsq(A, psd[1:].log().unsqueeze(-1)).solution.squeeze(-1)
    assert float(coef[1]) == pytest.approx(-1.0, abs=0.1)


def test_noise_and_shift_errors():
    with pytest.raises(ValueError, match="noise_beta"):
        colored_noise((3, 4, 1), -1.0)
    with pytest.raises(ValueError, match="time dimension"):
        colored_noise((3,), 1.0)
    with pytest.raises(ValueError, match="plan must be"):
        shift_plan(torch.zeros(3))
    with pytest.raises(ValueError, match="steps"):
        shift_plan(torch.zeros(3, 1), steps=4)
    with pytest.raises(ValueError, match="fill"):
        shift_plan(torch.zeros(3, 1), fill="repeat")
    with pytest.raises(ValueError, match="mid"):
        shift_plan(torch.zeros(3, 1), fill="mid")
    assert math.isfinite(float(colored_noise((1, 5, 1), 3.0).sum()))

"""Controllers take one PlannerConfig; the older keyword forms translate to the same config (with a
DeprecationWarning) and plan identically; dcem_ctrl keeps the published keywords without warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from dcem.control import (
    MPC,
    ActionDecoder,
    CartpoleDx,
    LatentDCEMController,
    cartpole_swingup_cost,
    dcem_ctrl,
)
from dcem.planning import PlannerConfig
from dcem.planning.config import resolve_config
from dcem.rl import FullCEMPlanner, LatentDCEMPlanner


class TinyModel(nn.Module):
    """Just enough of a WorldModel for the planners' constructors and a plan."""

    act_dim = 2

    def normalize(self, x):
        return x

    def imagine(self, h, x, U):
        return -(U - 0.3).pow(2).sum(-1), None


@pytest.mark.parametrize(
    "legacy, expected",
    [
        ({"n_sample": 50, "temp": 0.5}, PlannerConfig("dcem", 50, temp=0.5)),
        ({"n_sample": 50, "temp": None}, PlannerConfig("cem", 50)),
        ({"temp": 0.0, "rule": "mppi", "sigma_scale": 0.2}, PlannerConfig("mppi", std_scale=0.2)),
        ({"dcem_iter_eps": 1e-3, "dcem_normalize": False}, PlannerConfig(iter_eps=1e-3, normalize=False)),
        ({"temp": 0.0, "select": None}, PlannerConfig("cem", select="min")),
        ({"temp": 2.0, "select": None}, PlannerConfig("dcem", temp=2.0, select="mean")),
    ],
)
def test_old_keywords_translate_to_the_config_with_a_warning(legacy, expected):
    with pytest.warns(DeprecationWarning, match="PlannerConfig"):
        cfg, extra = resolve_config("X", (), legacy)
    assert cfg == expected and extra == {}


def test_translation_errors():
    with pytest.raises(TypeError, match="not both"):
        resolve_config("X", (PlannerConfig(),), {"n_sample": 3})
    with pytest.raises(TypeError, match="unexpected keyword"):
        resolve_config("X", (), {"n_samples": 3})
    with pytest.raises(TypeError, match="at most 1 positional"):
        resolve_config("X", (10, 5), {}, positional=("n_sample",))
    with pytest.raises(TypeError, match="multiple values"):
        resolve_config("X", (10,), {"n_sample": 5}, positional=("n_sample",))
    with pytest.raises(ValueError, match="temp"):  # an explicit DCEM needs a temperature > 0
        resolve_config("X", (), {"rule": "dcem", "temp": 0.0}, warn=False)


def test_a_config_alone_gives_no_warning_and_is_kept():
    cfg = PlannerConfig("icem", 30, 3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_config("X", (cfg,), {}) == (cfg, {})
        mpc = MPC(5, CartpoleDx(), cartpole_swingup_cost, cfg)
    assert mpc.config is cfg and mpc.n_sample == 30 and mpc.temp is None


@pytest.mark.parametrize("temp", [None, 0.5])
def test_mpc_old_and_new_forms_plan_identically(temp):
    dx, x = CartpoleDx(), torch.zeros(2, 5)
    with pytest.warns(DeprecationWarning, match="MPC"):
        old = MPC(6, dx, cartpole_swingup_cost, n_sample=40, n_elite=4, n_iter=3, temp=temp, sigma_scale=0.3)
    rule = "cem" if temp is None else "dcem"
    cfg = PlannerConfig(rule, 40, 4, 3, temp=temp or 1.0, std_scale=0.3, capture="auto")
    new = MPC(6, dx, cartpole_swingup_cost, cfg)
    assert old.config == new.config and old.temp == new.temp == temp
    old.generator, new.generator = (torch.Generator().manual_seed(0) for _ in range(2))
    torch.testing.assert_close(old.plan(x).u, new.plan(x).u, rtol=0, atol=0)


def test_latent_controller_old_form_keeps_its_defaults():
    dx = CartpoleDx()
    dec = ActionDecoder(2, 5, 1, dx.u_lower, dx.u_upper)
    new = LatentDCEMController(dec, dx, cartpole_swingup_cost)
    assert new.config == PlannerConfig("dcem", 100, 10, 10, temp=1.0, select="mean")
    with pytest.warns(DeprecationWarning):
        hard = LatentDCEMController(dec, dx, cartpole_swingup_cost, temp=0)
    assert hard.config.rule.value == "cem" and hard.select == "min" and hard.temp is None


def test_rl_planners_old_positional_forms():
    model = TinyModel()
    with pytest.warns(DeprecationWarning, match="u_lower"):
        old = FullCEMPlanner(model, 3, 60, 6, 4, -0.5, 0.5)
    new = FullCEMPlanner(model, 3, PlannerConfig("cem", 60, 6, 4, select="mean", capture="auto"),
                         u_lower=-0.5, u_upper=0.5)  # fmt: skip
    assert old.config == new.config and old.n_sample == 60
    torch.testing.assert_close(old.u_upper, new.u_upper)
    h, x = torch.zeros(2, 1), torch.zeros(2, 2)
    pa = old.plan(h, x, generator=torch.Generator().manual_seed(1))
    pb = new.plan(h, x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    dec = ActionDecoder(2, 3, 2, -1.0, 1.0)
    with pytest.warns(DeprecationWarning):
        lat = LatentDCEMPlanner(model, dec, 50, 5, 3, 0.5, 2.0)
    assert lat.config == PlannerConfig("dcem", 50, 5, 3, temp=0.5, select="mean", capture="auto")
    assert lat.latent_bound == 2.0 and lat.temp == 0.5
    assert LatentDCEMPlanner(model, dec).config == PlannerConfig("dcem", select="mean", capture="auto")


def test_dcem_ctrl_keeps_the_published_keywords_without_warning():
    dx = CartpoleDx()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dcem_ctrl(torch.zeros(2, 5), 4, None, None, 30, 3, 2, cartpole_swingup_cost, 1, 0.5, None,
                        lb=-1.0, ub=1.0, dx=dx, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out["u"].shape == (4, 2, 1) and out["cost"].shape == (2,)


def test_the_suite_turns_dcem_deprecations_into_errors():
    """pyproject's filterwarnings: an older form called outside ``pytest.warns`` fails the test,
    from a test and from dcem's own code alike (so a regression cannot hide in the log)."""
    with pytest.raises(DeprecationWarning, match="MPC"):
        MPC(6, CartpoleDx(), cartpole_swingup_cost, n_sample=40, n_elite=4)
    with pytest.raises(DeprecationWarning, match="old"):
        warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module="dcem.experiments.x")
    with warnings.catch_warnings(record=True) as seen:  # the suite's filters, recorded instead of shown
        warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module="thirdparty")  # not ours
    assert [str(w.message) for w in seen] == ["old"]

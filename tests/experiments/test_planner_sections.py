"""The planner sections of the experiment configs become one PlannerConfig
(:mod:`dcem.experiments.common.planner`): the config the older keyword calls of the controllers
made from the same keys, so runs resume and report as before; a bad section is refused early."""

from __future__ import annotations

import pytest

pytest.importorskip("hydra")

from dcem.control.latent import LATENT_DEFAULTS  # noqa: E402
from dcem.control.mpc import MPC_DEFAULTS  # noqa: E402
from dcem.experiments.common.config import ConfigError, load  # noqa: E402
from dcem.experiments.common.planner import planner_config  # noqa: E402
from dcem.planning import PlannerConfig  # noqa: E402
from dcem.planning.config import resolve_config  # noqa: E402
from dcem.rl import planners as rl  # noqa: E402


def old_form(owner, defaults, **keywords):
    """The config an older keyword call of a controller made (it warns: it is deprecated)."""
    with pytest.warns(DeprecationWarning, match=owner):
        return resolve_config(owner, (), keywords, defaults=defaults)[0]


def config_of(name, *overrides):
    from importlib import import_module

    return load(import_module(f"dcem.experiments.{name}").EXPERIMENT, ["scale=tiny", *overrides])


@pytest.mark.parametrize("name", ["cartpole", "chain"])
@pytest.mark.parametrize("temp", [1.0, 0.1, 0.0])
def test_latent_and_expert_sections_give_the_older_configs(name, temp):
    cfg = config_of(name)
    d, e = cfg.dcem, cfg.expert
    new = planner_config(d, defaults=LATENT_DEFAULTS, temp=temp)
    was = old_form("LatentDCEMController", LATENT_DEFAULTS, n_sample=d.n_sample, n_elite=d.n_elite,
                   n_iter=d.n_iter, temp=temp, normalize=d.normalize)  # fmt: skip
    assert new == was and new.rule.value == ("dcem" if temp else "cem")
    assert new.select == ("mean" if temp else "min")  # the controller's defaults, kept
    expert = planner_config(e, defaults=MPC_DEFAULTS, rule="cem", select="mean")
    assert expert == old_form("MPC", MPC_DEFAULTS, n_sample=e.n_sample, n_elite=e.n_elite, n_iter=e.n_iter,
                              temp=None, sigma_scale=e.sigma_scale, select="mean")  # fmt: skip
    assert expert.std_scale == e.sigma_scale and expert.capture == "auto"


@pytest.mark.parametrize("temp", ["null", "0.5"])
def test_pendulum_section_gives_the_older_config(temp):
    m = config_of("pendulum", f"mpc.temp={temp}").mpc
    new = planner_config(m, defaults=MPC_DEFAULTS)
    assert new == old_form("MPC", MPC_DEFAULTS, n_sample=m.n_sample, n_elite=m.n_elite, n_iter=m.n_iter,
                           temp=m.temp, sigma_scale=m.sigma_scale)  # fmt: skip
    assert new.rule.value == ("cem" if temp == "null" else "dcem")


def test_mbrl_sections_give_the_older_configs():
    from dcem.experiments.mbrl import compose

    p = compose(["scale=smoke"])["planner"]
    c, d = p["cem"], p["dcem"]
    cem = planner_config(c, defaults=rl.FULL_DEFAULTS)
    assert cem == old_form("FullCEMPlanner", rl.FULL_DEFAULTS, n_sample=c["n_sample"], n_elite=c["n_elite"],
                           n_iter=c["n_iter"])  # fmt: skip
    latent = planner_config(d, defaults=rl.LATENT_DEFAULTS)
    assert latent == old_form("LatentDCEMPlanner", rl.LATENT_DEFAULTS, n_sample=d["n_sample"],
                              n_elite=d["n_elite"], n_iter=d["n_iter"], temp=d["temp"])  # fmt: skip
    assert (cem.rule.value, latent.rule.value, cem.select, latent.capture) == ("cem", "dcem", "mean", "auto")


def test_only_planner_keys_are_taken_and_fixed_settings_win():
    section = {"n_sample": 30, "n_elite": 3, "n_iter": 2, "temp": 0.5, "z_bound": 1.0, "shift_fill": "last"}
    assert planner_config(section) == PlannerConfig("dcem", 30, 3, 2, temp=0.5)
    assert planner_config(section, rule="mppi", lam=0.3) == PlannerConfig("mppi", 30, 3, 2, temp=0.5, lam=0.3)
    assert planner_config({"n_sample": 30, "n_elite": 3, "n_iter": 2, "sigma_scale": 0.2}).std_scale == 0.2


@pytest.mark.parametrize(
    "name, override, key",
    [
        ("cartpole", "dcem.n_elite=500", "dcem.n_elite"),
        ("cartpole", "report.converged.n_elite=20000", "report.converged.n_elite"),
        ("pendulum", "mpc.n_elite=500", "mpc.n_elite"),
    ],
)
def test_a_section_that_makes_no_config_is_refused_naming_its_key(name, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_of(name, override)

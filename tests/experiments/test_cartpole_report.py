"""``dcem-exp cartpole mode=report``: baselines, fractions, generated page blocks, errors."""

import json

import numpy as np
import pytest
import torch

from dcem.control import ActionDecoder, CartpoleDx, cartpole_swingup_cost
from dcem.experiments import cartpole
from dcem.experiments.cartpole.baselines import cached, cem_baseline
from dcem.experiments.cartpole.report import fractions
from dcem.experiments.common.runs import RunError
from dcem.planning import rollout_objective

TINY = ["scale=tiny", "progress=false", "plots=false"]


def test_fractions_against_direct_computation():
    rng = np.random.default_rng(0)
    expert = -10 - rng.random(7)
    costs = expert * (0.8 + 0.1 * rng.random((3, 7)))
    fr = fractions(costs, expert)
    for s in range(3):  # ratio of mean returns of each seed
        assert fr["per_seed"][s] == pytest.approx(np.sum(-costs[s]) / np.sum(-expert))
    assert fr["ratio"] == pytest.approx(costs.mean() / expert.mean())
    lo, hi = fr["state_ci"]
    assert lo < fr["ratio"] < hi and 0.8 < lo and hi < 0.9  # every state's fraction lies in [0.8, 0.9]
    one = fractions(expert[None], expert)  # the expert against itself: exactly 1 on every resample
    assert one["ratio"] == 1 and one["state_ci"] == pytest.approx((1.0, 1.0))


def test_cem_baseline_costs_are_the_rollout_costs_of_real_plans():
    dx = CartpoleDx()
    x = dx.sample_state(3, torch.Generator().manual_seed(0))
    b = cem_baseline(dx, x, 6, n_sample=30, n_elite=5, n_iter=4, sigma_scale=0.5, seed=0)
    assert len(b["mean"]) == 3 and len(b["sigma"]) == 4 and len(b["best_trace"]) == 4
    assert all(bst <= m + 1e-5 for bst, m in zip(b["best"], b["mean"]))  # the best sample is never worse
    assert b["best_trace"] == sorted(b["best_trace"], reverse=True)  # best-so-far never increases
    assert b["best_trace"][-1] == pytest.approx(float(np.mean(b["best"])), abs=1e-5)
    assert b["sigma"][-1] < b["sigma"][0]
    # the zero plan is a feasible candidate; CEM with 120 rollouts should beat it on average
    zero = rollout_objective(dx, x, cartpole_swingup_cost)(torch.zeros(3, 1, 6, 1))[:, 0]
    assert np.mean(b["best"]) < float(zero.mean())


def test_cache_returns_stored_value_and_recomputes_on_other_key(tmp_path):
    calls = []
    f = lambda: calls.append(1) or [1.0, 2.0]  # noqa: E731
    assert cached(tmp_path, {"a": 1}, f) == [1.0, 2.0] and cached(tmp_path, {"a": 1}, f) == [1.0, 2.0]
    assert len(calls) == 1
    cached(tmp_path, {"a": 2}, f)
    assert len(calls) == 2


def test_reference_init_matches_app_c_statistics():
    g = torch.Generator().manual_seed(0)
    dec = ActionDecoder(2, 20, 1, -100.0, 100.0, hidden_sizes=(256, 256), activation="elu",
                        init="reference", generator=g)  # fmt: skip
    for m in dec.net:
        if isinstance(m, torch.nn.Linear):
            fan_out, fan_in = m.weight.shape
            assert m.weight.std().item() == pytest.approx(2 / (fan_in + fan_out) ** 0.5, rel=0.1)
            assert torch.count_nonzero(m.bias) == 0
    z = torch.rand(500, 2, generator=g) * 2 - 1
    default = ActionDecoder(2, 20, 1, -100.0, 100.0, hidden_sizes=(256, 256), activation="elu")
    # App. C's untrained decoder proposes plans that differ across the latent box; the default barely does
    assert dec(z).std(0).mean() > 3 * default(z).std(0).mean()
    with pytest.raises(ValueError, match="init must be one of"):
        ActionDecoder(2, 20, 1, -1.0, 1.0, init="xavier")


def test_code_version_changes_with_the_source_and_invalidates_the_cache(tmp_path, monkeypatch):
    import importlib
    import sys

    from dcem.experiments.cartpole.baselines import code_version

    monkeypatch.syspath_prepend(str(tmp_path))
    mod = tmp_path / "dep_mod.py"
    mod.write_text("def f():\n    return 1.0\n")
    dep = importlib.import_module("dep_mod")
    v1 = code_version(dep.f, "dcem.planning")
    assert v1 == code_version(dep.f, "dcem.planning")  # stable
    calls = []
    compute = lambda: calls.append(1) or [dep.f()]  # noqa: E731
    assert cached(tmp_path / "c", {"x": 1, "code": v1}, compute) == [1.0]
    mod.write_text("def f():\n    return 2.0\n")  # the code a cached number depends on changes
    sys.modules.pop("dep_mod")
    dep = importlib.import_module("dep_mod")
    v2 = code_version(dep.f, "dcem.planning")
    assert v2 != v1
    assert cached(tmp_path / "c", {"x": 1, "code": v2}, compute) == [2.0] and len(calls) == 2
    # what the baselines depend on: the dynamics' module, the cost, the planner package
    from dcem.control import CartpoleDx, PendulumChainDx

    assert code_version(CartpoleDx, "dcem.planning") != code_version(PendulumChainDx, "dcem.planning")


def _ablation(tmp_path, name, seeds):
    out = tmp_path / name
    cartpole.main([f"out_dir={out}", "mode=ablation", f"ablation.seeds={seeds}", *TINY])
    return out


def test_report_writes_blocks_figures_and_keeps_prose(tmp_path):
    runs = []
    for s in (0, 1):
        runs.append(tmp_path / f"s{s}")
        cartpole.main([f"out_dir={runs[-1]}", f"seed={s}", *TINY])
    a0, a1 = _ablation(tmp_path, "a0", "[0]"), _ablation(tmp_path, "a1", "[1]")  # one folder per seed
    page = tmp_path / "page.md"
    page.write_text("# Cartpole\n\nhand-written prose\n")
    args = [f"report.runs=[{runs[0]},{runs[1]}]", f"report.ablation=[{a0},{a1}]", f"report.page={page}",
            f"report.img_dir={tmp_path / 'img'}", f"report.out={tmp_path / 'rep'}",
            f"report.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    cartpole.main(["mode=report", *args, *TINY])
    text = page.read_text()
    assert "hand-written prose" in text
    for block in ("setup", "baselines", "main", "ablation"):
        assert f"<!-- report:{block} begin" in text and f"<!-- report:{block} end -->" in text
    assert "latent DCEM, trained (best)" in text and "expert configured in the published code" in text
    assert "expert of the paper's text" in text and "2 sampling seeds" in text
    assert "| 1 | 2 | 2 of 2 | finished |" in text  # the two folders merged into one cell of 2 seeds
    assert "not tested" not in text and "latent size 2** (fractions" in text
    for f in ("cartpole_curves.png", "cartpole_fig3.png", "cartpole_surface.png", "cartpole_fig5.png",
              "cartpole_fig6.png"):  # fmt: skip
        assert (tmp_path / "img" / f).is_file(), f
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [r["seed"] for r in rep["runs"]] == [0, 1]
    assert len(rep["runs"][0]["trained"]["mean"]) == 2  # two DCEM sampling seeds in the tiny preset
    conv = rep["baselines"]["converged"]
    assert conv["spec"]["n_iter"] == 3 and conv["seeds"] == [1, 2] and len(conv["runs"]) == 2
    assert conv["runs"][0]["best"] != conv["runs"][1]["best"]  # the sampling seeds differ
    assert rep["baselines"]["published"]["spec"] == {
        "n_sample": 20,
        "n_elite": 4,
        "n_iter": 3,
        "sigma_scale": 0.5,
    }
    # a second report reuses the cache (same numbers); an ablation cell of a run folder can be a main run
    cartpole.main(["mode=report", *args, *TINY])
    assert page.read_text() == text
    cells = f"[{a0 / 'tau1_nz2_seed0'},{a1 / 'tau1_nz2_seed1'}]"
    cartpole.main(["mode=report", *args, f"report.runs={cells}", *TINY])
    assert "tau1_nz2_seed0" in page.read_text()


def test_running_cells_are_not_results(tmp_path):
    from omegaconf import OmegaConf

    a0 = _ablation(tmp_path, "a0", "[0,1]")
    cfg = OmegaConf.load(a0 / "config.yaml")  # as if the run had been extended and were still going
    cfg.ablation.n_train_iter = 4
    (a0 / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    page = tmp_path / "page.md"
    args = [f"report.ablation=[{a0}]", f"report.page={page}", f"report.img_dir={tmp_path / 'img'}",
            f"report.out={tmp_path / 'rep'}", f"report.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    cartpole.main(["mode=report", *args, *TINY])
    text = page.read_text()
    assert "seed 0: running (update 2 of 4); seed 1: running (update 2 of 4)" in text
    assert "latent size 2: not tested (run in progress)" in text and "0 of 4 cells finished" in text
    assert "<!-- report:main begin" not in text  # no train runs given: no main block
    with pytest.raises(RunError, match="is running \\(update 2 of 4\\)"):
        cartpole.main(["mode=report", *args, f"report.runs=[{a0 / 'tau1_nz2_seed0'}]", *TINY])
    with pytest.raises(RunError, match="in two folders"):
        cartpole.main(["mode=report", f"report.ablation=[{a0},{a0}]", *args[1:], *TINY])


def test_report_errors_name_the_key(tmp_path):
    with pytest.raises(RunError, match="report.runs"):
        cartpole.main(["mode=report", *TINY])
    with pytest.raises(RunError, match="report.runs: .* is not a finished train run"):
        cartpole.main(["mode=report", f"report.runs=[{tmp_path}]", *TINY])
    with pytest.raises(RunError, match="report.ablation: .* is not an ablation run folder"):
        cartpole.main(["mode=report", f"report.ablation=[{tmp_path}]", *TINY])

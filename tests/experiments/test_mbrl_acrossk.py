"""The report's comparisons across re-planning intervals (:mod:`dcem.experiments.mbrl.acrossk`)."""

import json

import numpy as np
import pytest

from dcem.experiments.common.runs import RunError
from dcem.experiments.mbrl.acrossk import (
    BEST_SUFFIX,
    across_k,
    across_k_block,
    best_k,
    best_k_block,
    best_k_groups,
)


def _run(seed, returns, episodes=20):
    return {"seed": seed, "_dir": f"runs/x/seed{seed}", "episode_seeds": list(range(10000, 10000 + episodes)),
            "controllers": {name: {"returns": list(map(float, r))} for name, r in returns.items()}}


def _runs(seeds=(0, 1, 2), episodes=20):
    g = np.random.default_rng(0)
    at1, at6 = [], []
    for s in seeds:
        full = g.uniform(40, 60, episodes)
        at1.append(_run(s, {"full_cem": full, "latent_dcem": g.uniform(0, 2, episodes)}, episodes))
        at6.append(_run(s, {"full_cem": full * 0.8, "latent_dcem": 2 * full + g.normal(0, 1, episodes)},
                        episodes))
        at6[-1]["replan_every"] = 6
    return {"cheetah-run": at1, "cheetah-run (re-plan every 6)": at6}


def test_latent_at_k_against_full_cem_every_step_matches_brute_force():
    runs = _runs()
    comps = {(c["num"], c["den"]): c for c in across_k(runs, n_boot=500)}
    want_pairs = {("latent_dcem", "full_cem"), ("latent_dcem", "latent_dcem"), ("full_cem", "full_cem")}
    assert set(comps) == want_pairs
    c = comps[("latent_dcem", "full_cem")]
    ret = lambda r, name: np.mean(r["controllers"][name]["returns"])  # noqa: E731
    want = [ret(b, "latent_dcem") / ret(a, "full_cem")
            for a, b in zip(runs["cheetah-run"], runs["cheetah-run (re-plan every 6)"])]
    assert c["ratio_seeds"][0] == pytest.approx(np.mean(want))
    assert c["k"] == 6 and c["task"] == "cheetah-run" and c["verdict"]
    assert comps[("full_cem", "full_cem")]["ratio_pooled"] == pytest.approx(0.8)
    block = across_k_block(list(comps.values()))
    assert "| cheetah-run | latent_dcem @ k = 6 / full_cem @ k = 1 | 3 × 20 |" in block
    assert ": above 1 |" in block and ": below 1 |" in block


def test_only_seeds_of_both_groups_and_no_verdict_below_three():
    runs = _runs()
    runs["cheetah-run"] = runs["cheetah-run"][:2]
    (c,) = [c for c in across_k(runs, n_boot=200) if c["num"] == "latent_dcem" and c["den"] == "full_cem"]
    assert c["seeds"] == 2 and not c["verdict"]
    assert "no verdict (2 seed(s))" in across_k_block([c])


def test_different_test_episodes_are_refused_and_lone_groups_skipped():
    runs = _runs()
    runs["cheetah-run (re-plan every 6)"][1]["episode_seeds"][0] = 7
    with pytest.raises(RunError, match="test episodes at k > 1 and at k = 1 differ"):
        across_k(runs)
    assert across_k({"walker-walk (re-plan every 6)": _runs()["cheetah-run (re-plan every 6)"]}) == []
    assert across_k_block([]) is None


def _probe(dir_, sweep):
    dir_.mkdir(parents=True, exist_ok=True)
    replan = {name: {str(k): {"mean": m} for k, m in by_k.items()} for name, by_k in sweep.items()}
    (dir_ / "probe.json").write_text(json.dumps({"replan": replan}))


def test_best_k_is_the_argmax_of_the_validation_sweep_smallest_on_ties():
    probe = {"replan": {"full_cem": {"1": {"mean": 5.0}, "2": {"mean": 5.0}, "6": {"mean": 1.0}},
                        "latent_dcem": {"1": {"mean": 0.5}, "6": {"mean": 9.0}, "12": {"mean": 8.0}}}}
    assert best_k(probe) == {"full_cem": 1, "latent_dcem": 6}


def test_best_k_group_takes_each_controller_at_its_own_k(tmp_path):
    runs = _runs()
    for group in runs.values():
        for r in group:
            r["_dir"] = str(tmp_path / f"seed{r['seed']}")
    for s in (0, 1, 2):
        _probe(tmp_path / f"seed{s}", {"full_cem": {1: 9, 6: 1}, "latent_dcem": {1: 1, 6: 9}})
    groups, rows = best_k_groups(runs)
    (best,) = groups.values()
    assert list(groups) == ["cheetah-run" + BEST_SUFFIX] and [r[3] for r in rows] == ["–"] * 3
    for r, at1, at6 in zip(best, runs["cheetah-run"], runs["cheetah-run (re-plan every 6)"]):
        assert r["controllers"]["full_cem"]["returns"] == at1["controllers"]["full_cem"]["returns"]
        assert r["controllers"]["latent_dcem"]["returns"] == at6["controllers"]["latent_dcem"]["returns"]
    # seed 1's sweep prefers latent DCEM at k = 12, which has no test evaluation: no group, and the
    # missing evaluation is named
    _probe(tmp_path / "seed1", {"full_cem": {1: 9}, "latent_dcem": {6: 1, 12: 9}})
    groups, rows = best_k_groups(runs)
    assert groups == {} and rows[1][3] == "`phase=eval eval.replan_every=12`"
    (tmp_path / "seed2" / "probe.json").unlink()
    assert best_k_groups(runs)[1][2][2:] == ["no probe.json", "`phase=probe`"]
    assert "| cheetah-run | 1 | full_cem 1, latent_dcem 12 |" in best_k_block(rows)

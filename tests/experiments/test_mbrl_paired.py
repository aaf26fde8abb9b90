"""Paired same-snapshot evaluation and ``phase=report`` of ``dcem-exp mbrl`` (issue 11)."""

import json
import math
import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "disable")
pytest.importorskip("dm_control")
pytest.importorskip("torchrl")
pytest.importorskip("hydra")

from dcem.experiments.__main__ import main as cli  # noqa: E402
from dcem.experiments.common.runs import RunError  # noqa: E402
from dcem.experiments.mbrl import compose, main, run  # noqa: E402
from dcem.experiments.mbrl.paired import CONTROLLERS, episode_seeds  # noqa: E402
from dcem.experiments.mbrl.report import load_runs, summarize  # noqa: E402
from dcem.rl.envs import DMCEnv  # noqa: E402

pytestmark = pytest.mark.rl
ALL = ["random", "full_cem_phase1", "full_cem", "full_cem_budget", "latent_dcem", "latent_dcem_ppo"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished ``scale=test`` pipeline (3 paired episodes), its eval.json and the resets it made."""
    root = tmp_path_factory.mktemp("mbrl")
    out = root / "cartpole-swingup" / "seed0"
    resets: list[tuple[int | None, np.ndarray]] = []
    orig = DMCEnv.reset

    def spy(self, seed=None):
        o = orig(self, seed)
        resets.append((seed, o.copy()))
        return o

    DMCEnv.reset = spy
    try:
        cfg = compose(["scale=test", f"out_dir={out}", "eval.every=0", "eval.episodes=3", "progress=false",
                       f"eval.controllers=[{','.join(ALL)}]"])  # fmt: skip
        run(cfg)
    finally:
        DMCEnv.reset = orig
    return root, out, json.loads((out / "eval.json").read_text()), resets


def test_every_controller_plays_the_same_episodes(tiny_run):
    _, out, res, resets = tiny_run
    seeds = episode_seeds(0, 3)
    assert res["episode_seeds"] == seeds and set(res["controllers"]) == set(ALL)
    evals = [(s, o) for s, o in resets if s is not None]  # the training episodes reset unseeded
    assert [s for s, _ in evals] == seeds * len(ALL)  # each controller: the same seeds, in order
    first = {s: o for s, o in evals[:3]}
    for s, o in evals:  # identical initial states for every controller ...
        np.testing.assert_array_equal(o, first[s])
    ref = DMCEnv("cartpole-swingup", seed=123, episode_steps=80)  # ... equal to an independent env's
    for s in seeds:
        from dm_control import suite

        direct = suite.load("cartpole", "swingup", task_kwargs={"random": s}).reset().observation
        np.testing.assert_allclose(first[s], np.concatenate([direct["position"], direct["velocity"]]))
        np.testing.assert_array_equal(ref.reset(s), first[s])
    assert not np.array_equal(first[seeds[0]], first[seeds[1]])  # and different episodes differ
    for name, r in res["controllers"].items():
        assert r["snapshot"] == CONTROLLERS[name][0] and len(r["returns"]) == 3
        assert math.isfinite(r["mean"])
    rows = (out / "paired.csv").read_text().splitlines()
    assert rows[0] == "controller,snapshot,episode,env_seed,return" and len(rows) == 1 + 3 * len(ALL)
    p = res["controllers"]
    assert (
        p["full_cem"]["trajectories_per_step"] == 8 * 2
        and p["full_cem_budget"]["trajectories_per_step"] == 6 * 2
    )
    assert p["latent_dcem"]["trajectories_per_step"] == p["full_cem_budget"]["trajectories_per_step"]


def test_episode_seeds_are_disjoint_from_training_and_between_seeds():
    a, b = episode_seeds(0, 20), episode_seeds(1, 20)
    assert len(set(a)) == 20 and not set(a) & set(b) and 0 not in a and 1 not in b
    with pytest.raises(ValueError, match="eval.episodes"):
        episode_seeds(0, 0)
    with pytest.raises(ValueError, match="seed must be an int"):
        DMCEnv("cartpole-swingup", episode_steps=80).reset(-1)


def test_unfinished_snapshot_is_refused_naming_it(tmp_path):
    cfg = compose(["scale=test", f"out_dir={tmp_path}", "eval.every=0", "phase=model", "progress=false"])
    tr = run(cfg)
    assert tr.available_controllers() == ["random", "full_cem_phase1"]
    with pytest.raises(RunError, match=r"snapshot\(s\) \['decoder'\]"):
        tr.phase_eval(["latent_dcem"])
    # phase=eval with the configured list evaluates the ready ones only
    assert set(tr.phase_eval()) == {"random"}


def test_report_mode_writes_the_blocks(tiny_run, tmp_path):
    root, out, res, _ = tiny_run
    page = tmp_path / "docs" / "mbrl.md"
    page.parent.mkdir()
    page.write_text("# hand-written\n\nprose stays\n")
    main(["phase=report", f"report.root={root}", f"report.page={page}"])
    text = page.read_text()
    assert text.startswith("# hand-written\n\nprose stays\n")
    for block in ("mbrl-paired", "mbrl-paired-diffs", "mbrl-runs", "mbrl-claims"):
        assert f"<!-- report:{block} begin" in text and f"<!-- report:{block} end -->" in text
    assert f"report.root={root}" in text and (page.parent / "mbrl_paired.png").stat().st_size > 0
    # the numbers are the run's: pooled mean of latent_dcem and the paired difference to full CEM
    lat, full = (np.array(res["controllers"][k]["returns"]) for k in ("latent_dcem", "full_cem"))
    s = summarize(load_runs(root)["cartpole-swingup"])
    assert s["controllers"]["latent_dcem"]["pooled"][0] == pytest.approx(lat.mean())
    comp = next(c for c in s["comparisons"] if (c["num"], c["den"]) == ("latent_dcem", "full_cem"))
    assert comp["diff_pooled"][0] == pytest.approx((lat - full).mean())
    assert comp["diff_seeds"][0] == pytest.approx((lat - full).mean())  # one seed: its mean
    assert not comp["verdict"] and "no verdict" in text  # 1 seed x 3 episodes
    assert "<!-- report:mbrl-diagnostics begin" in text and "<!-- report:mbrl-model-error begin" in text
    fc = res["controllers"]["full_cem"]
    assert len(fc["obs_mse_by_d"]) == len(fc["reward_mse_by_d"]) == 3  # scale=test: H = 3
    assert "obs_mse_by_d" not in res["controllers"]["random"] and 0 <= fc["saturated"] <= 1
    assert comp["ratio_pooled"] == pytest.approx(lat.mean() / full.mean())
    assert "| cartpole-swingup | latent_dcem | decoder | 12 | 1 × 3 |" in text
    again = page.read_text()
    main(["phase=report", f"report.root={root}", f"report.page={page}"])
    assert page.read_text() == again  # regenerating is idempotent


def _bad_root(tmp_path, res, edit):
    d = tmp_path / "bad" / "seed0"
    d.mkdir(parents=True)
    r = json.loads(json.dumps(res))
    edit(r)
    (d / "eval.json").write_text(json.dumps(r) if isinstance(r, dict) else r)
    return d.parent


@pytest.mark.parametrize(
    "edit,key",
    [
        (lambda r: r.pop("episode_seeds"), "'episode_seeds'"),
        (lambda r: r.update(format="old"), "'format'"),
        (lambda r: r["controllers"]["full_cem"].pop("returns"), "'controllers.full_cem.returns'"),
        (lambda r: r["controllers"]["latent_dcem"]["returns"].pop(), "'controllers.latent_dcem.returns'"),
        (lambda r: r["controllers"].update(bogus={"returns": [], "snapshot": "x"}), "'controllers.bogus'"),
        (lambda r: r.update(controllers={}), "'controllers'"),
    ],
)
def test_bad_report_inputs_are_one_line_naming_the_key(tiny_run, tmp_path, edit, key):
    root = _bad_root(tmp_path, tiny_run[2], edit)
    with pytest.raises(SystemExit) as err:
        cli(["mbrl", "phase=report", f"report.root={root}", f"report.page={tmp_path / 'p.md'}"])
    msg = str(err.value.code)
    assert msg.startswith("dcem-exp mbrl: error: ") and key in msg and len(msg.splitlines()) == 1, msg
    assert not (tmp_path / "p.md").exists()


def test_bad_report_root_and_files(tmp_path, tiny_run):
    with pytest.raises(RunError, match="report.root='.*nowhere' is not a folder"):
        load_runs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no eval.json"):
        load_runs(tmp_path / "empty")
    d = tmp_path / "trunc" / "s0"
    d.mkdir(parents=True)
    (d / "eval.json").write_text('{"format": ')
    with pytest.raises(RunError, match="eval.json: unreadable"):
        load_runs(tmp_path / "trunc")
    two = tmp_path / "two"
    for k in ("a", "b"):
        shutil.copytree(tiny_run[1], two / k, ignore=shutil.ignore_patterns("*.pt"))
    with pytest.raises(RunError, match="two runs with seed"):
        load_runs(two)


def test_claim_verdicts_read_the_intervals():
    from dcem.experiments.mbrl.report import _verdict_diff, _verdict_ratio

    ok = {"verdict": True, "seeds": 3}
    c = {**ok, "ratio_pooled": 0.95, "ratio_boot_seeds": (0.91, 0.99), "diff_seeds": (-3.0, 2.0)}
    assert _verdict_ratio(c, 0.9).endswith("above 0.9") and _verdict_diff(c).endswith("lower")
    c = {**ok, "ratio_pooled": 0.95, "ratio_boot_seeds": (0.85, 1.02), "diff_seeds": (1.0, 2.0)}
    assert _verdict_ratio(c, 0.9).endswith("not separable from 0.9")
    assert _verdict_diff(c).endswith("no significant difference")
    c = {**ok, "ratio_pooled": 0.7, "ratio_boot_seeds": (0.6, 0.8), "diff_seeds": (5.0, 2.0)}
    assert _verdict_ratio(c, 0.9).endswith("below 0.9") and _verdict_diff(c).endswith("higher")
    assert _verdict_ratio(None, 0.9) == "not evaluated"
    few = {**c, "verdict": False, "seeds": 1}
    assert "no verdict" in _verdict_ratio(few, 0.9) and "no verdict" in _verdict_diff(few)


def test_seed_level_statistics():
    from dcem.experiments.common.runs import bootstrap_ratio
    from dcem.experiments.mbrl.stats import bootstrap_ratio_seeds, compare, enough

    g = np.random.default_rng(1)
    den = [g.uniform(1, 2, 20) for _ in range(3)]
    lo, hi = bootstrap_ratio_seeds([2 * d for d in den], den, np.random.default_rng(0))
    assert lo == pytest.approx(2) and hi == pytest.approx(2)  # a constant ratio: a point interval
    # seeds that disagree (within-seed noise tiny): the seed-level interval is far wider than the
    # pooled-episode one, which treats 60 pairs as independent
    num = [d * f + g.normal(0, 1e-3, 20) for d, f in zip(den, (0.5, 1.0, 1.5))]
    seeds_iv = bootstrap_ratio_seeds(num, den, np.random.default_rng(0))
    pooled_iv = bootstrap_ratio(num, den, np.random.default_rng(0))
    assert seeds_iv[1] - seeds_iv[0] > 5 * (pooled_iv[1] - pooled_iv[0])
    # against a plain two-loop reference (independent draws: the quantiles agree to Monte-Carlo error)
    ref_g, ref = np.random.default_rng(7), []
    for _ in range(4000):
        ss = ref_g.integers(0, 3, 3)
        ii = [ref_g.integers(0, 20, 20) for _ in ss]
        pairs = list(zip(ss, ii))
        ref.append(sum(num[s][i].sum() for s, i in pairs) / sum(den[s][i].sum() for s, i in pairs))
    want = np.percentile(ref, [2.5, 97.5])
    got = bootstrap_ratio_seeds(num, den, np.random.default_rng(3), 4000)
    np.testing.assert_allclose(got, want, atol=0.05)
    c = compare(num, den, np.random.default_rng(0))
    per_seed = [x.mean() / y.mean() for x, y in zip(num, den)]
    assert c["ratio_seeds"][0] == pytest.approx(np.mean(per_seed)) and c["verdict"]
    assert not enough(num[:2]) and not enough([x[:19] for x in num])


def test_report_lists_unfinished_runs_and_their_decoder_curves(tiny_run, tmp_path):
    """Before any run has its eval.json the page lists the running folders and their curves."""
    root = tmp_path / "root"
    d = root / "cartpole-swingup" / "seed4"
    d.mkdir(parents=True)
    for f in ("config.yaml", "train.csv"):
        shutil.copy(tiny_run[1] / f, d / f)
    (d / "decoder_curve.csv").write_text("decoder_episode,decoder_updates,env_steps,val_return,val_ci95,n,"
                                         "pred_return,real_return,saturated\n0,0,80,1.5,nan,2,2,1.5,0.25\n"
                                         "1,20,160,3.5,nan,2,4,3.5,0.5\n")  # fmt: skip
    page = tmp_path / "p.md"
    main(["phase=report", f"report.root={root}", f"report.page={page}"])
    text = page.read_text()
    assert f"| cartpole-swingup | 4 | {d} |" in text and "running / unfinished" in text
    assert "| cartpole-swingup | 4 | 1 | 1.5 | 1.5 @ 0, 3.5 @ 20 | 3.5 | 4 / 3.5 | 50.0% |" in text
    assert (tmp_path / "mbrl_decoder_curve.png").stat().st_size > 0


def test_paired_planner_state_is_the_filter_of_the_observed_episode(tiny_run):
    """The hidden state a planner gets at step t is the model's filter of the episode's own observations
    and actions up to t (a regression test: the observation tensor once aliased the buffer that the
    environment step overwrote, so the state was filtered with the next observation)."""
    import torch

    from dcem.experiments.mbrl.trainer import MBRLTrainer

    _, out, _, _ = tiny_run
    cfg = compose(["scale=test", f"out_dir={out}", "eval.every=0", "eval.episodes=2", "progress=false"])
    tr = MBRLTrainer(cfg, out)
    tr.load()
    tr._load_weights("decoder")
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    plan = tr.cem.plan

    def spy(h, x, generator=None):
        U = plan(h, x, generator=generator)
        calls.append((h.clone(), x.clone(), U[:, 0].clone()))
        return U

    tr.cem.plan = spy
    try:
        tr.paired_returns("cem", episode_seeds(0, 2))
    finally:
        del tr.cem.plan
    hs, xs, us = (torch.stack(v, 1) for v in zip(*calls))  # (n, T, D), (n, T, O), (n, T, A)
    lo, hi = torch.as_tensor(tr.env.u_lower), torch.as_tensor(tr.env.u_upper)
    acts = torch.maximum(torch.minimum(us, hi), lo)
    with torch.no_grad():
        ref = tr.model.filter(xs, acts[:, :-1])  # h[:, t] from x_{<t}, u_{<t}
    assert hs.shape[1] > 5
    torch.testing.assert_close(hs, ref, rtol=1e-5, atol=1e-6)
    tr.close_pool()


def test_probe_writes_calibration_by_kind_and_the_report_shows_it(tiny_run, tmp_path):
    from dcem.experiments.mbrl.probe import KINDS, _execute, probe_starts

    root, out, _, _ = tiny_run
    work = tmp_path / "root"
    shutil.copytree(root, work)
    run_dir = work / out.relative_to(root)
    cli(["mbrl", "phase=probe", "scale=test", f"out_dir={run_dir}", "eval.every=0", "eval.episodes=3",
         "progress=false"])  # fmt: skip
    res = json.loads((run_dir / "probe.json").read_text())
    assert list(res["kinds"]) == list(KINDS) and res["episode_seeds"] == episode_seeds(0, 3)
    for k in res["kinds"].values():
        assert len(k["pred_all"]) == len(k["real_all"]) == 3
        assert all(math.isfinite(v) for v in k["pred_all"] + k["real_all"])
    assert res["kinds"]["bang-bang"]["saturated"] == 1.0 and res["kinds"]["uniform"]["saturated"] < 0.2
    # the received return replays the start state exactly: equal to one uninterrupted rollout
    env = DMCEnv("cartpole-swingup", seed=5, episode_steps=80)
    rng = np.random.default_rng(0)
    starts = probe_starts(env, [11, 12], 4, rng)
    u = rng.uniform(-1, 1, size=(4, 1)).astype(np.float32)
    for s in starts:
        assert 0 <= len(s["act"]) <= env.episode_len - 4 and len(s["obs"]) == len(s["act"]) + 1
        fresh = DMCEnv("cartpole-swingup", seed=99, episode_steps=80)
        fresh.reset(s["seed"])
        for a in s["act"]:
            fresh.step(a)
        direct = sum(fresh.step(a)[1] for a in u)
        assert _execute(env, s, u) == direct
    from dcem.experiments.mbrl.probe import REPLAN_KS, validation_seeds

    assert res["validation_seeds"] == validation_seeds(0, 2)
    assert not set(res["validation_seeds"]) & set(res["episode_seeds"])
    assert set(res["replan"]) == {"full_cem", "full_cem_budget", "latent_dcem"}
    for by_k in res["replan"].values():
        assert list(by_k) == [str(k) for k in REPLAN_KS]
        assert all(len(v["returns"]) == 2 for v in by_k.values())
    # eval.replan_every=k: a paired evaluation of its own, a group of its own in the report
    cli(["mbrl", "phase=eval", "scale=test", f"out_dir={run_dir}", "eval.every=0", "eval.episodes=3",
         "progress=false", "eval.replan_every=2",
         "eval.controllers=[random,full_cem,latent_dcem]"])  # fmt: skip
    rep2 = json.loads((run_dir / "eval_replan2.json").read_text())
    assert rep2["replan_every"] == 2 and rep2["controllers"]["full_cem"]["replan_every"] == 2
    assert rep2["controllers"]["random"]["returns"] == json.loads((run_dir / "eval.json").read_text())[
        "controllers"]["random"]["returns"]  # fmt: skip
    page = tmp_path / "page.md"
    cli(["mbrl", "phase=report", f"report.root={work}", f"report.page={page}"])
    text = page.read_text()
    assert "report:mbrl-probe begin" in text and "bang-bang" in text and "decoder, random z" in text
    assert "report:mbrl-replan begin" in text and "re-plan every 12" in text
    assert "cartpole-swingup (re-plan every 2)" in text
    # across intervals on the same episodes; each run's validation-best k and what it still needs
    assert "| cartpole-swingup | latent_dcem @ k = 2 / full_cem @ k = 1 | 1 × 3 |" in text
    best = text.split("report:mbrl-best-k begin")[1].split("report:mbrl-best-k end")[0]
    assert "| cartpole-swingup | 0 | full_cem " in best and "latent_dcem " in best


def test_replan_every_executes_each_plan_for_k_steps(tiny_run):
    import torch

    from dcem.experiments.mbrl.trainer import MBRLTrainer

    _, out, _, _ = tiny_run
    cfg = compose(["scale=test", f"out_dir={out}", "eval.every=0", "eval.episodes=2", "progress=false"])
    tr = MBRLTrainer(cfg, out)
    tr.load()
    tr._load_weights("decoder")
    plans, acts = [], []
    plan, step = tr.latent.plan, DMCEnv.step

    def spy(h, x, generator=None):
        U = plan(h, x, generator=generator)
        plans.append(U.clone())
        return U

    def spy_step(self, a):
        acts.append(np.array(a))
        return step(self, a)

    tr.latent.plan, DMCEnv.step = spy, spy_step
    try:
        tr.paired_returns("dcem", episode_seeds(0, 2), replan_every=3)
    finally:
        del tr.latent.plan
        DMCEnv.step = step
        tr.close_pool()
    T = tr.env.episode_len
    assert len(plans) == -(-T // 3)
    executed = np.stack(acts).reshape(T, 2, -1)  # (T, episodes, A): the episodes step in turn
    for t in range(T):
        want = np.clip(plans[t // 3][:, t % 3].numpy(), tr.env.u_lower, tr.env.u_upper)
        np.testing.assert_array_equal(executed[t], want)
    assert torch.isfinite(torch.stack(plans)).all()

"""Issue 17's options of the MBRL pipeline at tiny scale: the interleaved schedule (App. D's Alg. 3),
the frozen-model phase 2, lockstep phase loops, the decoder's loss states, init and action prior,
the decoder-training curve and the model-exploitation diagnostics."""

import functools
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "disable")
pytest.importorskip("dm_control")
pytest.importorskip("hydra")

from dcem.experiments.common.config import ConfigError  # noqa: E402
from dcem.experiments.common.runs import CsvLog  # noqa: E402
from dcem.experiments.mbrl import collect, compose  # noqa: E402
from dcem.experiments.mbrl.learning import VAL_SEED_BASE  # noqa: E402
from dcem.experiments.mbrl.paired import plan_diagnostics  # noqa: E402
from dcem.experiments.mbrl.runinfo import curve_block, curve_figure  # noqa: E402
from dcem.experiments.mbrl.trainer import MBRLTrainer, seed_everything  # noqa: E402
from dcem.rl.env_pool import EnvPool  # noqa: E402

pytestmark = pytest.mark.rl


def _trainer(tmp_path, *extra):
    cfg = compose(["scale=test", f"out_dir={tmp_path}", "eval.every=0", "progress=false", *extra])
    seed_everything(cfg["seed"])
    return MBRLTrainer(cfg, tmp_path)


def test_interleaved_schedule_updates_every_interval(tmp_path):
    # cartpole at repeat 8: 10 agent steps; interval 3 -> updates before steps 3, 6, 9
    tr = _trainer(tmp_path, "train.schedule=interleaved", "train.update_interval=3", "train.episodes=2",
                  "decoder.episodes=2")  # fmt: skip
    assert tr.env.episode_len == 10
    tr.phase_model()
    assert tr.progress["model_updates"] == 2 * 3 and tr.progress["decoder_updates"] == 0
    tr.phase_decoder()  # one model update and one decoder update per slot
    assert tr.progress["model_updates"] == 2 * 3 + 2 * 3 and tr.progress["decoder_updates"] == 2 * 3
    rows = [r for r in tr.history if r["phase"] == "decoder"]
    assert len(rows) == 2
    assert all(np.isfinite(r["decoder_loss"]) and np.isfinite(r["model_loss"]) for r in rows)


def test_block_schedule_counts(tmp_path):
    tr = _trainer(tmp_path, "train.episodes=2", "train.updates_per_episode=2", "decoder.episodes=1",
                  "decoder.updates_per_episode=3", "decoder.model_updates_per_episode=1")  # fmt: skip
    tr.phase_model()
    tr.phase_decoder()
    assert tr.progress["model_updates"] == 2 * 2 + 1 and tr.progress["decoder_updates"] == 3


def test_freeze_model_keeps_phase_1_model(tmp_path):
    tr = _trainer(tmp_path, "decoder.freeze_model=true", "decoder.episodes=2")
    tr.phase_model()
    model = {k: v.clone() for k, v in tr.model.state_dict().items()}
    dec = [p.detach().clone() for p in tr.decoder.parameters()]
    n = tr.progress["model_updates"]
    tr.phase_decoder()
    assert tr.progress["model_updates"] == n and tr.progress["decoder_updates"] == 2
    for k, v in tr.model.state_dict().items():
        torch.testing.assert_close(v, model[k], rtol=0, atol=0)
    assert any(not torch.equal(p, q) for p, q in zip(dec, tr.decoder.parameters()))
    assert len(tr.replay) == 1 + 1 + 2  # the latent controller still collects (online states)


def test_lockstep_phase_loops_over_the_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(collect, "EnvPool", functools.partial(EnvPool, start_method="fork"))
    tr = _trainer(tmp_path, "train.collect_workers=2", "train.episodes=3", "train.updates_per_episode=1",
                  "decoder.episodes=1", "decoder.updates_per_episode=1",
                  "decoder.model_updates_per_episode=1")  # fmt: skip
    try:
        tr.phase_model()
        tr.phase_decoder()
    finally:
        tr.close_pool()
    # 1 seed episode, then batches of 2 and 1 (the last batch keeps only the episodes still due)
    assert tr.progress["model"] == 4 and tr.progress["decoder"] == 1 and len(tr.replay) == 5
    assert tr.progress["model_updates"] == 2 + 1 + 1 and tr.progress["decoder_updates"] == 1
    model_rows = [r for r in tr.history if r["phase"] == "model"]
    assert [r["episode"] for r in model_rows] == [0, 1, 2, 3]
    assert model_rows[1]["return"] != model_rows[2]["return"]  # two different seeded tasks
    assert tr.history[-1]["env_steps"] == 5 * tr.env.episode_len * tr.env.action_repeat


def test_decoder_loss_states_and_reference_init(tmp_path):
    tr = _trainer(tmp_path, "decoder.states=all", "decoder.context=4", "decoder.init=reference")
    tr.phase_model()
    h, x = tr.sample_states(3)
    assert h.shape == (3 * 4, tr.model.deter_size) and x.shape == (3 * 4, tr.env.obs_dim)
    tr.rng = np.random.default_rng(5)
    o, a, _ = tr.replay.sample(3, 4, np.random.default_rng(5))
    tr.rng = np.random.default_rng(5)
    h2, x2 = tr.sample_states(3)
    ref = tr.model.filter(o, a)[:, 1:]
    torch.testing.assert_close(h2, ref.reshape(-1, ref.shape[-1]))
    torch.testing.assert_close(x2, o[:, 1:].reshape(-1, o.shape[-1]))
    # App. C's init: zero biases, weights N(0, (2/sqrt(fan_in+fan_out))^2), drawn from the run seed
    lin = [m for m in tr.decoder.net if isinstance(m, torch.nn.Linear)]
    assert all(float(m.bias.detach().abs().max()) == 0 for m in lin)
    other = _trainer(tmp_path / "b", "decoder.init=reference")
    torch.testing.assert_close(other.decoder.net[0].weight, tr.decoder.net[0].weight)


def test_action_prior_penalty_is_the_standardised_distance(tmp_path):
    tr = _trainer(tmp_path, "decoder.action_prior=0.5")
    tr.phase_model()
    acts = tr.replay.act[: len(tr.replay)].reshape(-1, tr.env.act_dim)
    mu, sd = acts.mean(0), np.maximum(acts.std(0), 1e-2)
    u = torch.randn(4, 3, tr.env.act_dim)
    want = float((((u.numpy() - mu) / sd) ** 2).mean())
    assert float(tr.action_prior_penalty(u)) == pytest.approx(want, rel=1e-5)
    before = [p.detach().clone() for p in tr.decoder.parameters()]
    assert np.isfinite(tr.decoder_update())
    assert any(not torch.equal(p, q) for p, q in zip(before, tr.decoder.parameters()))


def test_decoder_curve_is_written_and_resumed(tmp_path):
    tr = _trainer(tmp_path, "decoder.val_every=1", "decoder.val_episodes=2", "decoder.episodes=2")
    tr.phase_model()
    tr.phase_decoder()
    rows = CsvLog(tmp_path / "decoder_curve.csv", []).rows()
    assert [r["decoder_episode"] for r in rows] == [0, 1, 2]
    assert [r["decoder_updates"] for r in rows] == [0, 1, 2]
    assert all(0 <= r["saturated"] <= 1 and np.isfinite(r["pred_return"]) for r in rows)
    b = _trainer(tmp_path, "decoder.val_every=1", "decoder.val_episodes=2", "decoder.episodes=2")
    b.load()
    assert b.decoder_curve == tr.decoder_curve


def test_decoder_curve_at_several_replanning_intervals(tmp_path):
    """One row per k and validation point; the k = 1 rows are the default curve's, and the k = 3 rows
    are the paired return of the latent controller executing 3 actions per plan."""
    opts = ("decoder.val_every=1", "decoder.val_episodes=2", "decoder.episodes=1")
    a = _trainer(tmp_path / "a", *opts)
    a.phase_model()
    a.phase_decoder()
    b = _trainer(tmp_path / "b", *opts, "decoder.val_replan_every=[1,3]")
    b.phase_model()
    b.phase_decoder()
    rows = CsvLog(tmp_path / "b" / "decoder_curve.csv", []).rows()
    assert [(r["decoder_episode"], r["replan_every"]) for r in rows] == [(0, 1), (0, 3), (1, 1), (1, 3)]
    ones = [r for r in b.decoder_curve if r["replan_every"] == 1]
    assert [r["val_return"] for r in ones] == [r["val_return"] for r in a.decoder_curve]
    seeds = [VAL_SEED_BASE + 1000 * int(b.cfg["seed"]) + k for k in range(2)]
    assert b.decoder_curve[-1]["val_return"] == pytest.approx(
        float(np.mean(b.paired_returns("dcem", seeds, replan_every=3))))
    assert b.decoder_curve[-1]["val_return"] != b.decoder_curve[-2]["val_return"]
    blocks = curve_block({("cartpole-swingup", "0"): rows})
    assert "| cartpole-swingup | 0 | 1 |" in blocks and "| cartpole-swingup | 0 | 3 |" in blocks
    fig = curve_figure({("cartpole-swingup", "0"): rows}, tmp_path / "curve.png")
    assert fig.stat().st_size > 0


def test_decoder_curve_options_are_checked():
    with pytest.raises(ConfigError, match="val_replan_every"):
        compose(["scale=test", "decoder.val_replan_every=[0]"])
    with pytest.raises(ConfigError, match="val_replan_every"):
        compose(["scale=test", "decoder.val_replan_every=[]"])


def test_plan_diagnostics_against_brute_force():
    g = np.random.default_rng(0)
    T, n, A, H = 7, 3, 2, 3
    rews, pred = g.normal(size=(T, n)), g.normal(size=(T, n))
    acts = g.uniform(-1, 1, size=(T, n, A))
    acts[0, 0, 0], acts[2, 1, 1], acts[3, 2, 0] = 1.0, -0.995, 0.98
    lo, hi = -np.ones(A), np.ones(A)
    d = plan_diagnostics(pred, rews, acts, lo, hi, H)
    real = [rews[t : t + H, k].sum() for t in range(T - H + 1) for k in range(n)]
    assert d["real_return"] == pytest.approx(np.mean(real))
    assert d["pred_return"] == pytest.approx(pred[: T - H + 1].mean())
    assert d["saturated"] == pytest.approx(np.mean(np.abs(acts) >= 0.98))
    assert np.isnan(plan_diagnostics(np.full((T, n), np.nan), rews, acts, lo, hi, H)["pred_return"])


def test_bad_schedule_options_name_the_key(tmp_path):
    from dcem.experiments.common.config import ConfigError

    for bad, key in (("train.schedule=sometimes", "train.schedule"), ("train.update_interval=0",
                     "train.update_interval"), ("decoder.states=first", "decoder.states"),
                     ("decoder.action_prior=-1", "decoder.action_prior")):  # fmt: skip
        with pytest.raises((ConfigError, ValueError), match=key.split(".")[1]):
            compose(["scale=test", f"out_dir={tmp_path}", bad])


def test_open_loop_error_against_per_start_rollouts():
    from dcem.rl import WorldModel

    torch.manual_seed(0)
    m = WorldModel(3, 2, deter_size=6, hidden_size=8)
    m.set_obs_stats(torch.tensor([0.1, -0.2, 0.3]), torch.tensor([1.0, 2.0, 0.5]))
    B, L, H = 2, 6, 3
    obs, act, rew = torch.randn(B, L + 1, 3), torch.randn(B, L, 2), torch.randn(B, L)
    om, rm = m.open_loop_error(obs, act, rew, H)
    hs, xn = m.filter(obs, act), m.normalize(obs)
    for d in range(1, H + 1):  # reference: imagine d steps from every start s with the recorded actions
        eo, er = [], []
        for s in range(L - d + 1):
            r, x = m.imagine(hs[:, s], xn[:, s], act[:, s : s + d])
            eo.append((x[:, -1] - xn[:, s + d]).pow(2).mean(-1))
            er.append((r[:, -1] - rew[:, s + d - 1]).pow(2))
        torch.testing.assert_close(om[d - 1], torch.stack(eo).mean(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rm[d - 1], torch.stack(er).mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="horizon"):
        m.open_loop_error(obs, act, rew, 0)

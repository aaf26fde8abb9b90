"""dm_control environments, TorchRL PPO through DCEM, checkpoints and the end-to-end pipeline."""

import json
import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "disable")  # no rendering here (the video test sets egl itself)
pytest.importorskip("dm_control")
pytest.importorskip("torchrl")
pytest.importorskip("hydra")

from dcem.control import ActionDecoder  # noqa: E402
from dcem.experiments.common.runs import CheckpointError, save_torch  # noqa: E402
from dcem.experiments.mbrl import compose, main, run  # noqa: E402
from dcem.experiments.mbrl.trainer import FORMAT, MBRLTrainer, seed_everything  # noqa: E402
from dcem.planning import PlannerConfig  # noqa: E402
from dcem.rl import LatentDCEMPlanner, WorldModel  # noqa: E402
from dcem.rl.envs import DMCEnv  # noqa: E402

pytestmark = pytest.mark.rl


def _cfg(tmp_path, *extra):
    return compose(["scale=test", f"out_dir={tmp_path}", *extra])


def _trainer(tmp_path, *extra):
    """A trainer as the entry point builds it (global RNGs seeded first)."""
    cfg = _cfg(tmp_path, *extra)
    seed_everything(cfg["seed"])
    return MBRLTrainer(cfg, tmp_path)


def test_env_flat_obs_and_action_repeat():
    from dm_control import suite

    env = DMCEnv("cartpole-swingup", action_repeat=3, seed=5, episode_steps=30)
    assert (env.obs_dim, env.act_dim, env.episode_len) == (5, 1, 10)
    ref = suite.load("cartpole", "swingup", task_kwargs={"random": 5})
    o = env.reset()
    ts = ref.reset()
    np.testing.assert_allclose(o, np.concatenate([ts.observation["position"], ts.observation["velocity"]]))
    a = np.array([0.7], np.float32)
    o2, r, done = env.step(a)
    total = sum(ref.step(a).reward for _ in range(3))
    assert r == pytest.approx(total) and not done
    for _ in range(9):
        *_, done = env.step(np.array([5.0]))  # clipped into the bounds
    assert done
    with pytest.raises(ValueError, match="env must be one of"):
        DMCEnv("cheetah-fly")


def _tiny_ppo():
    """A seeded tiny world model, decoder and PPO fine-tuner (decoder + reward head trained)."""
    from dcem.rl.ppo import PPOFineTuner

    torch.manual_seed(0)
    m = WorldModel(3, 2, deter_size=8, hidden_size=8)
    dec = ActionDecoder(2, 3, 2, -1.0, 1.0, hidden_sizes=(8,))
    planner = LatentDCEMPlanner(m, dec, PlannerConfig("dcem", 10, 3, 2, temp=1.0, select="mean"))
    return m, dec, PPOFineTuner(planner, parts=["decoder", "reward"], sigma=0.1, minibatch=5, epochs=1)


def test_ppo_gradients_reach_decoder_through_dcem():
    from tensordict import TensorDict


    m, dec, ft = _tiny_ppo()
    T = 5
    h, x = torch.randn(T, 8), torch.randn(T, 3)
    seeds = torch.arange(T) * 7 + 3
    # collection: one state at a time, each with its own DCEM noise seed (as collect_ppo_batch does)
    a, logp = (torch.cat(v) for v in zip(*[ft.act(h[i : i + 1], x[i : i + 1], int(seeds[i]))[:2]
                                            for i in range(T)]))  # fmt: skip
    no = torch.zeros(T, 1, dtype=torch.bool)
    nxt = TensorDict(
        {
            "h": torch.randn(T, 8),
            "x": torch.randn(T, 3),
            "reward": torch.randn(T, 1),
            "done": no,
            "terminated": no.clone(),
        },
        [T],
    )
    td = TensorDict({"h": h, "x": x, "action": a, "noise_seed": seeds, "next": nxt}, [T])
    td.set(ft.log_prob_key, logp)  # the behaviour log-probability, stored at collection time
    ft.set_trainable()
    with torch.no_grad():
        ft.gae(td)
        batch_logp = ft.actor.get_dist(td).log_prob(td["action"])
    # the batched minibatch sees every row's collection-time DCEM samples: the ratio is exactly 1
    torch.testing.assert_close(batch_logp, logp, rtol=0, atol=0)
    with torch.no_grad():  # another seed moves the DCEM mean: the per-row seed is what makes it exact
        other = ft.actor.get_dist(td.clone().set("noise_seed", seeds + 1)).log_prob(td["action"])
    assert not torch.equal(other, logp)
    out = ft.loss(td)
    out["loss_objective"].backward()
    dec_grad = sum(float(p.grad.abs().sum()) for p in dec.parameters() if p.grad is not None)
    rew_grad = sum(float(p.grad.abs().sum()) for p in m.reward_head.parameters() if p.grad is not None)
    assert dec_grad > 0 and math.isfinite(dec_grad)
    assert rew_grad > 0
    assert all(p.grad is None for p in m.cell.parameters())  # frozen parts get nothing
    # the gradient of the PPO objective agrees with a finite difference along the decoder's gradient
    params = list(dec.parameters())
    g = [p.grad.clone() for p in params]

    def obj(step):
        with torch.no_grad():
            for p, d in zip(params, g):
                p.add_(step * d)
            val = float(ft.loss(td)["loss_objective"])
            for p, d in zip(params, g):
                p.sub_(step * d)
        return val

    eps = 1e-3
    fd = (obj(eps) - obj(-eps)) / (2 * eps)
    assert fd == pytest.approx(sum(float((d * d).sum()) for d in g), rel=0.1)


def test_ppo_update_skips_non_finite_minibatches():
    """A minibatch whose loss overflows (the DCEM mean jumped) is skipped, the rest are applied."""
    from tensordict import TensorDict


    m, dec, ft = _tiny_ppo()
    T = 10
    h, x = torch.randn(T, 8), torch.randn(T, 3)
    seeds = torch.arange(T) + 3
    a, logp, *_ = ft.act(h, x, seeds)
    no = torch.zeros(T, 1, dtype=torch.bool)
    nxt = {"h": torch.randn(T, 8), "x": torch.randn(T, 3), "reward": torch.randn(T, 1), "done": no,
           "terminated": no.clone()}  # fmt: skip
    td = TensorDict({"h": h, "x": x, "action": a, "noise_seed": seeds, "next": TensorDict(nxt, [T])}, [T])
    td.set(ft.log_prob_key, logp)
    calls, loss = [], ft.loss

    def overflowing(mb):  # the first minibatch's objective is +inf
        out = loss(mb)
        calls.append(1)
        if len(calls) == 1:
            out.set("loss_objective", out["loss_objective"] * float("inf"))
        return out

    ft.loss = overflowing
    before = [p.detach().clone() for p in dec.parameters()]
    stats = ft.update(td, seed=1)
    assert len(calls) == 2 and stats["skipped"] == pytest.approx(0.5)
    assert all(bool(torch.isfinite(p).all()) for p in list(dec.parameters()) + list(m.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(before, dec.parameters()))  # the second step applied


def test_bad_config_fails_before_work(tmp_path):
    with pytest.raises(ValueError, match="env=cheetah-fly: unknown env"):
        compose(["env=cheetah-fly"])
    with pytest.raises(ValueError, match="n_elite"):
        run(_cfg(tmp_path, "planner.cem.n_elite=100"))
    with pytest.raises(ValueError, match="horizon"):
        run(_cfg(tmp_path, "planner.horizon=0"))
    with pytest.raises(ValueError, match="ppo.parts"):
        run(_cfg(tmp_path, "ppo.parts=[critic]"))
    with pytest.raises(ValueError, match="needs the checkpoint"):
        run(_cfg(tmp_path / "empty", "phase=decoder"))
    assert not list(tmp_path.iterdir())


def test_checkpoint_errors(tmp_path):
    tr = _trainer(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable.*resume=false"):
        tr.load()
    save_torch({"x": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a dcem-mbrl-v1 checkpoint"):
        tr.load(tmp_path / "foreign.pt")
    save_torch({"format": FORMAT, "x": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        tr.load(tmp_path / "other.pt")
    tr.save()
    other = _trainer(tmp_path / "b", "model.deter_size=12")
    with pytest.raises(CheckpointError, match="does not fit"):
        other.load(tmp_path / "checkpoint.pt")
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_truncated_checkpoint_and_other_config(tmp_path):
    out = tmp_path / "run"
    args = ["scale=test", f"out_dir={out}", "train.episodes=0", "decoder.episodes=0", "ppo.iterations=0",
            "eval.every=0", "eval.episodes=1"]  # fmt: skip
    main([*args, "phase=model"])
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="unreadable") as err:
        main([*args, "phase=model"])
    assert str(ckpt) in str(err.value) and "resume=false" in str(err.value)
    with pytest.raises(ValueError, match="another configuration"):
        main([*args, "phase=model", "model.lr=0.1"])
    main([*args, "phase=model", "resume=false"])  # the way out: the old run is moved aside
    assert (out / "checkpoint.pt").exists() and len(list(tmp_path.glob("run.old-*"))) == 1


def test_checkpoint_round_trip_resumes_exactly(tmp_path):
    """Two phase-1 episodes straight == one episode, save, a fresh process state, load, one more."""
    extra = ["train.episodes=1", "eval.every=0"]
    a = _trainer(tmp_path / "a", *extra)
    a.phase_model()
    b = _trainer(tmp_path / "b", "train.episodes=0", "eval.every=0")
    b.phase_model()  # the seed episode only, checkpointed
    torch.manual_seed(123)  # perturb the global RNGs: the checkpoint must restore them
    np.random.seed(7)
    c = MBRLTrainer(_cfg(tmp_path / "b", *extra), tmp_path / "b")
    c.load()
    c.phase_model()
    for (k, v), (k2, v2) in zip(a.model.state_dict().items(), c.model.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v, v2, rtol=0, atol=0)
    assert [r["return"] for r in a.history] == [r["return"] for r in c.history]
    np.testing.assert_array_equal(a.replay.obs[:2], c.replay.obs[:2])
    sa, sc = a.model_opt.state_dict()["state"], c.model_opt.state_dict()["state"]
    torch.testing.assert_close(sa[0]["exp_avg"], sc[0]["exp_avg"], rtol=0, atol=0)


def test_end_to_end_pipeline(tmp_path):
    cfg = _cfg(tmp_path, "eval.every=0")
    tr = run(cfg)
    assert tr.progress["model"] == 2 and tr.progress["decoder"] == 1 and tr.progress["ppo"] == 1
    res = json.loads((tmp_path / "eval.json").read_text())["controllers"]
    assert set(res) == {"random", "full_cem", "full_cem_budget", "latent_dcem", "latent_dcem_ppo"}
    for v in res.values():
        assert len(v["returns"]) == 2 and math.isfinite(v["mean"]) and v["ci95"] >= 0
    assert (tmp_path / "curves.png").stat().st_size > 0
    lines = (tmp_path / "train.csv").read_text().splitlines()
    assert lines[0].startswith("phase,episode") and len(lines) == 5
    # re-running the finished pipeline resumes and does no more training
    again = run(cfg)
    assert again.progress == tr.progress


@pytest.mark.slow
def test_eval_phase_writes_video_headless(tmp_path):
    """``phase=eval eval.video=true`` renders with MUJOCO_GL=egl in a fresh process (GIF of an episode)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONPATH": os.getcwd()}
    cmd = [
        sys.executable,
        "-m",
        "dcem.experiments",
        "mbrl",
        "scale=test",
        "phase=eval",
        "eval.video=true",
        "eval.episodes=1",
        f"out_dir={tmp_path}",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "EGL" in proc.stderr:
        pytest.skip("no EGL rendering on this machine")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "video_random.gif").stat().st_size > 1000
    assert "random" in json.loads((tmp_path / "eval.json").read_text())["controllers"]


def test_ppo_phase_resumes_exactly(tmp_path):
    """Phase 3 from a checkpoint in a fresh trainer == phase 3 continued in the same process."""
    import shutil

    a = _trainer(tmp_path / "a", "eval.every=0")
    a.phase_model()
    a.phase_decoder()  # checkpoints after its episode
    shutil.copy(tmp_path / "a" / "checkpoint.pt", tmp_path / "pre.pt")
    a.phase_ppo()
    torch.manual_seed(99)  # disturb the global RNG: the checkpoint restores it
    b = _trainer(tmp_path / "b", "eval.every=0")
    b.load(tmp_path / "pre.pt")
    before = [v.clone() for v in b.decoder.state_dict().values()]
    b.phase_ppo()
    assert any(not torch.equal(v, w) for v, w in zip(before, b.decoder.state_dict().values()))
    assert a.progress == b.progress
    for ma, mb in ((a.decoder, b.decoder), (a.model, b.model), (a.ppo.value_net, b.ppo.value_net)):
        for va, vb in zip(ma.state_dict().values(), mb.state_dict().values()):
            torch.testing.assert_close(va, vb, rtol=0, atol=0)
    assert a.history[-1]["return"] == b.history[-1]["return"]

"""``dcem-exp mbrl env=gym:HalfCheetah-v5``: a Gymnasium MuJoCo task through every phase at tiny scale."""

import json
import math
import os
import re
import sys

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "disable")
gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")
pytest.importorskip("torchrl")
pytest.importorskip("hydra")

from dcem.experiments.common.config import ConfigError  # noqa: E402
from dcem.experiments.mbrl import compose, run  # noqa: E402
from dcem.experiments.mbrl.paired import episode_seeds  # noqa: E402
from dcem.rl.gym_envs import GymEnv  # noqa: E402

pytestmark = pytest.mark.rl
# scale=test with 12 agent steps per episode (action repeat 2) and every controller evaluated
TINY = ["env=gym:HalfCheetah-v5", "scale=test", "env.episode_steps=24", "env.action_repeat=2", "eval.every=0",
        "eval.episodes=2", "progress=false",
        "eval.controllers=[random,full_cem_phase1,full_cem,full_cem_budget,latent_dcem,latent_dcem_ppo]"]


def test_gym_task_runs_every_phase_with_paired_episodes(tmp_path, monkeypatch):
    resets = []
    orig = GymEnv.reset

    def spy(self, seed=None):
        o = orig(self, seed)
        resets.append((seed, o.copy()))
        return o

    monkeypatch.setattr(GymEnv, "reset", spy)
    cfg = compose([*TINY, f"out_dir={tmp_path}"])
    assert cfg["env"]["name"] == "gym:HalfCheetah-v5"
    tr = run(cfg)
    assert isinstance(tr.env, GymEnv) and tr.env.episode_len == 12
    assert tr.progress["model"] == 2 and tr.progress["decoder"] == 1 and tr.progress["ppo"] == 1
    res = json.loads((tmp_path / "eval.json").read_text())
    seeds = episode_seeds(0, 2)
    assert res["episode_seeds"] == seeds and len(res["controllers"]) == 6
    for r in res["controllers"].values():
        assert len(r["returns"]) == 2 and math.isfinite(r["mean"])
    evals = [(s, o) for s, o in resets if s is not None]
    assert [s for s, _ in evals] == seeds * 6  # every controller plays the same seeded episodes
    for s, o in evals:  # ... from the initial state Gymnasium itself gives that seed
        np.testing.assert_allclose(o, gym.make("HalfCheetah-v5").reset(seed=s)[0].astype(np.float32))


def test_gym_names_are_checked_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="env.name='gym:HalfCheetah-v9'.*registered versions"):
        compose(["env=gym:HalfCheetah-v9", f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="env.name='gym:CartPole'"):
        compose(["env=gym", "env.name=gym:CartPole"])
    with pytest.raises(ConfigError, match="model.seq_len=5.*episode length 2"):  # repeat 1 by default
        compose(["env=gym:Hopper-v5", "scale=test", "env.episode_steps=2"])
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # as if the extra were missing
    msg = ("env.name='gym:Hopper-v5': Gymnasium tasks (env names gym:...) need gymnasium: "
           "pip install 'dcem[gym]'")
    with pytest.raises(ConfigError, match=re.escape(msg)):
        compose(["env=gym:Hopper-v5", f"out_dir={tmp_path}"])
    assert not any(tmp_path.iterdir())

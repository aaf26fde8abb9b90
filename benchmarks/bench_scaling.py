"""Throughput of the scale-out paths, 1 vs 2 workers and 1 vs 2 torchrun processes, in one run.

    python benchmarks/bench_scaling.py [--episodes 8] [--episode-steps 1000] [--updates 20]
    python benchmarks/bench_scaling.py --skip random planned torchrun --phases 2 [--ppo 2]  # MBRL loops only

1. random seed episodes (``train.collect_workers``): the trainer's in-process loop, then
   :class:`dcem.rl.env_pool.EnvPool` with 1 and 2 workers (episodes/s; pool start-up excluded);
2. planner-driven episodes (full CEM on a small untrained world model): one at a time in this
   process vs 2 workers stepped in lockstep with one batched planning call per step;
3. the MBRL phase loops themselves (``--phases``): episodes/hour of phase 1 (full CEM, model updates)
   and phase 2 (latent DCEM, model and decoder updates) at ``scale=fig4`` on cheetah-run, with
   ``train.collect_workers=1`` (one episode at a time, the loops before issue 17) and ``2`` (the
   loops' lockstep episodes over two EnvPool workers), the same updates per episode in both;
4. data-parallel world-model updates (``torchrun --nproc_per_node=1`` and ``2``, gloo): updates/s
   at the same global batch, measured inside the processes after a warm-up.

Ratios are against the 1-worker / 1-process figure of the same run; the machine's load average
is printed next to them (timings on a shared machine are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = "cartpole-swingup"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _rate(n: int, fn) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def bench_random(episodes: int, steps: int) -> dict[str, float]:
    import numpy as np

    from dcem.rl.env_pool import EnvPool, episode_seed
    from dcem.rl.envs import DMCEnv

    seeds = [episode_seed(0, k) for k in range(episodes)]
    env = DMCEnv(TASK, seed=0, episode_steps=steps)
    rng = np.random.default_rng(0)

    def inline() -> None:
        for _ in seeds:
            env.reset()
            for _ in range(env.episode_len):
                env.step(rng.uniform(env.u_lower, env.u_upper))

    out = {"in-process": _rate(episodes, inline)}
    for w in (1, 2):
        with EnvPool(TASK, episode_steps=steps, n_workers=w) as pool:
            pool.random_episodes(seeds[:w])  # warm-up
            out[f"{w} worker(s)"] = _rate(episodes, lambda p=pool: p.random_episodes(seeds))
    return out


def bench_planned(episodes: int, steps: int) -> dict[str, float]:
    from dcem.experiments.mbrl import compose
    from dcem.experiments.mbrl.trainer import MBRLTrainer

    over = ["scale=test", f"env.episode_steps={steps}", "planner.cem.n_sample=100", "planner.cem.n_elite=10",
            "planner.cem.n_iter=5", "planner.horizon=8", "train.collect_workers=2",
            "out_dir=/tmp/bench_scaling"]  # fmt: skip
    tr = MBRLTrainer(compose(over), "/tmp/bench_scaling")
    n = max(2, episodes // 2 * 2)
    seq = _rate(n, lambda: [tr.run_episode(tr.env, "cem", noise=0.3) for _ in range(n)])
    tr.pool()  # start-up excluded
    par = _rate(n, lambda: [tr.planned_episodes("cem", 0.3, first=k) for k in range(0, n, 2)])
    tr.close_pool()
    return {"in-process, one at a time": seq, "2 workers, batched planning": par}


def bench_phases(
    episodes: int, workers: tuple[int, ...] = (1, 2), ppo: int = 0
) -> dict[str, dict[str, float]]:
    """Episodes/hour of the phase-1 and phase-2 loops (``scale=fig4``, cheetah-run) per worker count;
    with ``ppo > 0`` then that many PPO steps on the 1-worker run: seconds per step and the fraction of
    minibatches skipped as non-finite."""
    import shutil
    import time

    from dcem.experiments.mbrl import compose
    from dcem.experiments.mbrl.trainer import MBRLTrainer, seed_everything

    out: dict[str, dict[str, float]] = {"phase 1": {}, "phase 2": {}}
    for w in workers:
        d = f"/tmp/bench_scaling_phases{w}"
        shutil.rmtree(d, ignore_errors=True)
        over = ["env=cheetah-run", "scale=fig4", "train.episodes=0", "decoder.episodes=0",
                "decoder.val_every=0", f"train.collect_workers={w}", "progress=false",
                f"out_dir={d}"]  # fmt: skip
        seed_everything(0)
        tr = MBRLTrainer(compose(over), d)
        try:
            tr.phase_model()  # the random seed episodes (not timed)
            for phase, key in (("phase 1", "train"), ("phase 2", "decoder")):
                tr.cfg[key]["episodes"] = episodes
                t0 = time.perf_counter()
                (tr.phase_model if key == "train" else tr.phase_decoder)()
                out[phase][f"{w} worker(s)"] = 3600 * episodes / (time.perf_counter() - t0)
            if ppo and w == workers[0]:
                tr.cfg["ppo"]["iterations"] = ppo
                t0 = time.perf_counter()
                tr.phase_ppo()
                rows = [r for r in tr.history if r["phase"] == "ppo"]
                skipped = 100 * sum(r["ppo_skipped"] for r in rows) / len(rows)
                out["phase 3"] = {"s per PPO step": (time.perf_counter() - t0) / ppo,
                                  "skipped minibatches %": skipped}
        finally:
            tr.close_pool()
    return out


def _dp_worker(updates: int) -> None:
    """Inside torchrun: time ``updates`` world-model updates at a global batch of 32 sequences."""
    import torch

    from dcem.experiments.common import distributed
    from dcem.experiments.mbrl import compose
    from dcem.experiments.mbrl.trainer import MBRLTrainer

    torch.set_num_threads(1)
    distributed.init()
    over = ["scale=test", "env.episode_steps=400", "model.deter_size=64", "model.hidden_size=64",
            "model.batch_size=32", "model.seq_len=25", "model.overshooting=4",
            "out_dir=/tmp/bench_scaling_dp"]  # fmt: skip
    tr = MBRLTrainer(compose(over), "/tmp/bench_scaling_dp")
    for _ in range(2):
        tr.replay.add(*tr.run_episode(tr.env, "random"))
    tr._set_obs_stats()
    for _ in range(3):
        tr.model_update()
    distributed.barrier()
    rate = _rate(updates, lambda: [tr.model_update() for _ in range(updates)])
    if distributed.is_main():
        sys.stdout.write(json.dumps({"updates_per_s": rate}) + "\n")
    distributed.shutdown()


def bench_torchrun(updates: int) -> dict[str, float]:
    out = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MUJOCO_GL": "disable"}
    for n in (1, 2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               __file__, "--dp-worker", "--updates", str(updates)]  # fmt: skip
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1]
        out[f"{n} process(es)"] = json.loads(line)["updates_per_s"]
    return out


def _report(title: str, unit: str, rates: dict[str, float], base: str) -> None:
    print(f"\n{title} ({unit}; load average {_load()})")
    for k, v in rates.items():
        print(f"  {k:<30} {v:8.2f}   x{v / rates[base]:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--episode-steps", type=int, default=1000)
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--skip", nargs="*", default=[], choices=["random", "planned", "torchrun"])
    p.add_argument("--phases", type=int, default=0, metavar="N",
                   help="also time N episodes of each MBRL phase loop with 1 and 2 workers (0: skip)")
    p.add_argument("--ppo", type=int, default=0, metavar="N",
                   help="with --phases: then N PPO steps on the 1-worker run (time, skipped minibatches)")
    p.add_argument("--dp-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    os.environ.setdefault("MUJOCO_GL", "disable")
    if a.dp_worker:
        return _dp_worker(a.updates)
    import torch

    torch.set_num_threads(1)
    print(f"{os.cpu_count()} CPUs; load average {_load()}; {TASK}, {a.episode_steps} env steps per episode")
    if "random" not in a.skip:
        r = bench_random(a.episodes, a.episode_steps)
        _report("random seed episodes", "episodes/s", r, "1 worker(s)")
    if "planned" not in a.skip:
        r = bench_planned(a.episodes, a.episode_steps)
        _report("planner-driven episodes (full CEM)", "episodes/s", r, "in-process, one at a time")
    if a.phases:
        for phase, r in bench_phases(a.phases, ppo=a.ppo).items():
            if phase == "phase 3":
                print(f"\nMBRL phase 3 (PPO) after the 1-worker loops: {r}")
                continue
            _report(f"MBRL {phase} loop, scale=fig4, cheetah-run", "episodes/hour", r, "1 worker(s)")
    if "torchrun" not in a.skip:
        r = bench_torchrun(a.updates)
        _report("world-model updates, global batch 32 x 25 steps", "updates/s", r, "1 process(es)")


if __name__ == "__main__":
    main()

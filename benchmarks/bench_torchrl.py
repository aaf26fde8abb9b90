"""dcem's TorchRL planner module against TorchRL's own CEM and MPPI planners (issue 19).

Problem: the cartpole swing-up of the paper as a TorchRL env
(:class:`dcem.integrations.torchrl.DynamicsEnv` around :class:`dcem.control.CartpoleDx` and
:func:`dcem.control.cartpole_swingup_cost`, actions in ``[-1, 1]`` mapped onto the force
bounds). Every planner is the policy of ``env.rollout`` on a world env of batch size
``--states`` (one episode of ``--steps`` steps from each initial state) and plans by rolling out a
batch-free copy of the env: horizon 20, 1000 candidates x 10 iterations per call (TorchRL's
``num_candidates`` / ``optim_steps``; top-k 100). TorchRL's MPPI scores candidates with a
TD(lambda) estimator over a zero value function (gamma = lambda = 1: the sum of rewards),
temperature 1. Rows ``dcem <rule>`` are :class:`~dcem.integrations.torchrl.PlannerModule` with
the rule's settings of ``benchmarks/bench_planners.py`` (warm start on).

Printed per row: mean episode return over states and seeds (higher is better), its ratio and
difference to each TorchRL planner, the paired wins (same initial state and seed), wall time
per planner call (median over calls) and its ratio to each TorchRL planner. The rows' episodes
run in lockstep, planner call by planner call, so that a change of load affects all alike.

Run: ``PYTHONPATH=. python benchmarks/bench_torchrl.py [--states 8] [--steps 30] [--seeds 2] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import step_mdp
from torchrl.modules.planners import CEMPlanner, MPPIPlanner
from torchrl.objectives.value import TDLambdaEstimator

from dcem.control import CartpoleDx, cartpole_swingup_cost
from dcem.integrations.torchrl import DynamicsEnv, PlannerModule
from dcem.planning import PlannerConfig

H, N, ITERS, TOPK = 20, 1000, 10, 100
OURS = {
    "cem": dict(rule="cem", n_elite=100),
    "dcem": dict(rule="dcem", n_elite=20, temp=0.1),
    "mppi": dict(rule="mppi"),
    "icem": dict(rule="icem", n_elite=10),
}


class ZeroValue(torch.nn.Module):
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*obs.shape[:-1], 1, dtype=obs.dtype, device=obs.device)


def torchrl_mppi(env: DynamicsEnv) -> MPPIPlanner:
    value = TensorDictModule(ZeroValue(), in_keys=["observation"], out_keys=["state_value"])
    adv = TDLambdaEstimator(gamma=1.0, lmbda=1.0, value_network=value)
    return MPPIPlanner(env, adv, temperature=1.0, planning_horizon=H, optim_steps=ITERS, num_candidates=N,
                       top_k=TOPK)  # fmt: skip


def make_rows(plan_env: DynamicsEnv) -> dict[str, torch.nn.Module]:
    rows: dict[str, torch.nn.Module] = {
        "torchrl cem": CEMPlanner(plan_env, planning_horizon=H, optim_steps=ITERS, num_candidates=N,
                                  top_k=TOPK),
        "torchrl mppi": torchrl_mppi(plan_env),
    }
    for name, opts in OURS.items():
        rows[f"dcem {name}"] = PlannerModule(plan_env, H, PlannerConfig(n_sample=N, n_iter=ITERS, **opts))
    return rows


def episodes(world: DynamicsEnv, rows: dict[str, torch.nn.Module], steps: int, seed: int,
             sec: dict[str, list[float]]) -> dict[str, torch.Tensor]:
    """One closed-loop episode per state for every row, in lockstep (call by call, rows interleaved).

    Returns each row's episode returns ``(states,)``; appends each planner call's seconds to ``sec``.
    """
    world.set_seed(seed)
    start = world.reset()
    tds = {name: start.clone() for name in rows}
    ret = {name: torch.zeros(start.batch_size) for name in rows}
    for policy in rows.values():
        if isinstance(policy, PlannerModule):
            policy.reset()
            policy.generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # TorchRL's planners draw from the global generator
    with torch.no_grad():
        for _ in range(steps):
            for name, policy in rows.items():
                t0 = time.perf_counter()
                td = policy(tds[name])
                sec[name].append(time.perf_counter() - t0)
                td = world.step(td)
                ret[name] += td["next", "reward"].squeeze(-1)
                tds[name] = step_mdp(td)
    return ret


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--states", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    world = DynamicsEnv(CartpoleDx(), cartpole_swingup_cost, batch_size=(args.states,))
    rows = make_rows(DynamicsEnv(CartpoleDx(), cartpole_swingup_cost))
    ret: dict[str, list[torch.Tensor]] = {k: [] for k in rows}
    sec: dict[str, list[float]] = {k: [] for k in rows}
    for seed in range(args.seeds):
        for name, r in episodes(world, rows, args.steps, seed, sec).items():
            ret[name].append(r)
    print(f"cartpole swing-up, H {H}, {N} candidates x {ITERS} iterations, {args.states} states x "
          f"{args.seeds} seeds, {args.steps}-step episodes, {args.threads} thread(s)")  # fmt: skip
    base = ("torchrl cem", "torchrl mppi")
    print(f"{'row':<14}{'return':>9}" + "".join(f"{'ratio/' + b[8:]:>12}{'wins/' + b[8:]:>11}" for b in base)
          + f"{'ms/call':>9}" + "".join(f"{'time/' + b[8:]:>11}" for b in base))  # fmt: skip
    for name in rows:
        r = torch.cat(ret[name])
        ms = 1e3 * statistics.median(sec[name])
        cells = ""
        for b in base:
            rb = torch.cat(ret[b])
            cells += f"{r.mean().item() / rb.mean().item():>12.3f}{f'{int((r > rb).sum())}/{r.numel()}':>11}"
        times = "".join(f"{ms / (1e3 * statistics.median(sec[b])):>11.3f}" for b in base)
        print(f"{name:<14}{r.mean().item():>9.3f}{cells}{ms:>9.1f}{times}")


if __name__ == "__main__":
    main()

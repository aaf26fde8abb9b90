"""Cost of one Alg. 2 decoder update on the chain task against the cartpole's (issue 16).

One update = DCEM 100 x 10 over the latent box through the dynamics, backward, gradient clipping,
Adam, with the settings of each experiment's default configuration (``dcem-exp cartpole`` and
``dcem-exp chain``, latent sizes 2 and 8). Prints the median seconds per update over
``--repeats`` timed blocks of ``--steps`` updates (after a warm-up) and the ratio to the cartpole
update measured in the same run, so the ratio holds on a loaded machine too.

Run: ``PYTHONPATH=. python benchmarks/bench_latent_update.py [--repeats 5] [--steps 10]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dcem.control import train_step
from dcem.experiments import cartpole, chain
from dcem.experiments.cartpole.run import make_controller, make_task


def seconds_per_update(cfg, n_latent: int, steps: int, repeats: int) -> float:
    dx = make_task(cfg)[0]
    torch.manual_seed(0)
    ctrl = make_controller(cfg, dx, n_latent)
    opt = torch.optim.Adam(ctrl.decoder.parameters(), lr=float(cfg.lr))
    g = torch.Generator().manual_seed(0)
    train_step(ctrl, opt, dx.sample_state(1, g), generator=g)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            train_step(ctrl, opt, dx.sample_state(1, g), generator=g)
        times.append((time.perf_counter() - t) / steps)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cases = [("cartpole, latent 2 (baseline)", cartpole.load_config([]), 2),
             ("chain (6 torques, H=16), latent 2", chain.load_config([]), 2),
             ("chain (6 torques, H=16), latent 8", chain.load_config([]), 8)]  # fmt: skip
    base = None
    print(f"{'case':<36} {'s / update':>10} {'x baseline':>10}")
    for name, cfg, nz in cases:
        s = seconds_per_update(cfg, nz, a.steps, a.repeats)
        base = base or s
        print(f"{name:<36} {s:>10.3f} {s / base:>10.2f}")


if __name__ == "__main__":
    main()

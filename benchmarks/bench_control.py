"""Speed of cartpole control with CEM/DCEM (issue 3, "Speed").

Times, as medians over repeated runs (after warm-up):

- ``rollout``: one batched H=20 rollout of 1000 action sequences (the baseline of the ratios);
- ``rollout loop``: the same for 20 sequences with a Python loop over the sequences (what the
  batched code avoids), scaled by 50;
- ``CEM plan``: one MPC step, full-space CEM over U^20, 1000 samples x 10 iterations (one
  batched rollout of the samples and the current mean per iteration, :mod:`dcem.planning`);
- ``latent DCEM plan``: the latent controller, 100 samples x 10 iterations, no grad;
- ``latent DCEM plan+grad``: the same with the graph kept and backward through it;
- ``Alg. 2 step``: one training step (solve, backward, clip, Adam).

For each: median seconds, ratio to the baseline, microseconds per dynamics evaluation (one
state advanced one step), and for the differentiable ones the bytes autograd saves for the
backward pass (measured with ``torch.autograd.graph.saved_tensors_hooks``, deduplicated by
storage) plus peak CUDA memory when run on a GPU.

Run: ``PYTHONPATH=. python benchmarks/bench_control.py [--repeats 10] [--threads 1] [--device cpu]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from dcem.control import (
    MPC,
    ActionDecoder,
    CartpoleDx,
    LatentDCEMController,
    cartpole_swingup_cost,
    rollout_cost,
    train_step,
)
from dcem.planning import PlannerConfig


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], repeats: int, dev: torch.device, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward while running ``fn`` (deduplicated)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[(st.data_ptr(), st.nbytes())] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.backward()
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    H = 20
    dx = CartpoleDx().to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    x1 = dx.sample_state(1, torch.Generator().manual_seed(0)).to(dev)
    u = 50 * torch.randn(H, 1000, 1, device=dev, generator=g)
    xs = x1.expand(1000, 5)

    rows = []
    base = timeit(lambda: rollout_cost(dx, cartpole_swingup_cost, xs, u), args.repeats, dev)
    rows.append(("rollout 1000 x H=20 (batched, baseline)", base, 1000 * H, None))

    def loop20() -> None:
        for i in range(20):
            rollout_cost(dx, cartpole_swingup_cost, xs[i], u[:, i])

    t = timeit(loop20, max(3, args.repeats // 3), dev, warmup=1) * 50
    rows.append(("rollout 1000 x H=20 (Python loop over samples)", t, 1000 * H, None))

    cem = PlannerConfig("cem", 1000, 100, 10, capture="auto")  # MPC's default capture
    expert = MPC(H, dx, cartpole_swingup_cost, cem, warm_start=False, generator=g)
    with torch.no_grad():
        t = timeit(lambda: expert.plan(x1), args.repeats, dev)
    rows.append(("CEM plan, full space 1000 x 10 it", t, 10 * 1001 * H, None))  # samples + mean per call

    torch.manual_seed(0)
    dec = ActionDecoder(2, H, 1, dx.u_lower, dx.u_upper, hidden_sizes=(256, 256, 256), activation="elu").to(
        dev
    )
    dcem = PlannerConfig("dcem", 100, 10, 10, temp=1.0, select="mean")
    ctrl = LatentDCEMController(dec, dx, cartpole_swingup_cost, dcem)
    n_eval = 10 * 101 * H  # 10 rollout calls of the samples and the mean
    with torch.no_grad():
        t = timeit(lambda: ctrl.solve(x1, generator=g), args.repeats, dev)
    rows.append(("latent DCEM plan 100 x 10 it (no grad)", t, n_eval, None))

    def plan_grad() -> None:
        ctrl.solve(x1, generator=g).cost.sum().backward()

    t = timeit(plan_grad, args.repeats, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    mem = saved_bytes(lambda: ctrl.solve(x1, generator=g).cost.sum())
    rows.append(("latent DCEM plan 100 x 10 it + backward", t, n_eval, mem))

    opt = torch.optim.Adam(dec.parameters(), lr=5e-4)
    t = timeit(lambda: train_step(ctrl, opt, x1, generator=g), args.repeats, dev)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    rows.append(("Alg. 2 training step (n_batch=1)", t, n_eval, mem))

    print(f"device={dev} threads={torch.get_num_threads()} repeats={args.repeats} torch={torch.__version__}")
    print(f"{'case':48s} {'median s':>10s} {'x baseline':>10s} {'us/dyn eval':>12s} {'saved for bwd':>14s}")
    for name, t, n, m in rows:
        ms = f"{m / 2**20:.1f} MiB" if m is not None else "-"
        print(f"{name:48s} {t:10.4f} {t / base:10.1f} {1e6 * t / n:12.3f} {ms:>14s}")
    if peak is not None:
        print(f"peak CUDA memory: {peak / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()

"""Accelerator benchmark: eager vs captured vs published vs floor, printed as ratios.

Each case is measured in the same run as its baselines (medians, device synchronised around
every timed call):

* ``eager``: the library as a user calls it (``dcem.lml``, ``dcem.dcem``; sync-free on
  accelerators by default);
* ``captured``: the same solve through :class:`dcem.optim.Solver` (``capture="graph"`` for
  no-grad solves, ``"compile"``, i.e. ``torch.compile(mode="reduce-overhead")`` on CUDA, with
  a backward), or ``torch.compile`` of the ``lml`` call; the one-off compile/capture time is
  printed next to it;
* ``published`` (optional): locuslab/lml and facebookresearch/dcem from user checkouts
  (``--ref-lml``/``--ref-dcem``, loaded as ``benchmarks/bench_core.py`` does);
* ``floor``: the bare loop of the same sizes (one sigmoid+sum for the soft top-k; sampling,
  ``f``, a softmax as free top-k and the weighted moments for CEM/DCEM), eager.

Cases (issue 8's table): LML fwd+bwd (1000x100, k 10; 100x10000, k 1000), hard CEM
(B 1000, nx 20), DCEM fwd+bwd (B 100, nx 20), a cartpole full-space CEM plan (1000x10, H 20;
the CPU time of the same plan is measured in the same run), and one world-model planning
step at cheetah sizes, latent DCEM (100x10) vs full CEM (1000x10).

    python benchmarks/bench_gpu.py --device cuda [--repeats 20] [--ref-lml DIR --ref-dcem DIR]
    python benchmarks/bench_gpu.py --device cpu --quick     # smoke run of every code path
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import bare_loop, load_reference, objective  # noqa: E402

import dcem  # noqa: E402
from dcem.optim import CEMConfig, Solver  # noqa: E402


def timed(fn: Callable[[], object], repeats: int, dev: torch.device, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()``, synchronising the device around each call."""

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def first_call_s(fn: Callable[[], object], dev: torch.device) -> float:
    t0 = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def graph_solver(f, cfg: CEMConfig, dev: torch.device) -> Solver:
    """A no-grad captured solver: CUDA graphs on CUDA, the replay backend elsewhere (smoke runs)."""
    return Solver(f, cfg, capture="graph", graph_backend="cuda" if dev.type == "cuda" else "replay")


def case_lml(b: int, n: int, k: int, dev, repeats: int, ref_layer) -> dict:
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(b, n, generator=g, device=dev).requires_grad_()
    grad = torch.randn(b, n, generator=g, device=dev)

    def fwd_bwd(x_):
        dcem.lml(x_, k).backward(grad)

    # the forward is compiled; its backward (the closed-form KKT gradient) is compiled by
    # AOTAutograd along with it
    fwd = torch.compile(
        lambda x_: dcem.lml(x_, k), fullgraph=True, mode="reduce-overhead" if dev.type == "cuda" else None
    )

    def compiled(x_):
        fwd(x_).backward(grad)

    row = {
        "eager": timed(lambda: fwd_bwd(x), repeats, dev),
        "capture_s": first_call_s(lambda: compiled(x), dev),
    }
    row["captured"] = timed(lambda: compiled(x), repeats, dev)
    with torch.no_grad():
        row["floor"] = timed(lambda: torch.sigmoid(x).sum(-1), repeats, dev)
    if ref_layer is not None:
        layer = ref_layer(N=k)
        row["published"] = timed(lambda: layer(x).backward(grad), max(3, repeats // 3), dev)
    return row


def case_cem(kind: str, B: int, nx: int, dev, repeats: int, ref_fn) -> dict:
    """Hard CEM (no grad, captured as a graph) or DCEM fwd+bwd (captured by compile)."""
    N, k, T = 100, 10, 10
    temp = None if kind == "cem" else 1.0
    g = torch.Generator(device=dev).manual_seed(0)
    theta = torch.randn(B, nx, generator=g, device=dev).requires_grad_(kind == "dcem")
    f = objective(theta, wiggle=kind == "dcem")
    mu0 = torch.zeros(B, nx, device=dev)
    cfg = CEMConfig(N, k, T, temp, iter_eps=None)
    solver = Solver(f, cfg, capture="compile") if kind == "dcem" else graph_solver(f, cfg, dev)

    def finish(out):
        if kind == "dcem":
            torch.autograd.grad(out.sum(), theta)

    def eager():
        finish(dcem.dcem(f, nx, B, N, k, T, temp, iter_eps=None, generator=g, device=dev))

    def captured():
        with torch.set_grad_enabled(kind == "dcem"):
            finish(solver(mu0, 1.0, generator=g).mu)

    def floor():
        with torch.set_grad_enabled(kind == "dcem"):
            finish(_bare(f, B, nx, N, k, T, g, dev))

    row = {"eager": timed(eager, repeats, dev), "capture_s": first_call_s(captured, dev)}
    row["captured"] = timed(captured, repeats, dev)
    row["floor"] = timed(floor, repeats, dev)
    if ref_fn is not None:

        def published():
            finish(
                ref_fn(
                    f,
                    nx,
                    n_batch=B,
                    n_sample=N,
                    n_elite=k,
                    n_iter=T,
                    temp=temp,
                    iter_eps=0.0,
                    normalize=True,
                    device=dev,
                )
            )

        row["published"] = timed(published, max(3, repeats // 5), dev)
    return row


def _bare(f, B, nx, N, k, T, g, dev):
    with torch.device(dev):
        return bare_loop(f, B, nx, N, k, T, g)


def case_cartpole(dev, repeats: int) -> dict:
    """``MPC.plan``, full-space CEM 1000 x 10 (100 elites), H = 20: eager and captured, vs the CPU."""
    from dcem.control import MPC, CartpoleDx, cartpole_swingup_cost
    from dcem.planning import PlannerConfig

    def make(device, capture):
        g = torch.Generator(device=device).manual_seed(0)
        opts = {"graph_backend": "cuda" if device.type == "cuda" else "replay"}
        cfg = PlannerConfig("cem", 1000, 100, 10, capture=capture)
        return MPC(20, CartpoleDx(), cartpole_swingup_cost, cfg, generator=g, warm_start=False,
                   capture_options=opts)  # fmt: skip

    x_cpu = torch.tensor([[0.0, 0.0, -1.0, 0.0, 0.0]])
    out = {}
    with torch.no_grad():
        on_cpu = make(torch.device("cpu"), "none")
        out["cpu_eager"] = timed(lambda: on_cpu.plan(x_cpu), repeats, torch.device("cpu"))
        x = x_cpu.to(dev)
        eager, cap = make(dev, "none"), make(dev, "graph")
        out["device_eager"] = timed(lambda: eager.plan(x), repeats, dev)
        out["capture_s"] = first_call_s(lambda: cap.plan(x), dev)
        out["captured"] = timed(lambda: cap.plan(x), repeats, dev)
    return out


def case_world_model(dev, repeats: int, obs: int = 17, act: int = 6) -> dict:
    """One planning step at cheetah sizes with the RL planners: full CEM 1000 x 10 (100 elites)
    vs latent DCEM 100 x 10, eager and captured (``capture="graph"``)."""
    from dcem.control import ActionDecoder
    from dcem.planning import PlannerConfig
    from dcem.rl import FullCEMPlanner, LatentDCEMPlanner, WorldModel

    H = 12
    torch.manual_seed(0)
    model = WorldModel(obs, act, 200, 200).to(dev).requires_grad_(False)
    dec = ActionDecoder(16, H, act, -1.0, 1.0, hidden_sizes=(200, 200)).to(dev).requires_grad_(False)
    h, x = torch.zeros(1, 200, device=dev), torch.zeros(1, obs, device=dev)
    g = torch.Generator(device=dev).manual_seed(0)
    opts = {"graph_backend": "cuda" if dev.type == "cuda" else "replay"}
    out = {}
    for mode, capture in (("eager", "none"), ("captured", "graph")):
        cem = PlannerConfig("cem", 1000, 100, 10, select="mean", capture=capture)
        dcem = PlannerConfig("dcem", 100, 10, 10, select="mean", capture=capture)
        full = FullCEMPlanner(model, H, cem, capture_options=opts)
        latent = LatentDCEMPlanner(model, dec, dcem, capture_options=opts)
        for name, p in (("full", full), ("latent", latent)):
            if mode == "captured":
                out[f"{name}_capture_s"] = first_call_s(lambda p=p: p.plan(h, x, generator=g), dev)
            out[f"{name}_{mode}"] = timed(lambda p=p: p.plan(h, x, generator=g), repeats, dev)
    return out


def _fmt(v: float | None, unit: str = "") -> str:
    return "n/a" if v is None else f"{v:.3f}{unit}"


def report_core(rows: list[tuple[str, dict, str]]) -> list[str]:
    lines = [
        "| case | eager ms | captured ms (first call s) | published ms | floor ms | "
        "published / captured | captured / floor | eager / captured | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r, target in rows:
        pub = r.get("published")
        lines.append(
            f"| {name} | {_fmt(r['eager'])} | {_fmt(r['captured'])} ({r['capture_s']:.1f}) | {_fmt(pub)} | "
            f"{_fmt(r['floor'])} | {_fmt(pub and pub / r['captured'], 'x')} | "
            f"{r['captured'] / r['floor']:.2f} | {r['eager'] / r['captured']:.1f}x | {target} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--ref-lml")
    ap.add_argument("--ref-dcem")
    ap.add_argument("--quick", action="store_true", help="3 repeats, small CPU-friendly sizes")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench_gpu: --device cuda but no CUDA device is visible (use --device cpu for a smoke run)"
        )
    reps = 3 if args.quick else args.repeats
    ref_layer, ref_fn = load_reference(args.ref_lml, args.ref_dcem)

    def b(full: int, small: int) -> int:
        return small if args.quick else full

    core = [
        (
            f"LML fwd+bwd b={b(1000, 100)} n=100 k=10",
            case_lml(b(1000, 100), 100, 10, dev, reps, ref_layer),
            "published/captured >= 10x",
        ),
        (
            f"LML fwd+bwd b={b(100, 10)} n=10000 k=1000",
            case_lml(b(100, 10), 10000, 1000, dev, reps, ref_layer),
            "",
        ),
        (
            f"hard CEM B={b(1000, 100)} nx=20 N=100 T=10",
            case_cem("cem", b(1000, 100), 20, dev, reps, ref_fn),
            "captured/floor <= 1.3",
        ),
        (
            f"DCEM fwd+bwd B={b(100, 10)} nx=20 N=100 T=10",
            case_cem("dcem", b(100, 10), 20, dev, reps, ref_fn),
            "published/captured >= 15x",
        ),
    ]
    lines = [
        f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}), "
        f"torch {torch.__version__}, medians of {reps}",
        "",
    ]
    lines += report_core(core)
    cp = case_cartpole(dev, reps)
    best = min(cp["captured"], cp["device_eager"])
    lines += [
        "",
        f"cartpole full-space CEM plan 1000x10 H=20: CPU eager {cp['cpu_eager']:.1f} ms, "
        f"{dev.type} eager {cp['device_eager']:.1f} ms, captured {_fmt(cp.get('captured'))} ms "
        f"(capture {_fmt(cp.get('capture_s'), ' s')}); "
        f"CPU / best = {cp['cpu_eager'] / best:.1f}x (target >= 5x)",
    ]
    wm = case_world_model(dev, reps)
    for mode in ("eager", "captured"):
        if f"full_{mode}" in wm:
            lines.append(
                f"world-model step ({mode}): full CEM 1000x10 {wm[f'full_{mode}']:.1f} ms, latent DCEM "
                f"100x10 {wm[f'latent_{mode}']:.1f} ms, latent / full = "
                f"{wm[f'latent_{mode}'] / wm[f'full_{mode}']:.2f} (target <= 1)"
            )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

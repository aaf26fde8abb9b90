"""Benchmarks of the core: soft top-k (LML), hard CEM and DCEM forward + backward.

Prints a markdown table of medians over repeated runs (one thread by default), each case
against baselines measured in the same run:

* ``floor``: the bare loop of the same sizes with a free weighting (one sigmoid-and-sum
  pass for the soft top-k; sampling, evaluating ``f``, a softmax as the soft top-k and the
  weighted mean and variance for CEM/DCEM);
* ``reference`` (optional): the published implementations, when their source folders are
  given with ``--ref-lml`` (a checkout of locuslab/lml, needs ``semantic_version``) and
  ``--ref-dcem`` (a checkout of facebookresearch/dcem). They are imported from those
  folders at run time; nothing of them is part of this project.

Usage::

    python benchmarks/bench_core.py [--repeats 30] [--ref-lml DIR --ref-dcem DIR] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import dcem


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def load_reference(ref_lml: str | None, ref_dcem: str | None):
    """Import the published LML layer and dcem function from user-supplied folders."""
    ref_layer = ref_fn = None
    if ref_lml:
        sys.path.insert(0, ref_lml)
        import lml as ref_lml_module  # noqa: PLC0415  (the published layer, from the user's checkout)

        ref_layer = ref_lml_module.LML
    if ref_dcem:
        if not ref_lml:
            raise SystemExit("--ref-dcem needs --ref-lml (the published dcem imports lml)")
        import numpy  # noqa: PLC0415

        if not hasattr(numpy, "infty"):  # the published code predates NumPy 2
            numpy.infty = numpy.inf
        path = Path(ref_dcem) / "dcem" / "dcem.py"
        spec = importlib.util.spec_from_file_location("published_dcem", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ref_fn = module.dcem
    return ref_layer, ref_fn


# ----------------------------------------------------------------------------- LML


def bench_lml(batch: int, repeats: int, ref_layer) -> dict:
    n, k = 100, 10
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, n, generator=g).requires_grad_()
    grad = torch.randn(batch, n, generator=g)

    def ours():
        dcem.lml(x, k).backward(grad)

    def floor():
        with torch.no_grad():
            torch.sigmoid(x).sum(-1)

    row = {"ours": median_ms(ours, repeats), "floor": median_ms(floor, repeats)}
    if ref_layer is not None:
        layer = ref_layer(N=k)
        row["reference"] = median_ms(lambda: layer(x).backward(grad), max(5, repeats // 3))
    return row


# ----------------------------------------------------------------------------- CEM / DCEM


def objective(theta: torch.Tensor, wiggle: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Squared distance to ``theta`` (plus ``0.1 * sum(sin(3 x))`` if ``wiggle``): ``(B, N, nx) -> (B, N)``.

    The issue's baselines: a quadratic for hard CEM, the wiggly one for DCEM.
    """

    def f(X: torch.Tensor) -> torch.Tensor:
        v = (X - theta.unsqueeze(1)).pow(2).sum(-1)
        return v + 0.1 * torch.sin(3 * X).sum(-1) if wiggle else v

    return f


def bare_loop(f, n_batch, nx, n_sample, n_elite, n_iter, generator):
    """The floor: sample, evaluate, a softmax as free soft top-k, weighted mean and variance.

    The weighted moments use batched matrix products, as the library does, so the ratio
    measures only the cost of the top-k machinery, validation and convergence tests.
    """
    mu = torch.zeros(n_batch, nx)
    sigma = torch.ones(n_batch, nx)
    for _ in range(n_iter):
        eps = torch.randn(n_batch, n_sample, nx, generator=generator)
        X = torch.addcmul(mu.unsqueeze(1), sigma.unsqueeze(1), eps)
        fX = f(X)
        w = (n_elite * torch.softmax(-fX, dim=-1)).unsqueeze(1)  # (B, 1, N)
        wsum = w.sum(-1)
        mu = torch.bmm(w, X).squeeze(1) / wsum
        D = X - mu.unsqueeze(1)
        sigma = (torch.bmm(w, D * D).squeeze(1) / wsum).clamp_min(1e-30).sqrt()
    return mu


def bench_cem(kind: str, n_batch: int, nx: int, repeats: int, ref_fn) -> dict:
    n_sample, n_elite, n_iter = 100, 10, 10
    temp = None if kind == "cem" else 1.0
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(n_batch, nx, generator=g).requires_grad_(kind == "dcem")
    f = objective(theta, wiggle=kind == "dcem")
    kwargs = dict(n_batch=n_batch, n_sample=n_sample, n_elite=n_elite, n_iter=n_iter, normalize=True)

    def run(fn):
        out = fn()
        if kind == "dcem":
            out.sum().backward()

    def ours():
        run(lambda: dcem.dcem(f, nx, temp=temp, iter_eps=0, generator=g, **kwargs))

    def floor():
        run(lambda: bare_loop(f, n_batch, nx, n_sample, n_elite, n_iter, g))

    row = {"ours": median_ms(ours, repeats), "floor": median_ms(floor, repeats)}
    if ref_fn is not None:
        row["reference"] = median_ms(
            lambda: run(lambda: ref_fn(f, nx, temp=temp, iter_eps=0.0, **kwargs)), max(3, repeats // 5)
        )
    return row


def main(argv: list[str] | None = None) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ref-lml", help="folder of a locuslab/lml checkout (optional)")
    parser.add_argument("--ref-dcem", help="folder of a facebookresearch/dcem checkout (optional)")
    parser.add_argument("--quick", action="store_true", help="few repeats (smoke test)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    ref_layer, ref_fn = load_reference(args.ref_lml, args.ref_dcem)

    # (case, measure, speed-up target vs reference, floor-ratio target)
    cases = [
        ("LML fwd+bwd  B=1000 n=100 k=10", lambda: bench_lml(1000, repeats, ref_layer), 10.0, None),
        ("LML fwd+bwd  B=1    n=100 k=10", lambda: bench_lml(1, repeats * 10, ref_layer), 5.0, None),
        ("hard CEM     B=1000 nx=2  N=100 T=10",
            lambda: bench_cem("cem", 1000, 2, repeats, ref_fn), 20.0, None),
        ("hard CEM     B=1000 nx=20 N=100 T=10",
            lambda: bench_cem("cem", 1000, 20, repeats, None), None, 1.3),
        ("DCEM fwd+bwd B=100  nx=20 N=100 T=10",
            lambda: bench_cem("dcem", 100, 20, repeats, ref_fn), 1.8, 1.25),
    ]
    header = "| case | ours (ms) | reference (ms) | speed-up vs reference | floor (ms) | ours / floor |"
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    for name, measure, speed_target, floor_target in cases:
        r = measure()
        ref = r.get("reference")
        speed = f"{ref / r['ours']:.1f}x (target >= {speed_target:g}x)" if ref and speed_target else "n/a"
        ratio = r["ours"] / r["floor"]
        ratio_s = f"{ratio:.2f}" + (f" (target <= {floor_target:g})" if floor_target else "")
        ref_s = f"{ref:.3f}" if ref else "n/a"
        lines.append(f"| {name} | {r['ours']:.3f} | {ref_s} | {speed} | {r['floor']:.3f} | {ratio_s} |")
        sys.stdout.write(lines[-1] + "\n")
        sys.stdout.flush()
    sys.stdout.write(
        f"\nmedians of {repeats} runs, torch {torch.__version__}, {args.threads} thread(s)\n\n"
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()

"""``dcem demo``: the 2-D example of the paper's code release, with plots (application code).

The objective is a small ``nn.Module``: three Gaussian bumps (learnable centres, heights and
widths) on a linear tilt,

    f(x) = t . x - sum_j h_j exp(-||x - c_j||^2 / (2 w_j^2)),   x in [-3, 3]^2.

The demo

1. minimises ``f`` with vanilla CEM (``dcem.dcem(..., temp=None)``) and plots the samples of each
   iteration over the contour of ``f`` (elites highlighted) -> ``cem_iterates.png``;
2. learns the parameters of ``f`` with DCEM (``temp = 1``) so that the DCEM minimiser moves to a
   target point: the loss is the squared distance of the DCEM output to the target, minimised with
   Adam through the unrolled DCEM iterations -> ``dcem_loss.png`` (+ ``dcem_loss.csv``),
   ``dcem_surface.png`` (the surface before and after) and ``dcem_training.gif``.

Use it from Python with :func:`run` or from the command line with ``dcem demo [--out DIR]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import replace

import torch
from torch import Tensor

from dcem.experiments.common import plots
from dcem.experiments.common.runs import CsvLog, ensure_dir
from dcem.experiments.demo import figures
from dcem.experiments.demo.compute import eval_runs, grid, grid_argmin, point, run_cem, solve, surface
from dcem.experiments.demo.objective import BumpObjective, DemoConfig, DemoResult

__all__ = ["BumpObjective", "DemoConfig", "DemoResult", "add_arguments", "run", "run_from_args"]

logger = logging.getLogger(__name__)

DEFAULT_OUT = "dcem-demo-output"

def _resolve(config: DemoConfig | None, quick: bool, steps: int | None, seed: int) -> DemoConfig:
    """The sizes of a run (checking ``steps``, ``seed`` and the optional dependencies)."""
    cfg = config if config is not None else (DemoConfig.quick() if quick else DemoConfig())
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        cfg = replace(cfg, steps=steps)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    _check_dependencies()
    return cfg


def _frame_steps(cfg: DemoConfig, gif: bool) -> set[int]:
    """Adam steps recorded for the GIF, denser early on where the surface changes fastest."""
    n = max(2, min(cfg.gif_frames, cfg.steps + 1)) if gif else 0
    return {round(cfg.steps * (i / (n - 1)) ** 2) for i in range(n)} if n else set()


def _check_dependencies() -> None:
    try:
        import matplotlib  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"the demo needs {err.name}: pip install 'dcem[demo]'") from err


Frame = tuple[int, Tensor, Tensor, tuple[float, float]]


def _train(obj: BumpObjective, cfg: DemoConfig, seed: int, pts: Tensor, frame_steps: set[int],
           progress: bool) -> tuple[list[Tensor], list[Frame]]:  # fmt: skip
    """Adam on ``obj``'s parameters through DCEM; the losses and the GIF frames at ``frame_steps``."""
    from tqdm.auto import tqdm

    frames: list[Frame] = []

    def snapshot(step: int) -> None:
        z = surface(obj, pts)
        frames.append((step, z, eval_runs(obj, cfg, seed), grid_argmin(z, pts)))

    target = torch.tensor(cfg.target, dtype=obj.centers.dtype)
    opt = torch.optim.Adam(obj.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed + 1)
    losses: list[Tensor] = []
    if 0 in frame_steps:
        snapshot(0)
    bar = tqdm(range(1, cfg.steps + 1), desc="DCEM training", unit="step", disable=not progress, leave=False)
    for step in bar:
        x = solve(obj, cfg, gen, cfg.dcem_batch)
        loss = (x - target).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if step % 10 == 0 or step == cfg.steps:
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if step in frame_steps:
            snapshot(step)
    bar.close()
    return losses, frames


def _write_outputs(res: DemoResult, cfg: DemoConfig, axes: tuple[Tensor, Tensor], z: tuple[Tensor, Tensor],
                   runs: tuple[Tensor, Tensor], centers: tuple[Tensor, Tensor], loss_t: Tensor,
                   frames: list[Frame] | None) -> None:  # fmt: skip
    """``dcem_loss.csv``, ``dcem_loss.png``, ``dcem_surface.png`` and the GIF, appended to ``res.files``."""
    out, files, (xs, ys) = res.out_dir, res.files, axes
    p = out / "dcem_loss.csv"
    CsvLog(p, ["step", "loss"]).rewrite({"step": i, "loss": v} for i, v in enumerate(res.losses, start=1))
    files.append(p)
    with plots.style():
        p = out / "dcem_loss.png"
        figures.plot_loss(p, cfg, loss_t)
        files.append(p)
        p = out / "dcem_surface.png"
        figures.plot_surfaces(p, cfg, xs, ys, *z, *runs, *centers, res)
        files.append(p)
        if frames is not None:
            p = out / "dcem_training.gif"
            figures.write_training_gif(p, cfg, xs, ys, frames, res.target)
            files.append(p)


def run(
    out_dir: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    seed: int = 0,
    steps: int | None = None,
    gif: bool = True,
    quick: bool = False,
    progress: bool = True,
    config: DemoConfig | None = None,
) -> DemoResult:
    """Run the 2-D CEM / DCEM demo and write its figures into ``out_dir``.

    Args:
        out_dir: output folder (created if needed).
        seed: seed of the ``torch.Generator`` that draws every CEM/DCEM sample; the same seed
            gives the same numbers.
        steps: Adam steps of the DCEM training (default: that of the configuration).
        gif: also write ``dcem_training.gif``.
        quick: tiny sizes (for tests); ignored when ``config`` is given.
        progress: show a tqdm progress bar while training.
        config: explicit sizes (a :class:`DemoConfig`).

    Returns:
        a :class:`DemoResult` with the written files (``cem_iterates.png``, ``dcem_loss.png``,
        ``dcem_loss.csv``, ``dcem_surface.png``, ``dcem_training.gif`` unless ``gif=False``), the
        loss per step and the minimisers.
    """
    t_start = time.perf_counter()
    cfg = _resolve(config, quick, steps, seed)

    out = ensure_dir(out_dir, "out_dir")  # a file or an unwritable path: a RunError naming out_dir
    obj = BumpObjective(dtype=torch.float32)
    centers0 = obj.centers.detach().clone()
    xs, ys, pts = grid(cfg, torch.float32)
    # 1. vanilla CEM on the initial objective
    z0 = surface(obj, pts)
    trace, x_cem = run_cem(obj, cfg, seed)
    files = [out / "cem_iterates.png"]
    with plots.style():
        figures.plot_cem(files[0], cfg, xs, ys, z0, trace, x_cem)

    # 2. DCEM: learn the objective so that its DCEM minimiser moves to the target
    runs0 = eval_runs(obj, cfg, seed)
    init_grid = grid_argmin(z0, pts)
    losses, frames = _train(obj, cfg, seed, pts, _frame_steps(cfg, gif), progress)
    loss_t = torch.stack(losses)
    loss_list = loss_t.tolist()
    z1 = surface(obj, pts)
    runs1 = eval_runs(obj, cfg, seed)
    res = DemoResult(out_dir=out, files=files, losses=loss_list, target=tuple(map(float, cfg.target)),
                     initial_minimiser=point(runs0.mean(0)), final_minimiser=point(runs1.mean(0)),
                     initial_grid_minimiser=init_grid, final_grid_minimiser=grid_argmin(z1, pts),
                     cem_solution=point(x_cem), seconds=0.0)  # fmt: skip
    _write_outputs(res, cfg, (xs, ys), (z0, z1), (runs0, runs1), (centers0, obj.centers.detach()), loss_t,
                   frames if gif else None)  # fmt: skip
    res.extra["parameters"] = {k: v.detach().tolist() for k, v in obj.named_parameters()}
    res.seconds = time.perf_counter() - t_start
    logger.info("DCEM minimiser moved from (%.2f, %.2f) to (%.2f, %.2f); distance to target %.3f -> %.3f",
                *res.initial_minimiser, *res.final_minimiser, res.initial_distance,
                res.final_distance)  # fmt: skip
    return res


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (the ``dcem demo`` sub-command)."""
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample generator (default: 0)")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"Adam steps of DCEM training (default: {DemoConfig.steps})"
    )
    parser.add_argument("--no-gif", action="store_true", help="do not write the animated GIF")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, a few seconds)")


def run_from_args(args: argparse.Namespace) -> DemoResult:
    """Run the demo from parsed command-line arguments and report the output folder on stdout."""
    if args.steps is not None and args.steps < 1:
        raise SystemExit(f"dcem demo: --steps must be >= 1, got {args.steps}")
    if args.seed < 0:
        raise SystemExit(f"dcem demo: --seed must be >= 0, got {args.seed}")
    ensure_dir(args.out, "--out")  # before any work: a file or an unwritable path is one line
    # tiny tensors: extra threads only add overhead
    torch.set_num_threads(1)
    res = run(args.out, seed=args.seed, steps=args.steps, gif=not args.no_gif, quick=args.quick)
    lines = [
        f"CEM solution on the initial objective: ({res.cem_solution[0]:.3f}, {res.cem_solution[1]:.3f})",
        f"DCEM training: loss {res.losses[0]:.4f} -> {res.losses[-1]:.4f} in {len(res.losses)} steps; "
        f"minimiser ({res.initial_minimiser[0]:.2f}, {res.initial_minimiser[1]:.2f}) -> "
        f"({res.final_minimiser[0]:.2f}, {res.final_minimiser[1]:.2f}), "
        f"target ({res.target[0]:.2f}, {res.target[1]:.2f})",
        f"wrote {len(res.files)} files in {res.seconds:.1f} s to {res.out_dir.resolve()}",
        *(f"  {p.name}" for p in res.files),
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return res

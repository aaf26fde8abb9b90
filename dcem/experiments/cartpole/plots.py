"""Plots of the cartpole experiment: learning curves, fig. 3 (samples), cost surfaces, ablation.

Call them inside :func:`dcem.experiments.common.plots.style` (the shared, local plot style).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dcem.control import LatentDCEMController
from dcem.experiments.common.plots import figure, save
from dcem.planning import rollout_objective


def _smooth(y: np.ndarray, w: int) -> np.ndarray:
    if len(y) < w or w <= 1:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = (c[w:] - c[:-w]) / w
    return np.concatenate((np.full(w - 1, np.nan), out))


def plot_curves(
    rows: list[dict[str, Any]],
    expert: float,
    random_cost: float | None,
    path: Path,
    title: str = "",
) -> None:
    """Training (smoothed) and validation cost per decoder update, with the expert's cost as a line."""
    tr = [r for r in rows if r["mode"] == "train"]
    va = [r for r in rows if r["mode"] == "val"]
    fig = figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    if tr:
        it = np.array([r["iter"] for r in tr])
        c = np.array([r["cost"] for r in tr])
        ax.plot(it, c, color="C0", alpha=0.15, lw=0.5)
        ax.plot(it, _smooth(c, 50), color="C0", label="train (moving avg. 50)")
    if va:
        ax.plot(
            [r["iter"] for r in va],
            [r["cost"] for r in va],
            "o-",
            color="C1",
            ms=3,
            label="validation (100 states)",
        )
    ax.axhline(expert, color="k", ls="--", label=f"expert full-space CEM ({expert:.2f})")
    if random_cost is not None:
        ax.axhline(random_cost, color="C3", ls=":", label=f"random decoder ({random_cost:.2f})")
    ax.set_xlabel("decoder update")
    ax.set_ylabel("plan cost (lower is better)")
    ax.set_title(title or "cartpole: latent DCEM controller")
    ax.legend()
    save(fig, path, dpi=100)


def _record(store: list[tuple[Tensor, Tensor, Tensor]]):
    def cb(i: int, X: Tensor, fX: Tensor, I: Tensor, X_I: Tensor, mu: Tensor, sigma: Tensor) -> None:
        store.append((X.detach()[0].clone(), fX.detach()[0].clone(), I.detach()[0, :, 0].clone()))

    return cb


@torch.no_grad()
def _cem_samples(
    ctrl: LatentDCEMController, spec: dict[str, Any], x: Tensor, seed: int
) -> tuple[list, float]:
    """Per-iteration samples of full-space CEM with ``spec`` (n_sample, n_elite, n_iter, sigma_scale)."""
    from dcem.experiments.cartpole.baselines import full_space_cem
    from dcem.experiments.cartpole.run import expert_spec

    store: list[tuple[Tensor, Tensor, Tensor]] = []
    p, init_std = full_space_cem(ctrl.dx, ctrl.horizon, **expert_spec(spec))
    res = p.plan(
        rollout_objective(ctrl.dx, x, ctrl.cost),
        batch_shape=(1,),
        init_std=init_std,
        generator=torch.Generator().manual_seed(seed),
        iter_cb=_record(store),
        dtype=x.dtype,
    )
    return store, float(res.best_cost[0])


@torch.no_grad()
def plot_fig3(
    ctrl: LatentDCEMController,
    cem_rows: list[tuple[str, dict[str, Any]]],
    x0: Tensor,
    path: Path,
    n_lines: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """Fig. 3: control sequences sampled by full-space CEM (one row per ``(name, spec)`` of
    ``cem_rows``; ``spec`` has n_sample, n_elite, n_iter, sigma_scale) and by latent DCEM (last
    row) across iterations 1, 2, 4, 10 and each row's last one.

    ``x0`` is one initial state ``(5,)``. Returns each row's best plan cost.
    """
    H, x = ctrl.horizon, x0.unsqueeze(0)
    rows, costs = [], {}
    for k, (name, spec) in enumerate(cem_rows):
        store, costs[f"fig3_cem{k}_cost"] = _cem_samples(ctrl, spec, x, seed)
        rows.append((store, f"{name}", None))
    lat_store: list[tuple[Tensor, Tensor, Tensor]] = []
    lat = ctrl.planner().plan(
        rollout_objective(ctrl.dx, x, ctrl.cost),
        batch_shape=(1,),
        init_std=ctrl.init_sigma,
        generator=torch.Generator().manual_seed(seed),
        iter_cb=_record(lat_store),
        dtype=x.dtype,
    )
    costs["fig3_latent_cost"] = float(lat.best_cost[0])
    rows.append((lat_store, f"latent DCEM ({ctrl.n_sample} samples)", ctrl))
    iters = sorted({0, 1, 3, 9} | {len(r[0]) - 1 for r in rows})
    fig = figure(figsize=(3.0 * len(iters), 2.9 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(iters), sharey=True, squeeze=False)
    t = np.arange(H)
    for row, (store, name, decode) in enumerate(rows):
        for col, i in enumerate(iters):
            ax = axes[row, col]
            if i >= len(store):
                ax.set_axis_off()
                continue
            X, fX, w = store[i]
            U = X.view(X.shape[0], H) if decode is None else decode.decoder(X)[..., 0]
            for k in range(min(n_lines, U.shape[0])):
                ax.plot(t, U[k].numpy(), color="C0", alpha=0.2, lw=0.6)
            for k in torch.topk(w, min(10, w.numel())).indices.tolist():  # largest (soft) elite weights
                ax.plot(t, U[k].numpy(), color="C3", alpha=0.8, lw=0.8)
            ax.set_title(f"{name}\niteration {i + 1}", fontsize=9)
            ax.set_xlabel("t")
        axes[row, 0].set_ylabel("force u_t")
    fig.suptitle(
        "best plan costs: "
        + ", ".join(f"{r[1].split(' (')[0]} {c:.2f}" for r, c in zip(rows, costs.values()))
        + " (red: elites)"
    )
    save(fig, path, dpi=90)
    return costs


def plot_seed_curves(scores: list[dict[str, Any]], lines: dict[str, float], path: Path) -> None:
    """Validation cost per decoder update of several training runs (``scores[i]["val_curve"]``,
    ``[(iter, cost), ...]``), their mean, and horizontal reference ``lines`` (label -> cost)."""
    fig = figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    curves = [np.asarray(s["val_curve"], dtype=float) for s in scores]
    for k, c in enumerate(curves):
        ax.plot(
            c[:, 0], c[:, 1], "-", color="C0", alpha=0.35, lw=0.8, label="training seeds" if k == 0 else None
        )
    n = min(len(c) for c in curves)
    ax.plot(
        curves[0][:n, 0],
        np.mean([c[:n, 1] for c in curves], 0),
        "o-",
        color="C0",
        ms=2,
        label=f"mean of {len(curves)} seeds",
    )
    for k, (label, v) in enumerate(lines.items()):
        ax.axhline(v, color="k", ls=("--", ":", "-.")[k % 3], label=f"{label} ({v:.2f})")
    ax.set_xlabel("decoder update")
    ax.set_ylabel("validation cost (100 states, lower is better)")
    ax.set_title("cartpole: latent DCEM controller, validation")
    ax.legend(fontsize=8)
    save(fig, path, dpi=100)


@torch.no_grad()
def plot_surface(ctrl: LatentDCEMController, x0: Tensor, path: Path, grid: int = 41, seed: int = 0) -> None:
    """Latent cost surfaces ``C(z)`` (eq. 8) for initial states ``x0 (k, 5)``, with the DCEM solutions.

    For ``n_latent > 2`` the surface is the slice through the first two latent coordinates with
    the others at the DCEM solution.
    """
    k = x0.shape[0]
    sol = ctrl.solve(x0, generator=torch.Generator().manual_seed(seed))
    b = ctrl.z_upper
    lin = torch.linspace(ctrl.z_lower, b, grid, dtype=x0.dtype)
    Z1, Z2 = torch.meshgrid(lin, lin, indexing="xy")
    z = sol.z.unsqueeze(1).repeat(1, grid * grid, 1)
    z[..., 0] = Z1.reshape(-1)
    z[..., 1] = Z2.reshape(-1) if ctrl.n_latent > 1 else z[..., 1 % ctrl.n_latent]
    C = ctrl.latent_cost(x0)(z).view(k, grid, grid)
    fig = figure(figsize=(3.6 * k, 3.4), layout="constrained")
    axes = fig.subplots(1, k, squeeze=False)
    for j in range(k):
        ax = axes[0, j]
        cs = ax.contourf(Z1.numpy(), Z2.numpy(), C[j].numpy(), levels=20, cmap="Blues_r")
        fig.colorbar(cs, ax=ax, fraction=0.046)
        ax.plot(float(sol.z[j, 0]), float(sol.z[j, min(1, ctrl.n_latent - 1)]), "r*", ms=10)
        th = float(torch.atan2(x0[j, 3], x0[j, 2]))
        ax.set_title(f"θ0 = {th:.2f}, C(z*) = {float(sol.cost[j]):.2f}\n(dark = low cost)")
        ax.set_xlabel("z1")
    axes[0, 0].set_ylabel("z2")
    save(fig, path, dpi=100)


def plot_ablation(
    results: list[dict[str, Any]],
    curves: dict[str, list[dict[str, Any]]],
    expert: float,
    path: Path,
    expert_label: str = "paper expert (val.)",
) -> None:
    """Validation curves of the tau x latent-size ablation, one panel per latent size: the mean
    over training seeds with a 95% Student-t band (no band for one seed)."""
    from dcem.experiments.common.runs import mean_ci95

    sizes = sorted({r["n_latent"] for r in results})
    fig = figure(figsize=(4.4 * len(sizes), 3.6), layout="constrained")
    axes = fig.subplots(1, len(sizes), sharey=True, squeeze=False)
    for j, nz in enumerate(sizes):
        ax = axes[0, j]
        for k, tau in enumerate(sorted({r["temp"] for r in results if r["n_latent"] == nz}, reverse=True)):
            runs = [r for r in results if r["n_latent"] == nz and r["temp"] == tau]
            vals: dict[int, list[float]] = {}
            for r in runs:
                for c in curves[r["name"]]:
                    if c["mode"] == "val":
                        vals.setdefault(int(c["iter"]), []).append(float(c["cost"]))
            its = sorted(vals)
            stats = [mean_ci95(vals[i]) for i in its]
            m = np.array([a for a, _ in stats])
            h = np.nan_to_num(np.array([b for _, b in stats]))
            label = (f"tau={tau:g}" if tau else "tau=0 (hard CEM)") + f", {len(runs)} seed(s)"
            ax.plot(its, m, "o-", ms=2, color=f"C{k}", label=label)
            ax.fill_between(its, m - h, m + h, color=f"C{k}", alpha=0.2, lw=0)
        ax.axhline(expert, color="k", ls="--", label=expert_label)
        ax.set_title(f"latent size {nz}")
        ax.set_xlabel("decoder update")
        ax.legend(fontsize=7)  # per panel: the labels (seeds finished) differ between latent sizes
    axes[0, 0].set_ylabel("validation cost (mean, 95% band over seeds)")
    save(fig, path, dpi=90)


def plot_fig5(cells: list[Any], curves: dict[Any, list[dict[str, Any]]], lines: dict[str, float], path: Path,
              temps: list[float], sizes: list[int]) -> None:  # fmt: skip
    """Fig. 5 analogue: validation cost per update, mean over training seeds with a 95% band, one
    panel per latent size, one curve per tau; a tau whose cells have not all finished is dashed
    and labelled as running (``cells``: :class:`~dcem.experiments.cartpole.report_ablation.Cell`)."""
    from dcem.experiments.common.runs import mean_ci95

    fig = figure(figsize=(4.4 * len(sizes), 3.6), layout="constrained")
    axes = fig.subplots(1, len(sizes), sharey=True, squeeze=False)
    for j, nz in enumerate(sizes):
        ax = axes[0, j]
        for k, tau in enumerate(temps):
            group = [c for c in cells if c.n_latent == nz and c.temp == tau]
            vals: dict[int, list[float]] = {}
            for c in group:
                for r in curves[c.path]:
                    if r["mode"] == "val":
                        vals.setdefault(int(r["iter"]), []).append(float(r["cost"]))
            its = sorted(vals)  # the mean over the seeds that reached each update
            if not its:
                continue
            stats = [mean_ci95(vals[i]) for i in its]
            m = np.array([a for a, _ in stats])
            h = np.nan_to_num(np.array([b for _, b in stats]))
            done = sum(c.finished for c in group)
            label = (f"tau={tau:g}" if tau else "tau=0 (hard CEM)") + f", {done}/{len(group)} seeds finished"
            ls = "-" if done == len(group) else "--"
            ax.plot(its, m, ls, lw=1.2, marker=".", ms=3, color=f"C{k}", label=label)
            ax.fill_between(its, m - h, m + h, color=f"C{k}", alpha=0.2, lw=0)
        for i, (name, v) in enumerate(lines.items()):
            ax.axhline(v, color="k", ls=(":", "--", "-.")[i % 3], lw=0.8, label=name)
        ax.set_title(f"latent size {nz}")
        ax.set_xlabel("decoder update")
        ax.legend(fontsize=7)  # per panel: the labels (seeds finished) differ between latent sizes
    axes[0, 0].set_ylabel("validation cost (mean, 95% band over seeds)")
    save(fig, path, dpi=90)


def plot_fig6(fractions: dict[tuple[int, float, int], dict[str, float]], lines: dict[str, float], path: Path,
              temps: list[float], sizes: list[int]) -> None:  # fmt: skip
    """Fig. 6 analogue: the fraction of the converged return per cell (latent size x tau) for both
    selections, squares = mean over the finished training seeds with 95% Student-t error bars, dots =
    seeds; horizontal lines: full-space CEM at the latent budget (``lines``, by selection)."""
    from dcem.experiments.common.runs import mean_ci95

    fig = figure(figsize=(1.2 + 1.1 * len(sizes) * len(temps), 3.6), layout="constrained")
    ax = fig.subplots()
    labels, x0 = [], 0
    for nz in sizes:
        for tau in temps:
            for k, sel in enumerate(("mean", "best")):
                v = [f[sel] for (n, t, _), f in fractions.items() if n == nz and t == tau]
                if v:
                    m, h = mean_ci95(v)
                    err = None if np.isnan(h) else 100 * h
                    label = f"{sel} selection" if not labels else None
                    x = x0 + 0.38 * k
                    ax.errorbar(x, 100 * m, yerr=err, fmt="s", color=f"C{k}", capsize=4, label=label)
                    ax.plot([x] * len(v), [100 * a for a in v], "k.", ms=4)
            labels.append((x0 + 0.19, f"nz={nz}\ntau={tau:g}"))
            x0 += 1
    for sel, v in sorted(lines.items()):
        ax.axhline(100 * v, color=f"C{0 if sel == 'mean' else 1}", ls="--", lw=0.8,
                   label=f"full-space CEM, latent budget ({sel})")  # fmt: skip
    ax.set_xticks([p for p, _ in labels], [s for _, s in labels])
    ax.set_ylabel("% of the converged return (test)")
    ax.legend(fontsize=8, loc="lower left")
    save(fig, path, dpi=90)

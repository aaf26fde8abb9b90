"""Plots of the cartpole experiment: learning curves, fig. 3 (samples), cost surfaces, ablation.

Call them inside :func:`dcem.experiments.common.plots.style` (the shared, local plot style).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dcem.control import MPC, LatentDCEMController
from dcem.experiments.common.plots import figure, save


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
def plot_fig3(
    ctrl: LatentDCEMController,
    expert: MPC,
    x0: Tensor,
    path: Path,
    n_lines: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """Fig. 3: control sequences sampled by full-space CEM vs latent DCEM across iterations.

    ``x0`` is one initial state ``(5,)``. Returns the final plan costs of both controllers.
    """
    H = ctrl.horizon
    cem_store: list[tuple[Tensor, Tensor, Tensor]] = []
    lat_store: list[tuple[Tensor, Tensor, Tensor]] = []
    expert.generator = torch.Generator().manual_seed(seed)
    x = x0.unsqueeze(0)
    p = expert.plan(x, iter_cb=_record(cem_store))
    lat = ctrl.solve(x, generator=torch.Generator().manual_seed(seed), iter_cb=_record(lat_store))
    iters = sorted({0, 1, 3, min(len(cem_store), len(lat_store)) - 1})
    fig = figure(figsize=(3.4 * len(iters), 6.0), layout="constrained")
    axes = fig.subplots(2, len(iters), sharey=True, squeeze=False)
    t = np.arange(H)
    for row, (store, name, decode) in enumerate(
        (
            (cem_store, f"CEM, full space ({expert.n_sample} samples)", None),
            (lat_store, f"latent DCEM ({ctrl.n_sample} samples)", ctrl),
        )
    ):
        for col, i in enumerate(iters):
            ax = axes[row, col]
            if i >= len(store):
                ax.set_axis_off()
                continue
            X, fX, w = store[i]
            U = X.view(X.shape[0], H) if decode is None else decode.decoder(X)[..., 0]
            sel = torch.arange(min(n_lines, U.shape[0]))
            for k in sel.tolist():
                ax.plot(t, U[k].numpy(), color="C0", alpha=0.2, lw=0.6)
            el = torch.topk(w, min(10, w.numel())).indices  # largest (soft) elite weights
            for k in el.tolist():
                ax.plot(t, U[k].numpy(), color="C3", alpha=0.8, lw=0.8)
            ax.set_title(f"{name}\niteration {i + 1}")
            ax.set_xlabel("t")
        axes[row, 0].set_ylabel("force u_t")
    fig.suptitle(
        f"CEM plan cost {float(p.cost[0]):.2f} vs latent DCEM {float(lat.cost[0]):.2f} (red: elites)",
    )
    save(fig, path, dpi=100)
    return {"fig3_cem_cost": float(p.cost[0]), "fig3_latent_cost": float(lat.cost[0])}


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
        ax.axhline(expert, color="k", ls="--", label="paper expert (val.)")
        ax.set_title(f"latent size {nz}")
        ax.set_xlabel("decoder update")
    axes[0, 0].set_ylabel("validation cost (mean, 95% band over seeds)")
    axes[0, -1].legend(fontsize=8)
    save(fig, path, dpi=90)

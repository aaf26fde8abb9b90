"""Training loop (resumable, CSV-logged) and evaluation of the regression experiment."""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dcem.experiments.regression.model import DCEMPredictor, EnergyNet, build_predictor, make_data

__all__ = [
    "LOG_FIELDS",
    "atomic_save",
    "build",
    "evaluate_mse",
    "predict",
    "read_log",
    "train_run",
    "t_quantile_975",
]

log = logging.getLogger(__name__)

LOG_FIELDS = ["step", "batch_loss", "train_mse", "test_mse", "lr", "grad_norm", "wall_s"]

# keys of the config whose change makes an existing checkpoint incompatible
_FROZEN_TRAIN_KEYS = ("lr", "batch_size", "n_repeat", "clip_norm")


def t_quantile_975(df: int) -> float:
    """Two-sided 95% Student-t quantile ``t_{0.975, df}`` (exact table up to 30, normal beyond)."""
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
             2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
             2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip
    if df < 1:
        return math.nan
    return table[df - 1] if df <= len(table) else 1.960


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path`` then ``os.replace`` it."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def read_log(path: Path) -> list[dict[str, float]]:
    """Rows of a run's ``log.csv`` as floats (empty list if the file does not exist)."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def build(method: str, cfg: Mapping[str, Any], device: torch.device) -> tuple[EnergyNet, nn.Module]:
    """Energy net and predictor for ``method`` from the experiment config."""
    energy = EnergyNet(1, 1, n_hidden=int(cfg["n_hidden"]), n_layers=int(cfg["n_layers"])).to(device)
    return energy, build_predictor(method, energy, dict(cfg[method]))


def predict(
    predictor: nn.Module, x: Tensor, n_iter: int | None = None, seed: int | None = None
) -> Tensor:
    """Prediction of either predictor for ``x`` ``(n, 1)`` -> ``(n, 1)``; the DCEM samples are
    drawn from a generator seeded with ``seed`` so evaluations are reproducible."""
    if isinstance(predictor, DCEMPredictor):
        gen = None
        if seed is not None:
            gen = torch.Generator(device=x.device).manual_seed(int(seed))
        return predictor(x, n_iter=n_iter, generator=gen)
    return predictor(x, n_iter=n_iter)


def evaluate_mse(
    predictor: nn.Module, x: Tensor, y: Tensor, n_iter: int | None = None, seed: int | None = None
) -> Tensor:
    """Mean squared error of the prediction (0-dim tensor, no graph)."""
    with torch.no_grad():
        return (predict(predictor, x, n_iter, seed) - y).pow(2).mean()


def _frozen(cfg: Mapping[str, Any], method: str) -> dict[str, Any]:
    tr = cfg["train"]
    return {
        "method": method,
        "n_points": int(cfg["n_points"]),
        "n_hidden": int(cfg["n_hidden"]),
        "n_layers": int(cfg["n_layers"]),
        "predictor": {k: cfg[method][k] for k in cfg[method]},
        "train": {k: tr[k] for k in _FROZEN_TRAIN_KEYS},
    }


def train_run(
    cfg: Mapping[str, Any], method: str, seed: int, run_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """Train one ``(method, seed)`` run in ``run_dir``, resuming from ``run_dir/ckpt.pt``.

    The run writes ``log.csv`` (columns :data:`LOG_FIELDS`; ``train_mse``/``test_mse`` are the
    full-data errors with a fixed evaluation seed, ``batch_loss`` the mean training loss since
    the previous row), ``ckpt.pt`` (model, optimiser, scheduler and generator states, written
    atomically every ``train.ckpt_every`` updates and at the end) and ``model.pt``.

    Returns:
        ``{"method", "seed", "steps", "wall_s", "train_mse", "test_mse"}`` of the final model.
    """
    tr = cfg["train"]
    device = torch.device(cfg["device"])
    n_updates, eval_every = int(tr["n_updates"]), int(tr["eval_every"])
    ckpt_every, n_repeat = int(tr["ckpt_every"]), int(tr["n_repeat"])
    n_points = int(cfg["n_points"])
    bs = n_points if tr["batch_size"] in (None, "all") else int(tr["batch_size"])
    if not 1 <= bs <= n_points:
        raise ValueError(f"train.batch_size must be in [1, n_points={n_points}] or null, got {bs}")
    for name, v in (("n_updates", n_updates), ("eval_every", eval_every), ("ckpt_every", ckpt_every),
                    ("n_repeat", n_repeat)):  # fmt: skip
        if v < 1:
            raise ValueError(f"train.{name} must be >= 1, got {v}")
    eval_seed = int(cfg["eval_seed"])

    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = run_dir / "ckpt.pt", run_dir / "log.csv"
    x, y, xt, yt = make_data(n_points, device=device)

    torch.manual_seed(seed)
    energy, predictor = build(method, cfg, device)
    opt = torch.optim.Adam(energy.parameters(), lr=float(tr["lr"]))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=float(tr["plateau_factor"]), patience=int(tr["plateau_patience"]),
        min_lr=float(tr["min_lr"]),
    )  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(10_000 + seed)
    step, wall = 0, 0.0
    frozen = _frozen(cfg, method)
    rows: list[dict[str, Any]] = []
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ck["frozen"] != frozen:
            raise ValueError(
                f"checkpoint {ckpt_path} was written with a different configuration "
                f"({ck['frozen']} != {frozen}); use a fresh out_dir"
            )
        energy.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        gen.set_state(ck["gen"].cpu())  # generator states are CPU byte tensors on every device
        step, wall = int(ck["step"]), float(ck["wall"])
        rows = [r for r in read_log(log_path) if r["step"] <= step]
        _atomic_write_rows(log_path, rows)
        if step >= n_updates:
            log.info("%s seed %d: already trained (%d updates), not retraining", method, seed, step)
        else:
            log.info("%s seed %d: resuming at update %d of %d", method, seed, step, n_updates)
    else:
        tr_mse = evaluate_mse(predictor, x, y, seed=eval_seed)
        te_mse = evaluate_mse(predictor, xt, yt, seed=eval_seed)
        rows = [dict(step=0, batch_loss=math.nan, train_mse=float(tr_mse), test_mse=float(te_mse),
                     lr=float(tr["lr"]), grad_norm=math.nan, wall_s=0.0)]  # fmt: skip
        _atomic_write_rows(log_path, rows)

    def checkpoint() -> None:
        atomic_save(
            {"step": step, "wall": wall, "model": energy.state_dict(), "opt": opt.state_dict(),
             "sched": sched.state_dict(), "gen": gen.get_state(), "frozen": frozen},
            ckpt_path,
        )  # fmt: skip

    loss_acc = torch.zeros((), device=device)
    gn_acc = torch.zeros((), device=device)
    n_acc = 0
    bar = tqdm(total=n_updates, initial=min(step, n_updates), desc=f"{method} seed {seed}",
               disable=not progress, dynamic_ncols=True, leave=False)  # fmt: skip
    t0 = time.perf_counter()
    with open(log_path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        while step < n_updates:
            if bs == n_points:
                xb, yb = x, y
            else:
                idx = torch.randperm(n_points, generator=gen, device=device)[:bs]
                xb, yb = x[idx], y[idx]
            for _ in range(min(n_repeat, n_updates - step)):
                if isinstance(predictor, DCEMPredictor):
                    yhat = predictor(xb, generator=gen)
                else:
                    yhat = predictor(xb)
                loss = (yhat - yb).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gn = nn.utils.clip_grad_norm_(energy.parameters(), float(tr["clip_norm"]))
                opt.step()
                step += 1
                loss_acc += loss.detach()
                gn_acc += gn.detach()
                n_acc += 1
                bar.update(1)
                if step % eval_every == 0 or step == n_updates:
                    tr_mse = evaluate_mse(predictor, x, y, seed=eval_seed)
                    te_mse = evaluate_mse(predictor, xt, yt, seed=eval_seed)
                    sched.step(float(tr_mse))
                    now = time.perf_counter()
                    wall += now - t0
                    t0 = now
                    row = dict(step=step, batch_loss=float(loss_acc) / n_acc, train_mse=float(tr_mse),
                               test_mse=float(te_mse), lr=opt.param_groups[0]["lr"],
                               grad_norm=float(gn_acc) / n_acc, wall_s=wall)  # fmt: skip
                    writer.writerow(row)
                    fh.flush()
                    loss_acc.zero_()
                    gn_acc.zero_()
                    n_acc = 0
                    bar.set_postfix(train_mse=f"{row['train_mse']:.4f}", lr=f"{row['lr']:.1e}")
                if step % ckpt_every == 0 or step == n_updates:
                    wall += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    fh.flush()
                    checkpoint()
    bar.close()
    if not (run_dir / "model.pt").exists() or step == n_updates:
        atomic_save(energy.state_dict(), run_dir / "model.pt")
    final = read_log(log_path)[-1]
    return {"method": method, "seed": seed, "steps": step, "wall_s": final["wall_s"],
            "train_mse": final["train_mse"], "test_mse": final["test_mse"]}  # fmt: skip

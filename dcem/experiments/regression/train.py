"""Training loop (resumable, CSV-logged) and evaluation of the regression experiment."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dcem.experiments.common.distributed import Shard, barrier
from dcem.experiments.common.runs import (
    CsvLog,
    describe_differences,
    incompatible,
    load_torch,
    note_progress,
    save_torch,
)
from dcem.experiments.regression.model import DCEMPredictor, EnergyNet, build_predictor, make_data

__all__ = ["LOG_FIELDS", "build", "evaluate_mse", "predict", "read_log", "train_run"]

log = logging.getLogger(__name__)

LOG_FIELDS = ["step", "batch_loss", "train_mse", "test_mse", "lr", "grad_norm", "wall_s"]

# keys of the config whose change makes an existing checkpoint incompatible
_FROZEN_TRAIN_KEYS = ("lr", "batch_size", "n_repeat", "clip_norm")


def read_log(path: Path) -> list[dict[str, float]]:
    """Rows of a run's ``log.csv`` as floats (empty list if the file does not exist)."""
    return [{k: float("nan") if v is None else float(v) for k, v in r.items()}
            for r in CsvLog(path, LOG_FIELDS).rows()]  # fmt: skip


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


class _Run:
    """State of one ``(method, seed)`` training run (model, optimiser, schedule, generator, log)."""

    def __init__(self, cfg: Mapping[str, Any], method: str, seed: int, run_dir: Path) -> None:
        tr = cfg["train"]
        self.cfg, self.tr, self.method, self.seed = cfg, tr, method, seed
        self.device = device = torch.device(cfg["device"])
        self.n_points = int(cfg["n_points"])
        self.bs = self.n_points if tr["batch_size"] is None else int(tr["batch_size"])  # see schema.py
        self.shard = Shard.of("n_points" if tr["batch_size"] is None else "train.batch_size", self.bs)
        self.eval_seed = int(cfg["eval_seed"])
        run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = run_dir / "ckpt.pt"
        self.log = CsvLog(run_dir / "log.csv", LOG_FIELDS)
        self.data = make_data(self.n_points, device=device)
        torch.manual_seed(seed)
        self.energy, self.predictor = build(method, cfg, device)
        self.opt = torch.optim.Adam(self.energy.parameters(), lr=float(tr["lr"]))
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=float(tr["plateau_factor"]), patience=int(tr["plateau_patience"]),
            min_lr=float(tr["min_lr"]),
        )  # fmt: skip
        self.gen = torch.Generator(device=device).manual_seed(10_000 + seed)
        self.step, self.wall = 0, 0.0
        self.window: list[Any] = [0.0, 0.0, 0]  # loss and gradient-norm sums, updates since the last row
        self.frozen = _frozen(cfg, method)

    def restore(self) -> None:
        """Load ``ckpt.pt`` and drop log rows written after it (an interrupted run)."""
        path = self.ckpt_path
        ck = load_torch(path, map_location=self.device)
        if not isinstance(ck, dict) or ck.get("frozen") != self.frozen:
            got = ck.get("frozen") if isinstance(ck, dict) else ck
            raise incompatible(path, describe_differences(got, self.frozen))
        try:
            self.energy.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["opt"])
            self.sched.load_state_dict(ck["sched"])
            self.gen.set_state(ck["gen"].cpu())  # generator states are CPU byte tensors on every device
            self.step, self.wall = int(ck["step"]), float(ck["wall"])
            self.window = list(ck.get("window", self.window))  # older checkpoints: an empty window
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise incompatible(path, f"{type(err).__name__}: {str(err).splitlines()[0][:100]}") from None
        self.log.keep(lambda r: r["step"] <= self.step)  # rows written after it, text of the others kept

    def start(self) -> None:
        x, y, xt, yt = self.data
        self.log.rewrite([dict(step=0, batch_loss=math.nan, train_mse=float(self.mse(x, y)),
                               test_mse=float(self.mse(xt, yt)), lr=float(self.tr["lr"]),
                               grad_norm=math.nan, wall_s=0.0)])  # fmt: skip

    def mse(self, x: Tensor, y: Tensor) -> Tensor:
        return evaluate_mse(self.predictor, x, y, seed=self.eval_seed)

    def checkpoint(self) -> None:
        save_torch({"step": self.step, "wall": self.wall, "model": self.energy.state_dict(),
                    "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                    "gen": self.gen.get_state(), "frozen": self.frozen, "window": self.window},
                   self.ckpt_path)  # fmt: skip

    def batch(self) -> tuple[Tensor, Tensor]:
        x, y = self.data[0], self.data[1]
        if self.bs == self.n_points:
            return self.shard.rows(x), self.shard.rows(y)
        idx = torch.randperm(self.n_points, generator=self.gen, device=self.device)[: self.bs]
        return self.shard.rows(x[idx]), self.shard.rows(y[idx])

    def update(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """One Adam step on the batch; returns the loss and the gradient norm (before clipping)."""
        with self.shard.draws(self.gen):  # data parallel: this process's rows of the global draws
            if isinstance(self.predictor, DCEMPredictor):
                yhat = self.predictor(xb, generator=self.gen)
            else:
                yhat = self.predictor(xb)
        loss = (yhat - yb).pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        (loss,) = self.shard.average(list(self.energy.parameters()), loss)  # no-op for one process
        gn = nn.utils.clip_grad_norm_(self.energy.parameters(), float(self.tr["clip_norm"]))
        self.opt.step()
        self.step += 1
        return loss.detach(), gn.detach()

    def eval_row(self, loss_mean: float, gn_mean: float) -> dict[str, Any]:
        x, y, xt, yt = self.data
        tr_mse, te_mse = self.mse(x, y), self.mse(xt, yt)
        self.sched.step(float(tr_mse))
        return dict(step=self.step, batch_loss=loss_mean, train_mse=float(tr_mse), test_mse=float(te_mse),
                    lr=self.opt.param_groups[0]["lr"], grad_norm=gn_mean, wall_s=self.wall)  # fmt: skip


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
    r = _Run(cfg, method, seed, run_dir)
    n_updates, eval_every = int(r.tr["n_updates"]), int(r.tr["eval_every"])
    ckpt_every, n_repeat = int(r.tr["ckpt_every"]), int(r.tr["n_repeat"])
    if r.ckpt_path.exists():
        r.restore()
        what = "already trained, not retraining" if r.step >= n_updates else "resuming"
        log.info("%s seed %d: %s at update %d of %d", method, seed, what, r.step, n_updates)
    else:
        r.start()
    loss_acc, gn_acc, n_acc = r.window  # checkpointed: a resume between two rows logs the same row
    bar = tqdm(total=n_updates, initial=min(r.step, n_updates), desc=f"{method} seed {seed}",
               disable=not progress, dynamic_ncols=True, leave=False)  # fmt: skip
    t0 = time.perf_counter()
    while r.step < n_updates:
        xb, yb = r.batch()
        for _ in range(min(n_repeat, n_updates - r.step)):
            loss, gn = r.update(xb, yb)
            loss_acc, gn_acc, n_acc = loss_acc + loss, gn_acc + gn, n_acc + 1
            note_progress(r.step)
            bar.update(1)
            if r.step % eval_every == 0 or r.step == n_updates:
                now = time.perf_counter()
                r.wall, t0 = r.wall + now - t0, now
                row = r.eval_row(float(loss_acc) / n_acc, float(gn_acc) / n_acc)
                r.log.append([row])
                loss_acc, gn_acc, n_acc = 0.0, 0.0, 0
                bar.set_postfix(train_mse=f"{row['train_mse']:.4f}", lr=f"{row['lr']:.1e}")
            if r.step % ckpt_every == 0 or r.step == n_updates:
                now = time.perf_counter()
                r.wall, t0 = r.wall + now - t0, now
                r.window = [loss_acc, gn_acc, n_acc]
                r.checkpoint()
    bar.close()
    if not (run_dir / "model.pt").exists() or r.step == n_updates:
        save_torch(r.energy.state_dict(), run_dir / "model.pt")
    barrier()  # the log read below is rank 0's
    final = read_log(r.log.path)[-1]
    return {"method": method, "seed": seed, "steps": r.step, "wall_s": final["wall_s"],
            "train_mse": final["train_mse"], "test_mse": final["test_mse"]}  # fmt: skip

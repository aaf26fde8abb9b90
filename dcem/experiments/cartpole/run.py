"""Training, evaluation, checkpointing and the ablation of the cartpole latent-control experiment."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dcem.control import (
    MPC,
    ActionDecoder,
    CartpoleDx,
    LatentDCEMController,
    cartpole_swingup_cost,
    train_step,
)

log = logging.getLogger(__name__)

CSV_FIELDS = ["iter", "mode", "cost", "loss", "grad_norm", "lr", "wall_s"]


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then ``os.replace`` it onto ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def validation_states(cfg: DictConfig, dx: CartpoleDx) -> Tensor:
    """The fixed validation set ``(n_val, 5)`` drawn with ``val_seed``."""
    return dx.sample_state(int(cfg.n_val), torch.Generator().manual_seed(int(cfg.val_seed)))


def make_controller(cfg: DictConfig, dx: CartpoleDx, n_latent: int | None = None, temp: float | None = None):
    """Decoder + latent DCEM controller from the config (optionally overriding size / temperature)."""
    nz = int(cfg.decoder.n_latent if n_latent is None else n_latent)
    tau = float(cfg.dcem.temp if temp is None else temp)
    dec = ActionDecoder(
        nz,
        int(cfg.horizon),
        dx.n_ctrl,
        dx.u_lower,
        dx.u_upper,
        hidden_sizes=tuple(cfg.decoder.hidden_sizes),
        activation=str(cfg.decoder.activation),
    )
    ctrl = LatentDCEMController(
        dec,
        dx,
        cartpole_swingup_cost,
        n_sample=int(cfg.dcem.n_sample),
        n_elite=int(cfg.dcem.n_elite),
        n_iter=int(cfg.dcem.n_iter),
        temp=tau,
        init_sigma=float(cfg.dcem.init_sigma),
        z_lower=-float(cfg.dcem.z_bound),
        z_upper=float(cfg.dcem.z_bound),
        normalize=bool(cfg.dcem.normalize),
    )
    return ctrl


def make_expert(cfg: DictConfig, dx: CartpoleDx, generator: torch.Generator | None = None) -> MPC:
    """Full-space CEM over the 20-D action sequence (the expert)."""
    return MPC(
        int(cfg.horizon),
        dx,
        cartpole_swingup_cost,
        n_sample=int(cfg.expert.n_sample),
        n_elite=int(cfg.expert.n_elite),
        n_iter=int(cfg.expert.n_iter),
        temp=None,
        sigma_scale=float(cfg.expert.sigma_scale),
        select="mean",
        warm_start=False,
        generator=generator,
    )


def test_states(cfg: DictConfig, dx: CartpoleDx) -> Tensor:
    """A held-out test set ``(n_val, 5)`` (never used for checkpoint selection)."""
    return dx.sample_state(int(cfg.n_val), torch.Generator().manual_seed(int(cfg.val_seed) + 1))


def expert_costs(
    cfg: DictConfig, dx: CartpoleDx, x_val: Tensor, cache: Path | None, tag: str = "val"
) -> Tensor:
    """Expert plan costs on ``x_val`` (validation or test set) ``(n_val,)``, cached as JSON."""
    key = {k: cfg.expert[k] for k in ("n_sample", "n_elite", "n_iter", "sigma_scale")}
    key.update(horizon=int(cfg.horizon), n_val=int(cfg.n_val), val_seed=int(cfg.val_seed), set=tag)
    key = json.loads(json.dumps(OmegaConf.to_container(OmegaConf.create(key))))
    if cache is not None and cache.exists():
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return torch.tensor(data["costs"])
    mpc = make_expert(cfg, dx, torch.Generator().manual_seed(int(cfg.seed) + 1))
    with torch.no_grad():
        costs = torch.cat([mpc.plan(xb).cost for xb in x_val.split(25)])
    if cache is not None:
        atomic_write_text(json.dumps({"key": key, "costs": costs.tolist()}), cache)
    return costs


@torch.no_grad()
def evaluate(ctrl: LatentDCEMController, x_val: Tensor, seed: int) -> Tensor:
    """Latent-controller plan costs on ``x_val`` ``(n_val,)`` with a fixed sampling seed."""
    return ctrl.solve(x_val, generator=torch.Generator().manual_seed(seed)).cost


def _append_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)


def read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [
            {
                k: (v if k == "mode" else int(v) if k == "iter" else float(v))
                for k, v in row.items()
                if v != ""
            }
            for row in csv.DictReader(fh)
        ]


def train(
    cfg: DictConfig,
    run_dir: Path,
    n_latent: int | None = None,
    temp: float | None = None,
    n_train_iter: int | None = None,
    expert: Tensor | None = None,
    expert_test: Tensor | None = None,
) -> dict[str, Any]:
    """Alg. 2 on the cartpole; resumable from ``run_dir/checkpoint.pt``. Returns the summary."""
    from tqdm.auto import tqdm

    run_dir.mkdir(parents=True, exist_ok=True)
    dx = CartpoleDx()
    n_iters = int(cfg.n_train_iter if n_train_iter is None else n_train_iter)
    torch.manual_seed(int(cfg.seed))
    ctrl = make_controller(cfg, dx, n_latent, temp)
    opt = torch.optim.Adam(ctrl.decoder.parameters(), lr=float(cfg.lr))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, "min", patience=int(cfg.lr_patience), factor=float(cfg.lr_factor)
    )
    g_train = torch.Generator().manual_seed(int(cfg.seed) + 100)  # DCEM samples
    g_init = torch.Generator().manual_seed(int(cfg.seed) + 200)  # initial states
    x_val = validation_states(cfg, dx)
    ckpt_path, best_path, csv_path = (
        run_dir / "checkpoint.pt",
        run_dir / "best.pt",
        run_dir / "log.csv",
    )
    start, best_val, random_cost, wall0 = 0, math.inf, None, 0.0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        ctrl.decoder.load_state_dict(ck["decoder"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        g_train.set_state(ck["g_train"])
        g_init.set_state(ck["g_init"])
        start, best_val, random_cost, wall0 = (
            ck["iter"],
            ck["best_val"],
            ck["random_cost"],
            ck["wall_s"],
        )
        # drop log rows written after the checkpoint (an interrupted run)
        if csv_path.exists():
            rows = [r for r in read_csv(csv_path) if r["iter"] < start]
            csv_path.unlink()
            if rows:
                _append_csv(csv_path, [{k: r.get(k, "") for k in CSV_FIELDS} for r in rows])
        log.info("resuming %s at iteration %d", run_dir, start)
    elif csv_path.exists():
        csv_path.unlink()

    if expert is None:
        expert = expert_costs(cfg, dx, x_val, run_dir / "expert.json")
    expert_mean = float(expert.mean())
    val_seed = int(cfg.seed) + 300
    t0 = time.perf_counter() - wall0
    pending: list[dict[str, Any]] = []

    def save(it: int) -> None:
        atomic_torch_save(
            {
                "decoder": ctrl.decoder.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "g_train": g_train.get_state(),
                "g_init": g_init.get_state(),
                "iter": it,
                "best_val": best_val,
                "random_cost": random_cost,
                "wall_s": time.perf_counter() - t0,
                "config": OmegaConf.to_container(cfg),
                "n_latent": ctrl.n_latent,
                "temp": ctrl.temp,
            },
            ckpt_path,
        )

    bar = tqdm(
        range(start, n_iters + 1),
        initial=start,
        total=n_iters + 1,
        disable=not cfg.progress,
        desc=run_dir.name,
    )
    for it in bar:
        if it % int(cfg.val_interval) == 0 or it == n_iters:
            val = float(evaluate(ctrl, x_val, val_seed).mean())
            if it == 0:
                random_cost = val
            sched.step(val)
            pending.append(
                dict(
                    iter=it,
                    mode="val",
                    cost=val,
                    loss="",
                    grad_norm="",
                    lr=opt.param_groups[0]["lr"],
                    wall_s=time.perf_counter() - t0,
                )
            )
            if val < best_val:
                best_val = val
                atomic_torch_save({"decoder": ctrl.decoder.state_dict(), "iter": it, "val": val}, best_path)
            bar.set_postfix(val=f"{val:.2f}", expert=f"{expert_mean:.2f}")
        if it == n_iters:
            break
        x0 = dx.sample_state(int(cfg.n_batch), g_init)
        out = train_step(ctrl, opt, x0, generator=g_train, clip_grad=cfg.clip_grad)
        pending.append(
            dict(
                iter=it,
                mode="train",
                cost=float(out["cost"]),
                loss=float(out["loss"]),
                grad_norm=float(out["grad_norm"]),
                lr=opt.param_groups[0]["lr"],
                wall_s=time.perf_counter() - t0,
            )
        )
        if (it + 1) % int(cfg.ckpt_interval) == 0:
            _append_csv(csv_path, pending)
            pending = []
            save(it + 1)
    _append_csv(csv_path, pending)
    save(n_iters)

    return summarize(
        cfg,
        run_dir,
        n_latent,
        temp,
        expert,
        expert_test,
        n_iters=n_iters,
        wall_s=time.perf_counter() - t0,
    )


def summarize(
    cfg: DictConfig,
    run_dir: Path,
    n_latent: int | None = None,
    temp: float | None = None,
    expert: Tensor | None = None,
    expert_test: Tensor | None = None,
    n_iters: int | None = None,
    wall_s: float | None = None,
) -> dict[str, Any]:
    """Evaluate the best checkpoint of ``run_dir`` on the validation and the held-out test set.

    Fresh DCEM samples (a seed not used during training) are used for both; the test set was
    never used to select the checkpoint. Writes and returns ``summary.json``.
    """
    dx = CartpoleDx()
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    nz = int(ck.get("n_latent", n_latent or cfg.decoder.n_latent))
    tau = ck.get("temp", temp)
    ctrl = make_controller(cfg, dx, nz, 0.0 if tau is None else float(tau))
    best = torch.load(run_dir / "best.pt", weights_only=False)
    ctrl.decoder.load_state_dict(best["decoder"])
    x_val, x_test = validation_states(cfg, dx), test_states(cfg, dx)
    if expert is None:
        expert = expert_costs(cfg, dx, x_val, run_dir / "expert.json")
    if expert_test is None:
        expert_test = expert_costs(cfg, dx, x_test, run_dir / "expert_test.json", tag="test")
    seed = int(cfg.seed) + 301
    latent = evaluate(ctrl, x_val, seed)
    latent_test = evaluate(ctrl, x_test, seed)
    torch.manual_seed(int(cfg.seed))
    rand = make_controller(cfg, dx, nz, 0.0 if tau is None else float(tau))  # the initial decoder
    summary = {
        "n_latent": nz,
        "temp": float(tau or 0.0),
        "n_train_iter": int(ck["iter"] if n_iters is None else n_iters),
        "best_iter": int(best["iter"]),
        "expert_cost": float(expert.mean()),
        "latent_cost": float(latent.mean()),
        "latent_cost_std": float(latent.std()),
        "random_decoder_cost": ck.get("random_cost"),
        "improvement_factor": float(latent.mean()) / float(expert.mean()),
        "frac_states_latent_beats_expert": float((latent <= expert).float().mean()),
        "expert_test_cost": float(expert_test.mean()),
        "latent_test_cost": float(latent_test.mean()),
        "random_decoder_test_cost": float(evaluate(rand, x_test, seed).mean()),
        "improvement_factor_test": float(latent_test.mean()) / float(expert_test.mean()),
        "frac_test_states_latent_beats_expert": float((latent_test <= expert_test).float().mean()),
        "wall_s": float(ck.get("wall_s", 0.0) if wall_s is None else wall_s),
    }
    atomic_write_text(json.dumps(summary, indent=2), run_dir / "summary.json")
    return summary

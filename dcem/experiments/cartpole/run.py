"""Training, evaluation, checkpointing and the ablation of the cartpole latent-control experiment."""

from __future__ import annotations

import importlib
import json
import logging
import math
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
    Dynamics,
    LatentDCEMController,
    cartpole_swingup_cost,
    train_step,
)
from dcem.control.latent import LATENT_DEFAULTS
from dcem.control.mpc import MPC_DEFAULTS, StepCost
from dcem.experiments.common.distributed import Shard, barrier
from dcem.experiments.common.planner import planner_config
from dcem.experiments.common.runs import (
    CsvLog,
    atomic_write_text,
    cached_json,
    incompatible,
    load_torch,
    note_progress,
    save_torch,
)

log = logging.getLogger(__name__)

CSV_FIELDS = ["iter", "mode", "cost", "loss", "grad_norm", "lr", "wall_s"]


def make_task(cfg: DictConfig) -> tuple[Dynamics, StepCost]:
    """The dynamics model and per-step cost of the experiment ``cfg`` belongs to: the cartpole
    swing-up, or (when ``cfg`` has a ``task`` key) ``make_task(cfg)`` of ``dcem.experiments.<task>``,
    whose runs reuse this training loop, its checkpoints and its evaluation."""
    name = str(cfg.get("task", "cartpole"))
    if name == "cartpole":
        return CartpoleDx(), cartpole_swingup_cost
    return importlib.import_module(f"dcem.experiments.{name}").make_task(cfg)


def validation_states(cfg: DictConfig, dx: Dynamics) -> Tensor:
    """The fixed validation set ``(n_val, n_state)`` drawn with ``val_seed``."""
    return dx.sample_state(int(cfg.n_val), torch.Generator().manual_seed(int(cfg.val_seed)))


def make_controller(cfg: DictConfig, dx: Dynamics, n_latent: int | None = None, temp: float | None = None):
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
        init=str(cfg.decoder.init),
    )
    config = planner_config(cfg.dcem, defaults=LATENT_DEFAULTS, temp=tau)  # temp 0: hard CEM
    z = float(cfg.dcem.z_bound)
    return LatentDCEMController(dec, dx, make_task(cfg)[1], config, init_sigma=float(cfg.dcem.init_sigma),
                                z_lower=-z, z_upper=z)  # fmt: skip


def make_expert(cfg: DictConfig, dx: Dynamics, generator: torch.Generator | None = None) -> MPC:
    """Full-space CEM over the ``horizon x n_ctrl`` action sequence (the expert)."""
    config = planner_config(cfg.expert, defaults=MPC_DEFAULTS, rule="cem", select="mean")
    return MPC(int(cfg.horizon), dx, make_task(cfg)[1], config, warm_start=False, generator=generator)


def expert_spec(section: Any) -> dict[str, Any]:
    """The full-space CEM settings ``n_sample, n_elite, n_iter, sigma_scale`` of a config section
    (``expert`` or ``report.converged``) as a plain dict."""
    return {k: section[k] for k in ("n_sample", "n_elite", "n_iter", "sigma_scale")}


def test_states(cfg: DictConfig, dx: Dynamics) -> Tensor:
    """A held-out test set ``(n_val, n_state)`` (never used for checkpoint selection)."""
    return dx.sample_state(int(cfg.n_val), torch.Generator().manual_seed(int(cfg.val_seed) + 1))


def expert_costs(
    cfg: DictConfig, dx: Dynamics, x_val: Tensor, cache: Path | None, tag: str = "val"
) -> Tensor:
    """Expert plan costs on ``x_val`` (validation or test set) ``(n_val,)``, cached as JSON."""
    key = expert_spec(cfg.expert)
    key.update(horizon=int(cfg.horizon), n_val=int(cfg.n_val), val_seed=int(cfg.val_seed), set=tag)
    key = OmegaConf.to_container(OmegaConf.create(key))

    def compute() -> list[float]:
        mpc = make_expert(cfg, dx, torch.Generator().manual_seed(int(cfg.seed) + 1))
        with torch.no_grad():
            return torch.cat([mpc.plan(xb).cost for xb in x_val.split(25)]).tolist()

    return torch.tensor(cached_json(cache, key, compute, field="costs"))


@torch.no_grad()
def evaluate(ctrl: LatentDCEMController, x_val: Tensor, seed: int) -> Tensor:
    """Latent-controller plan costs on ``x_val`` ``(n_val,)`` with a fixed sampling seed."""
    return ctrl.solve(x_val, generator=torch.Generator().manual_seed(seed)).cost


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of ``log.csv`` (empty cells left out)."""
    return [{k: v for k, v in r.items() if v is not None} for r in CsvLog(path, CSV_FIELDS).rows()]


def _load(path: Path) -> dict[str, Any]:
    ck = load_torch(path)
    if not isinstance(ck, dict) or "decoder" not in ck:
        raise incompatible(path, "not a cartpole checkpoint")
    return ck


def _load_decoder(ctrl: LatentDCEMController, path: Path) -> dict[str, Any]:
    ck = _load(path)
    try:
        ctrl.decoder.load_state_dict(ck["decoder"])
    except RuntimeError as err:
        raise incompatible(path, str(err).splitlines()[0][:120]) from None
    return ck


class _Training:
    """Decoder, optimiser, schedule, generators and log of one Alg. 2 run in ``run_dir``."""

    def __init__(self, cfg: DictConfig, run_dir: Path, n_latent: int | None, temp: float | None) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg, self.dx = cfg, make_task(cfg)[0]
        torch.manual_seed(int(cfg.seed))
        self.ctrl = make_controller(cfg, self.dx, n_latent, temp)
        self.opt = torch.optim.Adam(self.ctrl.decoder.parameters(), lr=float(cfg.lr))
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, "min", patience=int(cfg.lr_patience), factor=float(cfg.lr_factor)
        )
        self.g_train = torch.Generator().manual_seed(int(cfg.seed) + 100)  # DCEM samples
        self.g_init = torch.Generator().manual_seed(int(cfg.seed) + 200)  # initial states
        self.ckpt_path, self.best_path = run_dir / "checkpoint.pt", run_dir / "best.pt"
        self.log = CsvLog(run_dir / "log.csv", CSV_FIELDS)
        self.start, self.best_val, self.random_cost, self.wall0 = 0, math.inf, None, 0.0
        self.shard = Shard.of("n_batch", int(cfg.n_batch))  # data parallel: this process's states

    def restore(self) -> None:
        """Load ``checkpoint.pt``."""
        ck = _load(self.ckpt_path)
        try:
            self.ctrl.decoder.load_state_dict(ck["decoder"])
            self.opt.load_state_dict(ck["opt"])
            self.sched.load_state_dict(ck["sched"])
            self.g_train.set_state(ck["g_train"])
            self.g_init.set_state(ck["g_init"])
            self.start, self.best_val = int(ck["iter"]), float(ck["best_val"])
            self.random_cost, self.wall0 = ck["random_cost"], float(ck["wall_s"])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise incompatible(
                self.ckpt_path, f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
            ) from None

    def validated_at_start(self) -> bool:
        """Whether the restored checkpoint already holds the validation at its own update (the last
        checkpoint of a finished run, which validates before saving), so that a run extended to
        more updates equals a longer run bit for bit. Counted by the scheduler's steps, one per
        validation; a finished run whose length was not a multiple of ``val_interval`` made an
        extra validation a longer run would not make, and is refused."""
        every = int(self.cfg.val_interval)
        grid = -(-self.start // every)  # validations at 0, every, ... before update `start`
        if self.sched.last_epoch <= grid:
            return False
        if self.start % every:
            raise incompatible(self.ckpt_path, f"it finished at update {self.start}, not a multiple of "
                               f"val_interval={every}, so a longer run would differ from it")  # fmt: skip
        return True

    def save(self, it: int, wall: float) -> None:
        save_torch({"decoder": self.ctrl.decoder.state_dict(), "opt": self.opt.state_dict(),
                    "sched": self.sched.state_dict(), "g_train": self.g_train.get_state(),
                    "g_init": self.g_init.get_state(), "iter": it, "best_val": self.best_val,
                    "random_cost": self.random_cost, "wall_s": wall,
                    "config": OmegaConf.to_container(self.cfg), "n_latent": self.ctrl.n_latent,
                    "temp": self.ctrl.temp}, self.ckpt_path)  # fmt: skip

    def validate(self, it: int, x_val: Tensor, wall: float) -> dict[str, Any]:
        val = float(evaluate(self.ctrl, x_val, int(self.cfg.seed) + 300).mean())
        if it == 0:
            self.random_cost = val
        self.sched.step(val)
        if val < self.best_val:
            self.best_val = val
            save_torch({"decoder": self.ctrl.decoder.state_dict(), "iter": it, "val": val}, self.best_path)
        return dict(iter=it, mode="val", cost=val, lr=self.opt.param_groups[0]["lr"], wall_s=wall)

    def step(self, it: int, wall: float) -> dict[str, Any]:
        x0 = self.shard.rows(self.dx.sample_state(int(self.cfg.n_batch), self.g_init))
        with self.shard.draws(self.g_train):
            out = train_step(self.ctrl, self.opt, x0, generator=self.g_train, clip_grad=self.cfg.clip_grad,
                             grad_hook=None if self.shard.world == 1 else self.shard.average)  # fmt: skip
        out["loss"], out["cost"] = self.shard.average([], out["loss"], out["cost"])
        return dict(iter=it, mode="train", cost=float(out["cost"]), loss=float(out["loss"]),
                    grad_norm=float(out["grad_norm"]), lr=self.opt.param_groups[0]["lr"],
                    wall_s=wall)  # fmt: skip


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

    n_iters = int(cfg.n_train_iter if n_train_iter is None else n_train_iter)
    tr = _Training(cfg, run_dir, n_latent, temp)
    x_val = validation_states(cfg, tr.dx)
    if tr.ckpt_path.exists():
        tr.restore()
        if tr.start >= n_iters:
            log.info("%s: already trained (%d updates), not retraining", run_dir, tr.start)
            return summarize(cfg, run_dir, n_latent, temp, expert, expert_test)
        log.info("resuming %s at iteration %d", run_dir, tr.start)
        done = tr.validated_at_start()  # a finished run extended to more updates
        keep = lambda r: r["iter"] < tr.start or (done and r["iter"] == tr.start and r["mode"] == "val")  # noqa: E731
        tr.log.keep(keep)  # rows after the checkpoint go, the rest stays as written
    else:
        done = False
        tr.log.rewrite([])
    if expert is None:
        expert = expert_costs(cfg, tr.dx, x_val, run_dir / "expert.json")
    expert_mean = float(expert.mean())
    t0 = time.perf_counter() - tr.wall0
    pending: list[dict[str, Any]] = []
    bar = tqdm(range(tr.start, n_iters + 1), initial=tr.start, total=n_iters + 1, disable=not cfg.progress,
               desc=run_dir.name)  # fmt: skip
    for it in bar:
        if (it % int(cfg.val_interval) == 0 or it == n_iters) and not (done and it == tr.start):
            pending.append(tr.validate(it, x_val, time.perf_counter() - t0))
            bar.set_postfix(val=f"{pending[-1]['cost']:.2f}", expert=f"{expert_mean:.2f}")
        if it == n_iters:
            break
        pending.append(tr.step(it, time.perf_counter() - t0))
        note_progress(it + 1)
        if (it + 1) % int(cfg.ckpt_interval) == 0:
            tr.log.append(pending)
            pending = []
            tr.save(it + 1, time.perf_counter() - t0)
    tr.log.append(pending)
    tr.save(n_iters, time.perf_counter() - t0)
    barrier()  # summarize reads rank 0's checkpoint
    return summarize(cfg, run_dir, n_latent, temp, expert, expert_test, n_iters=n_iters,
                     wall_s=time.perf_counter() - t0)  # fmt: skip


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
    dx = make_task(cfg)[0]
    ck = _load(run_dir / "checkpoint.pt")
    nz = int(ck.get("n_latent", n_latent or cfg.decoder.n_latent))
    tau = ck.get("temp", temp)
    ctrl = make_controller(cfg, dx, nz, 0.0 if tau is None else float(tau))
    best = _load_decoder(ctrl, run_dir / "best.pt")
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
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary

"""Data parallelism over ``torch.distributed`` for the experiments (``torchrun ... dcem-exp NAME``).

``torchrun --nproc_per_node=N`` starts ``N`` copies of the same command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment;
:func:`init` joins them into one process group (gloo for CPU tensors, NCCL for CUDA tensors
when CUDA is available). Without those variables (or with ``WORLD_SIZE=1``) nothing is
initialised and every helper here is the identity or a no-op, so a plain run is unchanged bit
for bit.

The data-parallel scheme: every process holds the same model, optimiser and generators and
draws the same *global* batch; :class:`Shard` keeps its rows ``[rank * n, (rank + 1) * n)``
(``n = global / world_size``), and the random draws made for the batch inside the training step
(the DCEM samples, ``(global, ...)`` in a single process) are drawn at their global shape and
sliced the same way (:meth:`Shard.draws`). After ``backward`` the gradients of the per-process
mean losses are averaged (:meth:`Shard.average`, one all-reduce), which equals the gradient of the
global mean, so the update, the clipping and every later draw are those of the single-process
run with the same global batch (to floating-point rounding of the sums).

Explicit all-reduce rather than ``DistributedDataParallel``: the unrolled inner optimisers call
the trained network once per inner iteration inside one training step (and GD differentiates
through ``autograd.grad``), which DDP's one-forward-per-backward reducer does not allow; the
averaged gradients are the same.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["Shard", "barrier", "broadcast_object", "init", "is_main", "launch_info", "rank", "world_size"]

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r}: must be an integer >= 1") from None


def backend_for(cuda: bool) -> str:
    """Process-group backend: gloo for CPU tensors, plus NCCL for CUDA tensors when ``cuda``."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init(timeout_s: float = 600.0) -> bool:
    """Join the process group described by torchrun's environment variables.

    Returns ``True`` when a group of two or more processes was initialised (or already was),
    ``False`` for a single process (nothing is done). On CUDA machines the current device is set
    to ``cuda:LOCAL_RANK``, so ``device=cuda`` means one GPU per process.

    Raises:
        ValueError: ``WORLD_SIZE > 1`` without ``RANK``/``MASTER_ADDR``/``MASTER_PORT``.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if _env_world() <= 1:
        return False
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={_env_world()} but {', '.join(missing)} unset; launch with torchrun")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend_for(cuda), timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    """Leave the process group (if any)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """``True`` on rank 0, the only process that writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op for one)."""
    import torch.distributed as dist

    if _active():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (``obj`` itself for one process)."""
    import torch.distributed as dist

    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch_info(batches: dict[str, int | None]) -> dict[str, Any]:
    """What ``config.yaml`` records about the launch: world size, backend, per-process batches.

    Args:
        batches: config key -> global batch size (e.g. ``{"train.batch_size": 8}``).

    Raises:
        ConfigError: a global batch not divisible by the world size (the message names the key).
    """
    import torch.distributed as dist

    w = world_size()
    per = {k: per_process(k, n, w) for k, n in batches.items() if n is not None}
    return {"world_size": w, "backend": dist.get_backend() if _active() else None, "per_process_batch": per}


def per_process(key: str, global_n: int, world: int) -> int:
    """``global_n / world``; :class:`ConfigError` naming ``key`` unless it divides evenly."""
    from dcem.experiments.common.config import ConfigError

    if global_n < world or global_n % world:
        raise ConfigError(f"{key}={global_n}: must be a multiple of the number of processes "
                          f"(WORLD_SIZE={world}) so that every process gets the same share")  # fmt: skip
    return global_n // world


def _flat_shape(args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    size = kwargs.get("size", args[0] if len(args) == 1 and not isinstance(args[0], int) else args)
    try:
        return tuple(int(s) for s in size)
    except TypeError:
        return None


class _GlobalDraws(TorchFunctionMode):
    """Replace ``torch.randn(n_local, ...)``/``torch.rand`` with ``generator=gen`` by this
    process's rows of the draw at the global shape ``(n_local * world, ...)``; counts the draws."""

    def __init__(self, shard: Shard, gen: torch.Generator) -> None:
        super().__init__()
        self.shard, self.gen, self.shapes = shard, gen, []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        if func not in (torch.randn, torch.rand) or kwargs.get("generator") is not self.gen:
            return func(*args, **kwargs)
        shape = _flat_shape(args, kwargs)
        s = self.shard
        if shape is None or not shape or shape[0] != s.n_local:
            raise RuntimeError(
                f"data parallel: a draw of shape {shape} from the batch generator does not lead with "
                f"the per-process batch ({s.n_local}); cannot shard it"
            )
        full = (s.n_global, *shape[1:])
        kw = {k: v for k, v in kwargs.items() if k not in ("size", "out")}
        self.shapes.append((func, full, kw))
        rows = func(full, **kw).narrow(0, s.lo, s.n_local)
        out = kwargs.get("out")
        return rows if out is None else out.copy_(rows)  # a draw into ``out=``: the same rows, written there


@dataclass(frozen=True)
class Shard:
    """This process's share of a global batch of ``n_global`` rows (config key ``key``).

    With one process every method is the identity (or a no-op) and no collective is made.
    """

    key: str
    n_global: int
    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, key: str, n_global: int) -> Shard:
        """The shard of the current process group (:class:`ConfigError` naming ``key`` unless
        ``n_global`` divides evenly)."""
        w = world_size()
        per_process(key, int(n_global), w)
        return cls(key, int(n_global), rank(), w)

    @property
    def n_local(self) -> int:
        return self.n_global // self.world

    @property
    def lo(self) -> int:
        return self.rank * self.n_local

    def rows(self, t: Tensor, dim: int = 0) -> Tensor:
        """This process's rows of ``t`` (size ``n_global`` along ``dim``) -> size ``n_local``."""
        if self.world == 1:
            return t
        if t.shape[dim] != self.n_global:
            raise ValueError(f"expected {self.n_global} rows along dim {dim}, got shape {tuple(t.shape)}")
        return t.narrow(dim, self.lo, self.n_local)

    @contextlib.contextmanager
    def draws(self, gen: torch.Generator) -> Iterator[None]:
        """Inside the block, draws from ``gen`` of shape ``(n_local, ...)`` are this process's rows of
        the draw at shape ``(n_global, ...)``; on exit every process catches up to the largest number
        of draws any made (a solver that stopped early on its rows), so ``gen`` stays the same on all."""
        if self.world == 1:
            yield
            return
        mode = _GlobalDraws(self, gen)
        with mode:
            yield
        n = torch.tensor([len(mode.shapes)], dtype=torch.int64)
        _all_reduce(n, "max")
        for _ in range(int(n) - len(mode.shapes)):
            func, full, kw = mode.shapes[-1]
            func(full, **kw)

    def average(self, params: Sequence[Tensor], *metrics: Tensor) -> list[Tensor]:
        """Average the ``.grad`` of ``params`` over the processes in place, and ``metrics`` (0-dim
        tensors, e.g. the per-process mean loss), in one all-reduce; returns the averaged metrics."""
        if self.world == 1:
            return list(metrics)
        grads = [p.grad for p in params if p.grad is not None]
        parts = [g.reshape(-1) for g in grads] + [m.detach().reshape(1).to(grads[0] if grads else m)
                                                  for m in metrics]  # fmt: skip
        flat = torch.cat(parts)
        _all_reduce(flat, "sum")
        flat /= self.world
        off = 0
        for g in grads:
            g.copy_(flat[off : off + g.numel()].view_as(g))
            off += g.numel()
        return [flat[off + i].to(m.dtype).reshape(m.shape) for i, m in enumerate(metrics)]


def _all_reduce(t: Tensor, op: str) -> None:
    import torch.distributed as dist

    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])

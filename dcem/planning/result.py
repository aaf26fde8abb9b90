"""The result of a plan: the selected candidate among those evaluated (``PlannerConfig.select``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from dcem.optim import invalid_mask
from dcem.planning.capture import LoopOutput

__all__ = ["PlanResult", "assemble", "plain"]


class PlanResult(NamedTuple):
    """Result of :meth:`Planner.plan` (``*B`` the batch shape).

    Attributes:
        plan: the selected plans ``(*B, H, A)``.
        cost: their costs ``(*B,)`` (from the objective calls, with gradients).
        best_plan, best_cost: the best candidate evaluated ``(*B, H, A)``, ``(*B,)``
            (``+inf`` where no candidate had a valid cost).
        mean, std: the final Gaussian in the search space, ``(*B, H, A)`` or ``(*B, n_latent)``.
        z, best_z: the latents of ``plan`` and ``best_plan`` ``(*B, n_latent)`` (None
            without a decoder).
        failed: ``(*B,)`` bool, some iteration had no valid candidate (sync-free path).
        n_evals: objective calls made.
    """

    plan: Tensor
    cost: Tensor
    best_plan: Tensor
    best_cost: Tensor
    mean: Tensor
    std: Tensor
    z: Tensor | None
    best_z: Tensor | None
    failed: Tensor
    n_evals: int


def assemble(
    out: LoopOutput,
    select: str,
    batch: tuple[int, ...],
    search_shape: tuple[int, ...],
    decode: Callable[[Tensor], Tensor] | None,
) -> PlanResult:
    """The :class:`PlanResult` of a finished loop: ``select`` between the last mean candidate and
    the best one (a non-finite mean is always replaced by a finite best; ``out.use_best``: the
    choice already made on the host), shaped to ``batch``; latents decoded by ``decode`` (None:
    the search space is the plans)."""
    g, best_xf, mean_xf, n_evals, host_use = out
    D = g.mu.shape[-1]  # select/narrow below: the same views as indexing, for less dispatch
    if host_use is not None and len(host_use) == 1:  # decided on the host: no selection to compute
        chosen = best_xf.clone() if host_use[0] else mean_xf
    else:
        if host_use is not None:
            use_best = torch.from_numpy(host_use).to(best_xf.device)
        else:
            best_f, mean_f = best_xf.select(1, D).detach(), mean_xf.select(1, D).detach()
            if select == "best":
                use_best = torch.ones_like(best_f, dtype=torch.bool)
            elif select == "min":
                use_best = ~(mean_f <= best_f)
            else:
                use_best = invalid_mask(mean_f)
            use_best = use_best & (best_f < math.inf)
        chosen = torch.where(use_best.unsqueeze(-1), best_xf, mean_xf)
    S = search_shape
    x_sel, x_best = chosen.narrow(1, 0, D).reshape(*batch, *S), best_xf.narrow(1, 0, D).reshape(*batch, *S)
    z = zb = None
    if decode is not None:
        z, zb = x_sel, x_best
        x_sel, x_best = decode(z), decode(zb)
    return PlanResult(
        x_sel, chosen.select(1, D).reshape(batch), x_best, best_xf.select(1, D).reshape(batch),
        g.mu.reshape(*batch, *S), g.sigma.reshape(*batch, *S), z, zb, g.failed.reshape(batch), n_evals,
    )  # fmt: skip


def plain(res: PlanResult) -> PlanResult:
    """``res`` with inference tensors (of a plan run under ``torch.inference_mode``) copied into
    normal ones, which callers may use in autograd and in-place like any other tensor."""
    return PlanResult._make([t.clone() if isinstance(t, Tensor) and t.is_inference() else t for t in res])

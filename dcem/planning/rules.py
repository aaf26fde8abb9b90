"""The refit of one planner iteration: sample weights per rule, moments, momentum, freezing.

Rows are flattened problems: candidates ``X (B, M, D)``, costs ``fX (B, M)`` (lower is better;
NaN and ``+inf`` invalid, ``-inf`` the best possible, as everywhere in dcem). The weights come
from the shared functions of :mod:`dcem.optim.weights`; nothing reads values on the host
unless ``host`` says it may.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from dcem.optim import (
    gather_rows,
    hard_elites,
    settle_refit,
    soft_elite_weights,
    standardize,
    weighted_moments,
)
from dcem.optim.weights import _invalid_last, valid_mask
from dcem.planning.config import PlannerConfig, Rule

__all__ = ["Gaussian", "Refit", "refit", "mppi_weights", "gather_rows"]


class Gaussian(NamedTuple):
    """The sampling distribution of ``B`` flattened problems in a ``D``-dimensional search space.

    Attributes:
        mu, sigma: mean and per-coordinate standard deviation, ``(B, D)``.
        done: ``(B,)`` bool, converged (``iter_eps``) and frozen.
        failed: ``(B,)`` bool, some iteration had no candidate with a valid cost.
    """

    mu: Tensor
    sigma: Tensor
    done: Tensor
    failed: Tensor


class Refit(NamedTuple):
    """Result of :func:`refit`: the new state, the kept elites and (on request) the weights."""

    state: Gaussian
    kept: Tensor  # (B, n_keep, D) best candidates carried to the next iteration
    weights: Tensor | None  # (B, M) weight of every candidate, when asked for


def mppi_weights(fX: Tensor, lam: float, normalize: bool) -> Tensor:
    """MPPI weights ``softmax(-fX / lam)`` per row ``(B, M)`` (costs standardised first if ``normalize``).

    Invalid costs get weight 0; a row with ``-inf`` costs splits the weight among them; a row
    with no valid cost has zero weights (the caller keeps its distribution).
    """
    valid, finite = valid_mask(fX), torch.isfinite(fX)
    v = torch.where(finite, fX, torch.zeros_like(fX))
    if normalize:
        v = standardize(v, finite)
    any_finite = finite.any(-1, keepdim=True)
    s = torch.where(finite, v / -lam, torch.full_like(v, -math.inf))
    s = torch.where(any_finite, s, torch.zeros_like(s))  # keeps the softmax (and its grad) finite
    w = torch.where(finite & any_finite, torch.softmax(s, -1), torch.zeros_like(s))
    neg_inf = valid & ~finite
    return torch.where(neg_inf.any(-1, keepdim=True), neg_inf.to(w.dtype), w)


def _weights(
    cfg: PlannerConfig, X: Tensor, fX: Tensor, host: bool, want: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(mu, sigma, wsum, weights (B, M) if want)`` of the rule; hard rules use elites only."""
    B, M, _ = X.shape
    k = min(cfg.n_elite, M)
    if cfg.rule in (Rule.CEM, Rule.ICEM):
        idx, w_e = hard_elites(fX, k, host)
        wsum = w_e.sum(-1, keepdim=True)
        mu, sigma = weighted_moments(w_e, gather_rows(X, idx), wsum)
        if not want:
            return mu, sigma, wsum, None
        return mu, sigma, wsum, torch.zeros(B, M, dtype=w_e.dtype, device=w_e.device).scatter_(1, idx, w_e)
    if cfg.rule is Rule.DCEM:
        all_valid = host and bool(torch.isfinite(fX).all())
        w = soft_elite_weights(fX, k, cfg.temp, cfg.normalize, all_valid=all_valid, sync=cfg.sync)
    else:
        w = mppi_weights(fX, cfg.lam, cfg.normalize)
        if not cfg.differentiable:
            w = w.detach()
    wsum = w.sum(-1, keepdim=True)
    mu, sigma = weighted_moments(w, X, wsum)
    return mu, sigma, wsum, w


def _kept(cfg: PlannerConfig, X: Tensor, fX: Tensor) -> Tensor:
    """The ``n_keep`` lowest-cost valid-first candidates ``(B, n_keep, D)``."""
    n = min(cfg.n_keep, X.shape[1])
    if n == 0:
        return X[:, :0]
    idx = torch.topk(_invalid_last(fX), n, dim=-1, largest=False, sorted=False).indices
    return gather_rows(X, idx)


def refit(
    cfg: PlannerConfig,
    state: Gaussian,
    X: Tensor,
    fX: Tensor,
    host: bool,
    it: int,
    want_weights: bool = False,
) -> Refit:
    """One update of the Gaussian ``state`` (``mu``, ``sigma`` of shape ``(B, D)``) from ``X``, ``fX``.

    Rows whose candidates are all invalid keep their Gaussian and are flagged ``failed``
    (the host-checked path raises ``ValueError`` instead); rows that moved less than
    ``cfg.iter_eps`` are ``done`` and frozen from then on.
    """
    mu0, sigma0 = state.mu, state.sigma
    mu, sigma, wsum, weights = _weights(cfg, X, fX, host, want_weights)
    if cfg.momentum:
        m = cfg.momentum
        mu, sigma = m * mu0 + (1 - m) * mu, m * sigma0 + (1 - m) * sigma
    mu, sigma, done, failed = settle_refit(
        (mu0, sigma0), (mu, sigma), wsum, state.done, state.failed,
        host=host, iter_eps=cfg.iter_eps, it=it, what="candidate",
    )  # fmt: skip
    new = Gaussian(mu, sigma, done, failed)
    return Refit(new, _kept(cfg, X, fX), weights if want_weights else None)

"""Sample weights and weighted refits shared by every update rule (CEM, DCEM, MPPI, iCEM).

All functions act on a batch of rows: values ``fX`` of shape ``(B, N)`` (lower is better),
samples ``X`` of shape ``(B, N, D)``. The conventions hold everywhere in dcem:

* NaN and ``+inf`` values are *invalid*: never elite, never the best sample, weight 0;
* ``-inf`` is the best possible value;
* nothing here reads tensor values on the host unless the caller says it may (``host``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dcem.soft_topk import lml
from dcem.sync import host_reads_free

__all__ = [
    "gather_rows",
    "settle_refit",
    "invalid_mask",
    "standardize",
    "hard_elites",
    "hard_elites_checked",
    "soft_elite_weights",
    "weighted_moments",
    "best_sample",
    "safe_sqrt",
]


def invalid_mask(fX: Tensor) -> Tensor:
    """``True`` where a value is NaN or ``+inf`` (``-inf`` is the best possible value)."""
    return ~valid_mask(fX)


def valid_mask(fX: Tensor) -> Tensor:
    """``True`` where a value is valid: neither NaN nor ``+inf`` (one comparison: NaN compares false)."""
    return fX < math.inf


def _invalid_last(fX: Tensor) -> Tensor:
    """Detached ``fX`` with NaN and ``+inf`` (invalid) values set to ``+inf``, ``-inf`` kept."""
    return fX.detach().nan_to_num(nan=math.inf, posinf=math.inf, neginf=-math.inf)


def safe_sqrt(v: Tensor) -> Tensor:
    """``sqrt(v)`` for ``v >= 0`` with a finite (zero) gradient at ``v = 0``.

    The plain square root has an infinite derivative at 0, which turns zero-spread costs (a
    flat objective, ``init_sigma = 0``) into NaN gradients; below the smallest normal number
    the value is clamped, which changes it by less than ``sqrt(tiny)``.
    """
    return v.clamp_min(_tiny(v.dtype)).sqrt()


_TINY: dict[torch.dtype, float] = {}


def _tiny(dtype: torch.dtype) -> float:
    """``torch.finfo(dtype).tiny``, looked up once per dtype."""
    t = _TINY.get(dtype)
    if t is None:
        t = _TINY[dtype] = torch.finfo(dtype).tiny
    return t


def standardize(v: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-row standardisation of ``v (B, N)`` over the entries where ``valid`` holds.

    Unbiased standard deviation plus ``1e-6``, as the reference; entries outside ``valid``
    become 0. The deviations are scaled by their largest magnitude before squaring, so values
    up to the dtype's largest finite number normalise without overflow, and rows of equal
    values (zero spread) give zeros with finite gradients.
    """
    if valid is None:  # the same operations as with an all-True mask, so the same bits
        count = torch.full_like(v[..., :1], v.shape[-1])
        dev = v - v.sum(-1, keepdim=True) / count
        dof = torch.full_like(count, max(v.shape[-1] - 1, 1))  # (count - 1).clamp_min(1), exactly
    else:
        zero = torch.zeros_like(v)
        count = valid.sum(-1, keepdim=True).to(v.dtype)
        mean = torch.where(valid, v, zero).sum(-1, keepdim=True) / count.clamp_min(1)
        dev = torch.where(valid, v - mean, zero)
        dof = (count - 1).clamp_min(1)
    m = dev.abs().amax(-1, keepdim=True).clamp_min(_tiny(v.dtype)).detach()
    var = (dev / m).pow(2).sum(-1, keepdim=True) / dof
    return dev / (m * safe_sqrt(var) + 1e-6)


def hard_elites(fX: Tensor, n_elite: int, host: bool) -> tuple[Tensor, Tensor]:
    """Indices ``(B, k)`` of the ``k`` smallest values and their weights (0 for invalid ones).

    With ``host`` and CPU float32/float64 values NumPy's introselect is used (several times faster than
    ``torch.topk`` for short rows); otherwise ``torch.topk``, which is what accelerators and
    ``torch.compile`` run. Both order NaN last; ties may be broken differently.
    """
    idx, w, _ = hard_elites_checked(fX, n_elite, host)
    return idx, w


def hard_elites_checked(fX: Tensor, n_elite: int, host: bool) -> tuple[Tensor, Tensor, bool]:
    """:func:`hard_elites` and whether every elite is known to be valid (then every weight is 1 and
    each row's total weight is exactly ``n_elite``; ``False`` when unknown: not read on the host)."""
    v = fX.detach()
    if host and v.device.type == "cpu" and v.dtype in (torch.float32, torch.float64):
        a = v.numpy()
        part = np.ascontiguousarray(a.argpartition(n_elite - 1, axis=-1)[:, :n_elite])
        if bool((a < math.inf).all()):  # every value valid (NaN compares false), so every elite
            return torch.from_numpy(part), torch.ones(part.shape, dtype=v.dtype), True
        valid = np.take_along_axis(a, part, -1) < math.inf  # NaN and +inf are invalid
        w = torch.from_numpy(valid.astype(a.dtype))  # weights 0 and 1 exactly
        return torch.from_numpy(part), w, bool(valid.all())
    v = _invalid_last(v)  # NaN last, infinities kept
    vals, idx = torch.topk(v, n_elite, dim=-1, largest=False, sorted=False)
    return idx, (vals < math.inf).to(fX.dtype), False  # NaN and +inf are invalid


def soft_elite_weights(
    fX: Tensor,
    n_elite: int,
    temp: float | Tensor,
    normalize: bool,
    *,
    all_valid: bool = False,
    sync: str = "auto",
) -> Tensor:
    """Soft top-k weights ``(B, N)`` summing to ``n_elite`` per row (Prop. 3, eq. 5).

    ``temp`` is a float or a ``(B,)`` tensor dividing the (optionally standardised) values.
    Invalid values get weight 0; a row with at most ``n_elite`` valid values weights each of
    them by one. ``all_valid`` (a promise by a caller that has checked every value is finite
    on the host) skips the masking; it gives the same bits as the masked computation, so a
    row's weights never depend on whether other rows of the batch hold invalid values.
    """
    tscale = temp if isinstance(temp, float) else temp.unsqueeze(-1)
    if all_valid:  # every row as the masked path below computes an all-finite row, bit for bit
        v = standardize(fX) if normalize else fX
        return lml(v / -tscale, n_elite, 1.0, sync=sync)
    valid = valid_mask(fX)
    finite = torch.isfinite(fX)  # valid and not -inf
    n_valid = valid.sum(-1, keepdim=True)
    v = torch.where(finite, fX, torch.zeros_like(fX))
    if normalize:
        v = standardize(v, finite)
    s = v / -tscale
    # invalid values sit far below every finite score, -inf costs (the best possible) far above
    inf = torch.full_like(s, math.inf)
    low = torch.where(finite, s, inf).amin(-1, keepdim=True).nan_to_num(posinf=0.0)
    high = torch.where(finite, s, -inf).amax(-1, keepdim=True).nan_to_num(neginf=0.0)
    s = torch.where(finite, s, torch.where(valid, high + 1e3, low - 1e3).detach())
    I = lml(s, n_elite, 1.0, sync=sync)
    I = torch.where(valid, I, torch.zeros_like(I))
    return torch.where(n_valid <= n_elite, valid.to(I.dtype), I)


def weighted_moments(w: Tensor, X: Tensor, wsum: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Weighted mean and standard deviation over dim 1: ``w (B, M)``, ``X (B, M, D)`` -> ``(B, D)`` each.

    ``wsum`` (``(B, 1)``, default ``w.sum(-1)``) may be passed when the caller has it. Rows of
    zero total weight give a zero mean; callers keep their previous iterate for them.
    """
    if wsum is None:
        wsum = w.sum(-1, keepdim=True)
    wsum = wsum.clamp_min(_tiny(X.dtype))
    w3 = w.unsqueeze(1)
    mu = torch.bmm(w3, X).squeeze(1) / wsum
    D = X - mu.unsqueeze(1)
    var = torch.bmm(w3, D * D).squeeze(1) / wsum
    return mu, safe_sqrt(var)


def best_sample(X: Tensor, fX: Tensor) -> tuple[Tensor, Tensor]:
    """The lowest-valued valid sample of each row: ``X (B, N, D)``, ``fX (B, N)`` -> ``(B, D)``, ``(B,)``.

    The one best-sample rule of dcem: NaN and ``+inf`` are never best, ``-inf`` is the best
    possible value; a row with no valid value returns ``+inf`` (and its first sample), which
    never replaces a tracked best.
    """
    fmin, arg = _invalid_last(fX).min(-1)
    B, _, D = X.shape
    xb = X.gather(1, arg.view(B, 1, 1).expand(B, 1, D)).squeeze(1)
    return xb, fmin


def gather_rows(X: Tensor, idx: Tensor) -> Tensor:
    """Rows ``idx (B, k)`` of ``X (B, M, D)`` -> ``(B, k, D)``.

    Row-offset indices into the flattened samples: ``index_select`` is much faster than
    ``gather`` with an expanded index on CPU.
    """
    B, M, D = X.shape
    if B == 1:  # an exact copy either way: the same bits as the batched gather
        return X[0].index_select(0, idx[0]).unsqueeze(0)
    offs = torch.arange(0, B * M, M, device=idx.device).unsqueeze(-1)
    return X.reshape(B * M, D).index_select(0, (idx + offs).reshape(-1)).view(B, idx.shape[-1], D)


def settle_refit(
    old: tuple[Tensor, Tensor],
    new: tuple[Tensor, Tensor],
    wsum: Tensor | None,
    done: Tensor,
    failed: Tensor,
    *,
    host: bool,
    iter_eps: float | None,
    it: int = 0,
    what: str = "sample",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The rules every refit shares after its weights: invalid rows and convergence.

    Args:
        old, new: ``(mu, sigma)`` before and after the refit, each ``(B, D)``.
        wsum: total weight per row ``(B, 1)``; ``None`` when the caller has checked that
            every value was valid.
        done, failed: ``(B,)`` flags of the state.
        host: host-checked path. A row of zero total weight raises ``ValueError`` on this
            path and wherever values can be read for free (CPU tensors outside compilation,
            so that both paths accept the same input there); elsewhere (the sync-free path
            on accelerators or under ``torch.compile``) it keeps its old distribution and
            becomes ``failed``.
        iter_eps: rows whose mean moves less than this become ``done``; ``done`` rows keep
            their mean and (like the reference, from the converging iteration on) their scale.

    Returns:
        ``(mu, sigma, done, failed)``.
    """
    (mu0, sigma0), (mu, sigma) = old, new
    if wsum is not None:
        if host or host_reads_free(wsum):
            if bool((wsum == 0).any()):
                none_valid = wsum.squeeze(-1) == 0
                bad = torch.nonzero(none_valid).flatten()[:5].tolist()
                raise ValueError(
                    f"every {what} of some batch element has a NaN or +inf value (iteration {it}, "
                    f"flattened batch rows {bad}): the objective must give each problem a valid value"
                )
        else:
            none_valid = wsum == 0
            mu = torch.where(none_valid, mu0, mu)
            sigma = torch.where(none_valid, sigma0, sigma)
            failed = failed | none_valid.squeeze(-1)
    if iter_eps:
        moved = (mu - mu0).detach().norm(dim=-1) < iter_eps
        keep, freeze = done.unsqueeze(-1), (done | moved).unsqueeze(-1)
        mu, sigma, done = torch.where(keep, mu0, mu), torch.where(freeze, sigma0, sigma), done | moved
    return mu, sigma, done, failed

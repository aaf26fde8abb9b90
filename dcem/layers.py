"""DCEM as a layer: ``y*(x) = argmin_y E_theta(x, y)`` inside a network (sect. 4.1 of the paper).

:class:`DCEMArgmin` wraps an energy ``E_theta(x, y)`` (any ``nn.Module`` or callable, scalar
per pair) and returns the (approximate) minimiser over ``y`` found by DCEM, differentiable
with respect to ``theta`` through the soft top-k (Prop. 3). It is the energy-based
regression predictor of sect. 5.1 and the building block of any "optimisation as a layer"
model whose inner problem is non-convex.

Shapes: inputs ``x (*B, n_x)``; the energy is called as ``energy(x_b, Y)`` with ``x_b
(*B, 1, n_x)`` broadcast against candidates ``Y (*B, N, n_y)`` and returns ``(*B, N)`` (or
``(*B, N, 1)``); the layer returns ``y* (*B, n_y)``.

Example:
    >>> import torch
    >>> from dcem.layers import DCEMArgmin
    >>> w = torch.nn.Parameter(torch.tensor(2.0))
    >>> energy = lambda x, y: (y - w * x).pow(2).sum(-1)         # argmin_y = w x
    >>> layer = DCEMArgmin(energy, n_y=1, n_sample=100, n_elite=10, init_sigma=3.0)
    >>> y = layer(torch.tensor([[1.0], [-0.5]]), generator=torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(y, torch.tensor([[2.0], [-1.0]]), atol=0.05))
    True
    >>> y.sum().backward(); w.grad is not None
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from dcem._checks import check_int, check_real
from dcem.optim import CEMConfig, init_state
from dcem.optim.cem import _loop
from dcem.optim.validate import check_finite, check_tensor, check_values
from dcem.sync import check_sync

__all__ = ["DCEMArgmin"]

Energy = Callable[[Tensor, Tensor], Tensor]


class DCEMArgmin(nn.Module):
    """``y*(x) = argmin_y energy(x, y)`` by (D)CEM over ``y`` in ``R^{n_y}``.

    Args:
        energy: ``E_theta``; an ``nn.Module`` is registered as a submodule (its parameters
            are the layer's).
        n_y: dimension of ``y``.
        n_sample, n_elite, n_iter, temp, normalize, iter_eps: the DCEM hyper-parameters
            (:class:`dcem.optim.CEMConfig`; ``temp=None`` gives hard CEM, not differentiable
            in ``theta``).
        init_mu: initial mean of ``y`` (float).
        init_sigma: initial standard deviation (float > 0); must cover the range of ``y``.
        lb, ub: optional bounds of ``y`` (floats).
        sync: solver path (:mod:`dcem.sync`).

    NaN/inf: ``x`` must be finite (checked where reading is free, on both solver paths); the
    energy's NaN and ``+inf`` values are never elite, ``-inf`` is the best possible value, and a
    problem whose candidates all have invalid energies raises ``ValueError`` on CPU (elsewhere it
    keeps its initial distribution).

    Shape:
        - Input: ``x (*B, n_x)``.
        - Output: ``y* (*B, n_y)``.
    """

    def __init__(
        self,
        energy: Energy,
        n_y: int,
        *,
        n_sample: int = 100,
        n_elite: int = 10,
        n_iter: int = 10,
        temp: float | None = 1.0,
        normalize: bool = True,
        iter_eps: float | None = None,
        init_mu: float = 0.0,
        init_sigma: float = 1.0,
        lb: float | None = None,
        ub: float | None = None,
        sync: str = "auto",
    ) -> None:
        super().__init__()
        if not callable(energy):
            raise TypeError(f"energy must be callable, got {type(energy).__name__}")
        self.energy = energy
        self.n_y = check_int("n_y", n_y, 1)
        self.init_mu = check_real("init_mu", init_mu)
        self.init_sigma = check_real("init_sigma", init_sigma, 0.0, strict=True)
        check_sync(sync)
        self.config = CEMConfig(
            n_sample, n_elite, n_iter, temp, lb, ub, normalize, iter_eps, track_best=False, sync=sync
        )

    def forward(
        self, x: Tensor, *, n_iter: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``y*`` for inputs ``x (*B, n_x)``; ``n_iter`` overrides the iterations (test-time ablations)."""
        x = check_tensor("x", x, min_dim=1, what="(*B, n_x)")
        check_finite("x", x)
        cfg = self.config
        if n_iter is not None:
            cfg = dataclasses.replace(cfg, n_iter=check_int("n_iter", n_iter, 1))
        xs = x.unsqueeze(-2)

        def evaluate(Y: Tensor) -> Tensor:
            v = self.energy(xs, Y)
            if isinstance(v, Tensor) and v.dim() == Y.dim() and v.shape[-1] == 1:
                v = v.squeeze(-1)
            return check_values(v, Y, returned_by="energy")

        mu = torch.full((*x.shape[:-1], self.n_y), self.init_mu, dtype=x.dtype, device=x.device)
        return _loop(evaluate, init_state(mu, self.init_sigma), cfg, generator=generator).mu

    def extra_repr(self) -> str:
        c = self.config
        return f"n_y={self.n_y}, n_sample={c.n_sample}, n_elite={c.n_elite}, n_iter={c.n_iter}, temp={c.temp}"

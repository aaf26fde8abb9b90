"""Energy network and the two unrolled predictors of the regression experiment (sect. 4.1, 5.1).

An energy ``E_theta(x, y)`` is learned so that ``y_hat(x) = argmin_y E_theta(x, y)`` fits the
data. The ``argmin`` is approximated by an inner optimiser that is unrolled and differentiated
end to end:

- :class:`UnrolledGD`: ``y_{t+1} = y_t - lr * dE/dy (x, y_t)`` from ``y_0``, written with plain
  autograd (``torch.autograd.grad(..., create_graph=True)``);
- :class:`DCEMPredictor`: the differentiable cross-entropy method of :func:`dcem.dcem`, batched
  over all inputs (``n_batch`` = number of points).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
from torch import Tensor, nn

from dcem.layers import DCEMArgmin

__all__ = ["EnergyNet", "UnrolledGD", "DCEMPredictor", "make_data", "target_fn", "build_predictor"]


def target_fn(x: Tensor) -> Tensor:
    """Ground truth ``f(x) = x sin(x)`` (elementwise, any shape)."""
    return x * torch.sin(x)


def make_data(
    n_points: int = 100, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The training grid and a held-out grid on ``[0, 2 pi]``.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; train tensors have shape ``(n_points, 1)``
        (the uniform grid including both ends, as in the paper), test tensors shape
        ``(n_points - 1, 1)`` (the midpoints between training inputs).
    """
    if isinstance(n_points, bool) or not isinstance(n_points, Integral) or n_points < 2:
        raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}")
    x = torch.linspace(0.0, 2.0 * math.pi, int(n_points), dtype=dtype, device=device).unsqueeze(-1)
    xt = 0.5 * (x[1:] + x[:-1])
    return x, target_fn(x), xt, target_fn(xt)


class EnergyNet(nn.Module):
    """MLP energy ``E_theta(x, y)`` on the concatenation ``[x, y]`` with Softplus activations.

    Args:
        n_x: input dimension of ``x``.
        n_y: output dimension of ``y``.
        n_hidden: width of each hidden layer.
        n_layers: number of hidden layers (the paper's network has three).
    """

    def __init__(self, n_x: int = 1, n_y: int = 1, n_hidden: int = 128, n_layers: int = 3) -> None:
        super().__init__()
        for name, v in (("n_x", n_x), ("n_y", n_y), ("n_hidden", n_hidden), ("n_layers", n_layers)):
            if isinstance(v, bool) or not isinstance(v, Integral) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.n_x, self.n_y = int(n_x), int(n_y)
        layers: list[nn.Module] = []
        width = self.n_x + self.n_y
        for _ in range(n_layers):
            layers += [nn.Linear(width, n_hidden), nn.Softplus()]
            width = n_hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Energy of ``x`` of shape ``(..., n_x)`` and ``y`` of shape ``(..., n_y)``
        (leading dimensions broadcast). Returns shape ``(...,)``."""
        if x.shape[-1] != self.n_x or y.shape[-1] != self.n_y:
            raise ValueError(
                f"expected x (..., {self.n_x}) and y (..., {self.n_y}), "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        lead = torch.broadcast_shapes(x.shape[:-1], y.shape[:-1])
        z = torch.cat((x.expand(*lead, self.n_x), y.expand(*lead, self.n_y)), dim=-1)
        return self.net(z).squeeze(-1)


def _check_iters(n_iter: object) -> int:
    if isinstance(n_iter, bool) or not isinstance(n_iter, Integral) or n_iter < 1:
        raise ValueError(f"n_iter must be an integer >= 1, got {n_iter!r}")
    return int(n_iter)


def _check_x(x: Tensor, n_x: int) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor of shape (n_batch, n_x)")
    if x.dim() != 2 or x.shape[-1] != n_x:
        raise ValueError(f"x must have shape (n_batch, {n_x}), got {tuple(x.shape)}")


class UnrolledGD(nn.Module):
    """``y_hat = y_T`` of ``T`` unrolled gradient steps on the energy, differentiable in theta.

    ``y_{t+1} = y_t - inner_lr * grad_y E_theta(x, y_t)`` from the constant ``y_0``. While
    autograd is recording (training) the inner gradients are built with ``create_graph=True``
    so that the loss on ``y_T`` back-propagates into theta through every step; under
    ``torch.no_grad()`` the steps are still taken (gradients w.r.t. ``y`` only) but no graph is
    kept.

    Args:
        energy: the energy network.
        n_iter: number of unrolled steps ``T`` (paper: 10).
        inner_lr: inner step size (paper: 0.1).
        y0: initial iterate (paper: 0).
    """

    def __init__(self, energy: EnergyNet, n_iter: int = 10, inner_lr: float = 0.1, y0: float = 0.0) -> None:
        super().__init__()
        self.energy = energy
        self.n_iter = _check_iters(n_iter)
        if isinstance(inner_lr, bool) or not isinstance(inner_lr, Real) or not inner_lr > 0:
            raise ValueError(f"inner_lr must be a float > 0, got {inner_lr!r}")
        self.inner_lr = float(inner_lr)
        self.y0 = float(y0)

    def forward(self, x: Tensor, n_iter: int | None = None, trajectory: bool = False) -> Tensor:
        """Predict for ``x`` of shape ``(n_batch, n_x)``.

        Args:
            x: inputs, shape ``(n_batch, n_x)``.
            n_iter: number of steps (default: the training value ``self.n_iter``).
            trajectory: also return every iterate.

        Returns:
            ``y_T`` of shape ``(n_batch, n_y)``, or the iterates ``(T + 1, n_batch, n_y)``
            (``y_0`` first) when ``trajectory``.
        """
        _check_x(x, self.energy.n_x)
        n_iter = self.n_iter if n_iter is None else _check_iters(n_iter)
        create_graph = torch.is_grad_enabled()
        y = torch.full((x.shape[0], self.energy.n_y), self.y0, dtype=x.dtype, device=x.device)
        ys = [y]
        with torch.enable_grad():
            for _ in range(n_iter):
                if not y.requires_grad:
                    y = y.detach().requires_grad_(True)
                # each E_i depends on y_i only, so the gradient of the sum is the per-point gradient
                (g,) = torch.autograd.grad(self.energy(x, y).sum(), y, create_graph=create_graph)
                y = y - self.inner_lr * g
                if not create_graph:
                    y = y.detach()
                ys.append(y)
        return torch.stack(ys) if trajectory else y


class DCEMPredictor(DCEMArgmin):
    """``y_hat`` = the final mean of DCEM on ``E_theta(x, .)``: the library's argmin layer
    (:class:`dcem.layers.DCEMArgmin`) with the regression experiment's defaults.

    Args:
        energy: the energy network.
        n_iter: DCEM iterations (paper: 10).
        n_sample: samples per iteration (paper: 100).
        n_elite: soft elites (paper: 10).
        temp: LML temperature tau (paper: 1).
        init_sigma: initial standard deviation; must cover the range of ``y`` (reference: 7).
        y0: initial mean (paper: 0).
        normalize: standardise the energies of each point before the soft top-k.
        iter_eps: per-point early stop (``None`` runs every iteration).
    """

    def __init__(
        self,
        energy: EnergyNet,
        n_iter: int = 10,
        n_sample: int = 100,
        n_elite: int = 10,
        temp: float = 1.0,
        init_sigma: float = 7.0,
        y0: float = 0.0,
        normalize: bool = True,
        iter_eps: float | None = 1e-4,
    ) -> None:
        if isinstance(n_sample, bool) or not isinstance(n_sample, Integral) or n_sample < 2:
            raise ValueError(f"n_sample must be an integer >= 2, got {n_sample!r}")
        super().__init__(
            energy, energy.n_y, n_sample=n_sample, n_elite=n_elite, n_iter=_check_iters(n_iter), temp=temp,
            normalize=normalize, iter_eps=iter_eps, init_mu=y0, init_sigma=init_sigma,
        )  # fmt: skip
        self.n_iter, self.n_sample, self.n_elite = (
            self.config.n_iter,
            self.config.n_sample,
            self.config.n_elite,
        )
        self.temp, self.init_sigma, self.y0 = self.config.temp, float(init_sigma), float(y0)

    def forward(  # type: ignore[override]
        self, x: Tensor, n_iter: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Predict for ``x`` of shape ``(n_batch, n_x)``; returns ``(n_batch, n_y)``.

        Args:
            x: inputs, shape ``(n_batch, n_x)``.
            n_iter: number of DCEM iterations (default: the training value ``self.n_iter``).
            generator: random generator of the Gaussian samples (for reproducible predictions).
        """
        _check_x(x, self.energy.n_x)
        n_iter = None if n_iter is None else _check_iters(n_iter)
        return super().forward(x, n_iter=n_iter, generator=generator)


def build_predictor(method: str, energy: EnergyNet, cfg: dict) -> nn.Module:
    """Construct ``UnrolledGD`` (``method="gd"``) or ``DCEMPredictor`` (``"dcem"``) from a
    mapping of its keyword arguments."""
    if method == "gd":
        return UnrolledGD(energy, **cfg)
    if method == "dcem":
        return DCEMPredictor(energy, **cfg)
    raise ValueError(f"method must be 'gd' or 'dcem', got {method!r}")

"""The demo's objective (three Gaussian bumps on a tilt), its sizes and its result record."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BumpObjective", "DemoConfig", "DemoResult"]

# default objective: a deep bump lower right (the global minimum), two shallower ones, a gentle tilt
_CENTERS = ((1.4, -1.2), (-1.3, -1.0), (-0.3, 1.6))
_HEIGHTS = (1.5, 0.7, 0.8)
_WIDTHS = (0.7, 0.8, 0.6)
_TILT = (0.08, 0.05)


class BumpObjective(nn.Module):
    """2-D objective of ``m`` Gaussian bumps on a linear tilt, with learnable parameters.

    ``f(x) = tilt . x - sum_j heights_j * exp(-||x - centers_j||^2 / (2 widths_j^2))``.

    Args:
        centers: bump centres, shape ``(m, 2)``.
        heights: bump depths, shape ``(m,)`` (positive values make minima).
        widths: bump standard deviations, shape ``(m,)``, all > 0 (stored as their logarithm).
        tilt: slope of the linear term, shape ``(2,)``.
        dtype: dtype of the parameters (default: the default dtype).

    ``forward(x)`` maps points of shape ``(..., 2)`` to values of shape ``(...)``.
    """

    def __init__(
        self,
        centers: Sequence[Sequence[float]] | Tensor = _CENTERS,
        heights: Sequence[float] | Tensor = _HEIGHTS,
        widths: Sequence[float] | Tensor = _WIDTHS,
        tilt: Sequence[float] | Tensor = _TILT,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        c = torch.as_tensor(centers, dtype=dtype).clone()
        h = torch.as_tensor(heights, dtype=dtype).clone()
        w = torch.as_tensor(widths, dtype=dtype).clone()
        t = torch.as_tensor(tilt, dtype=dtype).clone()
        if c.dim() != 2 or c.shape[-1] != 2 or c.shape[0] < 1:
            raise ValueError(f"centers must have shape (m, 2) with m >= 1, got {tuple(c.shape)}")
        m = c.shape[0]
        if h.shape != (m,) or w.shape != (m,):
            raise ValueError(
                f"heights and widths must have shape (m,) = ({m},), got {tuple(h.shape)} and {tuple(w.shape)}"
            )
        if not bool((w > 0).all()):
            raise ValueError(f"widths must be > 0, got {w.tolist()}")
        if t.shape != (2,):
            raise ValueError(f"tilt must have shape (2,), got {tuple(t.shape)}")
        self.centers = nn.Parameter(c)
        self.heights = nn.Parameter(h)
        self.log_widths = nn.Parameter(w.log())
        self.tilt = nn.Parameter(t)

    @property
    def widths(self) -> Tensor:
        """Bump standard deviations, shape ``(m,)``."""
        return self.log_widths.exp()

    def forward(self, x: Tensor) -> Tensor:
        """Values of the objective at ``x`` of shape ``(..., 2)``; returns shape ``(...)``."""
        if x.shape[-1:] != (2,):
            raise ValueError(f"x must have shape (..., 2), got {tuple(x.shape)}")
        d2 = (x.unsqueeze(-2) - self.centers).pow(2).sum(-1)  # (..., m)
        bumps = self.heights * torch.exp(-0.5 * d2 / self.widths.pow(2))
        return (x * self.tilt).sum(-1) - bumps.sum(-1)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo (the defaults are the full demo; :meth:`quick` gives tiny ones)."""

    steps: int = 150  # Adam steps of the DCEM training
    lr: float = 0.03
    target: tuple[float, float] = (-1.5, 1.0)
    bound: float = 3.0  # domain [-bound, bound]^2
    init_mu: tuple[float, float] = (0.0, 0.0)
    init_sigma: float = 1.5
    cem_samples: int = 60
    cem_elite: int = 10
    cem_iters: int = 6
    dcem_samples: int = 100
    dcem_elite: int = 10
    dcem_iters: int = 10
    dcem_batch: int = 16  # independent DCEM runs averaged in the loss
    temp: float = 1.0
    grid: int = 140  # contour resolution
    gif_frames: int = 24
    dpi: int = 110

    @classmethod
    def quick(cls) -> DemoConfig:
        """Tiny sizes for tests: a few seconds on a laptop CPU."""
        return cls(
            steps=10,
            lr=0.05,
            cem_samples=100,
            cem_elite=10,
            cem_iters=4,
            dcem_samples=30,
            dcem_elite=5,
            dcem_iters=5,
            dcem_batch=4,
            grid=40,
            gif_frames=3,
            dpi=50,
        )


@dataclass
class DemoResult:
    """What :func:`run` produced. Points are ``(x, y)`` tuples; distances are to ``target``."""

    out_dir: Path
    files: list[Path]
    losses: list[float]
    target: tuple[float, float]
    initial_minimiser: tuple[float, float]  # DCEM output (fixed evaluation noise) before training
    final_minimiser: tuple[float, float]  # the same after training
    initial_grid_minimiser: tuple[float, float]  # arg min of f on the plotting grid
    final_grid_minimiser: tuple[float, float]
    cem_solution: tuple[float, float]  # result of the vanilla CEM run of part 1
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def initial_distance(self) -> float:
        return math.dist(self.initial_minimiser, self.target)

    @property
    def final_distance(self) -> float:
        return math.dist(self.final_minimiser, self.target)

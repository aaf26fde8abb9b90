"""Decoder from a latent action space to action sequences, ``f_dec: Z -> U^H`` (eq. 8)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ActionDecoder"]

#: decoder initialisations (see :class:`ActionDecoder`)
INITS = ("default", "reference")
_ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh, "softplus": nn.Softplus}


class ActionDecoder(nn.Module):
    """MLP decoder ``z -> u_{1:H}`` whose output is squashed into the control bounds.

    Args:
        n_latent: latent dimension ``dim(Z)``.
        horizon: planning horizon ``H``.
        n_ctrl: control dimension ``dim(U)``.
        u_lower, u_upper: control bounds, floats or tensors of shape ``(n_ctrl,)``
            (``u_lower < u_upper``).
        hidden_sizes: widths of the hidden layers.
        activation: one of ``"relu"``, ``"elu"``, ``"tanh"``, ``"softplus"``.
        init: ``"default"`` (PyTorch's ``nn.Linear`` initialisation) or ``"reference"``, the
            initialisation of the published cartpole experiment (App. C): every weight drawn from
            ``N(0, s^2)`` with ``s = 2 / sqrt(fan_in + fan_out)``, biases zero. Its untrained plans
            vary far more across the latent box than with the default, whose sigmoid-squashed
            output is nearly constant; it is the "random decoder" baseline of App. C.
        generator: ``torch.Generator`` for the ``"reference"`` draws (default: the global RNG).

    Shape:
        - Input: ``(..., n_latent)``.
        - Output: ``(..., horizon, n_ctrl)`` with every entry inside ``[u_lower, u_upper]``
          (a sigmoid maps the last layer into the box).

    Example:
        >>> import torch
        >>> dec = ActionDecoder(2, horizon=20, n_ctrl=1, u_lower=-1.0, u_upper=1.0)
        >>> dec(torch.zeros(5, 2)).shape
        torch.Size([5, 20, 1])
    """

    # registered buffers
    u_lower: Tensor
    u_upper: Tensor

    def __init__(
        self,
        n_latent: int,
        horizon: int,
        n_ctrl: int,
        u_lower: float | Tensor,
        u_upper: float | Tensor,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "relu",
        init: str = "default",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("n_latent", n_latent), ("horizon", horizon), ("n_ctrl", n_ctrl)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
        lower = torch.as_tensor(u_lower, dtype=torch.get_default_dtype()).expand(n_ctrl).clone()
        upper = torch.as_tensor(u_upper, dtype=torch.get_default_dtype()).expand(n_ctrl).clone()
        if not bool((lower < upper).all()):
            raise ValueError("u_lower must be < u_upper in every control dimension")
        self.n_latent, self.horizon, self.n_ctrl = n_latent, horizon, n_ctrl
        self.register_buffer("u_lower", lower)
        self.register_buffer("u_upper", upper)
        layers: list[nn.Module] = []
        width = n_latent
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, horizon * n_ctrl))
        self.net = nn.Sequential(*layers)
        if init == "reference":
            self.reference_init_(generator)

    @torch.no_grad()
    def reference_init_(self, generator: torch.Generator | None = None) -> ActionDecoder:
        """Re-draw every layer as in App. C (``N(0, (2 / sqrt(fan_in + fan_out))^2)`` weights, zero
        biases), in place; returns ``self``."""
        for m in self.net:
            if isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape
                std = 2.0 / (fan_in + fan_out) ** 0.5
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator, dtype=m.weight.dtype) * std)
                m.bias.zero_()
        return self

    def forward(self, z: Tensor) -> Tensor:
        if z.shape[-1] != self.n_latent:
            raise ValueError(f"z must have last dimension n_latent = {self.n_latent}, got {tuple(z.shape)}")
        raw = self.net(z).unflatten(-1, (self.horizon, self.n_ctrl))
        return self.u_lower + (self.u_upper - self.u_lower) * torch.sigmoid(raw)

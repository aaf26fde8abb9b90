"""Gaussian sampling noise for plans, white or coloured along time (iCEM, Pinneri et al. 2020).

Coloured noise with exponent ``beta`` has a power spectral density proportional to
``1 / f**beta`` along the time axis: ``beta = 0`` is white, ``beta = 2`` is Brownian-like,
giving smoother action sequences that explore low frequencies. It is drawn by scaling the
Fourier coefficients of white Gaussian noise by ``f**(-beta / 2)`` and transforming back
with a real inverse FFT; the result is rescaled to unit variance at every time step (the
variance of the transform is known in closed form), so ``sigma`` keeps its meaning.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from dcem._checks import check_real

__all__ = ["colored_noise"]


def _spectrum_scale(H: int, beta: float, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, float]:
    """Amplitudes ``(H // 2 + 1,)`` of the frequencies ``k / H`` and the std of the transform."""
    f = torch.arange(H // 2 + 1, dtype=dtype, device=device) / H
    f[0] = 1.0 / H  # the lowest resolvable frequency stands in for the constant term
    s = f.pow(-beta / 2.0)
    # x_t = (1/H) [s_0 a_0 + 2 sum_mid s_k (a_k cos - b_k sin) + s_nyq a_nyq (-1)^t]
    w = torch.full_like(s, 4.0)
    w[0] = 1.0
    if H % 2 == 0:
        w[-1] = 1.0
    std = math.sqrt(float((w * s * s).sum())) / H
    return s, std


@functools.lru_cache(maxsize=64)
def _spectrum(H: int, beta: float, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, float]:
    """:func:`_spectrum_scale`, computed once per arguments (an ordinary tensor, only ever read)."""
    with torch.inference_mode(False):
        return _spectrum_scale(H, beta, dtype, device)


def colored_noise(
    shape: tuple[int, ...],
    beta: float,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Standard-normal noise of ``shape = (..., H, A)``, coloured along the time axis ``H``.

    Args:
        shape: output shape; the second-to-last dimension is time.
        beta: spectral exponent ``>= 0`` (0: independent ``N(0, 1)`` entries).
        generator: ``torch.Generator`` for reproducibility.
        dtype, device: of the result (default: the default dtype, CPU).

    Returns:
        a tensor of ``shape`` with zero mean and unit variance per entry, correlated along
        time for ``beta > 0`` (independent across the other dimensions).
    """
    beta = float(check_real("noise_beta", beta, 0.0))
    if len(shape) < 2:
        raise ValueError(f"shape must be (..., H, A) with a time dimension, got {tuple(shape)}")
    dtype = dtype or torch.get_default_dtype()
    H = shape[-2]
    if beta == 0.0 or H == 1:
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    K = H // 2 + 1
    freq_shape = (*shape[:-2], shape[-1], K)
    re = torch.randn(freq_shape, generator=generator, dtype=dtype, device=device)
    im = torch.randn(freq_shape, generator=generator, dtype=dtype, device=device)
    # the constant (and Nyquist) terms are real
    im[..., :: K - 1 if H % 2 == 0 else K].zero_()  # entries 0 and K - 1 (H even) or 0 (H odd)
    s, std = _spectrum(H, beta, dtype, re.device)
    x = torch.fft.irfft(torch.complex(re.mul_(s), im.mul_(s)), n=H, dim=-1)
    return x.div_(std).transpose(-1, -2)

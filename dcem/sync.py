"""The sync policy: when the solvers may read tensor values on the host.

Every solver in dcem runs one of two paths, and both are exercised by the CPU test suite:

``"host"``
    The solver reads values on the host where that helps: :func:`dcem.lml` stops its Newton
    iterations as soon as every row has converged (each row freezes on its own criterion),
    :func:`dcem.dcem` stops once every problem has converged and raises ``ValueError`` when every
    sample of some problem has a NaN or ``+inf`` cost. On an accelerator each such read is a
    device synchronisation.
``"free"``
    Sync-free: fixed iteration counts (rows that have converged are frozen, so extra
    iterations change nothing), ``torch.topk`` elites, no early exit, no host reads. This is
    the path that ``torch.compile`` and CUDA graphs can capture. Where values can still be
    read for free (CPU tensors outside ``torch.compile``) it raises the same ``ValueError`` as
    ``"host"`` when every sample of some problem has an invalid cost; only where they cannot
    (accelerators, ``torch.compile``) does such a problem keep its sampling distribution for
    that iteration and get flagged in the solver state (``CEMState.failed``) instead.
``"auto"`` (default)
    ``"host"`` for CPU tensors, ``"free"`` on accelerators; always ``"free"`` inside
    ``torch.compile`` and ``torch.func`` transforms, where host reads are impossible.

Choose per call with the ``sync=`` argument of :func:`dcem.lml` / :func:`dcem.dcem`, or for a
block of code with the :func:`sync_mode` context manager, which sets what ``"auto"`` means::

    with dcem.sync_mode("free"):      # run the accelerator path on CPU
        y = dcem.lml(x, k=10)

Validation of argument *values* given as tensors (``init_sigma >= 0``, ``lb < ub``, ``tau > 0``)
is separate: it happens where reading them is free (CPU tensors outside ``torch.compile``),
whatever the path.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import Tensor

from dcem._checks import check_choice

__all__ = ["SYNC_MODES", "sync_mode", "resolve_sync", "host_reads_free"]

SYNC_MODES = ("auto", "host", "free")

_DEFAULT: contextvars.ContextVar[str] = contextvars.ContextVar("dcem_sync_default", default="auto")


def check_sync(sync: object) -> str:
    """Return ``sync`` if it names a policy, else raise ``ValueError`` naming the options."""
    return check_choice("sync", sync, SYNC_MODES)


@contextlib.contextmanager
def sync_mode(mode: str) -> Iterator[None]:
    """Within the block, ``sync="auto"`` (the default everywhere) means ``mode``.

    Args:
        mode: ``"auto"``, ``"host"`` or ``"free"`` (see the module docstring).

    Example:
        >>> import torch, dcem
        >>> with dcem.sync_mode("free"):
        ...     y = dcem.lml(torch.randn(3, 10), k=2)
        >>> bool(torch.allclose(y.sum(-1), torch.full((3,), 2.0)))
        True
    """
    token = _DEFAULT.set(check_sync(mode))
    try:
        yield
    finally:
        _DEFAULT.reset(token)


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def resolve_sync(sync: str, t: Tensor) -> bool:
    """Whether the host-checked path runs for a solve on ``t``'s device (``True``) or the sync-free one.

    ``sync`` is ``"auto"``, ``"host"`` or ``"free"``; ``"auto"`` first takes the value set by
    :func:`sync_mode`. Inside ``torch.compile`` and ``torch.func`` transforms the result is
    always ``False``.
    """
    if _tracing():
        return False
    if sync == "auto":
        sync = _DEFAULT.get()
    if sync == "auto":
        return t.device.type == "cpu"
    return sync == "host"


def host_reads_free(t: Tensor) -> bool:
    """Whether reading values of ``t`` costs nothing: a CPU tensor outside tracing.

    Used for the validation of tensor-valued arguments, independently of the sync policy.
    """
    return t.device.type == "cpu" and not _tracing()

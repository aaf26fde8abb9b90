"""Atomic checkpoints that load without running code (see :mod:`dcem._io`)."""

from __future__ import annotations

import os
from typing import Any

import torch

from dcem._io import CheckpointError, safe_load, save

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "dcem-mbrl-v1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (plus a format tag) to ``path`` atomically; a crash never leaves it half-written.

    ``state`` may hold tensors, numbers, strings, NumPy arrays and plain containers of them.
    """
    save({"format": FORMAT, **state}, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without unpickling code;
    :class:`CheckpointError` (naming the file) if it is not one or holds other objects."""
    state = safe_load(path, map_location=map_location, way_out="delete it or write a new one")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a {FORMAT} checkpoint")
    return state

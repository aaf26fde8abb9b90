"""Atomic files, checkpoints and cached results of the experiments, and the one import of their
plumbing: run folders (:mod:`.rundir`), CSV logs (:mod:`.csvlog`) and confidence intervals
(:mod:`.stats`) are re-exported here."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from dcem import _io
from dcem._io import CheckpointError
from dcem.experiments.common.csvlog import CsvLog
from dcem.experiments.common.rundir import RunError, _differences, commit_pending, ensure_dir, open_run
from dcem.experiments.common.stats import bootstrap_ratio, mean_ci95, require_scipy, t_quantile

__all__ = [
    "CheckpointError",
    "CsvLog",
    "RunError",
    "atomic_open",
    "atomic_write_text",
    "bootstrap_ratio",
    "cached_json",
    "describe_differences",
    "ensure_dir",
    "last_progress",
    "load_torch",
    "note_progress",
    "mean_ci95",
    "open_run",
    "require_scipy",
    "save_torch",
    "set_threads",
    "setup_logging",
    "t_quantile",
]



def setup_logging() -> None:
    """INFO lines of the ``dcem`` loggers on stderr; the root logger (and so every dependency's
    INFO chatter) is left alone."""
    from dcem.experiments.common.distributed import is_main

    lg = logging.getLogger("dcem")
    if not lg.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        lg.addHandler(h)
        lg.setLevel(logging.INFO if is_main() else logging.WARNING)  # torchrun: rank 0 reports
        lg.propagate = False


def set_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)`` unless ``n`` is ``None`` (the config schema checks ``n >= 1``)."""
    if n is not None:
        import torch

        torch.set_num_threads(int(n))


# --------------------------------------------------------------------------- atomic files


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kw: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success flush, fsync and rename it onto ``path``
    (:func:`dcem._io.atomic_open`: the umask is honoured).

    A crash (or an exception in the block) never leaves ``path`` half-written. Under
    ``torchrun`` only rank 0 writes: the other processes write into ``os.devnull``. The first
    write into a run folder commits its pending ``config.yaml`` (see :func:`open_run`).
    """
    from dcem.experiments.common.distributed import is_main

    if not is_main():
        with open(os.devnull, mode, **kw) as fh:
            yield fh
        return
    commit_pending(path)
    with _io.atomic_open(path, mode, **kw) as fh:
        yield fh


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (temporary file, fsync, rename); NumPy values are stored as tensors
    (:func:`dcem._io.save`) so that :func:`load_torch` reads them back without unpickling code."""
    from dcem.experiments.common.distributed import is_main

    if is_main():
        commit_pending(path)
        _io.save(obj, path)


def load_torch(path: str | os.PathLike, map_location: Any = "cpu", fmt: str | None = None, *,
               weights_only: bool = True) -> Any:  # fmt: skip
    """``torch.load(..., weights_only=True)`` (:func:`dcem._io.safe_load`) with a one-line
    :class:`CheckpointError` for a missing, truncated or foreign file, and for a file holding
    anything but tensors, numbers, strings and plain containers (refused: nothing in it runs).

    ``fmt``: the value the ``"format"`` entry of a checkpoint dict must have. ``weights_only``
    exists for old call sites and must stay ``True``.
    """
    if weights_only is not True:
        raise ValueError("load_torch never unpickles arbitrary objects (weights_only must be True)")
    path = Path(path)
    obj = _io.safe_load(path, map_location=map_location)
    if fmt is not None and (not isinstance(obj, dict) or obj.get("format") != fmt):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a {fmt} checkpoint; "
                              "delete it or rerun with resume=false to start the run over")  # fmt: skip
    return obj


def incompatible(path: str | os.PathLike, why: str) -> CheckpointError:
    """The error for a checkpoint that does not fit the current configuration."""
    return CheckpointError(f"checkpoint {str(path)!r} does not fit this configuration ({why}); "
                           "rerun with resume=false to start over, or use another out_dir")  # fmt: skip


def describe_differences(saved: Any, now: Any) -> str:
    """``"key: A there, B now; ..."`` for the (first three) keys in which two nested dicts differ,
    e.g. a checkpoint's recorded settings and this run's (for :func:`incompatible`)."""
    if not isinstance(saved, Mapping):
        return f"it holds a {type(saved).__name__}, not the settings of a run"
    return _differences(saved, now, ()) or "no key differs"


# --------------------------------------------------------------------------- progress (for SIGINT)

_PROGRESS: dict[str, Any] = {}


def note_progress(n: int, what: str = "update") -> None:
    """Record that ``what`` number ``n`` is done (the command line reports it on Ctrl-C)."""
    _PROGRESS.update(n=int(n), what=what)


def last_progress() -> tuple[str, int] | None:
    """``(what, n)`` of the last :func:`note_progress`, ``None`` before the first."""
    return (_PROGRESS["what"], _PROGRESS["n"]) if _PROGRESS else None


def cached_json(
    path: str | os.PathLike | None, key: Mapping[str, Any], compute: Any, field: str = "value"
) -> Any:
    """``compute()`` memoised in the JSON file ``path`` as ``{"key": key, field: value}``: the stored
    value is returned when the file holds the same ``key`` (compared after a JSON round trip),
    otherwise ``compute()`` runs and the file is (atomically) rewritten. ``path=None``: no cache."""
    if path is None:
        return compute()
    key = json.loads(json.dumps(key, sort_keys=True))
    p = Path(path)
    if p.exists():
        data = _io.read_json(p, "cache")
        if isinstance(data, dict) and data.get("key") == key and field in data:
            return data[field]
    value = compute()
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps({"key": key, field: value}))
    return value

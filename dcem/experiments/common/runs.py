"""Run folders, atomic files, CSV logs, checkpoints and confidence intervals for the experiments."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from dcem import _io
from dcem._io import CheckpointError
from dcem.experiments.common.csvlog import CsvLog

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

log = logging.getLogger(__name__)


class RunError(ValueError):
    """A run folder that cannot be used with this configuration."""


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


# --------------------------------------------------------------------------- run folders


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + str(k)] = v
    return out


def open_run(
    name: str,
    cfg: Any,
    free_keys: Sequence[str],
    resume: bool = True,
    launch: Mapping[str, Any] | None = None,
    legacy: Mapping[str, Any] | None = None,
) -> Path:
    """The run folder of ``cfg`` (``cfg.out_dir`` or ``runs/NAME/<timestamp>``), with its
    ``config.yaml`` and ``provenance.json``.

    An existing folder is resumed only if its ``config.yaml`` matches ``cfg`` on every key but
    ``free_keys``; otherwise :class:`RunError` (naming the differing keys). With ``resume=False`` a
    previous run in the folder is moved aside to ``<out_dir>.old-<timestamp>`` and a fresh one
    starts. Temporary files left by a killed process are removed. ``launch`` (e.g. the world size
    and per-process batches, :func:`~dcem.experiments.common.distributed.launch_info`) is recorded
    as the ``launch`` section of ``config.yaml``; it may differ when a run is resumed (the section
    is then updated). ``provenance.json`` (:mod:`.provenance`) records, per session, the code
    commit, whether the tree was dirty, the library versions and the command line.

    ``config.yaml`` is written at once only into a new (or empty) folder. Into a folder that already
    holds files, it (and the session's provenance) is written with the first file the run writes
    there, i.e. after the experiment's own checks of its checkpoints passed: a run refused by a
    checkpoint never leaves a ``config.yaml`` describing settings its results were not made with.

    Under ``torchrun`` rank 0 opens the folder and the other processes get its path (or its
    error). ``legacy`` maps keys added to a schema after run folders existed to the value that
    reproduces what such an older run did (a key missing from an old ``config.yaml`` is compared
    as that value, e.g. ``{"train.collect_workers": 1}``).
    """
    from dcem.experiments.common import distributed

    launch = None if launch is None else {"experiment": name, **launch}
    if distributed.world_size() == 1:
        return _open_run(name, cfg, free_keys, resume, launch, legacy or {})
    res: tuple[str, str] | None = None
    if distributed.is_main():
        try:
            res = ("ok", str(_open_run(name, cfg, free_keys, resume, launch, legacy or {})))
        except RunError as err:
            res = ("error", str(err))
    kind, value = distributed.broadcast_object(res)
    if kind == "error":
        raise RunError(value)
    return Path(value)


def ensure_dir(path: str | os.PathLike, key: str = "out_dir") -> Path:
    """Create the folder ``path`` (and its parents); a path that is a file, lies under a file or
    cannot be written is a one-line :class:`RunError` naming ``key``."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RunError(f"{key}={p}: is a file, not a folder; choose another {key}")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        why = "a parent is a file, not a folder" if isinstance(err, (FileExistsError, NotADirectoryError)) \
            else (err.strerror or type(err).__name__)  # fmt: skip
        raise RunError(f"{key}={p}: cannot create the folder ({why}); choose another {key}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise RunError(f"{key}={p}: the folder is not writable; choose another {key}")
    return p


def _config_text(cfg: Any, launch: Mapping[str, Any] | None) -> str:
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(cfg)
    if launch is not None:
        text += OmegaConf.to_yaml({"launch": dict(launch)})
    return text


#: run folder -> the files its first write commits (``config.yaml``, a provenance session)
_PENDING: dict[Path, list[tuple[str, Any]]] = {}


def commit_pending(path: str | os.PathLike | None = None) -> None:
    """Write the pending ``config.yaml`` / provenance of the run folder holding ``path`` (of every
    pending folder when ``path`` is ``None``); see :func:`open_run`."""
    from dcem.experiments.common import provenance

    target = None if path is None else Path(path).absolute()
    for out in list(_PENDING):
        if target is not None and out != target and out not in target.parents:
            continue
        for kind, value in _PENDING.pop(out):
            if kind == "config":
                _io.atomic_write_text(out / "config.yaml", value)
            else:
                provenance.record(out, value)


def _open_run(
    name: str,
    cfg: Any,
    free_keys: Sequence[str],
    resume: bool,
    launch: Mapping[str, Any] | None,
    legacy: Mapping[str, Any],
) -> Path:
    from omegaconf import OmegaConf

    from dcem.experiments.common import provenance

    out = Path(cfg.out_dir) if cfg.out_dir else Path("runs") / name / _stamp()
    if out.exists() and not out.is_dir():
        raise RunError(f"out_dir={out}: is a file, not a folder; choose another out_dir")
    path = out / "config.yaml"
    now = OmegaConf.to_container(cfg, resolve=True)
    text = None  # the config.yaml to write (None: the folder's is right)
    if path.exists() and not resume:
        ensure_dir(out.parent, "out_dir")
        aside = out.with_name(f"{out.name}.old-{_stamp()}")
        out.rename(aside)
        log.info("resume=false: moved the previous run in %s to %s", out, aside)
    if path.exists():
        try:
            old = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except Exception as err:  # noqa: BLE001
            raise RunError(f"{path} is unreadable ({type(err).__name__}); "
                           "rerun with resume=false to start over") from None  # fmt: skip
        was = old.pop("launch", None)
        diffs = _differences(old, now, free_keys, legacy)
        if diffs:
            raise RunError(f"out_dir={out} holds a run with another configuration ({diffs}); "
                           "repeat its settings to resume it, choose another out_dir, or pass "
                           "resume=false to start over (the old run is moved aside)")  # fmt: skip
        if launch is not None and was != dict(launch):
            log.info("resuming %s with launch %s (was %s)", out, dict(launch), was)
            text = _config_text(cfg, launch)
    else:
        if not resume and out.is_dir() and any(out.iterdir()):
            raise RunError(f"resume=false: out_dir={out} is not empty but holds no run (no config.yaml); "
                           "empty it or choose another out_dir")  # fmt: skip
        text = _config_text(cfg, launch)
    ensure_dir(out, "out_dir")
    for p in _io.remove_stale_tmp(out):
        log.info("removed %s (a temporary file left by an interrupted write)", p)
    fresh = not any(out.iterdir())
    todo = ([("config", text)] if text is not None else []) + [("session", provenance.session(now, launch))]
    _PENDING[out.absolute()] = todo
    if fresh:
        commit_pending(out)
    return out


def _differences(
    old: Mapping[str, Any],
    now: Mapping[str, Any],
    free_keys: Sequence[str],
    legacy: Mapping[str, Any] | None = None,
) -> str:
    """``"key: OLD there, NEW now; ..."`` for the first three differing keys ("" if none); a free key
    ending in ``.`` frees every key under that section; a key of ``legacy`` missing from ``old``
    reads as its legacy value."""

    def free(k: str) -> bool:
        return k in free_keys or any(f.endswith(".") and k.startswith(f) for f in free_keys)

    a = {k: v for k, v in {**(legacy or {}), **_flat(old)}.items() if not free(k)}
    b = {k: v for k, v in _flat(now).items() if not free(k)}
    keys = [k for k in sorted(a.keys() | b.keys()) if a.get(k, "<unset>") != b.get(k, "<unset>")]
    shown = "; ".join(f"{k}: {_short(a.get(k, '<unset>'))} there, {_short(b.get(k, '<unset>'))} now"
                      for k in keys[:3])  # fmt: skip
    return shown + (f" (and {len(keys) - 3} more)" if len(keys) > 3 else "")


def _short(v: Any, n: int = 40) -> str:
    text = str(v)
    return text if len(text) <= n else text[: n - 3] + "..."


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


# --------------------------------------------------------------------------- statistics


def require_scipy(what: str) -> None:
    """Fail before any work when SciPy (the Student-t quantiles) is missing."""
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        raise RunError(f"{what} needs SciPy for its confidence intervals: pip install scipy")


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile ``t_{(1 + level) / 2, df}`` (SciPy); ``nan`` for ``df < 1``."""
    if df < 1:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def mean_ci95(values: Sequence[float] | Any) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% Student-t interval (``nan`` half-width for one
    value, ``(nan, nan)`` for none)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan
    return float(v.mean()), t_quantile(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)


def bootstrap_ratio(
    num: Sequence[Any], den: Sequence[Any], gen: Any, n_boot: int = 2000
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the pooled ratio of means ``sum(num) / sum(den)``.

    ``num`` and ``den`` are lists of paired 1-D arrays (one per group, e.g. per training seed);
    each group's pairs are resampled with replacement ``n_boot`` times from the NumPy generator
    ``gen`` (``numpy.random.Generator``). Returns the 2.5 and 97.5 % percentiles.
    """
    import numpy as np

    idx = [gen.integers(0, len(a), size=(n_boot, len(a))) for a in num]
    sn = sum(np.asarray(a)[i].sum(1) for a, i in zip(num, idx))
    sd = sum(np.asarray(b)[i].sum(1) for b, i in zip(den, idx))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.nanpercentile(sn / sd, [2.5, 97.5])
    return float(q[0]), float(q[1])


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

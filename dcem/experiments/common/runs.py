"""Run folders, atomic files, CSV logs, checkpoints and confidence intervals for the experiments."""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CheckpointError",
    "CsvLog",
    "RunError",
    "atomic_open",
    "atomic_write_text",
    "bootstrap_ratio",
    "cached_json",
    "load_torch",
    "mean_ci95",
    "open_run",
    "require_scipy",
    "save_torch",
    "set_threads",
    "setup_logging",
    "t_quantile",
]

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """An unreadable or incompatible checkpoint; the message names the file and the way out."""


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
    """Open a temporary file next to ``path``; on success flush, fsync and rename it onto ``path``.

    A crash (or an exception in the block) never leaves ``path`` half-written. Under
    ``torchrun`` only rank 0 writes: the other processes write into ``os.devnull``.
    """
    from dcem.experiments.common.distributed import is_main

    if not is_main():
        with open(os.devnull, mode, **kw) as fh:
            yield fh
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (temporary file, fsync, rename)."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def load_torch(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = False,
               fmt: str | None = None) -> Any:  # fmt: skip
    """``torch.load`` with a short :class:`CheckpointError` for a missing, truncated or foreign file.

    ``fmt``: the value the ``"format"`` entry of a checkpoint dict must have.
    """
    import torch

    path = Path(path)
    way_out = "delete it or rerun with resume=false to start the run over"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means unreadable
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable (truncated or not a checkpoint: "
                              f"{reason}); {way_out}") from None  # fmt: skip
    if fmt is not None and (not isinstance(obj, dict) or obj.get("format") != fmt):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a {fmt} checkpoint; {way_out}")
    return obj


def incompatible(path: str | os.PathLike, why: str) -> CheckpointError:
    """The error for a checkpoint that does not fit the current configuration."""
    return CheckpointError(f"checkpoint {str(path)!r} does not fit this configuration ({why}); "
                           "rerun with resume=false to start over, or use another out_dir")  # fmt: skip


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
    ``config.yaml`` written once.

    An existing folder is resumed only if its ``config.yaml`` matches ``cfg`` on every key but
    ``free_keys``; otherwise :class:`RunError`. With ``resume=False`` a previous run in the folder
    is moved aside to ``<out_dir>.old-<timestamp>`` and a fresh one starts. ``launch`` (e.g. the
    world size and per-process batches, :func:`~dcem.experiments.common.distributed.launch_info`)
    is recorded as the ``launch`` section of ``config.yaml``; it may differ when a run is resumed
    (the section is then updated). Under ``torchrun`` rank 0 opens the folder and the other
    processes get its path (or its error). ``legacy`` maps keys added to a schema after run folders
    existed to the value that reproduces what such an older run did (a key missing from an old
    ``config.yaml`` is compared as that value, e.g. ``{"train.collect_workers": 1}``).
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


def _config_text(cfg: Any, launch: Mapping[str, Any] | None) -> str:
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(cfg)
    if launch is not None:
        text += OmegaConf.to_yaml({"launch": dict(launch)})
    return text


def _open_run(
    name: str,
    cfg: Any,
    free_keys: Sequence[str],
    resume: bool,
    launch: Mapping[str, Any] | None,
    legacy: Mapping[str, Any],
) -> Path:
    from omegaconf import OmegaConf

    out = Path(cfg.out_dir) if cfg.out_dir else Path("runs") / name / _stamp()
    path = out / "config.yaml"
    now = OmegaConf.to_container(cfg, resolve=True)
    if path.exists():
        if not resume:
            aside = out.with_name(f"{out.name}.old-{_stamp()}")
            out.rename(aside)
            log.info("resume=false: moved the previous run in %s to %s", out, aside)
        else:
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
                atomic_write_text(path, _config_text(cfg, launch))
            return out
    elif not resume and out.is_dir() and any(out.iterdir()):
        raise RunError(f"resume=false: out_dir={out} is not empty but holds no run (no config.yaml); "
                       "empty it or choose another out_dir")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, _config_text(cfg, launch))
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


# --------------------------------------------------------------------------- CSV logs


def _num(v: str) -> Any:
    if v == "":
        return None
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


class CsvLog:
    """A CSV log with fixed columns, appended row by row and truncated on resume."""

    def __init__(self, path: str | os.PathLike, fields: Sequence[str]) -> None:
        self.path = Path(path)
        self.fields = list(fields)

    def rows(self) -> list[dict[str, Any]]:
        """The rows, numbers parsed (ints stay ints, empty cells are ``None``)."""
        if not self.path.exists():
            return []
        with open(self.path, newline="") as fh:
            return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]

    def rewrite(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the file by ``rows`` atomically (e.g. the rows up to a checkpoint)."""
        with atomic_open(self.path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in self.fields} for r in rows)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append ``rows`` (rank 0 only under ``torchrun``)."""
        from dcem.experiments.common.distributed import is_main

        if not is_main():
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in self.fields} for r in rows)
            fh.flush()


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
        data = json.loads(p.read_text())
        if data.get("key") == key and field in data:
            return data[field]
    value = compute()
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps({"key": key, field: value}))
    return value

"""Run folders: open a new one or resume a matching one (``config.yaml``), and write its pending
``config.yaml`` and provenance session with the run's first file (:func:`commit_pending`)."""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dcem import _io

__all__ = ["RunError", "commit_pending", "ensure_dir", "open_run"]

log = logging.getLogger(__name__)


class RunError(ValueError):
    """A run folder that cannot be used with this configuration."""


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

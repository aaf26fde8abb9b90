"""Provenance of run folders: which code, libraries and command made them.

:func:`~dcem.experiments.common.rundir.open_run` appends one *session* per run (and per resume) to
the folder's ``provenance.json``::

    {"format": "dcem-provenance-v1", "sessions": [
        {"started": "...", "commit": "<sha>" | null, "dirty": false, "dirty_paths": [],
         "dcem_version": "...", "argv": [...], "versions": {"python": ..., "torch": ..., ...},
         "launch": {...} | null, "config": {...the full resolved configuration...}}]}

It is not part of the configuration comparison. The results pages use :func:`describe` (through
:func:`~dcem.experiments.common.report.update_page`'s ``runs=``): it prints the provenance under
each generated block, refuses a block made from run folders of different commits, and marks run
folders made by a dirty tree, without provenance, or by code whose ``dcem/`` has changed since.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["FILE", "code_state", "describe", "read", "record", "session", "versions"]

FILE = "provenance.json"
FORMAT = "dcem-provenance-v1"
#: libraries whose versions are recorded when installed
LIBRARIES = ("torch", "numpy", "scipy", "hydra-core", "omegaconf", "dm_control", "mujoco", "torchrl")


def _root() -> Path:
    import dcem

    return Path(dcem.__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(_root()), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def code_state() -> dict[str, Any]:
    """``{"commit", "dirty", "dirty_paths"}`` of the checkout the ``dcem`` package is imported from
    (``commit`` is ``None`` outside a git checkout, e.g. an installed wheel)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "dirty_paths": []}
    status = _git("status", "--porcelain", "--untracked-files=no") or ""
    paths = [ln[3:] for ln in status.splitlines() if ln.strip()]
    return {"commit": commit.strip(), "dirty": bool(paths), "dirty_paths": paths[:20]}


def versions() -> dict[str, str]:
    """Python's and the installed libraries' versions (:data:`LIBRARIES`)."""
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def session(config: Mapping[str, Any], launch: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record of this process's run: code state, versions, command line, resolved config."""
    try:
        dcem_version = importlib.metadata.version("dcem")
    except importlib.metadata.PackageNotFoundError:
        dcem_version = None
    return {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), **code_state(),
            "dcem_version": dcem_version, "argv": list(sys.argv), "cwd": os.getcwd(), "versions": versions(),
            "launch": None if launch is None else dict(launch), "config": dict(config)}  # fmt: skip


def read(folder: str | os.PathLike) -> list[dict[str, Any]] | None:
    """The sessions recorded in ``folder/provenance.json`` (``None`` when the folder has none)."""
    from dcem._io import read_json

    p = Path(folder) / FILE
    if not p.is_file():
        return None
    data = read_json(p, "provenance file")
    ok = isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("sessions"), list)
    return data["sessions"] if ok else None


def record(folder: str | os.PathLike, sess: Mapping[str, Any]) -> None:
    """Append ``sess`` to ``folder/provenance.json`` (atomically)."""
    import json

    from dcem._io import CheckpointError, atomic_write_text

    try:
        old = read(folder) or []
    except CheckpointError:  # unreadable: start a new record (the old one cannot be trusted)
        old = []
    text = json.dumps({"format": FORMAT, "sessions": [*old, dict(sess)]}, indent=1, default=str)
    atomic_write_text(Path(folder) / FILE, text + "\n")


def _short(commit: str | None) -> str:
    return "unknown" if commit is None else commit[:12]


def _changed_since(commit: str) -> int | None:
    """Files under ``dcem/`` that differ between ``commit`` and the working tree (``None``: unknown)."""
    out = _git("diff", "--name-only", commit, "--", "dcem")
    return None if out is None else len([ln for ln in out.splitlines() if ln.strip()])


def _scan(folders: Sequence[str | os.PathLike]) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """``(commit -> folders, warnings, version lines)`` of the folders' sessions."""
    by_commit: dict[str, list[str]] = {}
    marks: list[str] = []
    vers: list[str] = []
    for f in folders:
        sessions = read(f)
        if not sessions:
            marks.append(f"{Path(f).name}: no {FILE} (made before provenance was recorded)")
            by_commit.setdefault("unknown", []).append(str(f))
            continue
        for s in sessions:
            by_commit.setdefault(_short(s.get("commit")), []).append(str(f))
            if s.get("dirty"):
                paths = ", ".join(s.get("dirty_paths", [])[:3])
                marks.append(f"{Path(f).name}: made with uncommitted changes ({paths})")
            have = s.get("versions") or {}
            v = ", ".join(f"{k} {have[k]}" for k in ("python", *SHOWN) if k in have)
            if v not in vers:
                vers.append(v)
    return by_commit, marks, vers


#: libraries named in the provenance line of a results block
SHOWN = ("torch", "numpy", "dm_control", "mujoco", "torchrl")


def describe(folders: Sequence[str | os.PathLike], allow_mixed: bool = False) -> tuple[str, list[str]]:
    """``(provenance line, commits)`` of the run folders a results block was made from.

    The line names the folders, their commit(s) (clean or not) and library versions, and ends with
    a warning for folders without provenance, made with uncommitted changes, of several commits
    (``allow_mixed``) or made by code whose ``dcem/`` has changed since.

    Raises:
        RunError: the folders were made by different commits (a block must come from one code
            state) and ``allow_mixed`` is false; the message names the folders of each commit.
    """
    from dcem.experiments.common.runs import RunError

    by_commit, marks, vers = _scan(folders)
    commits = list(by_commit)
    if len(commits) > 1 and not allow_mixed:
        which = "; ".join(f"{c}: {', '.join(sorted(set(fs)))}" for c, fs in by_commit.items())
        raise RunError(f"the run folders of one results block were made by different code ({which}); "
                       "rerun them at one commit, or pass allow_mixed=True to mark the block")  # fmt: skip
    changed = [(c, n) for c in commits if c != "unknown" and (n := _changed_since(c))]
    if changed:
        since = ", ".join(f"{c} ({n} file(s))" for c, n in changed)
        marks.append(f"dcem/ has changed since {since}: rerun to make the block current")
    if len(commits) > 1:
        marks.append(f"mixed code ({len(commits)} commits)")
    names = sorted({str(f) for f in folders})
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    clean = "" if any("uncommitted" in m for m in marks) else " (clean)"
    line = (f"Provenance: {len(names)} run folder(s) ({shown}); code {', '.join(commits)}{clean}; "
            f"{'; '.join(vers) or 'versions unknown'}.")  # fmt: skip
    if marks:
        line += " **Warning**: " + "; ".join(dict.fromkeys(marks)) + "."
    return line, commits

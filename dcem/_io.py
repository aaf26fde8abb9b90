"""Atomic writes and safe loads of the files the library and the experiments keep on disk.

One helper for the whole project (the RL checkpoints, the experiments' run folders):

- :func:`atomic_open` writes a temporary file ``NAME.<8 random chars>.tmp`` next to the target,
  flushes, fsyncs and renames it onto the target, so a crash never leaves a half-written file. The
  temporary file is created with mode ``0o666`` filtered by the process umask (``tempfile.mkstemp``
  would make every output file ``0600``). :func:`remove_stale_tmp` deletes the temporary files a
  ``SIGKILL`` left behind.
- :func:`save` / :func:`safe_load` are ``torch.save`` / ``torch.load`` for checkpoints. Loading never
  unpickles arbitrary objects (``weights_only=True``): a file holding anything but tensors, numbers,
  strings and plain containers is refused with a :class:`CheckpointError` naming it, and nothing in
  it runs. NumPy arrays and scalars (replay buffers, NumPy random states) are stored as tagged byte
  tensors by :func:`save` and restored bit for bit by :func:`safe_load`, which also reads files that
  pickled them the plain way (``torch.save`` of dcem 0.1), allowing NumPy's array-rebuilding globals
  and nothing else.
- :func:`read_json` reads a JSON file, naming the file when it is not JSON.

>>> import tempfile, numpy as np, torch
>>> d = tempfile.mkdtemp()
>>> save({"w": torch.ones(2), "rng": np.random.default_rng(0).bit_generator.state,
...       "buf": np.arange(3, dtype=np.uint32)}, d + "/ck.pt")
>>> ck = safe_load(d + "/ck.pt")
>>> ck["buf"].dtype, ck["buf"].tolist(), ck["rng"]["bit_generator"]
(dtype('uint32'), [0, 1, 2], 'PCG64')
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["CheckpointError", "atomic_open", "atomic_write_text", "read_json", "remove_stale_tmp",
           "safe_load", "save"]  # fmt: skip

#: the name of a temporary file of :func:`atomic_open` (and of ``tempfile.mkstemp`` before it)
TMP_NAME = re.compile(r"^.+\.[A-Za-z0-9_]{8}\.tmp$")
_ND = "__dcem_ndarray__"


class CheckpointError(ValueError):
    """An unreadable, unsafe or incompatible checkpoint; the message names the file and the way out."""


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kw: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success flush, fsync and rename it onto ``path``.

    The file is created honouring the umask; an exception in the block removes it and leaves
    ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:  # pragma: no cover - 2**32 names
            continue
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
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def remove_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_open` under ``folder`` (left by a killed
    process); returns them. Call it only when no other process writes into ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob("*.tmp") if p.is_file() and TMP_NAME.match(p.name)]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


# --------------------------------------------------------------------------- torch files


def _encode(obj: Any) -> Any:
    """``obj`` with every NumPy array / scalar replaced by a tagged byte tensor (exact round trip)."""
    import numpy as np
    import torch

    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype != object:
        arr = np.array(obj, order="C")  # 0-d for a scalar (ascontiguousarray would make it 1-d)
        data = torch.frombuffer(bytearray(arr.tobytes()), dtype=torch.uint8) if arr.nbytes else \
            torch.zeros(0, dtype=torch.uint8)  # fmt: skip
        scalar = isinstance(obj, np.generic)
        return {_ND: data, "dtype": arr.dtype.str, "shape": list(arr.shape), "scalar": scalar}
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        seq = [_encode(v) for v in obj]
        return seq if isinstance(obj, list) else tuple(seq)
    return obj


def _decode(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        if _ND in obj:
            arr = np.frombuffer(obj[_ND].numpy().tobytes(), dtype=np.dtype(obj["dtype"]))
            arr = arr.reshape(obj["shape"]).copy()
            return arr[()] if obj.get("scalar") else arr
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        seq = [_decode(v) for v in obj]
        return seq if isinstance(obj, list) else tuple(seq)
    return obj


def save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` of ``obj`` to ``path`` atomically; NumPy arrays and scalars inside ``obj`` are
    stored as tensors so that :func:`safe_load` can read them without unpickling code."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(_encode(obj), fh)


def safe_load(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    what: str = "checkpoint",
    way_out: str = "delete it or rerun with resume=false to start the run over",
) -> Any:
    """``torch.load(path, weights_only=True)`` with NumPy values restored (see :func:`save`).

    Raises:
        CheckpointError: (one line naming ``path``) the file is missing, truncated, not a torch
            file, or holds objects other than tensors, numbers, strings and plain containers (it is
            then refused, and nothing in it runs).
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    try:
        obj = _weights_load(path, map_location)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"(?:GLOBAL|global) ([\w.]+)|[Uu]nsupported class ([\w.]+)", text)
        detail = next((g for g in found.groups() if g), "") if found else ""
        if detail:  # a global (a class or function) the safe unpickler does not allow
            raise CheckpointError(
                f"{what} {str(path)!r} holds objects other than tensors and plain containers"
                f" ({detail}); refused without running them (a file from "
                f"elsewhere can run code when unpickled): {way_out}"
            ) from None
        inner = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)  # torch's reason, without its advice
        raise _unreadable(what, path, RuntimeError(inner.group(1)) if inner else err, way_out) from None
    except Exception as err:  # noqa: BLE001 - any other failure to read means unreadable
        raise _unreadable(what, path, err, way_out) from None
    return _decode(obj)


def _weights_load(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)``; only when it refuses a global does it look at the file's
    globals, and retries once with NumPy's array-rebuilding ones allowed if those are all it names."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        allowed = _numpy_globals(path)
        if not allowed:
            raise
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location=map_location, weights_only=True)


#: the globals with which pickle rebuilds NumPy arrays, scalars and dtypes (nothing else runs)
_NUMPY_GLOBALS = re.compile(r"^numpy\.(dtype|ndarray|(_core|core)\.multiarray\.(_reconstruct|scalar)"
                            r"|dtypes\.\w+DType)$")  # fmt: skip


def _numpy_globals(path: Path) -> list[Any]:
    """NumPy's array-rebuilding globals that the file ``path`` names, when it names no other: files of
    ``torch.save`` with plain NumPy values (checkpoints of dcem 0.1) then load with them allowed. An
    object array's items still go through the safe unpickler, so nothing but data is built."""
    import importlib

    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint: torch.load reports it below
        return []
    if not names or not all(_NUMPY_GLOBALS.match(n) for n in names):
        return []
    found = []
    for n in names:
        mod, _, attr = n.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):  # a NumPy of another major version: refused below
            return []
    import numpy as np

    dtypes = getattr(np, "dtypes", None)  # the classes of the dtypes (NumPy >= 1.25), rebuilt by np.dtype
    return found + ([getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")] if dtypes else [])


def _unreadable(what: str, path: Path, err: BaseException, way_out: str) -> CheckpointError:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
    return CheckpointError(f"{what} {str(path)!r} is unreadable (truncated or not a {what}: {reason}); "
                           f"{way_out}")  # fmt: skip


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """The JSON value in ``path``; :class:`CheckpointError` naming the file when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise CheckpointError(f"{what} {str(path)!r} is unreadable ({reason}); delete it to recompute it") \
            from None  # fmt: skip

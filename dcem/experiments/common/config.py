"""Typed configuration and command line shared by every experiment (``dcem-exp NAME key=value ...``).

Each experiment declares a dataclass schema whose fields carry their allowed range
(:func:`opt`) and an optional ``validate(self)`` method for the rules that tie fields together.
:func:`load` composes the experiment's Hydra YAML files (the defaults and the config groups such
as ``scale=``) with the command-line overrides, merges the result into the schema (types are
converted or refused) and checks every range and rule, all before any folder, file or model
exists. Every user error is a :class:`ConfigError` (a ``ValueError``) whose one-line message names
the key and what it may be; ``dcem-exp`` prints it without a traceback and exits with status 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

__all__ = ["ConfigError", "Experiment", "check_device", "footprint", "load", "memory_limit", "opt"]

HELP_FLAGS = ("-h", "--help")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")


class ConfigError(ValueError):
    """A bad command line or configuration value; the message names the key."""


def opt(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: Sequence[Any] | None = None,
    each: bool = False,
    nonempty: bool = False,
    device: bool = False,
    doc: str = "",
) -> Any:
    """A schema field whose default comes from the YAML file, with its allowed values.

    ``ge``/``gt``/``le`` bound a number (``each=True``: every item of a list), ``choices``
    lists the allowed values (of every item of a list), ``nonempty`` refuses an empty list,
    ``device`` accepts a torch device that exists on this machine; ``None`` is allowed when the
    annotation says so.
    """
    meta = {"ge": ge, "gt": gt, "le": le, "choices": None if choices is None else tuple(choices),
            "each": each, "nonempty": nonempty, "device": device, "doc": doc}  # fmt: skip
    return field(default=MISSING, metadata=meta)


def check_device(key: str, value: str, allow_auto: bool = False) -> None:
    """Refuse a device string that is malformed or names a device this machine lacks."""
    import torch

    forms = "cpu, cuda, cuda:N" + (", auto" if allow_auto else "")
    if allow_auto and value == "auto":
        return
    m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", str(value))
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise ConfigError(f"{key}={value!r}: not a device; use one of {forms}")
    if m.group(1) == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={value}: CUDA is not available in this PyTorch build or machine; "
                              f"use {key}=cpu")  # fmt: skip
        n = torch.cuda.device_count()
        if m.group(2) is not None and int(m.group(2)) >= n:
            raise ConfigError(f"{key}={value}: only {n} CUDA device(s) (cuda:0..cuda:{n - 1})")


@dataclass(frozen=True)
class Experiment:
    """What the shared command line needs to know about one experiment.

    Args:
        name: the experiment's name (``dcem-exp NAME``).
        conf_dir: folder with ``config.yaml`` and one sub-folder per config group.
        schema: the dataclass type describing every key.
        doc: the text printed by ``--help`` above the key list.
        free_keys: keys that may change when a run folder is resumed (run-time knobs).
    """

    name: str
    conf_dir: Path
    schema: type
    doc: str = ""
    free_keys: tuple[str, ...] = ("out_dir", "progress", "num_threads", "resume")

    def groups(self) -> dict[str, list[str]]:
        """Config groups (``scale``, ``env``) and their options."""
        return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
                for d in sorted(self.conf_dir.iterdir()) if d.is_dir()}  # fmt: skip


# --------------------------------------------------------------------------- schema walking


def _fields(schema: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Dotted key -> dataclass field of every leaf of ``schema``."""
    out: dict[str, dataclasses.Field] = {}
    for f in dataclasses.fields(schema):
        key = prefix + f.name
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            out.update(_fields(sub, key + "."))
        else:
            out[key] = f
    return out


def _sections(schema: type) -> set[str]:
    return {k.rsplit(".", 1)[0] for k in _fields(schema) if "." in k}


_COMPARE = (("gt", ">", operator.gt), ("ge", ">=", operator.ge), ("le", "<=", operator.le))


def _describe(f: dataclasses.Field) -> str:
    m, parts = f.metadata, []
    if m.get("device"):
        auto = "auto|" if "auto" in (m.get("choices") or ()) else ""
        parts.append(f"a device: {auto}cpu|cuda|cuda:N")
    elif m.get("choices"):
        parts.append("one of " + "|".join(str(c) for c in m["choices"]))
    for op, sym, _ in _COMPARE:
        if m.get(op) is not None:
            parts.append(f"{sym} {m[op]:g}")
    if m.get("doc"):
        parts.append(m["doc"])
    return ", ".join(parts)


def _check_value(key: str, f: dataclasses.Field, value: Any) -> None:
    """Check one leaf against the allowed values in its field's metadata (see :func:`opt`)."""
    m = f.metadata
    if value is None:
        return
    is_list = isinstance(value, (list, tuple))
    items = list(value) if is_list else [value]
    shown = items if is_list else value
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
        raise ConfigError(f"{key}={shown}: must be a finite number")
    if m.get("device"):
        check_device(key, value, allow_auto="auto" in (m.get("choices") or ()))
        return
    if is_list and m.get("nonempty") and not items:
        raise ConfigError(f"{key}=[]: must list at least one value")
    if is_list and not m.get("each"):
        return
    for v in items:
        if m.get("choices") is not None and v not in m["choices"]:
            allowed = ", ".join(str(c) for c in m["choices"])
            raise ConfigError(f"{key}={shown}: {v!r} is not allowed; choose from {allowed}")
        for op, sym, ok in _COMPARE:
            if m.get(op) is not None and not ok(v, m[op]):
                raise ConfigError(f"{key}={shown}: must be {sym} {m[op]:g}")


def _check_tree(obj: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            _check_tree(v, prefix + f.name + ".")
        else:
            _check_value(prefix + f.name, f, v)


# --------------------------------------------------------------------------- command line


def _parse(exp: Experiment, argv: Sequence[str]) -> list[str]:
    """Check the form of every override and that its key or group exists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keys, groups = _fields(exp.schema), exp.groups()
    for arg in argv:
        key = arg.split("=", 1)[0]
        if arg[:1] in "+~" and arg:
            raise ConfigError(f"{arg!r}: adding (+) or deleting (~) keys is not supported; every key exists "
                              f"already (see dcem-exp {exp.name} --help)")  # fmt: skip
        if "=" not in arg or not _KEY.match(key):
            example = f"{arg}=VALUE" if _KEY.match(arg) else f"{next(iter(keys))}=VALUE"
            raise ConfigError(f"{arg!r} is not an override of the form key=value (e.g. {example}); "
                              f"see dcem-exp {exp.name} --help")  # fmt: skip
        try:
            parsed = parser.parse_override(arg)
        except Exception as err:  # noqa: BLE001 - Hydra's grammar errors have no common base
            first = str(err).strip().splitlines()[-1]
            raise ConfigError(f"{arg!r}: cannot parse the value ({first})") from None
        if key in groups:
            if isinstance(parsed.value(), (list, dict)) or str(parsed.value()) not in groups[key]:
                raise ConfigError(f"{key}={parsed.value()}: unknown {key}; choose one of "
                                  f"{', '.join(groups[key])}")  # fmt: skip
            continue
        if key not in keys:
            if key in _sections(exp.schema):
                sub = sorted(k[len(key) + 1:] for k in keys if k.startswith(key + "."))
                raise ConfigError(f"{key} is a section; set one of its keys: {', '.join(sub)}")
            near = sorted({k.split(".")[0] for k in keys} | set(groups))
            where = key.rsplit(".", 1)[0] if "." in key else ""
            if where in _sections(exp.schema):
                near = sorted(k[len(where) + 1:] for k in keys if k.startswith(where + "."))
                raise ConfigError(f"unknown key {key!r}; the keys of {where} are {', '.join(near)}")
            raise ConfigError(f"unknown key {key!r}; the keys are {', '.join(near)} (see --help)")
    return list(argv)


def refuse_duplicates(argv: Sequence[str]) -> None:
    """Refuse a command line that gives a key twice (``dcem-exp`` calls it; programmatic callers of
    :func:`load` may append overrides, the last one winning, as Hydra does)."""
    seen: dict[str, str] = {}
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in seen:
            raise ConfigError(f"{key} is given twice ({seen[key]!r} and {arg!r}); give it once")
        seen[key] = arg


def _compose(exp: Experiment, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(exp.conf_dir), version_base=None):
            return compose(config_name="config", overrides=overrides)
    except Exception as err:  # noqa: BLE001 - any composition failure is a bad override
        first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise ConfigError(f"bad override: {first}") from None


def _typed(exp: Experiment, cfg: DictConfig) -> tuple[DictConfig, Any]:
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        typed = OmegaConf.merge(OmegaConf.structured(exp.schema), cfg)
        return typed, OmegaConf.to_object(typed)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} has no value; set {err.full_key}=...") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "?"
        f = _fields(exp.schema).get(re.sub(r"\[\d+\]$", "", key))
        want = ""
        if f is not None:
            want = str(f.type).replace("typing.", "")
        value = OmegaConf.select(cfg, re.sub(r"\[(\d+)\]", r".\1", key), default="?")
        raise ConfigError(f"{key}={value!r}: expected {want or 'another type'}") from None


def help_text(exp: Experiment, argv: Sequence[str] = ()) -> str:
    """Usage, the experiment's description, its config groups and every key with its value."""
    cfg = _compose(exp, _parse(exp, [a for a in argv if a not in HELP_FLAGS]))
    fields = _fields(exp.schema)
    lines = [f"usage: dcem-exp {exp.name} "
             + " ".join(f"[{g}={'|'.join(o)}]" for g, o in exp.groups().items()) + " [key=value ...]",
             "", exp.doc.strip(), "", "keys (current value; allowed values):"]  # fmt: skip
    width = max(len(k) for k in fields)
    for key, f in fields.items():
        val = OmegaConf.select(cfg, key, default=None)
        shown = OmegaConf.to_container(val) if isinstance(val, (DictConfig,)) else val
        if OmegaConf.is_config(shown):
            shown = OmegaConf.to_container(shown)
        desc = _describe(f)
        lines.append(f"  {key:<{width}} = {json.dumps(shown)}" + (f"   ({desc})" if desc else ""))
    return "\n".join(lines) + "\n"


def load(exp: Experiment, argv: Sequence[str], out: Callable[[str], Any] | None = None) -> DictConfig | None:
    """Typed, validated configuration for ``argv``; ``None`` after printing ``--help``.

    Raises:
        ConfigError: for any bad override or value, before anything is written.
    """
    argv = list(argv)
    if any(a in HELP_FLAGS for a in argv):
        (out or sys.stdout.write)(help_text(exp, argv))
        return None
    cfg = _compose(exp, _parse(exp, argv))
    typed, obj = _typed(exp, cfg)
    _check_tree(obj)
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    check_memory(obj)
    OmegaConf.set_readonly(typed, False)
    OmegaConf.set_struct(typed, True)
    return typed


# --------------------------------------------------------------------------- memory estimate


def memory_limit() -> float:
    """This machine's physical memory in bytes (``inf`` where the OS does not say)."""
    import os

    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return math.inf


def footprint(obj: Any, keys: Sequence[str], nbytes: float, what: str) -> tuple[str, float]:
    """``(description, bytes)`` of a tensor of ``prod(keys)`` items of ``nbytes`` bytes each, for a
    schema's ``memory_bytes()`` (the description names every key and its value)."""
    n = float(nbytes)
    parts = []
    for key in keys:
        v = obj
        for k in key.split("."):
            v = getattr(v, k)
        n *= float(v)
        parts.append(f"{key}={v}")
    return f"{' x '.join(parts)} ({what})", n


def check_memory(obj: Any) -> None:
    """Refuse a configuration whose largest tensors (the schema's ``memory_bytes()``: a list of
    :func:`footprint`) would not fit in this machine's memory, before any folder or tensor exists."""
    estimate = getattr(obj, "memory_bytes", None)
    if estimate is None:
        return
    limit = memory_limit()
    for what, n in estimate():
        if n > limit:
            raise ConfigError(f"{what}: needs about {n / 2**30:.3g} GiB of memory, more than this machine's "
                              f"{limit / 2**30:.3g} GiB; lower these keys")  # fmt: skip

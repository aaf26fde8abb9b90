"""The runnable examples in the public docstrings of the library run and print what they say.

Every module of the library (``dcem`` without the applications in ``dcem.experiments``) is
doctested, so an example added anywhere runs in the suite; the modules in ``MODULES`` must also
keep at least one example.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dcem

MODULES = [
    "dcem.soft_topk",
    "dcem.sync",
    "dcem.cem",
    "dcem.optim.cem",
    "dcem.optim.solver",
    "dcem.layers",
    "dcem._checks",
    "dcem.optim.validate",
    "dcem._io",
]


def _library_modules() -> list[str]:
    names = ["dcem"]
    for info in pkgutil.walk_packages(dcem.__path__, prefix="dcem."):
        if info.name == "dcem.experiments" or info.name.startswith("dcem.experiments."):
            continue
        names.append(info.name)
    return sorted(names)


LIBRARY = _library_modules()


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:  # a module of an optional extra (dm_control, torchrl, ...)
        if err.name is not None and err.name.split(".")[0] == "dcem":
            raise
        pytest.skip(f"{name} needs {err.name}, not installed")


def test_walk_finds_the_library():
    assert set(MODULES) <= set(LIBRARY)
    assert "dcem.planning.planner" in LIBRARY and not any(n.startswith("dcem.experiments") for n in LIBRARY)


@pytest.mark.parametrize("name", LIBRARY)
def test_docstring_examples(name):
    module = _import(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    if name in MODULES:
        assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0

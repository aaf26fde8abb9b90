"""The runnable examples in the public docstrings of the core run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "dcem.soft_topk",
    "dcem.sync",
    "dcem.cem",
    "dcem.optim.cem",
    "dcem.optim.solver",
    "dcem.layers",
    "dcem._checks",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0

"""The runnable examples in the docstrings of the planning package and its wrappers."""

import doctest
import importlib

import pytest

MODULES = [
    "dcem.planning.planner",
    "dcem.planning.shift",
    "dcem.planning.config",
    "dcem.control.latent",
    "dcem.control.decoder",
    "dcem.control.mpc",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

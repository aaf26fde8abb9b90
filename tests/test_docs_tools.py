"""The API reference site's own tools (scripts/): the docstring check, the griffe extension and
the MkDocs hook. Skipped without the ``docs`` extra (griffe)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

griffe = pytest.importorskip("griffe")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


roles = _load("griffe_roles")
hooks = _load("mkdocs_hooks")
check = _load("check_docstrings")


def test_every_public_object_of_the_documented_api_has_a_docstring():
    assert check.missing(check.MODULES) == []


def test_the_check_finds_a_missing_docstring(tmp_path):
    pkg = tmp_path / "docs_check_fixture"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        '"""Doc."""\n__all__ = ["f", "C", "X"]\nX = 1\n\ndef f():\n    """Doc."""\n\n'
        'class C:\n    """Doc."""\n\n    def m(self):\n        pass\n\n    def forward(self):\n        pass\n'
    )
    # m has no docstring; forward's contract is nn.Module's; X is data without a docstring
    found = check.missing(["docs_check_fixture"], search_paths=[str(tmp_path)])
    assert sorted(found) == ["docs_check_fixture.C.m", "docs_check_fixture.X"]


def test_sphinx_roles_become_inline_code():
    text = "See :func:`dcem.lml` and :class:`~dcem.rl.envs.DMCEnv`."
    assert roles.ROLE.sub(roles._code, text) == "See `dcem.lml` and `DMCEnv`."


def test_grouped_arguments_are_split_with_their_description():
    text = "Doc.\n\nArgs:\n    x: one.\n    lb, ub: bounds\n        (floats).\n\nReturns:\n    a, b: kept.\n"
    assert roles._split_groups(text) == (
        "Doc.\n\nArgs:\n    x: one.\n    lb: bounds\n        (floats).\n    ub: bounds\n        (floats).\n\n"
        "Returns:\n    a, b: kept."
    )


def test_included_readme_links_point_at_site_pages():
    text = "[r](docs/results/mbrl.md#x) [s](dcem/sync.py) [a](#sync) [w](https://x.org) ![i](docs/i.png)"
    want = "[r](results/mbrl.md#x) s [a](#sync) [w](https://x.org) ![i](docs/i.png)"
    assert hooks._rewrite(text, "") == want
    assert hooks._rewrite("[b](docs/benchmarks.md)", "api") == "[b](../benchmarks.md)"

"""No library function (``dcem/`` outside ``experiments/``) over 60 lines of code.

Lines are counted from ``def`` to the function's last line, without its docstring. Run as a
script to list every function over 60 lines *with* its docstring too::

    python tests/test_function_length.py
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "dcem"
LIMIT = 60


def functions() -> list[tuple[str, str, int, int]]:
    """``(file, qualified name, lines, lines without the docstring)`` of every library function."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        if "experiments" in path.relative_to(ROOT).parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                name = f"{prefix}{getattr(child, 'name', '')}"
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = child.end_lineno - child.lineno + 1
                    first = child.body[0]
                    is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    doc = first.end_lineno - first.lineno + 1 if is_doc else 0
                    out.append((str(path.relative_to(ROOT.parent)), name, n, n - doc))
                if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    stack.append((child, f"{name}."))
    return out


def test_no_function_over_the_limit():
    long = [f"{f}:{name} ({code} lines of code)" for f, name, _, code in functions() if code > LIMIT]
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def test_the_walk_finds_nested_functions():
    names = {name for f, name, _, _ in functions() if f.endswith("planning/planner.py")}
    assert {"Planner.plan", "Planner._evaluator.evaluate", "Planner.iterate"} <= names


if __name__ == "__main__":
    for f, name, n, code in functions():
        if n > LIMIT:
            print(f"{f}: {name}: {n} lines ({code} without the docstring)")

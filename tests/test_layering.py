"""The library's imports point downwards only and form no circle (``dcem/experiments`` excluded).

Floors, lowest first (a module may import its own floor and the floors below it):

0. ``_checks``, ``_io``, ``sync``, ``_lml_dual``, ``_lml_rows``, ``_topk_checks``, ``soft_topk`` -- the
   soft top-k and shared checks;
1. ``optim/`` and the ``dcem.cem`` wrapper -- the optimiser;
2. ``layers``, ``planning/`` -- the layer and the planner;
3. ``control/``;
4. ``rl/``;
5. the package's entry points (``dcem/__init__``, ``__main__``, ``demo``), which may import
   anything, applications included.

Every ``import`` statement counts, also inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "dcem"
FLOORS = {
    "dcem._checks": 0, "dcem._io": 0, "dcem.sync": 0, "dcem._lml_dual": 0, "dcem.soft_topk": 0,
    "dcem._lml_rows": 0, "dcem._topk_checks": 0,
    "dcem.optim": 1, "dcem.cem": 1,
    "dcem.layers": 2, "dcem.planning": 2,
    "dcem.control": 3,
    "dcem.rl": 4,
    "dcem": 5, "dcem.__main__": 5, "dcem.demo": 5,
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = ("dcem", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, Path]:
    mods = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: p for m, p in mods.items() if not m.startswith("dcem.experiments")}


def floor(mod: str) -> int:
    """The floor of a module: that of its longest listed prefix."""
    while mod not in FLOORS:
        if "." not in mod:
            raise KeyError(mod)
        mod = mod.rsplit(".", 1)[0]
    return FLOORS[mod]


def imports(mod: str, path: Path, known: set[str]) -> set[str]:
    """The dcem modules ``mod`` imports (``from pkg import sub`` resolved to the submodule)."""
    out: set[str] = set()
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "dcem"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "dcem":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return out - {mod}


def graph() -> dict[str, set[str]]:
    mods = library_modules()
    known = set(mods) | {module_name(p) for p in ROOT.rglob("*.py")}
    return {m: imports(m, p, known) for m, p in mods.items()}


def test_no_upward_import():
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            if dep.startswith("dcem.experiments"):
                if floor(mod) < 5:
                    bad.append(f"{mod} -> {dep} (application code)")
            elif floor(dep) > floor(mod):
                bad.append(f"{mod} (floor {floor(mod)}) -> {dep} (floor {floor(dep)})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``g`` (depth-first search), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d in g and d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    "g, circular",
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True), ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False)],
)
def test_the_cycle_finder(g, circular):
    assert (find_cycle(g) is not None) == circular


def test_the_walk_sees_known_edges():
    g = graph()
    assert "dcem.planning.dynamics" in g["dcem.planning.rollout"]
    assert "dcem.planning" in g["dcem.control.mpc"]
    assert floor("dcem.planning.capture") == 2 and floor("dcem.optim.cem") == 1

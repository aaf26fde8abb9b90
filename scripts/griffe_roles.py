"""Griffe extension for the API reference site: two conventions of the docstrings, made readable.

- Sphinx cross-reference roles (``:func:`dcem.lml```, ``:class:`~dcem.rl.envs.DMCEnv```), which
  mkdocstrings would print literally, become inline code (``~`` keeps the last component, as in
  Sphinx).
- An ``Example:`` section holding ``>>>`` lines is read as griffe's ``Examples:`` section, so the
  doctest renders as highlighted code rather than nested quotes.
- ``#:`` comments right above a module or class attribute (Sphinx's convention for data, as in
  ``dcem.planning.RULE_DEFAULTS``) become its docstring when it has none.
- Grouped arguments of a Google-style ``Args:`` section (``lb, ub: bounds ...``), which griffe's
  parser reads as one parameter named ``lb, ub``, become one entry per name with the shared text.
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


GROUPED = re.compile(r"^(\s+)([A-Za-z_]\w*(?:,\s*[A-Za-z_]\w*)+):(.*)$")
SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params|Keyword Args|Other Parameters):\s*$")


def _split_groups(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    in_args = False
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if SECTION.match(line):
            in_args = True
        elif ANY_SECTION.match(line) or (line.strip() and not line.startswith((" ", "\t"))):
            in_args = False
        match = GROUPED.match(line) if in_args else None
        if match is None:
            out.append(line)
            continue
        indent, names, rest = match.groups()
        more: list[str] = []  # the description's continuation lines, indented deeper
        while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > len(indent):
            more.append(lines[i])
            i += 1
        for name in names.split(","):
            out.append(f"{indent}{name.strip()}:{rest}")
            out.extend(more)
    return "\n".join(out)


EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
ANY_SECTION = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")


class DocstringConventions(griffe.Extension):
    """Rewrite every docstring's roles and grouped arguments when griffe loads an object."""

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: object) -> None:
        if attr.docstring is not None or attr.lineno is None or attr.filepath is None:
            return
        lines = Path(str(attr.filepath)).read_text(encoding="utf-8").splitlines()
        comment: list[str] = []
        i = attr.lineno - 2
        while i >= 0 and lines[i].lstrip().startswith("#:"):
            comment.insert(0, lines[i].lstrip()[2:].strip())
            i -= 1
        if comment:
            attr.docstring = griffe.Docstring(" ".join(comment), parent=attr)

    def on_instance(self, *, obj: griffe.Object, **kwargs: object) -> None:
        if obj.docstring is not None:
            text = _split_groups(ROLE.sub(_code, obj.docstring.value))
            obj.docstring.value = EXAMPLE.sub(r"\1Examples:", text) if ">>>" in text else text

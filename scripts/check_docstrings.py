"""Fail when a public object of the documented API has no docstring.

mkdocstrings renders whatever it finds and does not fail on a missing docstring, so the strict
docs build (``bash scripts/docs.sh build``) runs this first. The public API is what the site
documents: the ``__all__`` of each module in ``MODULES`` (read statically by griffe, so data such
as ``dcem.planning.RULE_DEFAULTS`` counts through the docstring under its assignment), and the
public methods and properties that each public class defines itself (members inherited from
``torch.nn.Module`` or ``NamedTuple`` are not ours).

Usage: python scripts/check_docstrings.py [MODULE ...]   (exit status 1 on any missing docstring)
"""

from __future__ import annotations

import sys
from pathlib import Path

import griffe

# the modules of the API reference (docs/api/*.md); dcem.integrations is documented when present
MODULES = [
    "dcem",
    "dcem.optim",
    "dcem.optim.validate",
    "dcem.planning",
    "dcem.layers",
    "dcem.control",
    "dcem.rl",
    "dcem.rl.envs",
    "dcem.rl.env_pool",
    "dcem.rl.ppo",
]
REPO = Path(__file__).resolve().parents[1]


def _optional_modules() -> list[str]:
    """``dcem.integrations`` and its public submodules when the package exists (as on the site)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mkdocs_hooks import _optional_modules as found

    return found(REPO)


def _own_doc(obj: griffe.Object | griffe.Alias) -> bool:
    doc = obj.docstring
    return doc is not None and doc.value.strip() != ""


# overrides of torch.nn.Module / Mapping methods whose contract is the base class's; what they do
# for the class is in the class docstring (its Shape section)
INHERITED_CONTRACT = {"forward", "extra_repr", "state_dict", "load_state_dict"}


def _members(cls: griffe.Class) -> list[griffe.Object | griffe.Alias]:
    """Public methods and properties that the class defines itself.

    Instance attributes, dataclass fields and enum members are documented in the class docstring
    (its Args/Attributes section), so they are not required to carry their own.
    """
    out = []
    for name, member in cls.members.items():
        if name.startswith("_") or member.is_alias or name in INHERITED_CONTRACT:
            continue
        if member.is_function or "property" in member.labels:
            out.append(member)
    return out


def missing(modules: list[str], search_paths: list[str] | None = None) -> list[str]:
    """Paths of the public objects of ``modules`` (of one top-level package, looked up in
    ``search_paths`` and on ``sys.path``) that have no docstring."""
    # the site's griffe extension: its #: comments count as docstrings, as on the site
    extensions = griffe.load_extensions(str(Path(__file__).with_name("griffe_roles.py")))
    loader = griffe.GriffeLoader(
        docstring_parser=griffe.Parser.google, extensions=extensions, search_paths=search_paths
    )
    package = modules[0].split(".")[0]
    root = loader.load(package)
    loader.resolve_aliases(implicit=False, external=False)
    bad: list[str] = []
    for name in modules:
        module = root if name == package else root[name.removeprefix(f"{package}.")]
        if not _own_doc(module):
            bad.append(f"{name} (module)")
        exported = module.exports
        if exported is None:
            bad.append(f"{name}: no __all__")
            continue
        for export in exported:
            target = module[str(export)]
            if not _own_doc(target):
                bad.append(f"{name}.{export}")
            final = target.final_target if target.is_alias else target
            if final.is_class:
                for member in _members(final):
                    if not _own_doc(member):
                        bad.append(f"{name}.{export}.{member.name}")
    return bad


def main(argv: list[str]) -> int:
    modules = argv or MODULES + _optional_modules()
    bad = missing(modules)
    for path in bad:
        print(f"missing docstring: {path}")
    print(f"check_docstrings: {len(modules)} modules, {len(bad)} public objects without a docstring")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""MkDocs hooks for the API reference site (mkdocs.yml: ``hooks``).

A page whose Markdown holds ``<!-- include: PATH -->`` (PATH relative to the repository root) gets
that file's text in its place, so the site shows README.md and CHANGELOG.md as they are instead of
copies. Links in the included text are relative to the repository root: links into ``docs/``
become links between the site's pages (checked by the strict build like any other link); links
to other repository files (source files, scripts) keep their text and lose the link, the site
having no source browser.

The optional package ``dcem.integrations`` (adapters to other libraries) gets an API page,
``api/integrations.md``, generated with one section per public submodule, when it exists.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

OPTIONAL_PACKAGE = "integrations"  # dcem.integrations, documented when present
INCLUDE = re.compile(r"<!--\s*include:\s*(\S+)\s*-->")
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def _rewrite(text: str, page_dir: str) -> str:
    def link(match: re.Match[str]) -> str:
        label, target = match.group(1), match.group(2)
        if target.startswith(("#", "http://", "https://", "mailto:")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        if path.startswith("docs/"):
            rel = posixpath.relpath(path.removeprefix("docs/"), page_dir or ".")
            return f"[{label}]({rel}{'#' + anchor if anchor else ''})"
        return label

    return LINK.sub(link, text)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 (MkDocs objects)
    root = Path(config["config_file_path"]).parent
    page_dir = posixpath.dirname(page.file.src_uri)

    def include(match: re.Match[str]) -> str:
        return _rewrite((root / match.group(1)).read_text(encoding="utf-8"), page_dir)

    return INCLUDE.sub(include, markdown)


def _optional_modules(root: Path) -> list[str]:
    """``dcem.integrations`` and its public submodules, if the package exists."""
    pkg = root / "dcem" / OPTIONAL_PACKAGE
    if not (pkg / "__init__.py").is_file():
        return []
    subs = sorted(p.stem for p in pkg.glob("*.py") if not p.name.startswith("_"))
    subs += sorted(p.name for p in pkg.iterdir() if (p / "__init__.py").is_file() and p.name[0] != "_")
    return [f"dcem.{OPTIONAL_PACKAGE}"] + [f"dcem.{OPTIONAL_PACKAGE}.{s}" for s in subs]


def on_config(config):  # noqa: ANN001, ANN201 (MkDocs objects)
    """Add the optional package's page to the API reference section of the nav."""
    if _optional_modules(Path(config["config_file_path"]).parent):
        for section in config["nav"]:
            if isinstance(section, dict) and "API reference" in section:
                section["API reference"].append({f"dcem.{OPTIONAL_PACKAGE}": f"api/{OPTIONAL_PACKAGE}.md"})
    return config


def on_files(files, config):  # noqa: ANN001, ANN201 (MkDocs objects)
    """Generate the optional package's page (one mkdocstrings section per module)."""
    from mkdocs.structure.files import File

    modules = _optional_modules(Path(config["config_file_path"]).parent)
    if modules:
        text = f"# dcem.{OPTIONAL_PACKAGE}\n\n" + "".join(f"::: {m}\n\n" for m in modules)
        files.append(File.generated(config, f"api/{OPTIONAL_PACKAGE}.md", content=text))
    return files

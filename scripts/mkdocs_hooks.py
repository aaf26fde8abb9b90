"""MkDocs hooks for the API reference site (mkdocs.yml: ``hooks``).

A page whose Markdown holds ``<!-- include: PATH -->`` (PATH relative to the repository root) gets
that file's text in its place, so the site shows README.md and CHANGELOG.md as they are instead of
copies. Links in the included text are relative to the repository root: links into ``docs/``
become links between the site's pages (checked by the strict build like any other link); links
to other repository files (source files, scripts) keep their text and lose the link, the site
having no source browser.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

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

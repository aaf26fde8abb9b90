"""CSV logs of the run folders: appended row by row, torn-line tolerant, rewritten only when they change."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CsvLog"]

log = logging.getLogger(__name__)


def _num(v: str) -> Any:
    if v == "":
        return None
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


class CsvLog:
    """A CSV log with fixed columns, appended row by row and truncated on resume.

    A torn last line (an append cut by a kill: no line end, or the wrong number of cells) is
    dropped with a warning naming the file, by :meth:`rows` and before the next :meth:`append`.
    Kept rows keep their text: :meth:`keep` and :meth:`rewrite` never change the number format of
    a row, and leave the file untouched when nothing changes.
    """

    def __init__(self, path: str | os.PathLike, fields: Sequence[str]) -> None:
        self.path = Path(path)
        self.fields = list(fields)

    # -- reading -----------------------------------------------------------------------------------
    def _lines(self) -> tuple[list[str], bool]:
        """The file's complete lines (header first) and whether a torn line was dropped."""
        if not self.path.exists():
            return [], False
        with open(self.path, newline="") as fh:
            lines = fh.read().splitlines(keepends=True)
        torn = False
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines, torn = lines[:-1], True
        if len(lines) > 1:
            width = len(next(csv.reader([lines[0]])))
            good = [lines[0]] + [ln for ln in lines[1:] if len(next(csv.reader([ln]), [])) == width]
            torn, lines = torn or len(good) != len(lines), good
        if torn:
            log.warning("%s: dropped a torn line (an append cut short, e.g. by a kill)", self.path)
        return lines, torn

    def rows(self) -> list[dict[str, Any]]:
        """The rows, numbers parsed (ints stay ints, empty cells are ``None``)."""
        lines, _ = self._lines()
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO("".join(lines)))]

    # -- writing -----------------------------------------------------------------------------------
    def _text(self, rows: Iterable[Mapping[str, Any]], header: bool) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
        if header:
            w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in self.fields} for r in rows)
        return buf.getvalue()

    def _replace(self, text: str) -> None:
        from dcem.experiments.common.runs import atomic_open

        if self.path.exists():
            with open(self.path, newline="") as fh:
                if fh.read() == text:
                    return
        with atomic_open(self.path, "w", newline="") as fh:
            fh.write(text)

    def rewrite(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the file by ``rows`` atomically (untouched when it holds exactly those rows)."""
        self._replace(self._text(rows, header=True))

    def keep(self, pred: Callable[[dict[str, Any]], bool]) -> None:
        """Keep the rows for which ``pred(row)`` holds (e.g. those up to a checkpoint), their text
        unchanged; the file is rewritten only when a row (or a torn line) goes."""
        lines, torn = self._lines()
        if not lines:
            return
        names = next(csv.reader([lines[0]]))
        kept = [ln for ln in lines[1:] if pred({k: _num(v) for k, v in zip(names, next(csv.reader([ln])))})]
        if torn or len(kept) != len(lines) - 1:
            self._replace("".join([lines[0], *kept]))

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append ``rows`` (rank 0 only under ``torchrun``); a torn last line goes first."""
        from dcem.experiments.common.distributed import is_main
        from dcem.experiments.common.runs import commit_pending

        if not is_main():
            return
        commit_pending(self.path)
        new = not self.path.exists()
        if not new and self.path.stat().st_size:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) not in (b"\n", b"\r")
            if torn:
                self._replace("".join(self._lines()[0]))
        with open(self.path, "a", newline="") as fh:
            fh.write(self._text(rows, header=new))
            fh.flush()

"""A large study's trials read in parts, one process a part: each part folded into columns and
its rows of ``trials.csv`` staged in a file, then merged and written in the report's order.

A report of 10⁶ trials spent some 90 s of one core reading, decoding and folding trials one by
one (issue 27); the trials of a study are independent, so ``read`` splits them into ranges of
trial ids of about equal counts (``report_pages.bounds``), one per core the process may use
and at most one per ``PART`` trials, and reads each range in a forked process (its own
connection; the parent's engine is disposed of in the child without closing the parent's
connections, as SQLAlchemy says to). A part returns its columns, where each staged row ends,
and the attributes it left unread for their length; the parent merges them (``Columns.merge``)
and copies the staged rows into ``trials.csv`` in the order the report lists trials
(``write_listed``). A study of fewer than ``2 * PART`` trials is read in the process itself.
"""

from __future__ import annotations

import csv
import mmap
import os
import tempfile
from array import array
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy

from sweep.queue import report_pages
from sweep.queue.report_pages import Span
from sweep.queue.report_reads import warn_too_long
from sweep.report.columns import Columns, kept
from sweep.report.shown import csv_header, csv_row

#: The fewest trials a part holds: a process's start and its columns' trip back cost less
#: than a second; below that the report reads in its own process.
PART = 100_000


class Staged:
    """The trials of a study read in parts (``read``): their columns (finished), and each
    part's staged ``trials.csv`` rows, kept in ``folder`` until ``write_listed``."""

    def __init__(self, cols: Columns, files: list[tuple[Path, array]]) -> None:
        self.cols = cols
        self.files = files  # per part, in fold order: its staged file, where each row ends

    def write_listed(self, names: Sequence[str], order: np.ndarray, out: Path) -> None:
        """``trials.csv`` at ``out``: the header, then the staged rows of the trials at
        ``order`` (indices in number order, ``Columns.listed``)."""
        sizes = [len(ends) for _, ends in self.files]
        base = np.cumsum([0, *sizes])
        folded = self.cols.folded[order]  # each trial's place in fold order, parts in turn
        part = np.searchsorted(base, folded, side="right") - 1
        with out.open("wb") as f:
            f.write(_Encoder()(list(csv_header(names))))
            maps = [_mapped(path) for path, _ in self.files]
            try:
                for p, i in zip(part.tolist(), (folded - base[part]).tolist(), strict=True):
                    ends = self.files[p][1]
                    f.write(maps[p][ends[i - 1] if i else 0 : ends[i]])
            finally:
                for m in maps:
                    if isinstance(m, mmap.mmap):
                        m.close()


def read(engine: sqlalchemy.engine.Engine, study_id: int, names: list[str], *, grid: bool,
         folder: Path) -> Staged:  # fmt: skip
    """The study's trials (not the queued ones) folded into finished columns, with their
    ``trials.csv`` rows staged in files under ``folder``; in parts, in parallel where the
    study is large enough (module docstring). One warning names the attributes left unread."""
    total = report_pages.listed_count(engine, study_id)
    spans = report_pages.bounds(engine, study_id, max(1, min(_cores(), total // PART)))
    paths = [folder / f"part-{k}.csv" for k in range(len(spans))]
    if len(spans) == 1:
        results = [_fold(engine, study_id, names, grid, spans[0], paths[0])]
    else:
        _FORKED.update(engine=engine, study_id=study_id, names=names, grid=grid)
        try:
            with ProcessPoolExecutor(len(spans), mp_context=get_context("fork")) as pool:
                results = list(pool.map(_fold_forked, spans, paths))
        finally:
            _FORKED.clear()
    cols, too_long = results[0][0], list(results[0][2])
    for other, _, told in results[1:]:
        cols.merge(other)
        too_long += told
    cols.finish()
    warn_too_long(too_long)
    return Staged(cols, [(path, ends) for path, (_, ends, _) in zip(paths, results, strict=True)])


#: What a forked part reads (``read`` sets it before the pool forks; the child inherits it).
_FORKED: dict[str, Any] = {}


def _fold_forked(span: Span, path: Path) -> tuple[Columns, array, list[tuple[int, str]]]:
    engine = _FORKED["engine"]
    engine.dispose(close=False)  # the parent's connections stay the parent's
    return _fold(engine, _FORKED["study_id"], _FORKED["names"], _FORKED["grid"], span, path)


def _fold(engine: sqlalchemy.engine.Engine, study_id: int, names: list[str], grid: bool,
          span: Span, path: Path) -> tuple[Columns, array, list[tuple[int, str]]]:  # fmt: skip
    """One part: its trials folded into columns (unfinished) and their rows staged at
    ``path``; where each row ends there; the attributes left unread for their length."""
    cols = Columns(names, grid=grid)
    too_long: list[tuple[int, str]] = []
    ends, at, encode = array("q"), 0, _Encoder()
    with path.open("wb") as staged:
        for page in report_pages.pages(engine, study_id, names, kept=kept, span=span,
                                       too_long=too_long):  # fmt: skip
            lines = []
            for t in page:
                lines.append(encode(csv_row(t, names)))
                cols.add(t)
            for line in lines:
                at += len(line)
                ends.append(at)
            staged.write(b"".join(lines))
    return cols, ends, too_long


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def _mapped(path: Path) -> mmap.mmap | bytes:
    with path.open("rb") as f:
        if not os.fstat(f.fileno()).st_size:
            return b""  # mmap refuses an empty file
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


class _Encoder:
    """Rows as ``csv.writer`` writes them to a file, each as UTF-8 bytes (``__call__``): the
    writer's file is this object, whose ``write`` it calls once per row."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._writer = csv.writer(self)

    def write(self, text: str) -> None:
        self._lines.append(text)

    def __call__(self, row: list[Any]) -> bytes:
        self._writer.writerow(row)
        return self._lines.pop().encode()


def staging(out: Path) -> tempfile.TemporaryDirectory[str]:
    """A folder for the staged parts, inside ``out`` (the same disk as ``trials.csv``), gone
    with its context."""
    return tempfile.TemporaryDirectory(dir=out, prefix=".trials-")

"""A large study's trials read in parts, one process a part: each part folded into columns and
its rows of ``trials.csv`` staged in a file, then merged and written in the report's order.

A report of 10⁶ trials spent some 90 s of one core reading, decoding and folding trials one by
one (issue 27); the trials of a study are independent, so ``read`` splits them into ranges of
trial ids of about equal counts (``report_pages.bounds``), one per core the process may use
and at most one per ``PART`` trials, and reads each range in a forked child (its own
connections: the parent's engine is disposed of in the child without closing the parent's, as
SQLAlchemy says to). A child pickles its columns, where each staged row ends, and the
attributes it left unread for their length into a file; the parent merges them
(``Columns.merge``) and copies the staged rows into ``trials.csv`` in the order the report
lists trials (``Staged.write_listed``). A study of fewer than ``2 * PART`` trials is read in
the process itself, and so is any study read from a process that runs other threads (a
notebook's kernel): forking one may copy a lock another thread holds.

Stopping is clean at every point: Ctrl-C and SIGTERM stop the parent, which kills its children
(they ignore Ctrl-C themselves); a child whose parent is killed ends within a second; the
staging folder is the parent's temporary folder, and one left by a killed report is cleared by
the next report into the same folder (``staging``).
"""

from __future__ import annotations

import csv
import dataclasses
import mmap
import os
import pickle
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from array import array
from collections.abc import Sequence
from multiprocessing import get_context
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy

from sweep.errors import SweepError
from sweep.queue import report_pages
from sweep.queue.report_pages import Span
from sweep.queue.report_reads import warn_too_long
from sweep.report.columns import Columns, kept
from sweep.report.shown import csv_header, csv_row
from sweep.study.audit import outside_budget
from sweep.study.space import SearchSpec

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
         spec: SearchSpec | None, folder: Path) -> Staged:  # fmt: skip
    """The study's trials (not the queued ones) folded into finished columns, with their
    ``trials.csv`` rows staged in files under ``folder``; in parts, in parallel where the
    study is large enough (module docstring). One warning names the attributes left unread."""
    total = report_pages.listed_count(engine, study_id)
    spans = report_pages.bounds(engine, study_id, max(1, min(_cores(), total // PART)), total)
    paths = [folder / f"part-{k}.csv" for k in range(len(spans))]
    reading = _Reading(engine, study_id, names, grid, spec)
    if len(spans) == 1 or not _may_fork():
        spans = [(None, None)]
        results = [_fold(reading, spans[0], paths[0])]
    else:
        results = _in_children(reading, spans, paths)
    cols, too_long = results[0][0], list(results[0][2])
    for other, _, told in results[1:]:
        cols.merge(other)
        too_long += told
    cols.finish()
    warn_too_long(too_long)
    return Staged(cols, [(path, ends) for path, (_, ends, _) in zip(paths, results, strict=False)])


Folded = tuple[Columns, array, list[tuple[int, str]]]  # what ``_fold`` returns


@dataclasses.dataclass(frozen=True)
class _Reading:
    """What each part reads: the study's trials in ``engine``, their parameters ``names``,
    whether it is a grid's, its spec (for the budget) if sweep's."""

    engine: sqlalchemy.engine.Engine
    study_id: int
    names: list[str]
    grid: bool
    spec: SearchSpec | None


def _in_children(reading: _Reading, spans: list[Span], paths: list[Path]) -> list[Folded]:
    """Each span folded by a forked child (``_child``), whose result is pickled into a file
    beside its staged rows (a pipe would hold a child that has more to say than its buffer
    until the parent reads). A child that dies (killed, out of memory) ends the read at once,
    the others killed; an error a child raised is raised here, the first part's first, once
    every child has ended. The children are killed whenever this process stops early (Ctrl-C,
    SIGTERM: the exception unwinds through ``finally``); a child whose parent is killed ends
    itself (``_orphaned``)."""
    fork = get_context("fork")
    outs = [path.with_suffix(".result") for path in paths]
    children = [fork.Process(target=_child, args=(reading, span, path, out, os.getpid()),
                             daemon=True)
                for span, path, out in zip(spans, paths, outs, strict=True)]  # fmt: skip
    try:
        for child in children:
            child.start()
        running = {child.sentinel: child for child in children}
        while running:
            for ended in wait(list(running)):
                child = running.pop(ended)  # type: ignore[call-overload]
                child.join()
                if child.exitcode != 0:
                    raise SweepError(f"a process reading part of the study ended with exit "
                                     f"code {child.exitcode}")  # fmt: skip
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()
    results = []
    for out in outs:
        done, value = pickle.loads(out.read_bytes())
        if not done:
            raise value
        results.append(value)
    return results


def _child(reading: _Reading, span: Span, path: Path, out: Path, parent: int) -> None:
    """A forked child's part (``_fold``), its result or its error pickled into ``out``. Ctrl-C
    is the parent's to handle (it kills the children): a child ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_orphaned, args=(parent,), daemon=True).start()
    reading.engine.dispose(close=False)  # the parent's connections stay the parent's
    try:
        result: tuple[bool, Any] = (True, _fold(reading, span, path))
    except BaseException as e:  # SweepError, Terminated, anything: the parent raises it
        result = (False, e)
    try:
        data = pickle.dumps(result)
    except Exception:  # an exception that does not pickle: its line
        data = pickle.dumps((False, SweepError(str(result[1]))))
    out.write_bytes(data)


def _orphaned(parent: int) -> None:
    """End this process within a second of its parent's end (killed, out of memory): its part
    is of no use to anyone then."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _fold(reading: _Reading, span: Span, path: Path) -> Folded:
    """One part: its trials folded into columns (unfinished) and their rows staged at
    ``path``; where each row ends there; the attributes left unread for their length."""
    names, spec = reading.names, reading.spec
    cols = Columns(names, grid=reading.grid)
    too_long: list[tuple[int, str]] = []
    ends, at, encode = array("q"), 0, _Encoder()
    with path.open("wb") as staged:
        pages = report_pages.pages(reading.engine, reading.study_id, names, kept=kept,
                                   span=span, too_long=too_long)  # fmt: skip
        for page in pages:
            lines = []
            for t in page:
                outside = outside_budget(t.params, spec) if spec is not None else None
                lines.append(encode(csv_row(t, names, outside)))
                cols.add(t, outside=outside is not None)
            for line in lines:
                at += len(line)
                ends.append(at)
            staged.write(b"".join(lines))
    return cols, ends, too_long


def _may_fork() -> bool:
    """Whether this process runs no other thread, so that a forked child copies no lock
    another thread holds (a notebook's kernel runs several)."""
    return threading.active_count() == 1


def _cores() -> int:
    """The cores this process may run on (all of the machine's where the system cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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
    with its context; first, the folders of reports whose process is gone (killed before they
    could clear theirs) are cleared: each is named after its process."""
    for stale in out.glob(f"{_STAGED}*"):
        named = _STAGED_NAME.fullmatch(stale.name)
        if named and named[1] == _HOST and stale.is_dir() and not _alive(int(named[2])):
            shutil.rmtree(stale, ignore_errors=True)
    return tempfile.TemporaryDirectory(dir=out, prefix=f"{_STAGED}{_HOST}-{os.getpid()}-")


_STAGED = ".trials-"  # a staging folder's prefix; this host, its process id, a random part
_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:64] or "host"
#: A staging folder's whole name, exactly as ``staging`` makes it (tempfile's random part is
#: eight of [a-z0-9_]): only such a folder of this host is ever removed (an output folder may
#: be shared between hosts, whose process ids mean nothing here).
_STAGED_NAME = re.compile(
    rf"{re.escape(_STAGED)}([A-Za-z0-9_]{{1,64}})-(\d{{1,10}})-[a-z0-9_]{{8}}"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process; a number past any pid
        return True
    return True

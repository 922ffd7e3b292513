"""The two transactions every statement sweep issues runs in: one that reads, one that writes.

``reading`` takes no lock anywhere: a plain ``BEGIN`` on SQLite (the engine's ``begin``
listener, ``sweep.queue.sqlite``, reads ``READ_ONLY``), and on PostgreSQL a transaction at its
default READ COMMITTED, each statement seeing what was committed before it began. ``writing``
holds the write lock on SQLite for the whole transaction (``BEGIN IMMEDIATE``), and with
``lock=`` a study id it first takes that study's lock: its ``studies`` row ``FOR UPDATE`` on
PostgreSQL, the row optuna itself locks to number a new trial. Every statement that must not
interleave with an enqueue or a recovery of the same study runs under it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy

from sweep.errors import StudyGone
from sweep.queue import tables as tb

#: Connection execution option marking a transaction that only reads (SQLite: plain BEGIN).
READ_ONLY = "sweep_read_only"


@contextlib.contextmanager
def reading(engine: sqlalchemy.engine.Engine) -> Iterator[sqlalchemy.Connection]:
    """One transaction that only reads (no write lock on SQLite), rolled back at its end."""
    with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
        yield conn


@contextlib.contextmanager
def writing(
    engine: sqlalchemy.engine.Engine, *, lock: int | None = None
) -> Iterator[sqlalchemy.Connection]:
    """One write transaction, committed at its end unless it raises; ``lock``: a study id
    whose lock it takes first (StudyGone if that study was deleted)."""
    with engine.begin() as conn:
        if lock is not None:
            lock_study(conn, lock)
        yield conn


def lock_study(conn: sqlalchemy.Connection, study_id: int) -> None:
    """The study-level lock: its ``studies`` row on PostgreSQL (what optuna locks to number a
    new trial); on SQLite the transaction's ``BEGIN IMMEDIATE`` already holds the database.
    StudyGone if the study was deleted: nothing is then written for it (a trial inserted for
    a study that is gone would be an orphan, on SQLite, which enforces no foreign key)."""
    found = conn.execute(
        sqlalchemy.select(tb.studies.c.study_id)
        .where(tb.studies.c.study_id == study_id)
        .with_for_update()
    ).first()
    if found is None:
        raise StudyGone(f"study id {study_id}")

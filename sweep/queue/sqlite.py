"""SQLite made safe for many worker processes: every write transaction ``BEGIN IMMEDIATE``,
the file in WAL mode, and a busy timeout instead of an error at the first lock.

Note: optuna's docs warn against SQLite for parallel optimisation, and rightly so for its
default connection: pysqlite opens a transaction only at the first write, so optuna's
read-then-update of a WAITING trial is not atomic (``FOR UPDATE`` is ignored on SQLite) and two
processes can claim the same trial. Measured on this kind of machine: 200 enqueued trials
popped by 4 processes → duplicate claims and 3 of 4 workers dead with UpdateFinishedTrialError.
We therefore open every SQLite transaction as ``BEGIN IMMEDIATE`` (SQLAlchemy's pysqlite
recipe: driver autocommit plus an explicit BEGIN on the engine's ``begin`` event), so a
transaction takes the write lock before it reads; with that, the same run claimed 200 distinct
trials with no error. The file is in WAL mode, so readers (the dashboard, ``sweep status``)
never block writers, and every connection waits up to ``BUSY_TIMEOUT_S`` for the lock instead
of failing at once. PostgreSQL honours ``FOR UPDATE`` natively and needs none of this.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import event

from sweep.queue.transactions import READ_ONLY

# How long a writer waits for SQLite's lock before giving up (tests shorten it).
BUSY_TIMEOUT_S = float(os.environ.get("SWEEP_BUSY_TIMEOUT", "60"))


def configure(engine: sqlalchemy.engine.Engine) -> None:
    """Every connection of ``engine`` in WAL mode with the busy timeout, and every transaction
    ``BEGIN IMMEDIATE`` but those ``sweep.queue.transactions.reading`` opens (plain ``BEGIN``)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode across process crashes
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sqlalchemy.Connection) -> None:
        # Our own read-only transactions say so (``READ_ONLY``) and take no lock at all.
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed are dropped


def into_wal(path: Path) -> None:
    """Switch the database file to WAL before any engine touches it, retrying while another
    process holds it. optuna's schema set-up makes a new file in rollback-journal mode, and the
    switch used to come with each process's first configured connection, while other
    processes already read and wrote the file: in that mode a reader that wants the exclusive
    lock the switch needs, facing a writer that wants it to commit, is a deadlock that SQLite
    answers at once with "database is locked" (two launchers on a new file failed so, about
    one run in three of the full suite). Best effort: any other error is left for optuna's own
    set-up to report."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        while True:
            try:
                if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                    return
            except sqlite3.Error as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    return
            time.sleep(0.05)
    finally:
        conn.close()

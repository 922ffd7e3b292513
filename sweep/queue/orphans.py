"""Rows another client's delete left behind on SQLite, cleared before an id is given again.

optuna deletes a study through its ORM: it reads the study's trials and their rows, then
deletes what it read. SQLite enforces no foreign key for optuna (nor for sweep), so a row a
sweep worker wrote in between (a heartbeat, an attribute, a queued trial) outlives its parent.
And SQLite gives a new row the largest id plus one: once a study's newest trials are gone, the
next trials made get their ids, and the stale rows with them (a heartbeat already there, so
that every claim failed with ``UNIQUE constraint failed: trial_heartbeats.trial_id``; another
trial's attributes). So before sweep makes a study or a trial, the rows whose parent id lies
beyond the largest present are deleted: exactly the stale rows that a new id could meet (ids
below it are never given again; those rows are dead weight, not a danger). A few indexed
statements, in the transaction that then makes the study or the trials.

PostgreSQL enforces the foreign keys (the delete is refused instead) and never reuses an id.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy

from sweep.queue import tables as tb

logger = logging.getLogger(__name__)

#: The tables whose rows belong to a trial, and to a study.
TRIAL_ROWS = (tb.params, tb.values, tb.steps, tb.user_attrs, tb.system_attrs, tb.heartbeats)
STUDY_ROWS = (tb.trials, tb.directions, tb.study_user_attrs, tb.study_system_attrs)


def clear(conn: Any) -> int:
    """Delete the rows whose study or trial is gone and whose id SQLite would give again,
    in the caller's write transaction; how many. Nothing on PostgreSQL."""
    if conn.dialect.name != "sqlite":
        return 0

    def top(column: Any) -> int:
        return conn.execute(sqlalchemy.select(sqlalchemy.func.max(column))).scalar() or 0

    study = top(tb.studies.c.study_id)
    stale = sqlalchemy.select(tb.trials.c.trial_id).where(tb.trials.c.study_id > study)
    removed = 0
    for table in TRIAL_ROWS:  # the rows of the stale trials first, wherever their ids lie
        removed += conn.execute(table.delete().where(table.c.trial_id.in_(stale))).rowcount
    for table in STUDY_ROWS:
        removed += conn.execute(table.delete().where(table.c.study_id > study)).rowcount
    trial = top(tb.trials.c.trial_id)
    for table in TRIAL_ROWS:
        removed += conn.execute(table.delete().where(table.c.trial_id > trial)).rowcount
    if removed:
        logger.warning("removed %d row(s) that a deleted study left behind", removed)
    return removed

"""The queue's guard: a trigger that keeps other optuna clients from taking sweep's queue.

A sweep study's WAITING trials are its queue (``sweep.queue.claims``), and optuna's own
``study.ask()`` (so ``study.optimize`` and the ``optuna ask`` CLI too) starts by popping the
oldest WAITING trial of the study: before this guard, a notebook's ``ask()`` then ``tell``
took a grid point away and it was never trained. So sweep adds one trigger to optuna's
``trials`` table: in a study that has a stored spec (a sweep study), a WAITING trial becomes
RUNNING only if it already has a heartbeat. A sweep worker's claim records the heartbeat
first, in the same transaction; optuna's pop never does. optuna takes the refusal (an
integrity error) as "claimed by someone else", tries the next WAITING trial, and having found
none creates a new trial of its own: the other client gets a trial, and the queue stays whole.
Reading the study (the dashboard, the ``optuna`` CLI, SQL) is untouched; WAITING trials are
still WAITING trials.

Made by the first launcher or ``sweep worker`` that tops a study up, once per database, like
sweep's indexes (``sweep.queue.storage``). Where it cannot be made (on PostgreSQL a trigger needs
the table's owner, and its function the right to create one), a warning says so and the queue
relies on its top-up alone: a point whose trial another client took and did not train is
queued again (``sweep.queue.coverage``), later rather than never.

Note: an ``ask()`` in a sweep study tries every WAITING trial before it makes its own, one
refused update each (optuna's loop, not ours): 2.3-2.6 s with 640 queued on SQLite, 4.6-5.7 s
on PostgreSQL (load average 6.5), against 0.15-0.41 s when it popped the first one.
Note: on SQLite, a future optuna migration that rebuilds ``trial_heartbeats`` or
``study_user_attributes`` (``optuna storage upgrade``) may be refused because the trigger
names them; ``DROP TRIGGER sweep_queue_guard`` first, and sweep makes it again.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage

from sweep.queue.attrs import SPEC
from sweep.queue.storage import mask_password, root_message
from sweep.queue.transactions import reading, writing

logger = logging.getLogger(__name__)

NAME = "sweep_queue_guard"
#: The PostgreSQL advisory lock that serialises making it ("guard" in ASCII).
_LOCK = 0x6775617264
_MESSAGE = "a WAITING trial of a sweep study is claimed by sweep workers only"
#: The condition under which the trigger refuses: sweep's study, and no heartbeat yet.
_REFUSE = (
    f"EXISTS (SELECT 1 FROM study_user_attributes WHERE study_id = OLD.study_id "
    f"AND key = '{SPEC}') "
    "AND NOT EXISTS (SELECT 1 FROM trial_heartbeats WHERE trial_id = OLD.trial_id)"
)
_CHANGE = "OLD.state = 'WAITING' AND NEW.state = 'RUNNING'"

_SQLITE = (
    f"CREATE TRIGGER IF NOT EXISTS {NAME} BEFORE UPDATE OF state ON trials FOR EACH ROW "
    f"WHEN {_CHANGE} AND {_REFUSE} BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"
)
# check_violation (SQLSTATE 23514) reaches optuna as an IntegrityError, as SQLite's RAISE does.
_POSTGRESQL = (
    f"CREATE OR REPLACE FUNCTION {NAME}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    f"IF {_REFUSE} THEN RAISE EXCEPTION '{_MESSAGE}' USING ERRCODE = 'check_violation'; "
    "END IF; RETURN NEW; END $$",
    f"CREATE TRIGGER {NAME} BEFORE UPDATE OF state ON trials FOR EACH ROW "
    f"WHEN ({_CHANGE}) EXECUTE FUNCTION {NAME}()",
)


def installed(conn: Any) -> bool:
    """Whether the database has the guard on its ``trials`` table."""
    if conn.dialect.name == "sqlite":
        query = "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = :name"
    else:  # on the ``trials`` the search path finds, as every other statement does
        query = "SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = to_regclass('trials')"
    return conn.execute(sqlalchemy.text(query), {"name": NAME}).first() is not None


def ensure(storage: RDBStorage) -> None:
    """Make the guard unless the database has it: one catalog read when it does."""
    engine = storage.engine
    with reading(engine) as conn:
        if installed(conn):
            return
    try:
        with writing(engine) as conn:  # SQLite: BEGIN IMMEDIATE, the write lock
            if conn.dialect.name != "sqlite":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
            if installed(conn):  # made while we waited for the lock
                return
            for statement in (_SQLITE,) if conn.dialect.name == "sqlite" else _POSTGRESQL:
                conn.exec_driver_sql(statement)
        logger.info("storage %s: created trigger %s", mask_password(str(engine.url)), NAME)
    except sqlalchemy.exc.SQLAlchemyError as e:
        logger.warning(
            "storage %s: cannot create trigger %s (%s); another optuna client's ask() may take "
            "a queued trial, whose point is then queued again", mask_password(str(engine.url)),
            NAME, root_message(e),
        )  # fmt: skip

"""The queue's guard: a trigger that keeps other optuna clients from taking sweep's queue.

A sweep study's WAITING trials are its queue (``sweep.queue.claims``), and optuna's own
``study.ask()`` (so ``study.optimize`` and the ``optuna ask`` CLI too) starts by popping the
oldest WAITING trial of the study: before this guard, a notebook's ``ask()`` then ``tell``
took a grid point away and it was never trained. So sweep adds one trigger to optuna's
``trials`` table: in a study that has a stored spec (a sweep study), a WAITING trial becomes
RUNNING only if it already has a heartbeat, and a trial that is not WAITING is never started
(set RUNNING with a new start) again. A sweep worker's claim records the heartbeat first, in
the same transaction; optuna's pop never does. optuna takes the refusal (an integrity error)
as "claimed by someone else", tries the next WAITING trial, and having found none creates a
new trial of its own: the other client gets a trial, and the queue stays whole. Reading the
study (the dashboard, the ``optuna`` CLI, SQL) is untouched; WAITING trials are still WAITING
trials.

"Never started again" closes a race of optuna's pop on SQLite: it reads the trial's state, and
then, in a transaction of its own, sets RUNNING with a new start, whatever the state has become.
A sweep worker that claimed the trial in between (so it has its heartbeat) lost it to the
other client, whose ``tell`` then finished it under the worker's tags without training it
(a grid point lost while its launcher said 8/8: in CI, and once in some 40 runs here;
``test_an_ask_whose_read_a_claim_overtook_takes_nothing`` makes it every time). On PostgreSQL
the pop locks the row and reads it again, so it never overtook a claim. The first version of
this trigger (``RETIRED``) let that update through; it is replaced where it is found.

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
names them; ``DROP TRIGGER sweep_queue_guard_v2`` first, and sweep makes it again.
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

NAME = "sweep_queue_guard_v2"
#: Earlier versions of the trigger (and, on PostgreSQL, of its function): dropped where found.
RETIRED = ("sweep_queue_guard",)
#: The PostgreSQL advisory lock that serialises making it ("guard" in ASCII).
_LOCK = 0x6775617264
_MESSAGE = "a trial of a sweep study becomes RUNNING only when a sweep worker claims it"


def _refuse(distinct: str) -> str:
    """The condition under which the trigger refuses (``distinct``: the dialect's null-safe
    "differs"): in sweep's study, a WAITING trial without a heartbeat yet, or a trial that is
    not WAITING given a new start. A write-back's fence leaves the start as it is."""
    return (
        f"EXISTS (SELECT 1 FROM study_user_attributes WHERE study_id = OLD.study_id "
        f"AND key = '{SPEC}') AND ("
        "(OLD.state = 'WAITING' "
        "AND NOT EXISTS (SELECT 1 FROM trial_heartbeats WHERE trial_id = OLD.trial_id)) "
        f"OR (OLD.state <> 'WAITING' AND NEW.datetime_start {distinct} OLD.datetime_start))"
    )


_CHANGE = "NEW.state = 'RUNNING'"

_SQLITE = (
    *(f"DROP TRIGGER IF EXISTS {old}" for old in RETIRED),
    f"CREATE TRIGGER IF NOT EXISTS {NAME} BEFORE UPDATE OF state ON trials FOR EACH ROW "
    f"WHEN {_CHANGE} AND {_refuse('IS NOT')} BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END",
)
# check_violation (SQLSTATE 23514) reaches optuna as an IntegrityError, as SQLite's RAISE does.
_POSTGRESQL = (
    *(f"DROP TRIGGER IF EXISTS {old} ON trials" for old in RETIRED),
    *(f"DROP FUNCTION IF EXISTS {old}()" for old in RETIRED),
    f"CREATE OR REPLACE FUNCTION {NAME}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    f"IF {_refuse('IS DISTINCT FROM')} THEN RAISE EXCEPTION '{_MESSAGE}' "
    "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$",
    f"DROP TRIGGER IF EXISTS {NAME} ON trials",  # with an earlier one, made again by its sweep
    f"CREATE TRIGGER {NAME} BEFORE UPDATE OF state ON trials FOR EACH ROW "
    f"WHEN ({_CHANGE}) EXECUTE FUNCTION {NAME}()",
)


def _found(conn: Any) -> set[str]:
    """Which of the guard's names, this version's and the retired ones, ``trials`` has."""
    names = sqlalchemy.bindparam("names", expanding=True)
    if conn.dialect.name == "sqlite":
        query = sqlalchemy.text(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name IN :names"
        )
    else:  # on the ``trials`` the search path finds, as every other statement does
        query = sqlalchemy.text(
            "SELECT tgname FROM pg_trigger WHERE tgname IN :names "
            "AND tgrelid = to_regclass('trials')"
        )
    query = query.bindparams(names)
    return set(conn.execute(query, {"names": [NAME, *RETIRED]}).scalars())


def installed(conn: Any) -> bool:
    """Whether the database has this guard on its ``trials`` table, and no earlier one."""
    return _found(conn) == {NAME}


def ensure(storage: RDBStorage) -> None:
    """Make the guard (replacing an earlier one) unless the database has it: one catalog read
    when it does."""
    engine = storage.engine
    with reading(engine) as conn:
        found = _found(conn)
    if found == {NAME}:
        return
    try:
        with writing(engine) as conn:  # SQLite: BEGIN IMMEDIATE, the write lock
            if conn.dialect.name != "sqlite":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
            found = _found(conn)
            if found == {NAME}:  # made while we waited for the lock
                return
            for statement in _SQLITE if conn.dialect.name == "sqlite" else _POSTGRESQL:
                conn.exec_driver_sql(statement)
        logger.info("storage %s: created trigger %s", mask_password(str(engine.url)), NAME)
    except sqlalchemy.exc.SQLAlchemyError as e:
        url = mask_password(str(engine.url))
        if found - {NAME}:  # an earlier guard stays, and still refuses optuna's pop
            logger.warning(
                "storage %s: cannot replace trigger %s with %s (%s); the earlier one stays: "
                "run sweep once as the owner of the trials table to replace it",
                url, ", ".join(sorted(found - {NAME})), NAME, root_message(e),
            )  # fmt: skip
            return
        logger.warning(
            "storage %s: cannot create trigger %s (%s); another optuna client's ask() may take "
            "a queued trial, whose point is then queued again", url, NAME, root_message(e),
        )  # fmt: skip

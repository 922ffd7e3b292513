"""Trials whose workers are gone: failed and requeued, or given back to the queue.

``recover``: a trial that a sweep worker claimed and whose heartbeat stopped for longer than
the grace period is failed and its replacement enqueued in the same transaction, with optuna's
``retry_history``, under the study lock; after ``max_retries`` deaths it stays FAIL with a
``fail_reason``. The replacement runs the orphan's parameters (fixed) and resumes from its
last checkpoint (``sweep.queue.handover``), so a killed trial loses only what it trained since
(``sweep.trial.checkpoint``'s spacing: an epoch, more where epochs are cheap). Trials without
sweep's tags (another optuna client's) are never touched. ``abandon_run`` does the same at
once for a run whose processes died; ``release_run`` gives an interrupted run's trials back.

Every read here names a study and a state and goes through sweep's index on ``(study_id,
state, trial_id)`` (``sweep.queue.tables.QUEUE_INDEX``), so a recovery costs the same in a study
of 10^5 finished trials as in one of 10^3 (its plan is pinned in
``tests/sweep/test_queue_scale.py``).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from sweep.queue import tables as tb
from sweep.queue.attrs import (
    FAIL_REASON,
    LOST,
    RUN_TAG,
    WORKER_TAG,
    attr,
)
from sweep.queue.claims import release_in
from sweep.queue.coverage import keyed
from sweep.queue.handover import handover
from sweep.queue.tables import trials
from sweep.queue.topup import enqueue
from sweep.queue.transactions import writing


def recover(storage: RDBStorage, study_id: int, *, grace: float, max_retries: int) -> list[int]:
    """Fail the sweep-claimed RUNNING trials whose heartbeat is older than ``grace`` seconds
    and enqueue each one's replacement in the same transaction; return the failed numbers.

    Heartbeats are compared with the database's clock, as optuna's own stale-trial check
    does, so hosts' clocks need not agree. A trial whose workers died ``max_retries`` times
    is not requeued: it ends FAIL with ``fail_reason = "worker died N times"``. Under the
    study lock, which numbers the replacements (``sweep.queue.topup.enqueue``) and raises
    StudyGone for a study that was deleted.
    """
    h = tb.heartbeats
    with writing(storage.engine, lock=study_id) as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        cutoff = now.replace(tzinfo=None) - timedelta(seconds=grace)
        orphans = _orphans(
            conn, study_id, lambda j: j.join(h, h.c.trial_id == trials.c.trial_id),
            h.c.heartbeat < cutoff,
        )  # fmt: skip
        why = "worker {worker} silent for more than " + f"{grace:g} s"
        return _fail_and_requeue(conn, study_id, orphans, max_retries=max_retries, why=why)


def abandon_run(storage: RDBStorage, study_id: int, run_id: str, *, max_retries: int) -> list[int]:
    """A launcher whose worker processes died (the OOM killer; loky then ends the others too)
    fails and requeues its run's RUNNING trials, each counted as a death as ``recover``
    would count it, at once rather than after the grace period."""
    joins, names_run = _of_run(run_id)
    with writing(storage.engine, lock=study_id) as conn:
        orphans = _orphans(conn, study_id, joins, names_run)
        why = "worker {worker} died with its run's processes"
        return _fail_and_requeue(conn, study_id, orphans, max_retries=max_retries, why=why)


def release_run(storage: RDBStorage, study_id: int, run_id: str) -> int:
    """Put every RUNNING trial of run ``run_id`` back in the queue (the launcher was
    interrupted); a trial another run has claimed since is not touched. How many it put back."""
    joins, names_run = _of_run(run_id)
    with writing(storage.engine) as conn:
        orphans = _orphans(conn, study_id, joins, names_run)
        return sum(release_in(conn, trial_id, started) for trial_id, _, started, _ in orphans)


def _of_run(run_id: str) -> tuple[Any, Any]:
    """A join to the run tag, and the condition that it names ``run_id``."""
    run, on_run = keyed(tb.user_attrs, RUN_TAG, "run")
    return (lambda j: j.join(run, on_run)), run.c.value_json == json.dumps(run_id)


def _orphans(conn: Any, study_id: int, joins: Any, *where: Any) -> list[Any]:
    """(trial id, number, claim start, worker tag) of the study's RUNNING sweep-claimed trials
    that ``joins`` and ``where`` select; their rows locked on PostgreSQL until the transaction
    ends. What a successor takes over is read later, by ``handover``."""
    tag, on_tag = keyed(tb.user_attrs, WORKER_TAG, "tag")
    return conn.execute(
        sqlalchemy.select(
            trials.c.trial_id, trials.c.number, trials.c.datetime_start, tag.c.value_json
        )
        .select_from(joins(trials.join(tag, on_tag)))
        .where(trials.c.study_id == study_id, trials.c.state == TrialState.RUNNING, *where)
        .order_by(trials.c.trial_id)
        .with_for_update(of=trials)
    ).all()  # fmt: skip


def _fail_and_requeue(
    conn: Any, study_id: int, orphans: list[Any], *, max_retries: int, why: str
) -> list[int]:
    """Fail each orphan whose claim still holds it and enqueue its replacement (its fixed
    parameters, else those it ran with, optuna's ``failed_trial`` and ``retry_history``, and
    its last checkpoint as ``resume_from``), unless its workers have died ``max_retries``
    times; the numbers of the trials failed."""
    failed, fixed, extras = [], [], []
    for trial_id, number, started, worker_json in orphans:
        update = conn.execute(
            trials.update()
            .where(*tb.held_by(trial_id, started))
            .values(state=TrialState.FAIL, datetime_complete=tb.utc_now())
        )
        if update.rowcount != 1:  # finished or released meanwhile: not an orphan after all
            continue
        failed.append(number)
        work = handover(conn, trial_id, number)
        deaths = len(work.history) + 1
        attrs = {LOST: why.format(worker=attr(worker_json, str, "?"))}
        if deaths >= max_retries:
            attrs[FAIL_REASON] = f"worker died {deaths} times"
        else:
            fixed.append(work.fixed)
            extras.append(work.successor(number))
        tb.replace_attrs(
            conn, tb.user_attrs, trial_id, {k: json.dumps(v) for k, v in attrs.items()}
        )
    enqueue(conn, study_id, fixed, extras)
    return failed

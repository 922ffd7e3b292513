"""What a launcher reads while its workers run: what is left that it could take, how far the
study is, the epoch each running trial is at, and how many points of its grid are done;
read-only, no lock."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from sweep.queue import tables as tb
from sweep.queue.attrs import RUN_TAG, WORKER_TAG, attr
from sweep.queue.coverage import done_points, has_reason, keyed
from sweep.queue.tables import trials
from sweep.queue.transactions import reading


@dataclasses.dataclass(frozen=True)
class Running:
    """A RUNNING trial a sweep worker claimed."""

    number: int
    run: str  # the claiming launcher's run id
    worker: str  # host:pid
    silent: float  # seconds since its last heartbeat, by the database's clock


@dataclasses.dataclass(frozen=True)
class Pending:
    """What a launcher may still have to wait for."""

    waiting: int
    running: tuple[Running, ...]  # claimed by sweep workers, anywhere

    @property
    def empty(self) -> bool:
        """Nothing left that a sweep worker could take, now or after a recovery."""
        return not self.waiting and not self.running


def pending(storage: RDBStorage, study_id: int) -> Pending:
    """The study's WAITING count and its RUNNING trials, sweep's with their heartbeats."""
    run, on_run = keyed(tb.user_attrs, RUN_TAG, "run")
    worker, on_worker = keyed(tb.user_attrs, WORKER_TAG, "worker")
    h = tb.heartbeats
    query = (
        sqlalchemy.select(trials.c.number, trials.c.state, run.c.value_json,
                          worker.c.value_json, h.c.heartbeat)
        .select_from(
            trials.outerjoin(run, on_run).outerjoin(worker, on_worker)
            .outerjoin(h, h.c.trial_id == trials.c.trial_id)
        )
        .where(
            trials.c.study_id == study_id,
            trials.c.state.in_([TrialState.WAITING, TrialState.RUNNING]),
        )
    )  # fmt: skip
    with reading(storage.engine) as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        rows = conn.execute(query).all()
    now = now.replace(tzinfo=None)
    waiting, running = 0, []
    for number, state, run_json, worker_json, beat in rows:
        if state == TrialState.WAITING:
            waiting += 1
        elif None not in (run_json, worker_json, beat):  # else another client's: not waited for
            silent = max(0.0, (now - beat).total_seconds())
            running.append(
                Running(number, attr(run_json, str, "?"), attr(worker_json, str, "?"), silent)
            )
    return Pending(waiting, tuple(sorted(running, key=lambda r: r.number)))


@dataclasses.dataclass(frozen=True)
class Epoch:
    """A running trial's last reported epoch (``sweep.trial.objective`` reports the validation
    accuracy after each)."""

    number: int
    epoch: int | None  # its last reported step; None before its first
    accuracy: float | None  # the value reported then, in percent; None if not a finite number


def latest_epochs(storage: RDBStorage, study_id: int, numbers: Sequence[int]) -> tuple[Epoch, ...]:
    """The last reported epoch of each of the study's RUNNING trials ``numbers`` (a few: the
    ones a display shows), read every second or two while a study runs: the RUNNING trials
    through the queue's index (``tables.QUEUE_INDEX``), each one's last step through optuna's
    unique index on ``(trial_id, step)``, at the same cost at 10^6 trials as at 10^3. A step or
    value another client wrote in SQL that is not a number is shown as none."""
    if not numbers:
        return ()
    s = tb.steps
    last = (
        sqlalchemy.select(sqlalchemy.func.max(s.c.step))
        .where(s.c.trial_id == trials.c.trial_id)
        .correlate(trials)
        .scalar_subquery()
    )
    kind = sqlalchemy.type_coerce(s.c.intermediate_value_type, sqlalchemy.String)  # any name
    query = (
        sqlalchemy.select(trials.c.number, s.c.step, s.c.intermediate_value, kind)
        .select_from(trials.outerjoin(s, sqlalchemy.and_(s.c.trial_id == trials.c.trial_id,
                                                         s.c.step == last)))
        .where(trials.c.study_id == study_id, trials.c.state == TrialState.RUNNING,
               trials.c.number.in_(list(numbers)))
    )  # fmt: skip
    with reading(storage.engine) as conn:
        rows = conn.execute(query).all()
    shown = {}
    for number, step, value, value_kind in rows:
        finite = value_kind == "FINITE" and isinstance(value, int | float) and math.isfinite(value)
        shown[number] = Epoch(number, step if type(step) is int else None,
                              float(value) if finite else None)  # fmt: skip
    return tuple(shown[n] for n in numbers if n in shown)


def tally(storage: RDBStorage, study_id: int, *, grid: bool = False) -> tuple[int, float | None]:
    """(finished trials that count, the best finite value) of a maximised study, in one
    read-only transaction. A ``grid`` counts the trials its points were trained in only as
    far as a sweep worker ran them (its tags), so that another client's trials in the study
    are never counted as points: a lower bound while it runs, ``grid_done`` says exactly."""
    v = tb.values
    trained = trials.c.state.in_([TrialState.COMPLETE, TrialState.PRUNED])
    if grid:
        attrs = tb.user_attrs
        tagged = sqlalchemy.exists().where(
            attrs.c.trial_id == trials.c.trial_id, attrs.c.key == RUN_TAG
        )
        trained = sqlalchemy.and_(trained, tagged.correlate(trials))
    counted = sqlalchemy.or_(
        trained, sqlalchemy.and_(trials.c.state == TrialState.FAIL, has_reason())
    )
    done = sqlalchemy.select(sqlalchemy.func.count()).where(trials.c.study_id == study_id, counted)
    best = (
        sqlalchemy.select(sqlalchemy.func.max(v.c.value))
        .select_from(trials.join(v, v.c.trial_id == trials.c.trial_id))
        .where(
            trials.c.study_id == study_id,
            trials.c.state == TrialState.COMPLETE,
            v.c.objective == 0,
            v.c.value_type == tb.FINITE,
        )
    )
    with reading(storage.engine) as conn:
        return conn.execute(done).scalar_one(), conn.execute(best).scalar()


def grid_done(storage: RDBStorage, study_id: int, points: Sequence[dict[str, Any]]) -> int:
    """How many of the grid's ``points`` a finished trial covers (``sweep.queue.coverage``), read
    only: what a launcher's last line and its exit code say."""
    with reading(storage.engine) as conn:
        return done_points(conn, study_id, points)

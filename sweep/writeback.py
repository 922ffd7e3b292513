"""A worker's storage: the trial it runs lives in memory and is written in few transactions.

optuna's RDB storage commits every call on its own, so one trial costs dozens of
transactions (each parameter, attribute and intermediate value), and popping the queue
re-reads every WAITING trial (``Study._pop_waiting_trial_id`` → ``get_all_trials``), so a
claim grows with the queue. Measured with a trivial objective (``make bench``): 31 ms a
trial with 300 queued, and 16 trials/s for 8 workers on one SQLite file (#5).

``WriteBackStorage`` wraps the RDB storage in a worker process:
  - ``claim`` moves the oldest WAITING trial to RUNNING, records its first heartbeat and
    tags it (run, worker) in one transaction: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the
    ``BEGIN IMMEDIATE`` of ``sweep.storage`` on SQLite. Tag and claim cannot be separated
    by a crash, so the parent can always find and release its run's trials.
  - Writes to a claimed trial (parameters, attributes, intermediate values) update a local
    copy at once and reach the database in one transaction: immediately when the last
    write-out was at least ``FLUSH_INTERVAL_S`` ago, else with the next heartbeat or when
    the trial finishes. A trial that reports an epoch every few seconds is thus written as
    before, epoch by epoch; a fast one costs two transactions, claim and finish.
  - Everything else (other trials, studies) goes to optuna's cached storage unchanged.

What is held back is the running trial's own progress, never a result: its final state,
value and attributes are one transaction, so a worker killed at any moment leaves either a
finished trial or a RUNNING one whose heartbeat stops, which is failed and requeued.

Note: the transactions reuse the RDB storage's ``_…_without_commit`` helpers, private API
kept by optuna since 3.0; ``tests/sweep/test_writeback.py`` checks every field they write
against what optuna itself reads back.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Container, Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import optuna
import sqlalchemy
from optuna import distributions
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models
from optuna.storages._rdb.models import TrialIntermediateValueModel, TrialValueModel
from optuna.trial import FrozenTrial, TrialState

from sweep.storage import READ_ONLY

logger = logging.getLogger(__name__)

# Longest a claimed trial's writes wait before going to the database on their own account.
FLUSH_INTERVAL_S = 1.0

_Write = tuple[str, Any, Any, Any]  # (kind, key, value, distribution or None)


@dataclasses.dataclass
class _Held:
    """A trial this process claimed and runs."""

    trial: FrozenTrial  # up to date with every write, committed or not
    study_id: int
    flushed_at: float  # time.monotonic() of the last write-back (or of the claim)
    pending: list[_Write] = dataclasses.field(default_factory=list)  # not yet committed
    lost: bool = False  # failed elsewhere (stale) meanwhile: nothing more is stored


class WriteBackStorage(BaseStorage, BaseHeartbeat):
    """optuna storage for a worker: ``claim`` trials, then write each back in one go.

    Safe for several threads (the trial runs in one, its heartbeat in another) and for any
    number of processes and hosts on one database.
    """

    def __init__(self, backend: RDBStorage) -> None:
        self.backend = backend
        self._cache = _CachedStorage(backend)
        self._held: dict[int, _Held] = {}  # trial id → a trial this process runs
        self._finished: dict[int, FrozenTrial] = {}  # the last few trials this process ended
        self._known: dict[tuple[int, str], distributions.BaseDistribution] = {}
        self._lock = threading.Lock()  # guards the dicts above; never held for database work
        self._io_lock = threading.Lock()  # one write-back at a time, in order

    # -- the queue -------------------------------------------------------------------------

    def claim(self, study_id: int, tags: dict[str, Any] | None = None) -> int | None:
        """Move the study's oldest WAITING trial to RUNNING, with its first heartbeat and
        ``tags`` as user attributes, in one transaction; return its id, None if none waits."""
        locking = self.backend.engine.name != "sqlite"  # SQLite: BEGIN IMMEDIATE serialises
        with self.backend.engine.begin() as conn:
            oldest = _SQL.oldest_waiting_locked if locking else _SQL.oldest_waiting
            row = conn.execute(oldest, {"sid": study_id}).first()
            if row is None:
                return None
            trial_id, number = row
            started = _utc_now()
            conn.execute(_SQL.start, {"tid": trial_id, "started": started})
            conn.execute(_T.heartbeats.insert(), {"trial_id": trial_id})
            tags_json = {k: json.dumps(v) for k, v in (tags or {}).items()}
            _replace_attrs(conn, _T.user_attrs, trial_id, tags_json)
        with self._reading() as conn:  # after the commit: other writers need not wait for it
            frozen = _read_claimed(conn, trial_id, number, started)
        with self._lock:
            self._held[trial_id] = _Held(frozen, study_id, time.monotonic())
        return trial_id

    def has_study_system_attr(self, study_id: int, key: str) -> bool:
        """Whether the study carries system attribute ``key`` (one indexed read)."""
        attrs = _T.study_system_attrs
        query = sqlalchemy.select(attrs.c.key).where(
            attrs.c.study_id == study_id, attrs.c.key == key
        )
        with self._reading() as conn:
            return conn.execute(query).first() is not None

    def _reading(self) -> Any:
        """A connection for a read-only transaction (no write lock on SQLite)."""
        return self.backend.engine.connect().execution_options(**{READ_ONLY: True})

    # -- writes to a claimed trial: held locally, then written back ------------------------

    def _hold(self, trial_id: int, write: _Write) -> bool:
        """Apply ``write`` to the local copy of a claimed trial and queue it; False if the
        trial is not one of ours (the caller then writes through).

        Attribute values are JSON-encoded here, so an unstorable value fails in the caller,
        as with optuna's storage, and a later change to a mutable value is not picked up.
        """
        kind, key, value, distribution = write
        if kind in ("user", "system"):
            value = json.dumps(value)
            write = (kind, key, value, None)
        with self._lock:
            held = self._held.get(trial_id)
            if held is None:
                return False
            if held.lost:
                return True
            trial = held.trial
            if kind == "param":
                trial.params[key] = distribution.to_external_repr(value)
                trial.distributions[key] = distribution
            elif kind == "step":
                trial.intermediate_values[key] = value
            else:
                attrs = trial.user_attrs if kind == "user" else trial.system_attrs
                attrs[key] = json.loads(value)
            held.pending.append(write)
            due = time.monotonic() - held.flushed_at >= FLUSH_INTERVAL_S
        if due:
            self._try_write_back(trial_id)
        return True

    def _try_write_back(self, trial_id: int) -> None:
        """An early write-back: the writes are already held, so a database error only
        delays them (they stay pending for the next heartbeat or the finish). A trial found
        failed elsewhere is reported by its finish, which raises."""
        try:
            self._write_back(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.warning("trial id %d was failed elsewhere; its writes are dropped", trial_id)
        except Exception:
            logger.warning("trial id %d: write-back delayed", trial_id, exc_info=True)

    def _write_back(
        self,
        trial_id: int,
        *,
        state: TrialState | None = None,
        values: Sequence[float] | None = None,
    ) -> None:
        """Commit a claimed trial's pending writes (and its end) in one transaction.

        Raises UpdateFinishedTrialError, dropping the writes, if the trial was finished
        elsewhere (failed as stale); on a database error the writes stay pending. The
        database work runs outside ``_lock``, so the training thread never waits on a
        heartbeat's write-back to read its own trial.
        """
        with self._io_lock:
            with self._lock:
                held = self._held.get(trial_id)
                if held is None:  # finished meanwhile: nothing left to write
                    return
                if held.lost:
                    if state is not None:
                        del self._held[trial_id]
                    raise optuna.exceptions.UpdateFinishedTrialError(_LOST.format(trial_id))
                writes, held.pending = held.pending, []
                held.flushed_at = time.monotonic()  # no retry storm on errors
            try:
                with self.backend.engine.begin() as conn:
                    _transition(conn, trial_id, state)
                    _write(conn, trial_id, writes)
                    if values is not None:
                        _insert_values(conn, trial_id, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Keep the local copy until the trial's own end: optuna's tell reads the
                # trial before finishing it and must see it RUNNING to reach us and fail here.
                with self._lock:
                    held.lost, held.pending = True, []
                    if state is not None:
                        del self._held[trial_id]
                raise
            except BaseException:
                with self._lock:
                    held.pending = writes + held.pending
                raise
        if state is not None:
            with self._lock:
                trial = self._held.pop(trial_id).trial
                trial.state = state
                trial.values = None if values is None else [float(v) for v in values]
                trial.datetime_complete = datetime.now()
                self._finished[trial_id] = trial  # optuna's tell reads it back at once
                while len(self._finished) > 16:
                    self._finished.pop(next(iter(self._finished)))

    def _check_distribution(
        self, study_id: int, name: str, distribution: distributions.BaseDistribution
    ) -> None:
        """Raise, as optuna does, if ``name`` was suggested before in this study from an
        incompatible distribution. Read from the database once per name and process."""
        known = self._known.get((study_id, name))
        if known is None:
            params, trials = _T.params, _T.trials
            query = (
                sqlalchemy.select(params.c.distribution_json)
                .join(trials, trials.c.trial_id == params.c.trial_id)
                .where(trials.c.study_id == study_id, params.c.param_name == name)
                .limit(1)
            )
            with self._reading() as conn:
                text = conn.execute(query).scalar()
            known = distribution if text is None else distributions.json_to_distribution(text)
        distributions.check_distribution_compatibility(known, distribution)
        self._known[(study_id, name)] = known

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: distributions.BaseDistribution,
    ) -> None:
        held = self._held.get(trial_id)
        if held is not None:
            self._check_distribution(held.study_id, param_name, distribution)
        write = ("param", param_name, param_value_internal, distribution)
        if not self._hold(trial_id, write):
            self._cache.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        if not self._hold(trial_id, ("step", step, intermediate_value, None)):
            self._cache.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._hold(trial_id, ("user", key, value, None)):
            self._cache.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._hold(trial_id, ("system", key, value, None)):
            self._cache.set_trial_system_attr(trial_id, key, value)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        if trial_id in self._held and state.is_finished():
            self._write_back(trial_id, state=state, values=values)
            return True
        return self._cache.set_trial_state_values(trial_id, state, values)

    def record_heartbeat(self, trial_id: int) -> None:
        """Record the heartbeat, then write back the trial's pending writes, so a running
        trial is never more than one heartbeat interval behind in the database."""
        self.backend.record_heartbeat(trial_id)  # its own transaction: nothing can hold it up
        if trial_id in self._held:
            self._try_write_back(trial_id)

    # -- reads: our running trials from memory, everything else from optuna's cache --------

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            held = self._held.get(trial_id)
            trial = held.trial if held is not None else self._finished.get(trial_id)
            if trial is not None:
                return copy.deepcopy(trial)
        return self._cache.get_trial(trial_id)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        trials = self._cache.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        if not self._held:
            return trials
        with self._lock:
            ours = {i: h.trial for i, h in self._held.items() if not h.lost}
            # A trial failed elsewhere (stale) is shown as the database has it.
            return [
                copy.deepcopy(ours[t._trial_id])
                if t._trial_id in ours and t.state == TrialState.RUNNING
                else t
                for t in trials
            ]

    # -- everything else is optuna's --------------------------------------------------------

    def create_new_study(self, directions: Sequence[Any], study_name: str | None = None) -> int:
        return self._cache.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self._cache.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._cache.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._cache.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._cache.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._cache.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[Any]:
        return self._cache.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._cache.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._cache.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[Any]:
        return self._cache.get_all_studies()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._cache.create_new_trial(study_id, template_trial)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._cache.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._cache.get_best_trial(study_id)

    def remove_session(self) -> None:
        self.backend.remove_session()

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.backend._get_stale_trial_ids(study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self.backend.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self.backend.get_heartbeat_stale_trial_callback()


class _T:
    """optuna's tables, written with SQLAlchemy Core: one statement per table and write-back
    instead of the ORM's read-modify-write per value."""

    trials = models.TrialModel.__table__
    heartbeats = models.TrialHeartbeatModel.__table__
    params = models.TrialParamModel.__table__
    values = models.TrialValueModel.__table__
    steps = models.TrialIntermediateValueModel.__table__
    user_attrs = models.TrialUserAttributeModel.__table__
    system_attrs = models.TrialSystemAttributeModel.__table__
    study_system_attrs = models.StudySystemAttributeModel.__table__


def _prepared() -> SimpleNamespace:
    """The statements of the hot path, built once (building them per call cost a third of
    a claim); ``tid`` and ``sid`` bind the trial and the study id."""
    trials, tid = _T.trials, sqlalchemy.bindparam("tid")
    running = (trials.c.trial_id == tid, trials.c.state == TrialState.RUNNING)
    oldest_waiting = (
        sqlalchemy.select(trials.c.trial_id, trials.c.number)
        .where(
            trials.c.study_id == sqlalchemy.bindparam("sid"),
            trials.c.state == TrialState.WAITING,
        )
        .order_by(trials.c.trial_id)
        .limit(1)
    )
    keys = sqlalchemy.bindparam("keys", expanding=True)
    reads = [
        ("params", _T.params, ("param_name", "param_value", "distribution_json", "param_id")),
        ("steps", _T.steps, ("step", "intermediate_value", "intermediate_value_type")),
        ("user", _T.user_attrs, ("key", "value_json")),
        ("system", _T.system_attrs, ("key", "value_json")),
    ]
    keyed = [(_T.params, "param_name"), (_T.steps, "step"), (_T.user_attrs, "key"),
             (_T.system_attrs, "key")]  # fmt: skip
    return SimpleNamespace(
        oldest_waiting=oldest_waiting,
        oldest_waiting_locked=oldest_waiting.with_for_update(skip_locked=True),  # PostgreSQL
        start=trials.update()
        .where(trials.c.trial_id == tid)
        .values(state=TrialState.RUNNING, datetime_start=sqlalchemy.bindparam("started")),
        touch=trials.update().where(*running).values(state=TrialState.RUNNING),
        end=trials.update()
        .where(*running)
        .values(
            state=sqlalchemy.bindparam("new_state", type_=trials.c.state.type),
            datetime_complete=sqlalchemy.bindparam("done"),
        ),
        read={
            name: sqlalchemy.select(*(table.c[c] for c in columns)).where(table.c.trial_id == tid)
            for name, table, columns in reads
        },
        delete={
            table: table.delete().where(table.c.trial_id == tid, table.c[column].in_(keys))
            for table, column in keyed
        },
    )


_SQL = _prepared()


def _utc_now() -> datetime:
    """optuna (5.x) stores trial times as naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def _replace_attrs(conn: Any, table: Any, trial_id: int, attrs: dict[str, str]) -> None:
    """Upsert JSON-encoded ``attrs`` as delete + insert: the same two statements on every
    database."""
    if not attrs:
        return
    conn.execute(_SQL.delete[table], {"tid": trial_id, "keys": list(attrs)})
    conn.execute(
        table.insert(),
        [{"trial_id": trial_id, "key": k, "value_json": v} for k, v in attrs.items()],
    )


def _read_claimed(conn: Any, trial_id: int, number: int, started_utc: datetime) -> FrozenTrial:
    """The claimed trial as optuna would read it: an enqueued trial may carry fixed
    parameters and attributes (and, made by ``add_trial``, anything else)."""

    def rows(name: str) -> list[Any]:
        return conn.execute(_SQL.read[name], {"tid": trial_id}).all()

    params = rows("params")
    dists = {
        name: distributions.json_to_distribution(text)
        for name, _, text, _ in sorted(params, key=lambda r: r[3])
    }
    steps = rows("steps")
    return FrozenTrial(
        number=number,
        state=TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=started_utc.replace(tzinfo=UTC).astimezone().replace(tzinfo=None),
        datetime_complete=None,
        params={name: dists[name].to_external_repr(value) for name, value, _, _ in params},
        distributions=dists,
        user_attrs={k: json.loads(v) for k, v in rows("user")},
        system_attrs={k: json.loads(v) for k, v in rows("system")},
        intermediate_values={
            step: TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, kind)
            for step, value, kind in steps
        },
        trial_id=trial_id,
    )


_LOST = "trial id {} is no longer RUNNING; its writes were dropped"


def _transition(conn: Any, trial_id: int, state: TrialState | None) -> None:
    """First statement of a write-back: move the trial to ``state`` (or leave it RUNNING),
    which also locks its row on PostgreSQL; raise UpdateFinishedTrialError, writing nothing,
    if it is no longer RUNNING (failed as stale by someone else)."""
    if state is None:
        update = conn.execute(_SQL.touch, {"tid": trial_id})
    else:
        update = conn.execute(_SQL.end, {"tid": trial_id, "new_state": state, "done": _utc_now()})
    if update.rowcount != 1:
        raise optuna.exceptions.UpdateFinishedTrialError(_LOST.format(trial_id))


def _write(conn: Any, trial_id: int, writes: list[_Write]) -> None:
    """The pending writes, last one per key winning, as one statement or two per table."""
    params: dict[str, Any] = {}
    attrs: dict[str, dict[str, Any]] = {"user": {}, "system": {}}
    steps: dict[int, float] = {}
    for kind, key, value, distribution in writes:
        if kind == "param":
            params[key] = (value, distribution)
        elif kind == "step":
            steps[key] = value
        else:
            attrs[kind][key] = value
    if params:  # delete first: a retried write-back must not trip the unique key
        conn.execute(_SQL.delete[_T.params], {"tid": trial_id, "keys": list(params)})
        conn.execute(
            _T.params.insert(),
            [
                {"trial_id": trial_id, "param_name": name, "param_value": value,
                 "distribution_json": distributions.distribution_to_json(dist)}
                for name, (value, dist) in params.items()
            ],
        )  # fmt: skip
    _replace_attrs(conn, _T.user_attrs, trial_id, attrs["user"])
    _replace_attrs(conn, _T.system_attrs, trial_id, attrs["system"])
    if steps:
        conn.execute(_SQL.delete[_T.steps], {"tid": trial_id, "keys": list(steps)})
        rows = []
        for step, value in steps.items():
            stored, kind = TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
            rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored,
                         "intermediate_value_type": kind})  # fmt: skip
        conn.execute(_T.steps.insert(), rows)


def _insert_values(conn: Any, trial_id: int, values: Sequence[float]) -> None:
    """The objective values; a RUNNING trial has none yet (optuna sets them only when it
    finishes a trial)."""
    rows = []
    for objective, value in enumerate(values):
        stored, kind = TrialValueModel.value_to_stored_repr(float(value))
        rows.append(
            {"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind}
        )
    conn.execute(_T.values.insert(), rows)

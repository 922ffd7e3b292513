"""A worker's storage: the trial it runs lives in memory and is written in few transactions.

optuna's RDB storage commits every call on its own, so one trial costs dozens of
transactions (each parameter, attribute and intermediate value), and popping the queue
re-reads every WAITING trial (``Study._pop_waiting_trial_id`` → ``get_all_trials``), so a
claim grows with the queue. Measured with a trivial objective (``make bench``): 31 ms a
trial with 300 queued, and 16 trials/s for 8 workers on one SQLite file (#5).

``WriteBackStorage`` wraps the RDB storage in a worker process:
  - ``claim`` pops the queue (``sweep.queue.claims.claim``: state, first heartbeat and the run
    and worker tags in one transaction) and keeps the trial in memory.
  - Writes to a claimed trial (parameters, attributes, intermediate values) update a local
    copy at once and reach the database in one transaction: immediately when the last
    write-out was at least ``FLUSH_INTERVAL_S`` ago, else with the next heartbeat or when
    the trial finishes. A trial that reports an epoch every few seconds is thus written as
    before, epoch by epoch; a fast one costs two transactions, claim and finish.
  - Everything else (other trials, studies) goes to optuna's cached storage unchanged.

What is held back is the running trial's own progress, never a result: its final state,
value and attributes are one transaction, so a worker killed at any moment leaves either a
finished trial or a RUNNING one whose heartbeat stops, which is failed and requeued.

The rest of optuna's ``BaseStorage`` interface is forwarded to its cache
(``sweep.queue.forwarded``).

The statements are ``sweep.queue.tables``', written against optuna 5's table models (private
API); where those models lack a column, no storage opens (``sweep.queue.storage``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Container, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna import distributions
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import FrozenTrial, TrialState

from sweep.errors import ForeignDistribution
from sweep.queue import claims
from sweep.queue import tables as tb
from sweep.queue.forwarded import Forwarded
from sweep.queue.storage import root_message
from sweep.queue.transactions import reading, writing

logger = logging.getLogger(__name__)

# Longest a claimed trial's writes wait before going to the database on their own account.
FLUSH_INTERVAL_S = 1.0
_LOST = "trial id {} is no longer held by this claim; its writes were dropped"


class TrialDeleted(optuna.exceptions.UpdateFinishedTrialError):
    """The claimed trial's row is gone: another client deleted its study. Raised into the
    objective at its next write, so that training stops at once (``sweep.worker`` then stops
    with one line) rather than going on for a trial that can store nothing."""


@dataclasses.dataclass
class _Writes:
    """A claimed trial's writes not yet committed, the last one per key winning."""

    params: dict[str, tuple[float, distributions.BaseDistribution]] = dataclasses.field(
        default_factory=dict
    )
    steps: dict[int, float] = dataclasses.field(default_factory=dict)
    user: dict[str, str] = dataclasses.field(default_factory=dict)  # JSON-encoded values
    system: dict[str, str] = dataclasses.field(default_factory=dict)

    def under(self, newer: _Writes) -> _Writes:
        """These writes with ``newer`` ones on top (a failed write-back is put back so)."""
        return _Writes(
            {**self.params, **newer.params}, {**self.steps, **newer.steps},
            {**self.user, **newer.user}, {**self.system, **newer.system},
        )  # fmt: skip

    def commit(self, conn: Any, trial_id: int) -> None:
        tb.write(conn, trial_id, new_params=self.params, new_steps=self.steps,
                 user=self.user, system=self.system)  # fmt: skip


@dataclasses.dataclass
class _Held:
    """A trial this process claimed and runs."""

    trial: FrozenTrial  # up to date with every write, committed or not
    study_id: int
    started: datetime  # the claim's start (naive UTC): fences every write to it
    flushed_at: float  # time.monotonic() of the last write-back (or of the claim)
    pending: _Writes = dataclasses.field(default_factory=_Writes)  # not yet committed
    lost: bool = False  # failed elsewhere (stale) meanwhile: nothing more is stored
    deleted: bool = False  # lost with its row: another client deleted the study


class WriteBackStorage(Forwarded):
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

    def claim(self, study_id: int, tags: dict[str, Any]) -> int | None:
        """Pop the study's oldest WAITING trial for this process (``sweep.queue.claims.claim``:
        state, first heartbeat and ``tags`` in one transaction); its id, None if none waits."""
        claimed = claims.claim(self.backend, study_id, tags)
        if claimed is None:
            return None
        with self._reading() as conn:  # after the commit: other writers need not wait for it
            frozen = tb.read_claimed(conn, claimed.trial_id, claimed.number, claimed.started)
        with self._lock:
            self._held[claimed.trial_id] = _Held(
                frozen, study_id, claimed.started, time.monotonic()
            )
        return claimed.trial_id

    def release(self, trial_id: int) -> bool:
        """Give a claimed trial back to the queue (``sweep.queue.claims.release``), its held
        writes dropped; False if it was no longer this process's to give."""
        with self._lock:
            held = self._held.pop(trial_id, None)
        if held is None:
            return False
        return claims.release(self.backend, trial_id, held.started)

    def has_study_system_attr(self, study_id: int, key: str) -> bool:
        """Whether the study carries system attribute ``key`` (one indexed read)."""
        with self._reading() as conn:
            return tb.has_study_system_attr(conn, study_id, key)

    def _exists(self, trial_id: int) -> bool:
        """Whether the trial's row is still there (another client may delete its study)."""
        with self._reading() as conn:
            return tb.trial_exists(conn, trial_id)

    def _reading(self) -> Any:
        """A connection for a read-only transaction (no write lock on SQLite)."""
        return reading(self.backend.engine)

    # -- writes to a claimed trial: held locally, then written back ------------------------

    def _hold(self, trial_id: int, update: Callable[[FrozenTrial, _Writes], None]) -> bool:
        """Apply a write to the local copy of a claimed trial and to its pending writes;
        False if the trial is not one of ours (the caller then writes through).

        Attribute values are JSON-encoded by the caller first, so an unstorable value fails
        there, as with optuna's storage, and a later change to a mutable value is not seen.
        """
        with self._lock:
            held = self._held.get(trial_id)
            if held is None:
                return False
            deleted = held.deleted
            if held.lost and not deleted:
                return True
            if not deleted:
                update(held.trial, held.pending)
            due = time.monotonic() - held.flushed_at >= FLUSH_INTERVAL_S
        if deleted:
            raise TrialDeleted(_LOST.format(trial_id))
        if due:
            self._try_write_back(trial_id)
        return True

    def flush(self, trial_id: int) -> None:
        """Write a claimed trial's held writes now (a checkpoint's pointer must be in the
        database before the checkpoint it replaces is deleted). Raises as the write-back does:
        UpdateFinishedTrialError if the claim no longer holds the trial, the database's error
        otherwise (the writes then stay pending)."""
        self._write_back(trial_id)

    def _try_write_back(self, trial_id: int) -> None:
        """An early write-back: the writes are already held, so a database error only
        delays them (they stay pending for the next heartbeat or the finish). A trial found
        failed elsewhere is reported by its finish, which raises; one deleted raises now."""
        try:
            self._write_back(trial_id)
        except TrialDeleted:
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.warning("trial id %d was failed elsewhere; its writes are dropped", trial_id)
        except Exception as e:  # one line a failure: an outage must not flood the log
            logger.warning("trial id %d: write-back delayed: %s", trial_id, root_message(e))
            logger.debug("write-back failure", exc_info=True)

    def _write_back(
        self,
        trial_id: int,
        *,
        state: TrialState | None = None,
        values: Sequence[float] | None = None,
    ) -> None:
        """Commit a claimed trial's pending writes (and its end) in one transaction.

        Raises UpdateFinishedTrialError, dropping the writes, if the claim no longer holds
        the trial (failed as stale, or released, elsewhere); on a database error the writes
        stay pending. The database work runs outside ``_lock``, so the training thread never
        waits on a heartbeat's write-back to read its own trial.
        """
        with self._io_lock:
            with self._lock:
                held = self._held.get(trial_id)
                if held is None:  # finished meanwhile: nothing left to write
                    return
                if held.lost:
                    if state is not None:
                        del self._held[trial_id]
                    lost = TrialDeleted if held.deleted else UpdateFinishedTrialError
                    raise lost(_LOST.format(trial_id))
                writes, held.pending = held.pending, _Writes()
                held.flushed_at = time.monotonic()  # no retry storm on errors
            try:
                with writing(self.backend.engine) as conn:
                    tb.transition(conn, trial_id, held.started, state)
                    writes.commit(conn, trial_id)
                    if values is not None:
                        tb.insert_values(conn, trial_id, values)
            except tb.TrialGone:
                # Keep the local copy until the trial's own end: optuna's tell reads the
                # trial before finishing it and must see it RUNNING to reach us and fail here.
                deleted = not self._exists(trial_id)
                with self._lock:
                    held.lost, held.deleted, held.pending = True, deleted, _Writes()
                    if state is not None:
                        del self._held[trial_id]
                lost = TrialDeleted if deleted else UpdateFinishedTrialError
                raise lost(_LOST.format(trial_id)) from None
            except BaseException:
                with self._lock:
                    held.pending = writes.under(held.pending)
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
            with self._reading() as conn:
                text = tb.first_distribution(conn, study_id, name)
            known = distribution if text is None else distributions.json_to_distribution(text)
        try:
            distributions.check_distribution_compatibility(known, distribution)
        except ValueError as e:
            raise ForeignDistribution(
                f"parameter {name!r} is stored in this study as {type(known).__name__}, and "
                f"the trial suggests it as {type(distribution).__name__} ({e}); optuna allows "
                "one kind per parameter in a study: did another client suggest it first?"
            ) from e
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

        def update(trial: FrozenTrial, pending: _Writes) -> None:
            trial.params[param_name] = distribution.to_external_repr(param_value_internal)
            trial.distributions[param_name] = distribution
            pending.params[param_name] = (param_value_internal, distribution)

        if not self._hold(trial_id, update):
            self._cache.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        def update(trial: FrozenTrial, pending: _Writes) -> None:
            trial.intermediate_values[step] = pending.steps[step] = intermediate_value

        if not self._hold(trial_id, update):
            self._cache.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        encoded = json.dumps(value)

        def update(trial: FrozenTrial, pending: _Writes) -> None:
            trial.user_attrs[key], pending.user[key] = json.loads(encoded), encoded

        if not self._hold(trial_id, update):
            self._cache.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        encoded = json.dumps(value)

        def update(trial: FrozenTrial, pending: _Writes) -> None:
            trial.system_attrs[key], pending.system[key] = json.loads(encoded), encoded

        if not self._hold(trial_id, update):
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
        held = self._held.get(trial_id)
        if held is None:
            self.backend.record_heartbeat(trial_id)
            return
        if held.lost:  # another process failed or released it: stay silent
            return
        # Its own transaction, so no pending write can hold it up; fenced by the claim, so a
        # worker that lost its trial never keeps another claim of it alive.
        with writing(self.backend.engine) as conn:
            beating = tb.beat(conn, trial_id, held.started)
        if not beating:
            deleted = not self._exists(trial_id)  # the training thread's next write says so
            with self._lock:
                held.lost, held.deleted = True, deleted
            if not deleted:
                logger.warning("trial id %d was failed elsewhere; stopping its heartbeat", trial_id)
            return
        with contextlib.suppress(TrialDeleted):  # the training thread's next write says so
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

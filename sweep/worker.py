"""One worker: claim trials from a study's queue and run them until nothing is left to take.

A worker checks its environment (the dataset loads) before it claims anything. A failure that
is the worker's (``WORKER_FAILURES``: data, memory, a library, the storage; or Ctrl-C and
SIGTERM) gives the trial back to the queue and ends the worker; only the trial's own failure
(it diverged, its numbers raised) is a FAIL that is not rerun. While a trial runs, a thread
records its heartbeat; a worker that dies outright stops it, and whoever notices first
requeues the trial (``sweep.queue.recovery.recover``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.errors import (
    DataError,
    ForeignDistribution,
    StudyGone,
    SweepError,
    WorkerError,
    hold_stop_signals,
    let_stop_signals_through,
    on_stop_signals_raise_terminated,
    stop_signals_held,
)
from sweep.queue.attrs import FAIL_REASON, RUN_TAG, WORKER_TAG, stop_key, worker_tag
from sweep.queue.claims import disown
from sweep.queue.progress import pending
from sweep.queue.storage import (
    HEARTBEAT_INTERVAL_S,
    STORAGE_ERRORS,
    open_storage,
    rdb_of,
    root_message,
    storage_failure,
)
from sweep.queue.studies import study_exists
from sweep.queue.writeback import TrialDeleted, WriteBackStorage
from sweep.study.joining import (
    grid_left,
    make_pruner,
    make_sampler,
    recover,
    refill,
    top_up,
    unfinished,
)
from sweep.study.spec import StudySpec
from sweep.trial.artifacts import study_store
from sweep.trial.checkpoint import policy as checkpoint_policy
from sweep.trial.cleanup import clear_ended, trial_ended
from sweep.trial.objective import Objective, TrialFailed, load_data

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.storages import RDBStorage

    from sweep.progress import TrialLines

Value = float | tuple[float, ...]  # an objective's: one value, or one per objective

logger = logging.getLogger(__name__)

#: How often a worker looks again at a queue with nothing to claim, or for its stop flag.
POLL_S = 1.0
#: Failures of the worker, not of its trial: the trial goes back to the queue and the worker
#: ends. Anything else a trial raises is the trial's own (recorded FAIL, not rerun).
WORKER_FAILURES = (
    DataError, MemoryError, ImportError, OSError, ForeignDistribution, *STORAGE_ERRORS,
)  # fmt: skip


@dataclasses.dataclass
class _Heartbeat:
    """Records the running trial's heartbeat from a background thread."""

    storage: WriteBackStorage
    trial_id: int
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def __enter__(self) -> _Heartbeat:
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.storage.get_heartbeat_interval() or HEARTBEAT_INTERVAL_S):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as e:  # a missed beat only risks a needless retry; keep training
                logger.warning("heartbeat of trial %d failed: %s", self.trial_id, root_message(e))
                logger.debug("heartbeat failure", exc_info=True)

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        # A failing trial (a stop signal) is given back at once: a beat held up in SQLite's
        # busy wait (up to 60 s) is not waited for; the thread is a daemon and beats no more.
        self._thread.join(timeout=None if kind is None else 1.0)


def work(
    spec: StudySpec, url: str, run_id: str, *, salt: int = 0, launch: bool = False,
    artifacts: str | None = None, on_trial: TrialLines | None = None,
) -> int:  # fmt: skip
    """One worker: claim and run trials until nothing is left that it could take.

    Returns the number of trials it ran. Safe to run on many hosts against one database. The
    dataset is loaded before the first claim, so a host without it takes nothing. With
    ``launch`` (``sweep worker``), it first tops the queue up and recovers silent trials, as
    ``run`` does, so that any task of a batch array may be the first. ``artifacts`` is where
    its trials' checkpoints go (``sweep.trial.artifacts.artifacts_location``). ``on_trial``
    is told of each trial it claims, each epoch and how each ended (``sweep worker``'s lines).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    on_stop_signals_raise_terminated()  # a batch scheduler ending the job releases the trial
    load_data(spec)
    checkpoint_policy()  # bad $SWEEP_CHECKPOINT_* values: one line, not every trial FAIL
    store, _, warning = study_store(artifacts, url)
    if launch and warning:
        logger.warning("%s", warning)
    try:
        storage = WriteBackStorage(open_storage(url))
        study = optuna.load_study(
            study_name=spec.name, storage=storage,
            sampler=make_sampler(spec, salt), pruner=make_pruner(spec),
        )  # fmt: skip
        return work_on(study, spec, url, run_id, store=store, launch=launch, on_trial=on_trial)
    except STORAGE_ERRORS as e:
        raise storage_failure(e, url) from None  # a plain message survives the trip home


@dataclasses.dataclass
class Limit:
    """When a worker stops claiming while trials are left: after ``trials`` trials, past
    ``deadline`` (``time.monotonic()``), or once ``stopped`` is set (optuna's
    ``study.stop()``). optuna's ``optimize(n_trials=, timeout=)`` (``sweep.notebook``)."""

    trials: int | None = None
    deadline: float | None = None
    stopped: bool = False

    def reached(self, ran: int) -> bool:
        return (self.stopped or (self.trials is not None and ran >= self.trials)
                or (self.deadline is not None and time.monotonic() >= self.deadline))  # fmt: skip


def work_on(
    study: optuna.Study, spec: StudySpec, url: str, run_id: str, *, store: ArtifactStore,
    launch: bool, objective: Callable[[optuna.Trial], Value] | None = None,
    limit: Limit | None = None,
    on_end: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    on_trial: TrialLines | None = None,
) -> int:  # fmt: skip
    """``work``'s claims on ``study`` (loaded with the spec's sampler and pruner), with the
    spec's ``Objective`` unless ``objective`` is given, until nothing is left or ``limit`` is
    reached; ``on_end`` after each trial's own clean-up. Returns the trials it ran."""

    def ended(s: optuna.Study, trial: FrozenTrial) -> None:
        trial_ended(store, s, trial)
        if on_end is not None:
            on_end(s, trial)

    if launch:
        recover(study, max_retries=spec.max_retries)
        top_up(study, spec)
        clear_ended(store, rdb_of(study._storage), study._study_id)  # ends a kill cut short
    ran = serve(
        study, objective or Objective(spec, store), run_id=run_id, max_retries=spec.max_retries,
        on_end=ended, refill=lambda: refill(study, spec), limit=limit, on_trial=on_trial,
    )  # fmt: skip
    if limit is not None and limit.reached(ran):
        return ran  # left with trials to claim: what is left is not this worker's to judge
    # The queue is empty: what the trials that ended (or died for good) left is nobody's.
    clear_ended(store, rdb_of(study._storage), study._study_id)
    if launch and spec.sampler == "grid":  # a launcher's last word (see sweep.runner)
        done, total = grid_left(study, spec)
        if done < total:
            raise unfinished(done, total, url)
    return ran


def as_worker_study(study: optuna.Study) -> optuna.Study:
    """``study`` seen through a ``WriteBackStorage`` (itself if it already is)."""
    if isinstance(study._storage, WriteBackStorage):
        return study
    return optuna.load_study(
        study_name=study.study_name, storage=WriteBackStorage(rdb_of(study._storage)),
        sampler=study.sampler, pruner=study.pruner,
    )  # fmt: skip


def _run_one(
    objective: Callable[[optuna.Trial], Value], trial: optuna.Trial, n_values: int = 1
) -> tuple[Value | None, TrialState | None]:
    """Run the objective; a pruned, diverged or crashing trial is a result, not a crash.

    A value that is not a finite number, or not one per the study's ``n_values`` objectives,
    is a FAIL with its ``fail_reason`` (optuna's ``tell`` would record it FAIL without one,
    which the queue takes for a trial to run again). A failure of the worker
    (``WORKER_FAILURES``) propagates, so the trial goes back to the queue.
    """
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return None, TrialState.PRUNED
    except TrialFailed:
        return None, TrialState.FAIL
    except (*WORKER_FAILURES, TrialDeleted):
        raise
    except Exception as e:  # a bug in one trial's numbers must not end the sweep
        logger.exception("trial %d raised", trial.number)
        trial.set_user_attr(FAIL_REASON, f"{type(e).__name__}: {e}"[:500])
        return None, TrialState.FAIL
    if not _finite(value):  # optuna's tell would record a FAIL without a reason: rerun forever
        trial.set_user_attr(FAIL_REASON, f"the objective returned {value!r}"[:500])
        return None, TrialState.FAIL
    told = len(value) if isinstance(value, (list, tuple)) else 1
    if told != n_values:  # as above: a study whose stored spec is not its directions' (#26)
        trial.set_user_attr(FAIL_REASON, f"the objective returned {told} value(s) for a study of "
                                         f"{n_values} objective(s)")  # fmt: skip
        return None, TrialState.FAIL
    return value, None


def _finite(value: object) -> bool:
    """A finite number, or a non-empty sequence of them (a trial of several objectives)."""
    values = value if isinstance(value, (list, tuple)) and value else [value]
    try:
        return all(math.isfinite(float(v)) for v in values)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def serve(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Value],
    *,
    run_id: str,
    max_retries: int = 3,
    on_end: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    refill: Callable[[], object] | None = None,
    limit: Limit | None = None,
    on_trial: TrialLines | None = None,
) -> int:
    """Claim and run ``study``'s queued trials with ``objective`` until nothing is left that
    this worker could take, or ``limit`` is reached; return how many it ran. ``work`` is this
    with the MLP objective. ``on_end`` is called with each trial it finished (recorded), e.g.
    to clean its files up. ``refill`` tops the queue up when it runs dry
    (``sweep.study.joining.refill``): another client may have taken a queued point from it,
    and the worker leaves only if nothing was queued. ``on_trial`` is told of each trial it
    claims, each epoch the trial reports and how it ended.

    A failure of the worker gives its trial back to the queue and raises: WorkerError (or the
    storage's own error, or KeyboardInterrupt) with one line saying what went wrong.
    """
    study = as_worker_study(study)
    storage = study._storage
    rdb = storage.backend
    tags = {
        WORKER_TAG: worker_tag(socket.gethostname(), os.getpid()),
        RUN_TAG: run_id,
    }
    ran = 0
    n_values = len(study.directions)
    stopped = stop_key(run_id)
    next_stop_check = 0.0
    while limit is None or not limit.reached(ran):
        # The parent's stop flag (for workers it cannot kill, e.g. on dask), read before each
        # trial but at most once a second: a read per trivial trial was 10% of its cost.
        if time.monotonic() >= next_stop_check:
            if storage.has_study_system_attr(study._study_id, stopped):
                return ran
            next_stop_check = time.monotonic() + POLL_S
        # A stop signal between the claim's commit and the ``try`` below would leave the trial
        # claimed by nobody until it went stale: held until inside the ``try`` (#29).
        held, trial_id = hold_stop_signals(), None
        try:
            trial_id = storage.claim(study._study_id, tags)
        finally:
            if trial_id is None:
                let_stop_signals_through(held)
        if trial_id is None:
            recover(study, max_retries=max_retries)
            if pending(rdb, study._study_id).empty:
                if refill is None:
                    return ran
                refill()
                if pending(rdb, study._study_id).empty:
                    return ran
                continue  # points were queued again: claim them
            time.sleep(POLL_S)
            continue
        try:
            let_stop_signals_through(held)  # a signal since the claim is raised here
            with _Heartbeat(storage, trial_id):  # the claim recorded the first beat
                trial = _Watched(study, trial_id, on_trial)
                _tell(on_trial, "claimed", trial.number)
                value, state = _run_one(objective, trial, n_values)
            study.tell(trial, value, state=state)
        except optuna.exceptions.UpdateFinishedTrialError as e:
            if isinstance(e, TrialDeleted) and not study_exists(rdb, study._study_id):
                raise StudyGone(f"study {study.study_name!r}") from None
            # Failed as stale while it ran (its heartbeats were held up past the grace
            # period): whoever failed it queued a replacement, so this result is not needed.
            # Or taken over by another client: its point is judged by what that client ran.
            if _disown(rdb, trial_id, tags):
                logger.warning("trial id %d was taken over by another optuna client while it "
                               "ran; its point is queued again unless that client trained it",
                               trial_id)  # fmt: skip
            else:
                logger.warning("trial id %d was failed elsewhere while it ran", trial_id)
            continue
        except BaseException as e:  # the worker's failure, Ctrl-C or SIGTERM
            with stop_signals_held():  # a second SIGTERM is raised after the release, not in it
                _give_back(storage, trial_id)
            if isinstance(e, Exception) and not isinstance(
                e, (*STORAGE_ERRORS, SweepError, DataError)
            ):
                raise WorkerError(
                    f"worker {tags[WORKER_TAG]} stopped: {type(e).__name__}: "
                    f"{(str(e).splitlines() or [''])[0]}; its trial went back to the queue"
                ) from e
            raise
        ran += 1
        if on_end is not None or on_trial is not None:
            _ended(on_end, on_trial, study, trial_id)
    return ran


class _Watched(optuna.Trial):
    """A claimed trial whose reported epochs ``on_trial`` is told of as the objective reports
    them (``trial.report``): in this process, none missed, no read of the database."""

    def __init__(self, study: optuna.Study, trial_id: int, on_trial: TrialLines | None) -> None:
        super().__init__(study, trial_id)
        self._on_trial = on_trial

    def report(self, value: float, step: int) -> None:
        super().report(value, step)
        _tell(self._on_trial, "epoch", self.number, step, value)


def _tell(on_trial: TrialLines | None, event: str, *args: object) -> None:
    """``on_trial``'s ``event``; its failure (stderr closed) never stops the trial or worker."""
    if on_trial is None:
        return
    try:
        getattr(on_trial, event)(*args)
    except Exception:
        logger.debug("progress line failed", exc_info=True)


def _ended(
    on_end: Callable[[optuna.Study, FrozenTrial], None] | None, on_trial: TrialLines | None,
    study: optuna.Study, trial_id: int,
) -> None:  # fmt: skip
    """``on_end`` of a recorded trial, then ``on_trial``'s line; their failure (the database,
    the store) leaves files behind, never stops the worker."""
    try:
        frozen = study._storage.get_trial(trial_id)
        _tell(on_trial, "ended", frozen)
        if on_end is not None:
            on_end(study, frozen)
    except Exception as e:
        logger.warning("trial id %d: clean-up after it ended failed: %s", trial_id,
                       root_message(e))  # fmt: skip


def _disown(rdb: RDBStorage, trial_id: int, tags: dict[str, str]) -> bool:
    """``sweep.queue.claims.disown``; its failure (the database) is one warning, and the trial
    is left as it is: coverage then counts it as the point trained."""
    try:
        return disown(rdb, trial_id, tags)
    except Exception as e:
        logger.warning("trial id %d: could not check who finished it: %s", trial_id,
                       root_message(e))  # fmt: skip
        return False


def _give_back(storage: WriteBackStorage, trial_id: int) -> None:
    """Release a trial this worker cannot finish; if the storage itself is failing, the
    stale-trial check of another process requeues it later."""
    try:
        storage.release(trial_id)
    except Exception as e:  # one line: the error that ends the worker says the rest
        logger.warning("could not release trial id %d: %s", trial_id, root_message(e))
        logger.debug("release failure", exc_info=True)

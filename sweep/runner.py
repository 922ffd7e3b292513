"""Running a study: joblib (loky) worker processes that claim trials from the study's queue.

The study is a queue (``sweep.queue``). A launcher (``sweep run``, or ``sweep worker`` on
another host) tops it up: a grid study gets one WAITING trial per feasible grid point that no
trial covers yet, a TPE/random study empty WAITING slots up to its trial cap (the sampler fills
each slot's parameters when it is claimed). Workers only ever claim WAITING trials, one at a
time and atomically, so
  - a grid point runs exactly once however many workers, launchers or hosts join, and
  - the trial cap holds for all workers together.
A worker checks its environment (the dataset loads) before it claims anything. A failure that
is the worker's (data, memory, a library, the storage, Ctrl-C or SIGTERM) gives the trial back
to the queue and ends the worker; only the trial's own failure (it diverged, its numbers
raised) is a FAIL that is not rerun. A trial whose worker dies stops sending heartbeats; the
first process to notice fails it and enqueues its replacement in one transaction, up to the
study's ``max_retries``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from mlp.model import parameter_count
from sweep import queue
from sweep.errors import DataError, SpecError, StorageError, SweepError, WorkerError
from sweep.objective import Objective, TrialFailed, load_data
from sweep.space import grid_points
from sweep.spec import StudySpec, first_difference, stored_spec
from sweep.storage import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    mask_password,
    open_storage,
    resolve_url,
    root_cause,
    root_message,
    storage_failure,
)
from sweep.writeback import WriteBackStorage

logger = logging.getLogger(__name__)

_POLL_S = 1.0
_STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)
#: Failures of the worker, not of its trial: the trial goes back to the queue and the worker
#: ends. Anything else a trial raises is the trial's own (recorded FAIL, not rerun).
WORKER_FAILURES = (DataError, MemoryError, ImportError, OSError, *_STORAGE_ERRORS)


def make_sampler(spec: StudySpec, salt: int = 0) -> optuna.samplers.BaseSampler:
    seed = spec.seed + 1009 * salt
    if spec.sampler == "tpe":
        # constant_liar: running trials count as provisional results, so parallel workers do not
        # all sample the same promising point.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=10)
    return optuna.samplers.RandomSampler(seed=seed)  # grid trials arrive with fixed parameters


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    searched = spec.dimension("epochs")
    epochs = spec.train.epochs
    if searched is not None:  # the longest a trial can train
        epochs = int(max(searched.choices) if searched.choices else searched.high)
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if spec.pruner == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def _refuse_difference(stored: StudySpec, given: StudySpec) -> None:
    """A study file that would change the stored study's results is refused, naming the
    first field that differs."""
    diff = first_difference(stored, given)
    if diff is not None:
        field, old, new = diff
        raise SpecError(
            f"{given.source}: [{field}] differs from the stored study {given.name!r}: stored "
            f"{json.dumps(old)}, given {json.dumps(new)}; use the stored study's file, "
            "or rename [study.name] for a new study"
        )


def open_study(
    spec: StudySpec, storage: optuna.storages.BaseStorage, *, salt: int = 0
) -> optuna.Study:
    """Create the study, or load it if it exists and was made from the same spec.

    The stored spec is the study's source of truth; this launcher's trial cap (``spec.trials``)
    replaces the stored one, so lowering or raising it steers every worker.
    """
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction="maximize",
        sampler=make_sampler(spec, salt),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", spec.to_dict())
        return study
    old = stored_spec(stored, source=f"study {spec.name!r}")
    _refuse_difference(old, spec)
    if old.trials != spec.trials:
        study.set_user_attr("spec", spec.to_dict())
    return study


def join(
    url: str,
    name: str,
    *,
    spec: StudySpec | None = None,
    wait: float = 0.0,
    data_path: str | None = None,
) -> StudySpec:
    """The stored spec of study ``name``, for a worker joining it: its source of truth.

    Waits up to ``wait`` seconds for the study to be created (a batch array whose tasks all
    start at once), polling with backoff. A study file given as ``spec`` must agree with the
    stored spec in everything that changes results; its trial cap is ignored (launchers set
    it). ``data_path`` (or the file's ``[data] path``) is this host's copy of the dataset.
    """
    storage = open_storage(url, heartbeat_interval=None, grace_period=None)
    deadline, delay = time.monotonic() + wait, 0.5
    while True:
        try:
            study_id = storage.get_study_id_from_name(name)
            break
        except KeyError:
            if time.monotonic() >= deadline:
                hint = f"start it with `sweep run {spec.source}`" if spec else "start it first"
                raise SpecError(
                    f"study {name!r} does not exist in {mask_password(url)}; {hint}, "
                    "or give --wait SECONDS to wait for it"
                ) from None
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(2 * delay, 10.0)
    attrs = storage.get_study_user_attrs(study_id)
    if "spec" not in attrs:
        raise SpecError(f"study {name!r} was not made by sweep (it has no stored spec)")
    stored = stored_spec(attrs["spec"], source=f"study {name!r} in {mask_password(url)}")
    if spec is not None:
        _refuse_difference(stored, spec)
        data_path = data_path or spec.data_path
        if spec.trials != stored.trials:
            logger.warning("%s: trials = %s ignored; the study's cap is %s (set by `sweep run`)",
                           spec.source, spec.trials, stored.trials)  # fmt: skip
    return dataclasses.replace(stored, data_path=data_path or stored.data_path)


def _cost(spec: StudySpec, point: dict[str, Any]) -> int:
    """A grid point's training work, in proportion: epochs × weights."""
    settings = dataclasses.replace(spec.train, **point)
    return settings.epochs * parameter_count(settings.hidden_1, settings.hidden_2)


def top_up(study: optuna.Study, spec: StudySpec) -> int:
    """Enqueue what the study still needs, atomically (``sweep.queue.top_up``); return the
    study's total, the progress target."""
    rdb = _rdb(study._storage)
    if spec.sampler != "grid":
        return queue.top_up(rdb, study._study_id, cap=spec.trials)
    grid = grid_points(spec)
    points, beyond = grid[: spec.trials], grid[spec.trials :] if spec.trials else []
    # Longest first (LPT scheduling): the queue then ends with short trials running side by
    # side, not with one large trial running alone while the other workers idle.
    points = sorted(points, key=lambda p: _cost(spec, p), reverse=True)
    return queue.top_up(rdb, study._study_id, points=points, beyond=beyond)


def recover(study: optuna.Study, *, max_retries: int) -> list[int]:
    """Fail and requeue the trials whose sweep worker went silent (``sweep.queue.recover``)."""
    rdb = _rdb(study._storage)
    grace = rdb.grace_period or GRACE_PERIOD_S
    return queue.recover(rdb, study._study_id, grace=grace, max_retries=max_retries)


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

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _sigterm_to_interrupt() -> None:
    """SIGTERM (a batch scheduler ending its job) releases the trial like Ctrl-C does."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def work(spec: StudySpec, url: str, run_id: str, *, salt: int = 0, launch: bool = False) -> int:
    """One worker: claim and run trials until nothing is left that it could take.

    Returns the number of trials it ran. Safe to run on many hosts against one database. The
    dataset is loaded before the first claim, so a host without it takes nothing. With
    ``launch`` (``sweep worker``), it first tops the queue up and recovers silent trials, as
    ``run`` does, so that any task of a batch array may be the first.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _sigterm_to_interrupt()
    load_data(spec)
    try:
        storage = WriteBackStorage(open_storage(url))
        study = optuna.load_study(
            study_name=spec.name, storage=storage,
            sampler=make_sampler(spec, salt), pruner=make_pruner(spec),
        )  # fmt: skip
        if launch:
            recover(study, max_retries=spec.max_retries)
            top_up(study, spec)
        return serve(study, Objective(spec), run_id=run_id, max_retries=spec.max_retries)
    except _STORAGE_ERRORS as e:
        raise storage_failure(e, url) from None  # a plain message survives the trip home


def _rdb(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage:
    """The RDB storage under our write-back wrapper or optuna's cache."""
    if isinstance(storage, WriteBackStorage):
        return storage.backend
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        raise TypeError(f"a study queue needs an RDB storage; got {type(backend).__name__}")
    return backend


def _worker_study(study: optuna.Study) -> optuna.Study:
    """``study`` seen through a ``WriteBackStorage`` (itself if it already is)."""
    if isinstance(study._storage, WriteBackStorage):
        return study
    return optuna.load_study(
        study_name=study.study_name, storage=WriteBackStorage(_rdb(study._storage)),
        sampler=study.sampler, pruner=study.pruner,
    )  # fmt: skip


def _run_one(
    objective: Callable[[optuna.Trial], float], trial: optuna.Trial
) -> tuple[float | None, TrialState | None]:
    """Run the objective; a pruned, diverged or crashing trial is a result, not a crash.

    The state of a returned value is left to ``study.tell`` (None): it records a NaN or a
    non-number as FAIL, as ``study.optimize`` does. A failure of the worker
    (``WORKER_FAILURES``) propagates, so the trial goes back to the queue.
    """
    try:
        return objective(trial), None
    except optuna.TrialPruned:
        return None, TrialState.PRUNED
    except TrialFailed:
        return None, TrialState.FAIL
    except WORKER_FAILURES:
        raise
    except Exception as e:  # a bug in one trial's numbers must not end the sweep
        logger.exception("trial %d raised", trial.number)
        trial.set_user_attr(queue.FAIL_REASON, f"{type(e).__name__}: {e}"[:500])
        return None, TrialState.FAIL


def serve(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    run_id: str,
    max_retries: int = 3,
) -> int:
    """Claim and run ``study``'s queued trials with ``objective`` until nothing is left that
    this worker could take; return how many it ran. ``work`` is this with the MLP objective.

    A failure of the worker gives its trial back to the queue and raises: WorkerError (or the
    storage's own error, or KeyboardInterrupt) with one line saying what went wrong.
    """
    study = _worker_study(study)
    storage = study._storage
    rdb = storage.backend
    tags = {queue.WORKER_TAG: f"{socket.gethostname()}:{os.getpid()}", queue.RUN_TAG: run_id}
    ran = 0
    stop_key = f"stop:{run_id}"
    next_stop_check = 0.0
    while True:
        # The parent's stop flag (for workers it cannot kill, e.g. on dask), read before each
        # trial but at most once a second: a read per trivial trial was 10% of its cost.
        if time.monotonic() >= next_stop_check:
            if storage.has_study_system_attr(study._study_id, stop_key):
                return ran
            next_stop_check = time.monotonic() + _POLL_S
        trial_id = storage.claim(study._study_id, tags)
        if trial_id is None:
            recover(study, max_retries=max_retries)
            if queue.pending(rdb, study._study_id).empty:
                return ran
            time.sleep(_POLL_S)
            continue
        try:
            with _Heartbeat(storage, trial_id):  # the claim recorded the first beat
                trial = optuna.Trial(study, trial_id)
                value, state = _run_one(objective, trial)
            study.tell(trial, value, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Failed as stale while it ran (its heartbeats were held up past the grace
            # period); whoever failed it queued a replacement, so this result is not needed.
            logger.warning("trial id %d was failed elsewhere while it ran", trial_id)
            continue
        except BaseException as e:  # the worker's failure, Ctrl-C or SIGTERM
            _give_back(storage, trial_id)
            if isinstance(e, Exception) and not isinstance(
                e, (*_STORAGE_ERRORS, SweepError, DataError)
            ):
                raise WorkerError(
                    f"worker {tags[queue.WORKER_TAG]} stopped: {type(e).__name__}: "
                    f"{(str(e).splitlines() or [''])[0]}; its trial went back to the queue"
                ) from e
            raise
        ran += 1


def _give_back(storage: WriteBackStorage, trial_id: int) -> None:
    """Release a trial this worker cannot finish; if the storage itself is failing, the
    stale-trial check of another process requeues it later."""
    try:
        storage.release(trial_id)
    except Exception:
        logger.warning("could not release trial id %d", trial_id, exc_info=True)


@dataclasses.dataclass(frozen=True)
class Progress:
    """A snapshot for the progress display."""

    done: int  # trials finished (complete, pruned or failed for a reason)
    total: int
    running: int  # trials sweep workers are running, on every host
    workers: int  # distinct workers running them
    here: int  # of those trials, the ones this run's workers hold
    best: float | None
    elapsed: float  # seconds since the run started
    waiting_for: str | None = None  # what the run waits for when nothing is left to claim


def _waiting_for(pending: queue.Pending, run_id: str, grace: float) -> str | None:
    """What a launcher with nothing left to claim is waiting for, in a few words."""
    elsewhere = [r for r in pending.running if r.run != run_id]
    if pending.waiting or not elsewhere:
        return None
    quiet = max(elsewhere, key=lambda r: r.silent)
    if quiet.silent >= 2 * HEARTBEAT_INTERVAL_S:
        return (f"waiting for trial {quiet.number}'s worker: silent for {quiet.silent:.0f} s "
                f"of {grace:.0f}")  # fmt: skip
    return f"waiting for {len(elsewhere)} trial(s) running on other workers"


def _progress(study: optuna.Study, total: int, start: float, run_id: str) -> Progress:
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if queue.counts(t) and t.state.is_finished()]
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    rdb = _rdb(study._storage)
    pending = queue.pending(rdb, study._study_id)
    return Progress(
        done=len(finished),
        total=total,
        running=len(pending.running),
        workers=len({r.worker for r in pending.running}),
        here=sum(r.run == run_id for r in pending.running),
        best=max(values, default=None),
        elapsed=time.monotonic() - start,
        waiting_for=_waiting_for(pending, run_id, rdb.grace_period or GRACE_PERIOD_S),
    )


BACKENDS = ("loky", "dask")


def _pool(backend: str, *, threads: int, scheduler: str | None) -> Any:
    """The joblib configuration for the workers: local loky processes, each capped to
    ``threads`` BLAS threads, or the workers of an existing dask.distributed cluster."""
    from joblib import parallel_config

    if backend == "loky":
        return parallel_config(backend="loky", inner_max_num_threads=threads)
    if backend != "dask":
        raise SpecError(f"--backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    try:
        from dask.distributed import Client
    except ImportError as e:
        raise StorageError("--backend dask needs dask: pip install 'mlp-sweep[dask]'") from e
    if not scheduler:
        raise SpecError("--backend dask needs --scheduler ADDRESS (e.g. tcp://host:8786)")
    try:
        client = Client(scheduler, timeout="10s", set_as_default=True)
    except OSError as e:
        raise StorageError(f"cannot reach the dask scheduler at {scheduler}: {e}") from e
    pool = contextlib.ExitStack()
    pool.callback(client.close)  # else it keeps reconnecting after the cluster has gone
    pool.enter_context(parallel_config(backend="dask"))
    return pool


def run(
    spec: StudySpec,
    *,
    storage: str | None = None,
    jobs: int = 1,
    trials: int | None = None,
    backend: str = "loky",
    scheduler: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> optuna.Study:
    """Create or resume the study and run it to the end with ``jobs`` workers.

    ``trials`` replaces the study's trial cap (for every worker, on every host). ``backend``
    "loky" runs local processes with the study's BLAS ``threads`` each; "dask" sends the
    workers to the dask.distributed cluster at ``scheduler`` (they must reach the same
    storage, e.g. PostgreSQL). On Ctrl-C the run stops, its running trials go back to the
    queue, and KeyboardInterrupt propagates; the next run resumes.
    """
    from joblib import Parallel, delayed

    url = resolve_url(storage)
    if trials is not None:
        spec = dataclasses.replace(spec, trials=trials)
    load_data(spec)  # a missing or corrupt dataset is reported before anything is stored
    try:
        study = open_study(spec, open_storage(url))
        recover(study, max_retries=spec.max_retries)
        total = top_up(study, spec)
    except _STORAGE_ERRORS as e:
        raise storage_failure(e, url) from e
    pool = _pool(backend, threads=spec.threads, scheduler=scheduler)
    run_id = uuid.uuid4().hex[:12]
    start = time.monotonic()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(_POLL_S):
            try:
                on_progress(_progress(study, total, start, run_id))
            except Exception:  # a busy database only delays the display
                logger.debug("progress poll failed", exc_info=True)

    watcher = threading.Thread(target=watch, daemon=True) if on_progress else None
    if watcher:
        on_progress(_progress(study, total, start, run_id))
        watcher.start()
    try:
        with pool:
            Parallel(n_jobs=jobs)(delayed(work)(spec, url, run_id, salt=i) for i in range(jobs))
    except BaseException as e:
        _stop_run(study, run_id)
        if isinstance(e, KeyboardInterrupt | SweepError):
            raise
        if isinstance(e, Exception):
            if root_cause(e) is not e:
                raise storage_failure(e, url) from e
            reason = (str(e).splitlines() or [""])[0]
            raise StorageError(
                f"a worker stopped ({type(e).__name__}: {reason}); its trials were requeued; "
                f"run again to resume ({mask_password(url)})"
            ) from e
        raise
    finally:
        stop.set()
        if watcher:
            watcher.join()
    if on_progress:
        on_progress(_progress(study, total, start, run_id))
    return study


def _stop_run(study: optuna.Study, run_id: str) -> None:
    """Ask the run's remaining workers to stop (dask cannot kill a running task) and requeue
    the trials they had started."""
    try:
        study._storage.set_study_system_attr(study._study_id, f"stop:{run_id}", True)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(queue.RUN_TAG) == run_id:
                queue.release(_rdb(study._storage), t._trial_id)
    except Exception:  # the storage failing: the stale-trial check requeues them later
        logger.warning("could not release the run's trials", exc_info=True)

"""Running a study: joblib (loky) worker processes that claim trials from the study's queue.

The study is a queue. When a run starts, the parent tops it up: a grid study gets one WAITING
trial per feasible grid point that no trial covers yet, a TPE/random study gets empty WAITING
slots up to its trial cap (the sampler fills each slot's parameters when it is claimed). Workers
only ever claim WAITING trials, one at a time and atomically (see ``sweep.writeback``), so
  - a grid point runs exactly once however many workers or hosts claim from the queue, and
  - the trial cap holds for all workers together.
A trial whose worker dies stops sending heartbeats; whoever notices first marks it FAIL and
enqueues a replacement (optuna's stale-trial mechanism, exactly one winner). A trial interrupted
by Ctrl-C or SIGTERM is released the same way by its own worker or, failing that, by the parent.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from mlp.model import parameter_count
from sweep.errors import DataError, SpecError, StorageError
from sweep.objective import Objective, TrialFailed, load_data
from sweep.space import grid_points
from sweep.spec import StudySpec
from sweep.storage import (
    BUSY_TIMEOUT_S,
    HEARTBEAT_INTERVAL_S,
    mask_password,
    open_storage,
    resolve_url,
)
from sweep.writeback import WriteBackStorage

logger = logging.getLogger(__name__)

#: States whose trials count toward the cap / cover their grid point. A FAIL counts only when
#: the trial itself failed (it has a ``fail_reason``); an interrupted one is run again.
_LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
_POLL_S = 1.0


# RUNNING trials that never sent a heartbeat. Our claims record the first heartbeat in the
# same transaction, but a trial popped by optuna itself (``study.optimize`` on the same study,
# killed between its pop and its first beat) has none, and optuna's stale-trial check only
# looks at trials with a heartbeat: without this it would stay RUNNING forever.
_SILENT_SINCE_CLAIM = sqlalchemy.text(
    "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
    "WHERE t.study_id = :study AND t.state = 'RUNNING' AND h.trial_id IS NULL "
    "AND t.datetime_start < :cutoff"
)


def _fail_stale(study: optuna.Study) -> None:
    """Fail (and so requeue, once) the trials of workers that stopped sending heartbeats."""
    with warnings.catch_warnings():  # stable in practice since optuna 2.9; still "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    rdb = _rdb(study._storage)
    grace = rdb.get_heartbeat_interval() and rdb.grace_period
    if not grace:
        return
    # optuna 5 stores datetime_start as naive UTC; compare likewise.
    cutoff = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    cutoff -= datetime.timedelta(seconds=grace)
    with rdb.engine.connect() as conn:  # closed before releasing: it holds SQLite's lock
        params = {"study": study._study_id, "cutoff": cutoff}
        silent = conn.execute(_SILENT_SINCE_CLAIM, params).scalars().all()
    for trial_id in silent:
        _release(study, trial_id)


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state in _LIVE or (
        trial.state == TrialState.FAIL and "fail_reason" in trial.user_attrs
    )


def _point_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def _fixed_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return trial.system_attrs.get("fixed_params", {})


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Enqueue a replacement for a trial that did not finish (same grid point, or a fresh
    slot). Called only by whoever moved the trial to FAIL, so it happens once."""
    study.enqueue_trial(_fixed_params(trial), skip_if_exists=False)
    logger.info("trial %d did not finish; enqueued again", trial.number)


def _release(study: optuna.Study, trial_id: int) -> None:
    """Mark a RUNNING trial FAIL and requeue it, unless someone else finished it first."""
    try:
        if study._storage.set_trial_state_values(trial_id, TrialState.FAIL):
            requeue(study, study._storage.get_trial(trial_id))
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
    except Exception:  # the storage itself failing: the stale-trial check will do it later
        logger.warning("could not release trial id %d", trial_id, exc_info=True)


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


def _comparable(spec_dict: dict[str, Any]) -> dict[str, Any]:
    """What must match for a run to resume an existing study (the trial cap may change)."""
    d = json.loads(json.dumps(spec_dict))
    d["study"].pop("trials", None)
    d["study"].pop("name", None)
    return d


def open_study(
    spec: StudySpec, storage: optuna.storages.BaseStorage, *, salt: int = 0
) -> optuna.Study:
    """Create the study, or load it if it exists and was made from the same spec."""
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
    elif _comparable(stored) != _comparable(spec.to_dict()):
        old, new = _comparable(stored), _comparable(spec.to_dict())
        diff = next(k for k in new if old.get(k) != new.get(k))
        raise SpecError(
            f"{spec.source}: study {spec.name!r} already exists with a different [{diff}] "
            f"(stored {json.dumps(old.get(diff))}); rename [study.name] or delete the old study"
        )
    return study


def _cost(spec: StudySpec, point: dict[str, Any]) -> int:
    """A grid point's training work, in proportion: epochs × weights."""
    settings = dataclasses.replace(spec.train, **point)
    return settings.epochs * parameter_count(settings.hidden_1, settings.hidden_2)


def top_up(study: optuna.Study, spec: StudySpec, trials: int | None = None) -> int:
    """Enqueue what the study still needs; return the study's total (the progress target)."""
    existing = [t for t in study.get_trials(deepcopy=False) if _counts(t)]
    cap = trials if trials is not None else spec.trials
    if spec.sampler == "grid":
        covered = {_point_key(_fixed_params(t) or t.params) for t in existing}
        points = grid_points(spec)
        if cap is not None:
            points = points[:cap]
        missing = [p for p in points if _point_key(p) not in covered]
        # Longest first (LPT scheduling): the queue then ends with short trials running side
        # by side, not with one large trial running alone while the other workers idle.
        missing.sort(key=lambda p: _cost(spec, p), reverse=True)
        for point in missing:
            study.enqueue_trial(point, skip_if_exists=False)
        return len(points)
    assert cap is not None  # the spec requires trials for tpe/random
    for _ in range(cap - len(existing)):
        study.enqueue_trial({}, skip_if_exists=False)
    return max(cap, len(existing))


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
            except Exception:  # a missed beat only risks a needless retry; keep training
                logger.warning("heartbeat of trial %d failed", self.trial_id, exc_info=True)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _sigterm_to_interrupt() -> None:
    """SIGTERM (a batch scheduler ending its job) releases the trial like Ctrl-C does."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def work(spec: StudySpec, url: str, run_id: str, *, salt: int = 0) -> int:
    """One worker: claim and run trials until the queue is empty and nothing is running.

    Returns the number of trials it ran. Safe to run on many hosts against one database.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _sigterm_to_interrupt()
    storage = WriteBackStorage(open_storage(url, stale_trial_callback=requeue))
    study = optuna.load_study(
        study_name=spec.name, storage=storage,
        sampler=make_sampler(spec, salt), pruner=make_pruner(spec),
    )  # fmt: skip
    try:
        return serve(study, Objective(spec), run_id=run_id)
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as e:
        raise storage_failure(e, url) from None  # a plain message survives the trip home


def claim(study: optuna.Study, tags: dict[str, Any] | None = None) -> int | None:
    """Atomically move one WAITING trial to RUNNING, tagged with ``tags``, and return its
    id; None if none waits.

    Not ``study.ask()``, on purpose: that would *create* a trial when the queue is empty,
    which breaks the grid's exactly-once and the trial cap; this only pops, in one
    transaction of a ``WriteBackStorage`` (see ``sweep.writeback``; a study opened on a plain
    RDB storage is seen through one).
    """
    return _worker_study(study)._storage.claim(study._study_id, tags)


def _rdb(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The RDB storage under our write-back wrapper or optuna's cache."""
    if isinstance(storage, WriteBackStorage):
        return storage.backend
    return getattr(storage, "_backend", storage)


def _worker_study(study: optuna.Study) -> optuna.Study:
    """``study`` seen through a ``WriteBackStorage`` (itself if it already is)."""
    if isinstance(study._storage, WriteBackStorage):
        return study
    backend = _rdb(study._storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        raise TypeError(f"workers need an RDB storage; got {type(backend).__name__}")
    return optuna.load_study(
        study_name=study.study_name, storage=WriteBackStorage(backend),
        sampler=study.sampler, pruner=study.pruner,
    )  # fmt: skip


def _run_one(
    objective: Callable[[optuna.Trial], float], trial: optuna.Trial
) -> tuple[float | None, TrialState | None]:
    """Run the objective; a pruned, diverged or crashing trial is a result, not a crash.

    The state of a returned value is left to ``study.tell`` (None): it records a NaN or a
    non-number as FAIL, as ``study.optimize`` does. A storage error is not the trial's
    fault and propagates, so the trial is released and run again.
    """
    try:
        return objective(trial), None
    except optuna.TrialPruned:
        return None, TrialState.PRUNED
    except TrialFailed:
        return None, TrialState.FAIL
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError):
        raise
    except Exception as e:  # a bug or MemoryError in one trial must not end the sweep
        logger.exception("trial %d raised", trial.number)
        trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:500])
        return None, TrialState.FAIL


def serve(study: optuna.Study, objective: Callable[[optuna.Trial], float], *, run_id: str) -> int:
    """Claim and run ``study``'s queued trials with ``objective`` until none are left or
    running; return how many this process ran. ``work`` is this with the MLP objective."""
    study = _worker_study(study)
    storage = study._storage
    tags = {"worker": f"{socket.gethostname()}:{os.getpid()}", "run": run_id}
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
        trial_id = claim(study, tags)
        if trial_id is None:
            _fail_stale(study)
            if not study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)
            ):
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
        except BaseException:  # Ctrl-C, SIGTERM, or the storage failing under us
            _release(study, trial_id)
            raise
        ran += 1


@dataclasses.dataclass(frozen=True)
class Progress:
    """A snapshot for the progress display."""

    done: int  # trials finished (complete, pruned or failed for a reason)
    total: int
    running: int
    best: float | None
    elapsed: float  # seconds since the run started


def _progress(study: optuna.Study, total: int, start: float) -> Progress:
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if _counts(t) and t.state.is_finished()]
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return Progress(
        len(finished), total, running, max(values, default=None), time.monotonic() - start
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
        Client(scheduler, timeout="10s", set_as_default=True)
    except OSError as e:
        raise StorageError(f"cannot reach the dask scheduler at {scheduler}: {e}") from e
    return parallel_config(backend="dask")


def run(
    spec: StudySpec,
    *,
    storage: str | None = None,
    jobs: int = 1,
    threads: int | None = None,
    trials: int | None = None,
    backend: str = "loky",
    scheduler: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> optuna.Study:
    """Create or resume the study and run it to the end with ``jobs`` workers.

    ``backend`` "loky" runs local processes with ``threads`` BLAS threads each (default: the
    cores divided among the workers); "dask" sends the workers to the dask.distributed
    cluster at ``scheduler`` (they must reach the same storage, e.g. PostgreSQL). On Ctrl-C
    the run stops, its running trials are requeued, and KeyboardInterrupt propagates; the
    next run resumes.
    """
    from joblib import Parallel, delayed

    url = resolve_url(storage)
    load_data(spec)  # a missing or corrupt dataset is reported before anything is stored
    try:
        study = open_study(spec, open_storage(url, stale_trial_callback=requeue))
        _fail_stale(study)
        total = top_up(study, spec, trials)
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as e:
        raise storage_failure(e, url) from e
    pool = _pool(backend, threads=threads or max(1, (os.cpu_count() or 1) // jobs),
                 scheduler=scheduler)  # fmt: skip
    run_id = uuid.uuid4().hex[:12]
    start = time.monotonic()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(_POLL_S):
            try:
                on_progress(_progress(study, total, start))
            except Exception:  # a busy database only delays the display
                logger.debug("progress poll failed", exc_info=True)

    watcher = threading.Thread(target=watch, daemon=True) if on_progress else None
    if watcher:
        on_progress(_progress(study, total, start))
        watcher.start()
    try:
        with pool:
            Parallel(n_jobs=jobs)(delayed(work)(spec, url, run_id, salt=i) for i in range(jobs))
    except BaseException as e:
        _stop_run(study, run_id)
        if isinstance(e, KeyboardInterrupt | SpecError | StorageError | DataError):
            raise
        if isinstance(e, Exception):
            if _root_cause(e) is not e:
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
        on_progress(_progress(study, total, start))
    return study


def _stop_run(study: optuna.Study, run_id: str) -> None:
    """Ask the run's remaining workers to stop (dask cannot kill a running task) and requeue
    the trials they had started."""
    try:
        study._storage.set_study_system_attr(study._study_id, f"stop:{run_id}", True)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("run") == run_id:
                _release(study, t._trial_id)
    except Exception:  # the storage failing: the stale-trial check requeues them later
        logger.warning("could not release the run's trials", exc_info=True)


def _root_cause(e: BaseException) -> BaseException:
    """The database driver's error under optuna's and SQLAlchemy's wrappers, else e itself."""
    seen = e
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__
        if type(seen).__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg2"):
            return seen
    return e


def storage_failure(e: BaseException, url: str) -> StorageError:
    """One line naming what the database said, e.g. that the disk is full or a lock was held."""
    cause = str(_root_cause(e)).strip().splitlines()[0] if str(_root_cause(e)).strip() else repr(e)
    hint = ""
    if "locked" in cause:
        hint = (f" (another process held a write transaction for more than {BUSY_TIMEOUT_S:.0f} s;"
                " an open SQL shell or a stuck tool?)")  # fmt: skip
    elif "full" in cause or "No space" in cause:
        hint = " (free some space; what is stored is intact and a rerun resumes)"
    elif "readonly" in cause or "read-only" in cause:
        hint = " (the database file or its folder is not writable)"
    return StorageError(f"storage {mask_password(url)}: {cause}{hint}")

"""Running a study: a launcher and its workers, as local joblib (loky) processes or on a dask
cluster, and the progress the launcher shows.

The study is a queue (``sweep.queue``). A launcher (``sweep run``; ``sweep worker`` is a
launcher of one, see ``sweep.worker``) tops it up: a grid study gets one WAITING trial per
feasible grid point that no trial covers yet, a TPE/random study empty WAITING slots up to
its trial cap (the sampler fills each slot's parameters when it is claimed). Workers only ever
claim WAITING trials, one at a time and atomically, so
  - a grid point runs exactly once however many workers, launchers or hosts join, and
  - the trial cap holds for all workers together.
A launcher leaves when nothing is left that its workers could take: nothing WAITING and no
sweep trial RUNNING anywhere (a silent one may yet come back to the queue).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import optuna

from sweep.errors import SpecError, StorageError, StudyGone, SweepError, WorkerError
from sweep.progress import SHOWN, Progress, ProgressBar, fixed_epochs, interactive
from sweep.queue.attrs import stop_key
from sweep.queue.front import read_front
from sweep.queue.progress import Pending, latest_epochs, pending, tally
from sweep.queue.recovery import abandon_run, release_run
from sweep.queue.storage import (
    GRACE_PERIOD_S,
    HEARTBEAT_INTERVAL_S,
    STORAGE_ERRORS,
    mask_password,
    open_storage,
    rdb_of,
    resolve_url,
    root_cause,
    root_message,
    storage_failure,
)
from sweep.queue.studies import study_exists
from sweep.study import objectives
from sweep.study.joining import grid_left, open_study, recover, top_up, unfinished
from sweep.study.spec import StudySpec
from sweep.trial.artifacts import study_store
from sweep.trial.checkpoint import policy as checkpoint_policy
from sweep.trial.cleanup import clear_ended
from sweep.trial.objective import load_data
from sweep.worker import POLL_S, work

logger = logging.getLogger(__name__)

#: How long a launcher tries to reach a dask scheduler before it gives up with one line.
DASK_TIMEOUT_S = 10
#: A claimed trial whose heartbeat is older than this is no longer counted as running: its
#: worker missed two beats (it is likely dead, and recovered once the grace period is over).
SILENT_S = 2 * HEARTBEAT_INTERVAL_S


def _waiting_for(left: Pending, run_id: str, grace: float) -> str | None:
    """What a launcher with nothing left to claim is waiting for, in a few words."""
    elsewhere = [r for r in left.running if r.run != run_id]
    if left.waiting or not elsewhere:
        return None
    quiet = max(elsewhere, key=lambda r: r.silent)
    if quiet.silent >= SILENT_S:
        return (f"waiting for trial {quiet.number}'s worker: silent for {quiet.silent:.0f} s "
                f"of {grace:.0f}")  # fmt: skip
    return f"waiting for {len(elsewhere)} trial(s) running on other workers"


def _progress(
    study: optuna.Study, spec: StudySpec, total: int, start: float, run_id: str, *,
    exact: bool = False, fronts: dict[int, int] | None = None,
) -> Progress:  # fmt: skip
    """The run's progress, by read-only aggregates: a display polled every second must not
    queue for the write lock. A grid's points done are counted exactly (what covers each,
    ``sweep.study.joining.grid_left``) when ``exact`` (the last line) or when the cheap count
    reaches the total, so that no line reads N/N while a point is left. Of several objectives,
    the front's size instead of the best value: the COMPLETE trials' values read in one
    statement (``sweep.queue.front``: 0.7 s at 10⁵ trials), read only for such a study and, with
    ``fronts`` (the front's size by trials done, kept between calls), only once the count of
    trials done has moved."""
    rdb = rdb_of(study._storage)
    grid = spec.sampler == "grid"
    done, best = tally(rdb, study._study_id, grid=grid)
    front = None
    if spec.multi:
        best = None
        front = (fronts or {}).get(done)
        if front is None:
            directions = objectives.directions(spec.objectives)
            front = len(read_front(rdb.engine, study._study_id, directions).front)
            if fronts is not None:
                fronts.clear()
                fronts[done] = front
    if grid and (exact or done >= total):
        done, total = grid_left(study, spec)
    left = pending(rdb, study._study_id)
    alive = [r for r in left.running if r.silent < SILENT_S]
    # Of several objectives optuna stores no steps (sweep.trial.objective): none to read.
    shown = [] if spec.multi else [r.number for r in alive[:SHOWN]]
    return Progress(
        done=done,
        total=total,
        running=len(alive),
        workers=len({r.worker for r in alive}),
        here=sum(r.run == run_id for r in alive),
        best=best,
        elapsed=time.monotonic() - start,
        waiting_for=_waiting_for(left, run_id, rdb.grace_period or GRACE_PERIOD_S),
        front=front,
        epochs=latest_epochs(rdb, study._study_id, shown),
        epochs_per_trial=fixed_epochs(spec),
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
        client = Client(scheduler, timeout=f"{DASK_TIMEOUT_S}s", set_as_default=True)
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
    artifacts: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    show_progress_bar: bool | None = None,
) -> optuna.Study:
    """Create or resume the study and run it to the end with ``jobs`` workers.

    ``trials`` replaces the study's trial cap (for every worker, on every host). ``backend``
    "loky" runs local processes with the study's BLAS ``threads`` each; "dask" sends the
    workers to the dask.distributed cluster at ``scheduler`` (they must reach the same
    storage, e.g. PostgreSQL). ``artifacts`` is where trials checkpoint (a folder,
    ``file:///folder`` or ``s3://bucket/prefix``; default ``$SWEEP_ARTIFACTS``, else beside a
    SQLite database, see ``sweep.trial.checkpoint``). On Ctrl-C the run stops, its running trials go
    back to the queue with their checkpoints, and KeyboardInterrupt propagates; the next run
    resumes them.

    ``on_progress`` is called every second or so with a ``Progress``; without it,
    ``show_progress_bar`` draws a ``tqdm.auto`` bar (default: in a notebook or at a terminal,
    ``sweep.progress.interactive``). optuna's INFO lines are held back while it runs.
    """
    if on_progress is None and (interactive() if show_progress_bar is None
                                else show_progress_bar):  # fmt: skip
        bar = ProgressBar()
        try:
            with _optuna_warnings_only():
                return _run(spec, storage, jobs, trials, backend, scheduler, artifacts, bar)
        finally:
            bar.close()
    with _optuna_warnings_only():
        return _run(spec, storage, jobs, trials, backend, scheduler, artifacts, on_progress)


@contextlib.contextmanager
def _optuna_warnings_only() -> Iterator[None]:
    """optuna at WARNING at most while a run goes (its INFO "A new study created" is noise
    beside sweep's own progress), put back after."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(level, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _run(
    spec: StudySpec, storage: str | None, jobs: int, trials: int | None, backend: str,
    scheduler: str | None, artifacts: str | None,
    on_progress: Callable[[Progress], None] | None,
) -> optuna.Study:  # fmt: skip
    """``run``'s work, with ``on_progress`` decided."""
    from joblib import Parallel, delayed

    url = resolve_url(storage)
    if trials is not None:
        spec = dataclasses.replace(spec, trials=trials)
    load_data(spec)  # a missing or corrupt dataset is reported before anything is stored
    store, location, warning = study_store(artifacts, url)  # a bad --artifacts too
    checkpoint_policy()  # and bad $SWEEP_CHECKPOINT_* values
    try:
        study = open_study(spec, open_storage(url))
        recover(study, max_retries=spec.max_retries)
        total = top_up(study, spec)
        clear_ended(store, rdb_of(study._storage), study._study_id)  # ends a kill cut short
    except STORAGE_ERRORS as e:
        raise storage_failure(e, url) from e
    if warning:  # once the study is known good: a refused run prints its one line only
        logger.warning("%s", warning)
    pool = _pool(backend, threads=spec.threads, scheduler=scheduler)
    run_id = uuid.uuid4().hex[:12]
    start = time.monotonic()
    stop = threading.Event()

    fronts: dict[int, int] = {}

    def watch() -> None:
        while not stop.wait(POLL_S):
            try:
                on_progress(_progress(study, spec, total, start, run_id, fronts=fronts))
            except Exception:  # a busy database only delays the display
                logger.debug("progress poll failed", exc_info=True)

    watcher = threading.Thread(target=watch, daemon=True) if on_progress else None
    if watcher:
        on_progress(_progress(study, spec, total, start, run_id))
        watcher.start()
    try:
        # Each worker's sampler has a seed of its own, also across launchers (two runs on two
        # hosts would otherwise draw the same random and TPE start-up points).
        salt = 1 + int(run_id, 16) % 2**20
        with pool:
            Parallel(n_jobs=jobs)(
                delayed(work)(spec, url, run_id, salt=salt + i, artifacts=location)
                for i in range(jobs)
            )
    except BaseException as e:
        died = _died(e)
        _stop_run(study, run_id, died=died, max_retries=spec.max_retries)
        if isinstance(e, KeyboardInterrupt | SweepError):
            raise
        if isinstance(e, Exception):
            if root_cause(e) is not e:
                raise storage_failure(e, url) from e
            reason = (str(e).splitlines() or [""])[0]
            what = "a worker process died" if died else "a worker stopped"
            raise WorkerError(
                f"{what} ({type(e).__name__}: {reason}); its run's trials were requeued; "
                f"run again to resume ({mask_password(url)})"
            ) from e
        raise
    finally:
        stop.set()
        if watcher:
            watcher.join()
    try:
        if not study_exists(rdb_of(study._storage), study._study_id):
            raise StudyGone(f"study {spec.name!r}")  # its trials, table and all, are gone
        last = _progress(study, spec, total, start, run_id, exact=True)
    except STORAGE_ERRORS as e:
        raise storage_failure(e, url) from e
    if on_progress:
        on_progress(last)
    if spec.sampler == "grid" and last.done < last.total:
        raise unfinished(last.done, last.total, url)
    return study


def _died(e: BaseException) -> bool:
    """Whether a worker process died (killed by the OOM killer or a signal, or crashed)
    rather than stopped on an error of its own."""
    from concurrent.futures.process import BrokenProcessPool

    from joblib.externals.loky.process_executor import TerminatedWorkerError

    return isinstance(e, TerminatedWorkerError | BrokenProcessPool)


def _stop_run(study: optuna.Study, run_id: str, *, died: bool, max_retries: int) -> None:
    """Ask the run's remaining workers to stop (dask cannot kill a running task) and hand back
    the trials they had started: requeued with a death counted if a worker process died (loky
    then ends its siblings too, and each of their trials counts, as Ray Tune counts every
    trial of a failed node), else back to WAITING as they were enqueued."""
    storage, study_id = rdb_of(study._storage), study._study_id
    try:
        if not study_exists(storage, study_id):
            return  # deleted by another client: nothing to stop or hand back
        study._storage.set_study_system_attr(study_id, stop_key(run_id), True)
        if died:
            abandon_run(storage, study_id, run_id, max_retries=max_retries)
        else:
            release_run(storage, study_id, run_id)
    except Exception as e:  # the storage failing: the stale-trial check requeues them later
        logger.warning("could not hand back the run's trials: %s", root_message(e))
        logger.debug("hand-back failure", exc_info=True)

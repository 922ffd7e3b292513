"""The scale benchmark's measurements of what a worker and a launcher pay, each in a fresh
spawned process (a worker starts cold, as a real one does, and a timeout can stop it):
claim + finish, a TPE ask, a top-up of the queue."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
from collections.abc import Callable

from tests.bench.scale_table import Result

NAME = "big"  # the study's name in every database
TOPUP_SLOTS = 20  # issue 27's row: a top-up of 20 slots


def in_child(fn: Callable[..., list[float]], *args: object, timeout: float) -> Result:
    """``fn(*args)`` in a spawned process."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # exit terminates it
        pending = pool.apply_async(fn, args)
        try:
            return Result(pending.get(timeout))
        except multiprocessing.TimeoutError:
            return Result(failed=f"> {timeout:.0f} s (timeout)", above=timeout)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]  # one line: a table cell
            return Result(failed=f"error: {type(e).__name__}: {first[:120]}")


def _enqueue(url: str, slots: int) -> None:
    """Add ``slots`` empty WAITING slots to the study, as ``sweep run`` queues them for a TPE
    study: in one transaction under the study lock (``sweep.queue.topup.enqueue``), not
    through optuna's ``enqueue_trial``, which counts the study once a slot (300 slots took
    60 s at 10⁶ trials, within the claim row's timeout)."""
    from sweep.queue.storage import open_storage
    from sweep.queue.topup import enqueue
    from sweep.queue.transactions import writing

    rdb = open_storage(url)
    study_id = rdb.get_study_id_from_name(NAME)
    with writing(rdb.engine, lock=study_id) as conn:
        enqueue(conn, study_id, [{}] * slots)
    rdb.engine.dispose()


def claim_cycles(url: str, cycles: int) -> list[float]:
    """ms between consecutive trials of one worker (``sweep.worker.serve``) whose objective
    only suggests the study's parameters: the framework's whole per-trial cost."""
    import optuna

    from sweep.queue.storage import open_storage
    from sweep.study.joining import join
    from sweep.study.space import suggest
    from sweep.worker import as_worker_study, serve

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = join(url, NAME)
    _enqueue(url, cycles)
    study = optuna.load_study(study_name=NAME, storage=open_storage(url),
                              sampler=optuna.samplers.RandomSampler(seed=0))  # fmt: skip
    starts: list[float] = []

    def trivial(trial: optuna.Trial) -> float:
        starts.append(time.perf_counter())
        suggest(trial, spec)
        return 90.0 + len(starts) % 7 * 0.1

    serve(as_worker_study(study), trivial, run_id="bench-scale")
    return [(b - a) * 1e3 for a, b in itertools.pairwise(starts)]


def tpe_asks(url: str, asks: int, budget_s: float) -> list[float]:
    """ms of each sampler ask of a fresh TPE worker (claim, ``optuna.Trial``, suggest), the
    first one first; stops early, after at least four, once ``budget_s`` is spent."""
    import optuna

    from sweep.queue import attrs
    from sweep.queue.storage import open_storage
    from sweep.queue.writeback import WriteBackStorage
    from sweep.study.joining import join, make_pruner, make_sampler
    from sweep.study.space import suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = join(url, NAME)
    _enqueue(url, asks)
    storage = WriteBackStorage(open_storage(url))
    study = optuna.load_study(study_name=NAME, storage=storage, sampler=make_sampler(spec, 1),
                              pruner=make_pruner(spec))  # fmt: skip
    tags = {attrs.RUN_TAG: "bench-scale", attrs.WORKER_TAG: f"bench:{os.getpid()}"}
    out: list[float] = []
    deadline = time.monotonic() + budget_s
    for i in range(asks):
        start = time.perf_counter()
        trial_id = storage.claim(study._study_id, tags)
        assert trial_id is not None, "the slots were enqueued above"
        trial = optuna.Trial(study, trial_id)
        suggest(trial, spec)
        out.append((time.perf_counter() - start) * 1e3)
        study.tell(trial, 90.0 + i % 7 * 0.1)
        if len(out) >= 4 and time.monotonic() > deadline:
            break
    return out


def top_ups(url: str, n: int, repeats: int) -> list[float]:
    """ms of each of ``repeats`` top-ups (``sweep.queue.topup.top_up``, what ``sweep run``
    calls at launch) of a study of ``n`` counting trials, each with its cap 20 higher than the
    last; then the slots are skipped again by a top-up to ``n`` (not timed), so that the study
    counts ``n`` trials for the rows after this one."""
    from sweep.queue.storage import open_storage
    from sweep.queue.topup import top_up
    from sweep.study.joining import join

    join(url, NAME)  # the checks a launcher makes: the study exists and is sweep's
    rdb = open_storage(url)
    study_id = rdb.get_study_id_from_name(NAME)
    out = []
    for k in range(1, repeats + 1):
        start = time.perf_counter()
        total = top_up(rdb, study_id, cap=n + k * TOPUP_SLOTS)
        out.append((time.perf_counter() - start) * 1e3)
        if total != n + k * TOPUP_SLOTS:
            raise AssertionError(f"top-up to {n + k * TOPUP_SLOTS} gave a total of {total}")
    top_up(rdb, study_id, cap=n)
    rdb.engine.dispose()
    return out

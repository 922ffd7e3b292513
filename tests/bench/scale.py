"""The scale benchmark (not a test): ``make bench-scale`` or ``python -m tests.bench.scale``.

What a study of many trials costs, per operation, as the study grows: studies of 10³, 10⁴ and
10⁵ finished trials (``tests.bench.bigstudy``: a few real trials, the rest copied in SQL), on
SQLite and on a PostgreSQL server it starts on loopback (``tests.postgres``), each measured
through the product's own code paths, so that whatever makes them faster shows here:
  - claim + finish: a worker's whole cycle (``sweep.worker.serve`` with a trivial objective
    that suggests from the study's space with a random sampler): claim, trial, write-back;
  - TPE ask: a TPE worker's per-trial sampler work (claim, ``optuna.Trial``,
    ``sweep.study.space.suggest`` with ``sweep.study.joining.make_sampler``), the first ask of a
    fresh worker (which fills optuna's trial cache) apart from the steady state;
  - ``sweep status`` and ``sweep report``: the commands' wall time, in a subprocess;
  - run start-up: ``sweep run`` on the study with its cap one higher, from launch until its
    worker has claimed the new trial (the trial's ``datetime_start``), then Ctrl-C.
Each row prints medians with min and max at every size, the ratio of the largest size to the
smallest, a linear extrapolation to 10⁶ and its target, marked ok or MISSED: a benchmark
reports, it does not fail. Operations that can run for minutes get a timeout.

Longer than our usual 400 lines: the measurements, their runner and the table that judges
them are one benchmark, read in one sitting.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np

from tests.bench import bigstudy
from tests.bench.training import machine_facts

SIZES = (1_000, 10_000, 100_000)
BACKENDS = ("sqlite", "postgresql")
# Per measurement: twice the loosest target (report, 60 s), so no verdict depends on it, and
# short enough that today's code (status and report at 10⁵ run for many minutes) keeps the
# whole benchmark near 20 minutes.
TIMEOUT_S = 120.0
NAME = "big"  # the study's name in every database
_START = time.monotonic()


@dataclasses.dataclass
class Result:
    """One row at one size: its samples, or why there are none (a timeout, an error)."""

    samples: list[float] = dataclasses.field(default_factory=list)
    failed: str | None = None
    timeout: float | None = None  # set when it ran out of time: the value exceeds this

    @property
    def median(self) -> float | None:
        return float(np.median(self.samples)) if self.samples and not self.failed else None


@dataclasses.dataclass(frozen=True)
class Row:
    """A measured operation, its unit and its target."""

    key: str
    title: str
    target: str
    # (sizes → results) → met or not; None: no target
    check: Callable[[dict[int, Result]], bool] | None = None


def _at_most(limit: float) -> Callable[[dict[int, Result]], bool]:
    """At every measured size, the median is within ``limit``."""
    return lambda by_size: all(r.median is not None and r.median <= limit
                               for r in by_size.values())  # fmt: skip


def _flat(factor: float) -> Callable[[dict[int, Result]], bool]:
    """The largest size costs at most ``factor`` times the smallest."""

    def check(by_size: dict[int, Result]) -> bool:
        low, high = by_size[min(by_size)].median, by_size[max(by_size)].median
        return low is not None and high is not None and high <= factor * low

    return check


def _tpe_target(sizes: list[int]) -> int:
    return 10_000 if 10_000 in sizes else max(sizes)


def rows(sizes: list[int]) -> tuple[Row, ...]:
    at = _tpe_target(sizes)

    def tpe(by_size: dict[int, Result]) -> bool:
        return _at_most(50.0)({at: by_size[at]})

    return (
        Row("claim", "claim + finish per trial, ms", f"≤ 1.5× at {min(sizes):,}", _flat(1.5)),
        Row("first_ask", "TPE ask, first of a fresh worker, ms", "none"),
        Row("ask", "TPE ask, steady state, ms", f"≤ 50 ms at {at:,}", tpe),
        Row("status", "`sweep status`, s", "≤ 1 s", _at_most(1.0)),
        Row("startup", "run start-up (launch → first claim), s", "≤ 5 s", _at_most(5.0)),
        Row("report", "`sweep report`, s", "≤ 60 s", _at_most(60.0)),
    )


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def _progress(message: str) -> None:
    """Progress goes to stderr, the results to stdout."""
    elapsed = int(time.monotonic() - _START)
    print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


# -- measurements in a fresh process (a fresh worker, and a timeout that can stop it) ---------


def _in_child(fn: Callable[..., list[float]], *args: object, timeout: float) -> Result:
    """``fn(*args)`` in a spawned process (a worker starts cold, as a real one does)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # exit terminates it
        pending = pool.apply_async(fn, args)
        try:
            return Result(pending.get(timeout))
        except multiprocessing.TimeoutError:
            return Result(failed=f"> {timeout:.0f} s (timeout)", timeout=timeout)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]  # one line: a table cell
            return Result(failed=f"error: {type(e).__name__}: {first[:120]}")


def _enqueue(url: str, slots: int) -> None:
    """Add ``slots`` empty WAITING slots to the study, as ``sweep run`` queues them for a TPE
    study. Through optuna's public ``enqueue_trial``, not ``sweep.queue.topup.top_up``: the
    set-up must not depend on the code under test (on PostgreSQL, today's ``top_up`` fails beyond
    65,535 trials: one bind parameter per trial)."""
    import optuna

    from sweep.queue.storage import open_storage

    rdb = open_storage(url)
    study = optuna.load_study(study_name=NAME, storage=rdb)
    for _ in range(slots):
        study.enqueue_trial({}, skip_if_exists=False)
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


# -- measurements through the command line ---------------------------------------------------


def _sweep(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweep.cli", *args]


def command_wall(cmd: list[str], repeats: int, timeout: float) -> Result:
    """Wall seconds of a command, ``repeats`` times; fewer once they have taken a fifth of
    ``timeout`` (a command that slow is far off any target), none after a timeout."""
    out = Result()
    for _ in range(repeats):
        if sum(out.samples) > timeout / 5:
            break
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Result(failed=f"> {timeout:.0f} s (timeout)", timeout=timeout)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            return Result(failed=f"error: exit {done.returncode}: {last[:120]}")
        out.samples.append(time.perf_counter() - start)
    return out


def run_startup(url: str, study_file: Path, trials: int, timeout: float) -> Result:
    """Seconds from launching ``sweep run --trials N+1 --jobs 1`` until its worker claimed the
    new trial (read from the trial's ``datetime_start``, so polling adds nothing), then
    Ctrl-C to the launcher's process group, as a terminal sends it."""
    import sqlalchemy

    from sweep.queue import tables as tb
    from sweep.queue.storage import open_storage

    rdb = open_storage(url, heartbeat_interval=None, grace_period=None, read_only=True)
    t = tb.trials
    with rdb.engine.connect() as conn:  # the new trial comes after every trial there is
        top = conn.execute(sqlalchemy.select(sqlalchemy.func.max(t.c.trial_id))).scalar_one()
    launched = tb.utc_now()
    cmd = _sweep("run", str(study_file), "--storage", url, "--trials", str(trials), "--jobs", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    first = sqlalchemy.select(sqlalchemy.func.min(t.c.datetime_start)).where(
        t.c.trial_id > top, t.c.datetime_start.is_not(None)
    )
    result = Result(failed=f"> {timeout:.0f} s (timeout)", timeout=timeout)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with rdb.engine.connect() as conn:
                started = conn.execute(first).scalar()
            if started is not None:
                result = Result([(started - launched) / timedelta(seconds=1)])
                break
            if proc.poll() is not None:
                last = (proc.stderr.read().strip().splitlines() or ["?"])[-1]
                result = Result(failed=f"error: exit {proc.returncode}: {last[:120]}")
                break
            time.sleep(0.1)
    finally:
        _interrupt(proc)
        rdb.engine.dispose()
    return result


def _interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C to the process group; after 60 s, SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    proc.stderr.close()


# -- one backend, every size ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to measure (``--quick`` shrinks it to a smoke run)."""

    cycles: int = 300  # claim + finish cycles
    asks: int = 30  # TPE asks, at most ...
    ask_budget_s: float = 60.0  # ... or as many as fit in this time (at least four)
    status_repeats: int = 3
    timeout: float = TIMEOUT_S


def _floor(plan: Plan) -> Result:
    """What ``sweep status`` costs with nothing to read: the floor of the command rows."""
    from sweep.queue.storage import open_storage

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        url = f"sqlite:///{tmp}/empty.db"
        open_storage(url).engine.dispose()  # optuna's tables, no study
        return command_wall(_sweep("status", "--storage", url), plan.status_repeats, plan.timeout)


def measure_size(url: str, folder: Path, n: int, plan: Plan, tag: str) -> dict[str, Result]:
    """Build a TPE study of ``n`` trials in ``url`` and measure every row on it; the reading
    commands first, while it holds exactly its ``n`` finished trials."""
    start = time.perf_counter()
    bigstudy.build(url, folder, n, name=NAME, sampler="tpe")
    _progress(f"{tag}: built in {time.perf_counter() - start:.1f} s")
    out: dict[str, Result] = {}
    titles = {row.key: row.title for row in rows([n])}

    def done(key: str, result: Result) -> None:
        out[key] = result
        _progress(f"{tag}: {titles[key]}: {_cell(result)}")

    status_cmd = _sweep("status", "--storage", url)
    done("status", command_wall(status_cmd, plan.status_repeats, plan.timeout))
    report_cmd = _sweep("report", NAME, "--storage", url, "--out", str(folder / "report"))
    done("report", command_wall(report_cmd, 1, plan.timeout))
    study_file = bigstudy.study_file(folder, NAME, sampler="tpe")  # the file build ran
    done("startup", run_startup(url, study_file, n + 1, plan.timeout))
    asks = _in_child(tpe_asks, url, plan.asks, plan.ask_budget_s, timeout=plan.timeout)
    out["first_ask"] = Result(asks.samples[:1], asks.failed, asks.timeout)
    done("first_ask", out["first_ask"])
    done("ask", Result(asks.samples[1:], asks.failed, asks.timeout))
    done("claim", _in_child(claim_cycles, url, plan.cycles, timeout=plan.timeout))
    return out


@contextmanager
def databases(backend: str, root: Path) -> Iterator[Callable[[int], str]]:
    """A maker of fresh database URLs on ``backend``; raises _Skip if it cannot run here."""
    if backend == "sqlite":
        yield lambda n: f"sqlite:///{root}/{n}.db"
        return
    try:
        import pytest  # tests.postgres reports missing server binaries as a skip
    except ImportError:
        raise _Skip("pytest is not installed (make bench-scale installs the dev extra)") from None
    from tests import postgres

    server = postgres.server()
    try:
        admin = next(server)
    except (pytest.skip.Exception, pytest.fail.Exception) as e:
        raise _Skip(e.msg) from None
    except (subprocess.CalledProcessError, OSError) as e:
        raise _Skip(f"the server did not start: {e}") from None
    try:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise _Skip("no PostgreSQL driver (pip install 'mlp-sweep[postgres]')") from None
        yield lambda n: postgres.fresh_database(admin)
    finally:
        server.close()


class _Skip(Exception):
    """A backend that cannot be measured on this machine, and why."""


def measure_backend(backend: str, sizes: list[int], plan: Plan) -> dict[str, dict[int, Result]]:
    by_row: dict[str, dict[int, Result]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, \
            databases(backend, Path(tmp)) as fresh:  # fmt: skip
        for n in sizes:
            folder = Path(tmp, str(n))
            folder.mkdir()
            for key, result in measure_size(fresh(n), folder, n, plan, f"{backend} {n:,}").items():
                by_row.setdefault(key, {})[n] = result
    return by_row


# -- the table --------------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _cell(r: Result) -> str:
    if r.failed:
        return r.failed
    if len(r.samples) == 1:
        return _num(r.samples[0])
    return f"{_num(r.median)} ({_num(min(r.samples))}–{_num(max(r.samples))})"


def _ratio(by_size: dict[int, Result]) -> str:
    low, high = by_size[min(by_size)], by_size[max(by_size)]
    if low.median is None or low.median == 0:
        return "—"
    if high.timeout is not None:
        return f"> {high.timeout / low.median:.0f}×"
    return "—" if high.median is None else f"{high.median / low.median:.2f}×"


def _extrapolated(by_size: dict[int, Result]) -> str:
    """The median at 10⁶ by a least-squares line through the medians at the measured sizes."""
    points = [(n, r.median) for n, r in sorted(by_size.items())]
    if len(points) < 2 or any(m is None for _, m in points):
        return "—"
    slope, intercept = np.polyfit(*zip(*points, strict=True), deg=1)
    if slope <= 0:  # no growth to extrapolate: the largest size's median stands
        return f"{_num(points[-1][1])} (flat)"
    return _num(slope * 1e6 + intercept)


def table(title: str, sizes: list[int], by_row: dict[str, dict[int, Result]]) -> list[str]:
    """The backend's results as a markdown table: a row per operation, a column per size."""
    head = ["operation", *(f"{n:,}" for n in sizes), f"{max(sizes):,} / {min(sizes):,}",
            "10⁶ (linear fit)", "target", ""]  # fmt: skip
    lines = [f"\n## {title}: median (min–max) at each study size, in trials\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for row in rows(sizes):
        by_size = by_row.get(row.key, {})
        if set(by_size) != set(sizes):
            continue
        verdict = "" if row.check is None else "ok" if row.check(by_size) else "MISSED"
        cells = [row.title, *(_cell(by_size[n]) for n in sizes), _ratio(by_size),
                 _extrapolated(by_size), row.target, verdict]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="study sizes in trials, comma-separated")  # fmt: skip
    parser.add_argument("--backends", default=",".join(BACKENDS), help="sqlite,postgresql")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S,
                        help="seconds per measurement")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="few repeats: checks that it runs")
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study built
    sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",")})
    backends = [b.strip() for b in args.backends.split(",")]
    if unknown := set(backends) - set(BACKENDS):
        parser.error(f"--backends: unknown {', '.join(sorted(unknown))}; use {','.join(BACKENDS)}")
    if sizes[0] < 8:
        parser.error("--sizes: each at least 8 (the real trials a study is built from)")
    plan = Plan(timeout=args.timeout)
    if args.quick:
        plan = Plan(cycles=20, asks=4, ask_budget_s=5.0, status_repeats=1, timeout=args.timeout)

    print("# mlp-sweep scale benchmark\n")
    for fact in machine_facts():
        print(f"- {fact}")
    print(f"- load average at the start: {_load()} (a shared machine inflates every row)")
    if sys.flags.dont_write_bytecode:  # an installed package runs from cached bytecode
        print("- PYTHONDONTWRITEBYTECODE is set: every command compiles the project's modules "
              "anew, which adds to each command row (`sweep status`: about 0.05 s)")  # fmt: skip
    print(f"- sizes {', '.join(f'{n:,}' for n in sizes)}; claim + finish over {plan.cycles} "
          f"trials; up to {plan.asks} TPE asks or {plan.ask_budget_s:.0f} s; status × "
          f"{plan.status_repeats}; a timeout of {plan.timeout:.0f} s per measurement")  # fmt: skip
    print("- 10⁶: a least-squares line through the medians at the measured sizes, evaluated at "
          "10⁶ trials: an extrapolation, not a measurement")  # fmt: skip
    print(f"- `sweep status` on a database with no study: {_cell(_floor(plan))} s, the start-up "
          "(interpreter, imports) under every command's row")  # fmt: skip
    sys.stdout.flush()
    titles = {"sqlite": "SQLite", "postgresql": "PostgreSQL (a local server on loopback)"}
    for backend in backends:
        try:
            by_row = measure_backend(backend, sizes, plan)
        except _Skip as e:
            print(f"\n## {titles[backend]}\n\nPostgreSQL rows skipped: {e}")
            continue
        print("\n".join(table(titles[backend], sizes, by_row)))
        print(f"\nload average at the end: {_load()}", flush=True)


if __name__ == "__main__":
    main()

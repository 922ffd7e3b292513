"""The scale benchmark (not a test): ``make bench-scale`` or ``python -m tests.bench.scale``.

What a study of many trials costs, per operation, as the study grows: studies of 10³, 10⁵ and
10⁶ finished trials (``tests.bench.bigstudy``: a few real trials, the rest copied in SQL), on
SQLite and on a PostgreSQL server it starts on loopback (``tests.postgres``), each measured
through the product's own code paths, so that whatever makes them faster shows here:
  - claim + finish: a worker's whole cycle (``sweep.worker.serve`` with a trivial objective
    that suggests from the study's space with a random sampler): claim, trial, write-back;
  - TPE ask: a TPE worker's per-trial sampler work (claim, ``optuna.Trial``,
    ``sweep.study.space.suggest`` with ``sweep.study.joining.make_sampler``), the first ask of a
    fresh worker (which fills optuna's trial cache) apart from the steady state;
  - ``sweep status``, alternating with ``sweep status`` on an empty database of the same
    backend, so both see the same load; ``sweep report`` and its peak memory; the dashboard's
    first trial-list call and its server's peak memory; each in a subprocess;
  - a top-up of 20 slots (``sweep.queue.topup.top_up``, what ``sweep run`` does at launch);
  - run start-up: ``sweep run`` on the study with its cap one higher, from launch until its
    worker has claimed the new trial (the trial's ``datetime_start``), then Ctrl-C.
The measurements live in ``scale_workers`` and ``scale_commands``, the rows and their targets
in ``scale_table``; this module builds the studies and runs them. Operations that can run for
minutes get a timeout, and the ones that can take gigabytes a memory cap.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.bench import bigstudy
from tests.bench.scale_commands import alternating, dashboard_watched, report_watched, run_startup
from tests.bench.scale_commands import sweep as _sweep
from tests.bench.scale_table import MILLION, Result, Results, cell, rows, table
from tests.bench.scale_workers import NAME, claim_cycles, in_child, top_ups, tpe_asks
from tests.bench.training import machine_facts

# 10⁴ left out so that one run, both backends, fits in about 10 minutes on 2 cores (10⁶ builds
# in 50 s on SQLite, 3 minutes on PostgreSQL).
SIZES = (1_000, 100_000, MILLION)
BACKENDS = ("sqlite", "postgresql")
# Per measurement: twice the loosest target (report, 60 s), so no verdict depends on it, and
# short enough that today's code keeps the whole benchmark within its half hour.
TIMEOUT_S = 120.0
DASHBOARD_TIMEOUT_S = 60.0  # twelve times its target of 5 s: its misses cost half as much
MEMORY_CAP_MB = 2_000.0  # twice the memory target: report and the dashboard are killed past it
_START = time.monotonic()


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def _progress(message: str) -> None:
    """Progress goes to stderr, the results to stdout."""
    elapsed = int(time.monotonic() - _START)
    print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much to measure (``--quick`` shrinks it to a smoke run)."""

    cycles: int = 300  # claim + finish cycles
    asks: int = 30  # TPE asks, at most ...
    ask_budget_s: float = 60.0  # ... or as many as fit in this time (at least four)
    status_repeats: int = 5  # each, alternating with the empty database's
    topups: int = 5
    timeout: float = TIMEOUT_S
    dashboard_timeout: float = DASHBOARD_TIMEOUT_S
    memory_cap_mb: float = MEMORY_CAP_MB


def measure_size(url: str, empty: str, folder: Path, n: int, plan: Plan, tag: str
                 ) -> dict[str, Result]:  # fmt: skip
    """Build a TPE study of ``n`` trials in ``url`` and measure every row on it; the reading
    commands first, while it holds exactly its ``n`` finished trials (``empty``: a database
    of the same backend with optuna's tables and no study)."""
    start = time.perf_counter()
    bigstudy.build(url, folder, n, name=NAME, sampler="tpe")
    _progress(f"{tag}: built in {time.perf_counter() - start:.1f} s")
    out: dict[str, Result] = {}
    titles = {row.key: row.title for row in rows([n])}

    def done(key: str, result: Result) -> None:
        out[key] = result
        _progress(f"{tag}: {titles[key]}: {cell(result)}")

    status = [_sweep("status", "--storage", db) for db in (empty, url)]
    floor, status = alternating(status, plan.status_repeats, plan.timeout)
    done("status_empty", floor)
    done("status", status)
    report_cmd = _sweep("report", NAME, "--storage", url, "--out", str(folder / "report"))
    wall, peak = report_watched(report_cmd, plan.timeout, plan.memory_cap_mb)
    done("report", wall)
    done("report_mb", peak)
    wall, peak = dashboard_watched(url, NAME, folder, plan.dashboard_timeout, plan.memory_cap_mb)
    done("dashboard", wall)
    done("dashboard_mb", peak)
    done("topup", in_child(top_ups, url, n, plan.topups, timeout=plan.timeout))
    study_file = bigstudy.study_file(folder, NAME, sampler="tpe")  # the file build ran
    done("startup", run_startup(url, study_file, n + 1, plan.timeout))
    asks = in_child(tpe_asks, url, plan.asks, plan.ask_budget_s, timeout=plan.timeout)
    done("first_ask", Result(asks.samples[:1], asks.failed, asks.above))
    done("ask", Result(asks.samples[1:], asks.failed, asks.above))
    done("claim", in_child(claim_cycles, url, plan.cycles, timeout=plan.timeout))
    return out


@contextmanager
def databases(backend: str, root: Path) -> Iterator[Callable[[str], str]]:
    """A maker of fresh database URLs on ``backend`` (given a name for SQLite's file);
    raises _Skip if it cannot run here."""
    if backend == "sqlite":
        yield lambda name: f"sqlite:///{root}/{name}.db"
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
        yield lambda name: postgres.fresh_database(admin)
    finally:
        server.close()


class _Skip(Exception):
    """A backend that cannot be measured on this machine, and why."""


def measure_backend(backend: str, sizes: list[int], plan: Plan) -> Results:
    from sweep.queue.storage import open_storage

    results: Results = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, \
            databases(backend, Path(tmp)) as fresh:  # fmt: skip
        empty = fresh("empty")
        open_storage(empty).engine.dispose()  # optuna's tables, no study
        for n in sizes:
            folder = Path(tmp, str(n))
            folder.mkdir()
            tag = f"{backend} {n:,}"
            for key, result in measure_size(fresh(str(n)), empty, folder, n, plan, tag).items():
                results.setdefault(key, {})[n] = result
            _progress(f"{tag}: done")
    return results


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
    plan = Plan(timeout=args.timeout, dashboard_timeout=min(args.timeout, DASHBOARD_TIMEOUT_S))
    if args.quick:
        plan = dataclasses.replace(plan, cycles=20, asks=4, ask_budget_s=5.0, status_repeats=1,
                                   topups=2)  # fmt: skip

    print("# mlp-sweep scale benchmark\n")
    for fact in machine_facts():
        print(f"- {fact}")
    print(f"- load average at the start: {_load()} (a shared machine inflates every row)")
    if sys.flags.dont_write_bytecode:  # an installed package runs from cached bytecode
        print("- PYTHONDONTWRITEBYTECODE is set: every command compiles the project's modules "
              "anew, which adds to each command row (`sweep status`: about 0.05 s)")  # fmt: skip
    print(f"- sizes {', '.join(f'{n:,}' for n in sizes)}; claim + finish over {plan.cycles} "
          f"trials; up to {plan.asks} TPE asks or {plan.ask_budget_s:.0f} s; status × "
          f"{plan.status_repeats} alternating with an empty database; top-up × {plan.topups}; "
          f"a timeout of {plan.timeout:.0f} s per measurement ({plan.dashboard_timeout:.0f} s "
          f"for the dashboard); report and the dashboard killed past "
          f"{plan.memory_cap_mb:,.0f} MB")  # fmt: skip
    if max(sizes) < MILLION:
        print("- 10⁶ (linear fit): a least-squares line through the medians at the measured "
              "sizes, evaluated at 10⁶ trials: an extrapolation, not a measurement")  # fmt: skip
    sys.stdout.flush()
    titles = {"sqlite": "SQLite", "postgresql": "PostgreSQL (a local server on loopback)"}
    for backend in backends:
        try:
            results = measure_backend(backend, sizes, plan)
        except _Skip as e:
            print(f"\n## {titles[backend]}\n\nPostgreSQL rows skipped: {e}")
            continue
        print("\n".join(table(titles[backend], sizes, results)))
        print(f"\nload average at the end: {_load()}", flush=True)


if __name__ == "__main__":
    main()

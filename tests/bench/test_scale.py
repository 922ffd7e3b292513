"""The scale benchmark's arithmetic, verdicts and watchers, and a smoke run so that
`make bench-scale` cannot rot unnoticed.

Nothing here asserts a speed: speed is what `make bench-scale` reports.
"""

import sys

import pytest

from tests.bench import scale, scale_commands, scale_table
from tests.bench.scale_table import Result


def test_extrapolation_is_the_least_squares_line_at_a_million():
    # exactly y = 1 + n / 1000: the line through them gives 1001 at 10⁶
    on_a_line = {n: Result([1 + n / 1000]) for n in (1_000, 10_000, 100_000)}
    assert scale_table._extrapolated(on_a_line) == "1,001"
    # medians, not means: the outlier of each size does not move the line
    noisy = {n: Result([1 + n / 1000, 1 + n / 1000, 1e9]) for n in (1_000, 10_000, 100_000)}
    assert scale_table._extrapolated(noisy) == "1,001"
    # falling cost: nothing to extrapolate
    assert scale_table._extrapolated({10: Result([5.0]), 20: Result([4.0])}) == "4.00 (flat)"
    timed_out = {10: Result([5.0]), 20: Result(failed="> 300 s (timeout)", above=300)}
    assert scale_table._extrapolated(timed_out) == "—"


def test_ratio_and_targets():
    flat = {1_000: Result([2.0, 2.0, 9.0]), 100_000: Result([3.0])}
    assert scale_table._ratio(flat) == "1.50×"
    assert scale_table._flat(1.5)(flat, {})
    assert not scale_table._flat(1.4)(flat, {})
    timed_out = {1_000: Result([2.0]), 100_000: Result(failed="> 300 s (timeout)", above=300)}
    assert scale_table._ratio(timed_out) == "> 150×"
    assert not scale_table._flat(1.5)(timed_out, {})
    assert not scale_table._at_most(1e9)(timed_out, {})
    assert scale_table._at_most(1.0)({1: Result([1.0]), 2: Result([0.5, 3.0, 0.9])}, {})
    assert not scale_table._at_most(1.0)({1: Result([1.0]), 2: Result([1.01])}, {})


def test_status_is_judged_against_the_empty_database_at_the_largest_size():
    near = scale_table._near("status_empty", 0.1)
    empty = {10: Result([0.5]), 20: Result([0.5, 0.9, 0.6])}  # median 0.6 at 20
    assert near({10: Result([9.0]), 20: Result([0.7])}, {"status_empty": empty})  # 10 is not 20
    assert not near({10: Result([0.5]), 20: Result([0.71])}, {"status_empty": empty})
    assert not near({20: Result([0.1])}, {})  # no baseline: no verdict of ok
    assert not near({20: Result(failed="> 120 s (timeout)", above=120)}, {"status_empty": empty})


def _results(sizes, value):
    return {row.key: {n: Result([value]) for n in sizes} for row in scale_table.rows(sizes)}


def _cells(lines, title):
    line = next(line for line in lines if line.startswith(f"| {title} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_table_prints_every_row_with_its_verdict_and_fits_only_short_of_a_million():
    sizes = [1_000, 1_000_000]
    results = _results(sizes, 0.5)
    results["report_mb"][1_000_000] = Result([1_500.0])  # 1.5 GB: over its target
    results["status"][1_000_000] = Result([0.65])  # the empty database's 0.5 + 0.15
    results["dashboard"][1_000_000] = Result(failed="> 60 s (timeout)", above=60)
    lines = scale_table.table("SQLite", sizes, results)
    assert "| operation | 1,000 | 1,000,000 | 1,000,000 / 1,000 | target |  |" in lines
    verdicts = {row.title: _cells(lines, row.title)[-1] for row in scale_table.rows(sizes)}
    missed = {"`sweep report`, peak memory, MB", "`sweep status`, s",
              "dashboard trial list, first call, s"}  # fmt: skip
    for row in scale_table.rows(sizes):
        expected = "" if row.check is None else "MISSED" if row.title in missed else "ok"
        assert verdicts[row.title] == expected, row.title
    assert _cells(lines, "dashboard trial list, first call, s")[2:4] == [
        "> 60 s (timeout)",
        "> 120×",
    ]
    short = scale_table.table("SQLite", [1_000, 100_000], _results([1_000, 100_000], 0.5))
    assert (
        "| operation | 1,000 | 100,000 | 100,000 / 1,000 | 10⁶ (linear fit) | target |  |" in short
    )


def test_the_rows_of_issue_27_are_there():
    keys = {row.key for row in scale_table.rows([1_000, 1_000_000])}
    assert {"status", "status_empty", "report", "report_mb", "dashboard", "dashboard_mb",
            "topup", "claim", "ask", "first_ask", "startup"} <= keys  # fmt: skip


def test_a_report_is_measured_without_the_benchmarks_own_memory():
    ballast = bytearray(400_000_000)  # the benchmark's process, large
    ballast[::4096] = b"x" * len(ballast[::4096])  # resident, not just reserved
    small = [sys.executable, "-c", "x = bytearray(150_000_000); x[::4096] = b'y' * len(x[::4096])"]
    wall, peak = scale_commands.report_watched(small, timeout=60, cap_mb=1_000)
    assert wall.samples and wall.failed is None
    assert 150 < peak.median < 300, peak  # the command's 150 MB, not the 400 MB held here
    del ballast


def test_a_report_past_its_memory_cap_or_timeout_is_stopped_and_missed():
    # 600 MB in steps of 10, then a clean exit: only the cap stops it
    grow = "import time\nx = [b'z' * 10_000_000 for _ in range(60) if not time.sleep(0.01)]"
    grows = [sys.executable, "-c", grow + "\ntime.sleep(2)"]
    wall, peak = scale_commands.report_watched(grows, timeout=60, cap_mb=300)
    assert wall.failed.startswith("killed at") and wall.above < 60, wall
    assert peak.failed == "> 300 MB (killed)" and peak.above == 300
    sleeps = [sys.executable, "-c", "import time; time.sleep(60)"]
    wall, peak = scale_commands.report_watched(sleeps, timeout=1, cap_mb=300)
    assert wall.failed.startswith("> 1 s (timeout)") and peak.failed.endswith("at the timeout")
    fails = [sys.executable, "-c", "import sys; sys.exit('no such study')"]
    wall, _ = scale_commands.report_watched(fails, timeout=60, cap_mb=300)
    assert wall.failed == "error: exit 1: no such study"


def test_a_missing_postgresql_is_one_line_not_a_crash(monkeypatch, capsys):
    def no_server():
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
        yield

    monkeypatch.setattr("tests.postgres.server", no_server)
    try:
        scale.main(["--sizes", "50", "--backends", "postgresql", "--quick"])
    except pytest.skip.Exception as e:  # escaping, it would skip this test, not fail it
        pytest.fail(f"the benchmark let pytest.skip escape: {e.msg}")
    out = capsys.readouterr().out
    assert "PostgreSQL rows skipped: PostgreSQL server binaries not found" in out
    assert "| operation |" not in out


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end(capsys):
    scale.main(["--sizes", "50,100", "--backends", "sqlite", "--quick"])
    out = capsys.readouterr().out
    assert "## SQLite" in out
    assert "| operation | 50 | 100 | 100 / 50 | 10⁶ (linear fit) | target |" in out
    lines = out.splitlines()
    for row in scale_table.rows([50, 100]):
        cells = _cells(lines, row.title)  # every row is printed, measured at every size
        assert len(cells) == 7, cells
        assert not any(c.startswith(("error", ">", "killed")) for c in cells[1:3]), cells
        assert all(float(c.split()[0].replace(",", "")) > 0 for c in cells[1:3]), cells
        assert cells[5] == row.target
        assert cells[6] in (("ok", "MISSED") if row.check else ("",)), cells

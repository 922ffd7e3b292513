"""The scale benchmark's arithmetic, and a smoke run so `make bench-scale` cannot rot unnoticed.

Nothing here asserts a speed: speed is what `make bench-scale` reports.
"""

import pytest

from tests.bench import scale
from tests.bench.scale import Result


def test_extrapolation_is_the_least_squares_line_at_a_million():
    # exactly y = 1 + n / 1000: the line through them gives 1001 at 10⁶
    on_a_line = {n: Result([1 + n / 1000]) for n in (1_000, 10_000, 100_000)}
    assert scale._extrapolated(on_a_line) == "1001"
    # medians, not means: the outlier of each size does not move the line
    noisy = {n: Result([1 + n / 1000, 1 + n / 1000, 1e9]) for n in (1_000, 10_000, 100_000)}
    assert scale._extrapolated(noisy) == "1001"
    # falling cost: nothing to extrapolate
    assert scale._extrapolated({10: Result([5.0]), 20: Result([4.0])}) == "4.00 (flat)"
    timed_out = {10: Result([5.0]), 20: Result(failed="> 300 s (timeout)", timeout=300)}
    assert scale._extrapolated(timed_out) == "—"


def test_ratio_and_targets():
    flat = {1_000: Result([2.0, 2.0, 9.0]), 100_000: Result([3.0])}
    assert scale._ratio(flat) == "1.50×"
    assert scale._flat(1.5)(flat)
    assert not scale._flat(1.4)(flat)
    timed_out = {1_000: Result([2.0]), 100_000: Result(failed="> 300 s (timeout)", timeout=300)}
    assert scale._ratio(timed_out) == "> 150×"
    assert not scale._flat(1.5)(timed_out)
    assert not scale._at_most(1e9)(timed_out)
    assert scale._at_most(1.0)({1: Result([1.0]), 2: Result([0.5, 3.0, 0.9])})
    assert not scale._at_most(1.0)({1: Result([1.0]), 2: Result([1.01])})


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
    lines = {line.split(" | ")[0].removeprefix("| "): line for line in out.splitlines()}
    for row in scale.rows([50, 100]):
        line = lines[row.title]  # every row is printed, measured at every size
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 7, line
        assert not any(c.startswith(("error", ">")) for c in cells[1:3]), line
        assert cells[5] == row.target
        assert cells[6] in (("ok", "MISSED") if row.check else ("",)), line

"""``sweep status`` and the table ``sweep run`` ends with, at any study size: the same answers
as loading every trial through optuna, from a number of statements and rows that does not grow
with the study (counted on the engine, not timed: speed is for tests/bench)."""

from __future__ import annotations

import contextlib
import datetime
import json
import math
from collections.abc import Iterator
from types import SimpleNamespace

import optuna
import pytest
import sqlalchemy
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from sqlalchemy.engine.cursor import CursorResult

from sweep.queue.attrs import SKIPPED, SPEC
from sweep.queue.storage import open_reader, open_storage
from sweep.report import summary
from sweep.report.stored import study_kind
from sweep.study.spec import load_spec
from tests.sweep.helpers import grid_study, main_in_process, run_sql

DISTRIBUTIONS = {
    "hidden_1": IntDistribution(16, 128),
    "act": CategoricalDistribution(["relu", "tanh", "sigmoid"]),
    "learning_rate": FloatDistribution(0.01, 0.5, log=True),
}
NOW = datetime.datetime(2026, 1, 1)


def _trial(i: int, state: TrialState = TrialState.COMPLETE, value: float | None = None,
           **user_attrs: object) -> optuna.trial.FrozenTrial:  # fmt: skip
    """A finished trial of the sweep-like study: parameters that vary with ``i``."""
    params = {"hidden_1": 16 + i % 100, "act": ["relu", "tanh", "sigmoid"][i % 3],
              "learning_rate": 0.01 + (i % 7) * 0.05}  # fmt: skip
    if state == TrialState.COMPLETE and value is None:
        value = 90 + (i * 37 % 101) / 20  # distinct enough, with ties
    return create_trial(state=state, value=value, params=params, distributions=DISTRIBUTIONS,
                        user_attrs={"n_params": 1000 + i, **user_attrs})  # fmt: skip


def _varied(url: str, tmp_path, *, complete: int = 6) -> None:
    """A database of every kind of study and trial ``sweep status`` shows, with ``complete``
    finished trials in sweep's own study; the rest does not depend on ``complete``."""
    storage = open_storage(url, heartbeat_interval=None, grace_period=None)
    ours = optuna.create_study(study_name="ours", storage=storage, direction="maximize")
    ours.set_user_attr(SPEC, load_spec(grid_study(tmp_path)).to_dict())
    ours.add_trials([_trial(i) for i in range(complete)])
    ours.add_trial(_trial(complete, value=99.5))  # the best, twice: the first one counts
    ours.add_trial(_trial(complete + 1, value=99.5))
    ours.add_trials([
        _trial(1, TrialState.PRUNED, value=40.0, pruned_at=2),
        _trial(2, TrialState.PRUNED),  # pruned before it reported anything
        _trial(3, TrialState.FAIL, fail_reason="diverged at epoch 3"),
        _trial(4, TrialState.FAIL, **{SKIPPED: "beyond the trial cap of 8"}),
        _trial(5, TrialState.FAIL, **{SKIPPED: "beyond the trial cap of 8"}),
        _trial(6, TrialState.FAIL),  # its worker was lost
    ])  # fmt: skip
    ours.ask()  # RUNNING, no parameters yet
    ours.enqueue_trial({"hidden_1": 64})  # WAITING
    theirs = optuna.create_study(study_name="theirs", storage=storage, direction="minimize")
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        theirs.set_metric_names(["test loss"])
    x = FloatDistribution(0, 1)
    theirs.add_trials([create_trial(value=v, params={"x": v}, distributions={"x": x})
                       for v in (0.9, 0.2, 0.5, 0.2)])  # fmt: skip
    edge = optuna.create_study(study_name="edge", storage=storage, direction="maximize")
    edge.add_trials([create_trial(value=v) for v in (1.0, math.inf, -math.inf, math.inf)])
    two = optuna.create_study(
        study_name="two", storage=storage, directions=["minimize", "maximize"]
    )
    # a front of three (each trades the first objective for the second), one trial behind it
    two.add_trials([create_trial(values=[i, i]) for i in range(3)])
    two.add_trial(create_trial(values=[2, 0]))
    optuna.create_study(study_name="empty", storage=storage)
    storage.engine.dispose()


def _old_status(storage: optuna.storages.BaseStorage) -> list[tuple]:
    """What ``sweep status`` computed before it read aggregates: every trial through optuna."""
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        counts = {st.name.lower(): 0 for st in TrialState} | {"skipped": 0}
        for t in study.get_trials(deepcopy=False):
            skipped = t.state == TrialState.FAIL and SKIPPED in t.user_attrs
            counts["skipped" if skipped else t.state.name.lower()] += 1
        kind = study_kind(study.user_attrs, study.directions, study.metric_names)
        best = s.best_trial
        front = sorted(t.number for t in study.best_trials) if kind.multi else []
        out.append((s.study_name, [(k, n) for k, n in counts.items() if n], kind,
                    best and (best.number, best.value, list(best.params.items())),
                    front))  # fmt: skip
    return out


def _new_status(engine: sqlalchemy.engine.Engine) -> list[tuple]:
    return [(s.name, list(s.counts.items()), s.kind,
             s.best and (s.best.number, s.best.value, list(s.best.params.items())),
             sorted(v.number for v in s.front))
            for s in summary.status(engine)]  # fmt: skip


def _another(storage_url: str, tmp_path, request: pytest.FixtureRequest) -> str:
    """A second empty database on the same backend."""
    if storage_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'another.sqlite'}"
    from tests.postgres import fresh_database

    return fresh_database(request.getfixturevalue("postgres_server"))


def _reader(url: str) -> sqlalchemy.engine.Engine:
    """What ``sweep status`` reads with."""
    return open_reader(url)


def test_status_is_what_loading_every_trial_gave(tmp_path, storage_url):
    _varied(storage_url, tmp_path)
    new = _new_status(_reader(storage_url))
    assert new == _old_status(open_storage(storage_url, heartbeat_interval=None,
                                           grace_period=None, read_only=True))  # fmt: skip
    ours, theirs, edge, two, empty = new
    assert ours[1] == [("running", 1), ("complete", 8), ("pruned", 2), ("fail", 2),
                       ("waiting", 1), ("skipped", 2)]  # fmt: skip
    assert ours[2].sweep and ours[3] == (6, 99.5, [("hidden_1", 22), ("act", "relu"),
                                                   ("learning_rate", 0.01 + 6 * 0.05)])  # fmt: skip
    assert theirs[3] == (1, 0.2, [("x", 0.2)]) and theirs[2].metric == "test loss"
    assert edge[3] == (1, math.inf, [])
    assert two[3] is None and two[2].metrics == ("value 0", "value 1")
    assert two[4] == [0, 1, 2]  # the front, as optuna's best_trials (_old_status) has it
    assert empty[1] == [] and empty[3] is None


def test_status_lines_are_unchanged(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _varied(url, tmp_path)
    out = main_in_process("status", "--storage", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "ours: 1 running, 8 complete, 2 pruned, 2 fail, 1 waiting, 2 skipped",
        "  best: trial 6, 99.50% (hidden_1=22, act=relu, learning_rate=0.31)",
        "theirs: 4 complete",
        "  best: trial 1, test loss 0.2 (x=0.2)",
        "edge: 4 complete",
        "  best: trial 1, value inf ()",
        "two: 4 complete",
        "  front 3 trials: value 0 2, value 1 2 (trial 2) … value 0 0, value 1 0 (trial 0)",
        "empty: no trials",
    ]


@contextlib.contextmanager
def _reads(engine: sqlalchemy.engine.Engine, monkeypatch) -> Iterator[SimpleNamespace]:
    """The statements sent on ``engine``, the rows fetched from any engine meanwhile, and the
    rows the server sent (PostgreSQL's client-side cursors receive a whole result at once,
    fetched or not; SQLite hands rows over one at a time and reports none here)."""
    seen = SimpleNamespace(statements=[], rows=0, sent=0)

    def sent(conn, cursor, statement, parameters, context, executemany):
        seen.statements.append(" ".join(statement.split()))

    def received(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            seen.sent += max(0, cursor.rowcount)

    def counting(name, rows_of):
        original = getattr(CursorResult, name)

        def fetch(self, *args, **kwargs):
            got = original(self, *args, **kwargs)
            seen.rows += rows_of(got)
            return got

        monkeypatch.setattr(CursorResult, name, fetch)

    def fetch_each(self):
        for row in original_iter(self):
            seen.rows += 1
            yield row

    original_iter = CursorResult._fetchiter_impl
    counting("_fetchone_impl", lambda row: row is not None)
    counting("_fetchall_impl", len)
    counting("_fetchmany_impl", len)
    monkeypatch.setattr(CursorResult, "_fetchiter_impl", fetch_each)
    sqlalchemy.event.listen(engine, "before_cursor_execute", sent)
    sqlalchemy.event.listen(engine, "after_cursor_execute", received)
    try:
        yield seen
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", sent)
        sqlalchemy.event.remove(engine, "after_cursor_execute", received)
        monkeypatch.undo()


def test_status_reads_a_few_rows_whatever_the_study_size(
    tmp_path, storage_url, monkeypatch, request
):
    # Two databases that differ only in how many trials sweep's study has (4 and 60): status
    # sends the same statements and fetches the same rows from both, a few per study.
    seen = []
    for complete in (4, 60):
        url = storage_url if complete == 4 else _another(storage_url, tmp_path, request)
        _varied(url, tmp_path, complete=complete)
        reader = _reader(url)
        with _reads(reader, monkeypatch) as reads:
            summary.status(reader)
        seen.append(reads)
    small, big = seen
    assert (big.statements, big.rows, big.sent) == (small.statements, small.rows, small.sent)
    # four for the studies' names and attributes; per study, its skipped trials, its running
    # trials' hosts and three for its counts (``census``: its trials that are not COMPLETE,
    # its newest COMPLETE one and, if there is one, its number); a single-objective study's
    # best tier by tier (``tables.best_first``: ours and theirs find theirs among the
    # numbers, edge among the infinitely good, empty in none of the three); one for the best
    # trials' parameters, one for the complete trials' values of every multi-objective study
    # (their fronts)
    assert len(small.statements) == 4 + (5 * 4 + 4) + (2 + 2 + 1 + 3) + 2, small.statements
    assert small.rows <= 50 and small.sent <= 50, (small.rows, small.sent)
    # each best is one limited ordered statement; a front reads every complete trial's values
    # (of the multi-objective studies only: "two"'s 4 trials here, in both databases)
    fronts = [s for s in small.statements if s.endswith("ORDER BY trials.study_id, "
                                                         "trials.number, trials.trial_id, "
                                                         "trial_values.objective")]  # fmt: skip
    ordering = [s for s in small.statements if "ORDER BY" in s and "trial_values" in s]
    assert len(fronts) == 1 and all(" LIMIT " in s for s in ordering if s not in fronts), ordering


# --- the table at the end of `sweep run` ---------------------------------------------------


def _cells(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


def test_the_top_of_the_table_is_the_top_of_the_whole_table(tmp_path, storage_url):
    # Every kind of trial, ties, infinite values, pruned ones with and without a value: the
    # rows SQL picks are the first rows of the table of every trial, in the same order.
    _varied(storage_url, tmp_path)
    storage = open_storage(storage_url)
    for name in ("ours", "theirs", "edge", "two"):
        study = optuna.load_study(study_name=name, storage=storage)
        whole, none_left = summary.trial_table(study)
        assert none_left == 0
        listed = len(whole.splitlines()) - 1
        assert summary.trial_table(study, limit=listed) == (whole, 0)  # the same text
        assert summary.trial_table(study, limit=20) == (whole, 0)
        for limit in range(1, listed):
            table, left_out = summary.trial_table(study, limit=limit)
            assert left_out == listed - limit
            assert _cells(table) == _cells(whole)[: limit + 1], (name, limit, table, whole)


@pytest.mark.slow
def test_the_top_of_a_big_study_reads_only_the_trials_it_shows(
    tmp_path, storage_url, monkeypatch, request
):
    seen = []
    for complete in (25, 80):
        url = storage_url if complete == 25 else _another(storage_url, tmp_path, request)
        _varied(url, tmp_path, complete=complete)
        storage = open_storage(url)
        study = optuna.load_study(study_name="ours", storage=storage)
        with _reads(storage.engine, monkeypatch) as reads:
            table, left_out = summary.trial_table(study, limit=5)
        assert len(table.splitlines()) == 1 + 5 and left_out == complete + 9 - 5
        seen.append(reads)
    small, big = seen
    assert len(big.statements) == len(small.statements)
    assert (big.rows, big.sent) == (small.rows, small.sent)


@pytest.mark.slow
def test_sweep_run_ends_with_the_best_20_trials_or_all_of_them(tmp_path):
    from tests.bench.bigstudy import build, study_file

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    build(url, tmp_path, 30, name="big")  # 8 real trials, 22 copies; its cap is 30
    path = study_file(tmp_path, "big", trials=30)
    out = main_in_process("run", str(path), "--storage", url, "--jobs", "1")  # nothing to run
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 + 20 + 1, out.stdout
    assert lines[-1] == "… and 10 more trials (sweep report, or --all)"
    out = main_in_process("run", str(path), "--storage", url, "--jobs", "1", "--all")
    assert out.returncode == 0, out.stderr
    every = _cells(out.stdout)
    assert len(every) == 1 + 30 and every[0] == _cells("\n".join(lines[:-1]))[0]
    assert _cells("\n".join(lines[1:-1])) == every[1:21]  # the best 20, in the same order
    values = [float(row[-1]) for row in every[1:]]
    assert values == sorted(values, reverse=True)


# --- someone else's data ---------------------------------------------------------------------


def test_odd_values_written_by_another_client_do_not_crash_status(tmp_path, storage_url):
    _varied(storage_url, tmp_path)
    nan = "'NaN'" if storage_url.startswith("postgresql") else "NULL"  # SQLite stores NaN so
    run_sql(
        storage_url,
        "UPDATE study_user_attributes SET value_json = '{not json' WHERE key = 'spec'",
        "UPDATE study_system_attributes SET value_json = '5' WHERE key = 'study:metric_names'",
        # the best trial of "ours" gets a value that is no number; the next best a broken
        # distribution and a parameter that is no number
        f"UPDATE trial_values SET value = {nan} WHERE trial_id = (SELECT trial_id FROM trials "
        "WHERE study_id = 1 AND number = 6)",
        "UPDATE trial_params SET distribution_json = '{}' WHERE param_name = 'act' AND "
        "trial_id = (SELECT trial_id FROM trials WHERE study_id = 1 AND number = 7)",
        f"UPDATE trial_params SET param_value = {nan} WHERE param_name = 'learning_rate' AND "
        "trial_id = (SELECT trial_id FROM trials WHERE study_id = 1 AND number = 7)",
        # and a distribution optuna's parser overflows on (its integer bounds)
        'UPDATE trial_params SET distribution_json = \'{"name": "IntDistribution", '
        '"attributes": {"low": 1e999, "high": 1e999}}\' WHERE trial_id = (SELECT '
        "trial_id FROM trials WHERE study_id = 2 AND number = 1)",
    )
    if storage_url.startswith("sqlite"):  # no enum types in SQLite: anything goes
        run_sql(
            storage_url,
            "UPDATE trials SET state = 'ZOMBIE' WHERE study_id = 2 AND number = 0",
            "UPDATE study_directions SET direction = 'SIDEWAYS' WHERE study_id = 3",
            "UPDATE trial_values SET value = 'high' WHERE trial_id = (SELECT trial_id FROM "
            "trials WHERE study_id = 1 AND number = 0)",
        )
    ours, theirs, edge, *_ = summary.status(_reader(storage_url))
    assert not ours.kind.sweep  # its spec is no longer readable
    assert ours.best.number == 7 and ours.best.value == 99.5
    # a parameter stored badly is left out, as the report and the grid's coverage leave it
    assert ours.best.params == {"hidden_1": 23}
    assert theirs.best.number == 1 and theirs.best.params == {}
    if storage_url.startswith("sqlite"):
        assert list(theirs.counts.items()) == [("complete", 3), ("zombie", 1)]
        assert edge.best is not None
    out = main_in_process("status", "--storage", storage_url)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert json.dumps(out.stdout)  # printable

"""``sweep status`` and a capped top-up read a study by index probes and walks from the best end
(``tables.best_first``, ``census.by_state``), not over every trial: the same answers as reading
every row (an oracle here, in Python, over the raw rows), on studies made to catch the walk out
(ties, infinities, NaN and text values, better values of other studies, objectives and states),
and SQLite's plan of every statement they send names an index, never a scan of a trial table
(PostgreSQL's plans at 10^5 trials: tests/sweep/test_queue_scale.py's way, and tests/bench)."""

from __future__ import annotations

import math
import re

import optuna
import sqlalchemy
from optuna.trial import TrialState, create_trial

from sweep.queue import census, topup
from sweep.queue.status_reads import studies
from sweep.queue.storage import open_reader, open_storage
from sweep.queue.transactions import reading
from tests.sweep.helpers import run_sql
from tests.sweep.test_queue_scale import _plan, _Statements

INF = math.inf


def _add(study: optuna.Study, *values: float, state: TrialState = TrialState.COMPLETE) -> None:
    study.add_trials([create_trial(state=state, value=v) for v in values])


def _crafted(url: str) -> None:
    """Studies whose best trial a walk from the best end could get wrong, their trial ids
    interleaved (each study's values among the others' in the index)."""
    rdb = open_storage(url, heartbeat_interval=None, grace_period=None)
    make = lambda name, d: optuna.create_study(study_name=name, storage=rdb, direction=d)  # noqa: E731
    ties, low, bad, nan = make("ties", "maximize"), make("low", "minimize"), \
        make("bad", "maximize"), make("nan", "minimize")  # fmt: skip
    two = optuna.create_study(study_name="two", storage=rdb, directions=["maximize", "minimize"])
    even = make("even", "minimize")
    for i in range(3):
        _add(ties, 5.0, 7.0 - i, 7.0)  # 7.0 four times, the first at number 1
        _add(low, 3.0 + i, -INF, 1.0)  # -inf three times: the first of them, number 1
        _add(bad, -INF)  # only infinitely bad values: the first, number 0
        _add(nan, 2.0 + i, 1.5 - i)  # better ones made NaN or text below
        two.add_trial(create_trial(values=[1e9, -1e9]))  # better in both, another study's
        _add(even, 2.0 + i, 1.0)  # 1.0 three times, the first at number 1
    _add(ties, 1e9, state=TrialState.PRUNED)  # a value optuna keeps, not COMPLETE
    _add(low, -1e9, state=TrialState.PRUNED)
    optuna.create_study(study_name="empty", storage=rdb)
    rdb.engine.dispose()
    nan_value = "'NaN'" if url.startswith("postgresql") else "NULL"  # SQLite keeps NaN as NULL
    of = "(SELECT trial_id FROM trials WHERE study_id = {} AND number = {})"
    # the first of the equal best values of low and even stored again, after the others: the
    # index holds equals in the order they were stored, not by trial (ties keeps that order,
    # which its walk from the top meets backwards)
    for study_id in (2, 6):
        first = of.format(study_id, 1)
        run_sql(
            url,
            f"CREATE TABLE kept AS SELECT * FROM trial_values WHERE trial_id = {first}",
            f"DELETE FROM trial_values WHERE trial_id = {first}",
            "INSERT INTO trial_values (trial_id, objective, value, value_type) "
            "SELECT trial_id, objective, value, value_type FROM kept",
            "DROP TABLE kept",
        )
    run_sql(url, f"UPDATE trial_values SET value = {nan_value} WHERE trial_id = {of.format(4, 5)}")
    if url.startswith("sqlite"):  # text in a number's column, and a type optuna does not know
        run_sql(url, f"UPDATE trial_values SET value = 'low' WHERE trial_id = {of.format(4, 3)}",
                "UPDATE trial_values SET value_type = 'TINY' WHERE trial_id = "
                f"{of.format(4, 1)}")  # fmt: skip


def _number(value: object, kind: str) -> float | None:
    """A stored value as optuna decodes it, None where it is no number."""
    if kind in ("INF_POS", "INF_NEG"):
        return INF if kind == "INF_POS" else -INF
    real = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if kind == "FINITE" and real and math.isfinite(value) else None


def _oracle(url: str) -> dict[str, tuple[int, float] | None]:
    """Every single-objective study's best (number, value), from every raw row, the first of
    equals by trial id (optuna's best_trial)."""
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        names = dict(conn.exec_driver_sql("SELECT study_id, study_name FROM studies").all())
        directions = conn.exec_driver_sql(
            "SELECT study_id, CAST(direction AS VARCHAR(20)), objective FROM study_directions"
        ).all()
        rows = conn.exec_driver_sql(
            "SELECT t.study_id, t.trial_id, t.number, v.value, CAST(v.value_type AS VARCHAR(20)) "
            "FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id "
            "WHERE CAST(t.state AS VARCHAR(20)) = 'COMPLETE' AND v.objective = 0"
        ).all()
    engine.dispose()
    single = {sid: d for sid, d, o in directions if o == 0}
    single = {sid: d for sid, d in single.items()
              if sum(s == sid for s, _, _ in directions) == 1}  # fmt: skip
    best: dict[str, tuple[int, float] | None] = {names[sid]: None for sid in single}
    for sid, direction in single.items():
        sign = -1 if direction == "MAXIMIZE" else 1
        scored = [(sign * v, tid, number, v) for s, tid, number, value, kind in rows
                  if s == sid and (v := _number(value, kind)) is not None]  # fmt: skip
        if scored:
            _, _, number, value = min(scored)
            best[names[sid]] = (number, value)
    return best


def test_the_best_is_the_first_of_the_best_values_as_reading_every_row_finds(storage_url):
    _crafted(storage_url)
    expected = _oracle(storage_url)
    got = {s.name: s.best and (s.best.number, s.best.value)
           for s in studies(open_reader(storage_url)) if s.name in expected}  # fmt: skip
    assert got == expected
    nan_best = (0, 2.0) if storage_url.startswith("sqlite") else (3, 0.5)
    assert expected == {"ties": (1, 7.0), "low": (1, -INF), "bad": (0, -INF),
                        "nan": nan_best, "even": (1, 1.0), "empty": None}  # fmt: skip


def _every_count(url: str, study_id: int) -> dict[str, int]:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT CAST(state AS VARCHAR(20)), count(*) FROM trials WHERE study_id = {study_id} "
            "GROUP BY state"
        ).all()
    engine.dispose()
    return dict(rows)


def _census(url: str, study_id: int) -> dict[str, int]:
    with reading(open_reader(url)) as conn:
        return census.by_state(conn, study_id)


def test_the_counts_by_state_are_every_trial_counted(storage_url):
    rdb = open_storage(storage_url)
    a = optuna.create_study(study_name="a", storage=rdb)
    b = optuna.create_study(study_name="b", storage=rdb)
    for i in range(4):  # interleaved: each study's numbers are its own
        _add(a, 1.0, 2.0)
        _add(b, 1.0)
        a.add_trial(create_trial(state=[TrialState.FAIL, TrialState.PRUNED][i % 2]))
    topup.top_up(rdb, a._study_id, cap=15)  # 5 WAITING, newer than every COMPLETE one
    a.ask()  # one of them RUNNING: the newest trials are not COMPLETE
    optuna.create_study(study_name="none", storage=rdb)
    sids = [1, 2, 3]
    if storage_url.startswith("sqlite"):  # a state optuna does not know
        run_sql(storage_url, "UPDATE trials SET state = 'ZOMBIE' WHERE study_id = 2 AND number = 1")
    for sid in sids:
        assert _census(storage_url, sid) == _every_count(storage_url, sid), sid
    assert _census(storage_url, 1)["COMPLETE"] == 8 and _census(storage_url, 3) == {}
    # numbers no optuna client gave (renumbered by SQL): the COMPLETE ones are counted instead
    run_sql(storage_url, "UPDATE trials SET number = 0 WHERE study_id = 1")
    assert _census(storage_url, 1) == _every_count(storage_url, 1)


def _scans(url: str, sent: list[tuple[str, object]]) -> list[str]:
    """The statements among ``sent`` whose SQLite plan scans a trial table (reads all of it)."""
    engine = sqlalchemy.create_engine(url)
    found = []
    for statement, parameters in sent:
        if statement.lstrip().startswith("SELECT"):
            plan = _plan(engine, statement, parameters)
            if re.search(r"\bSCAN (trials|trial_\w+)\b", plan):
                found.append(f"{statement}\n{plan}")
    engine.dispose()
    return found


def test_status_and_a_top_up_scan_no_trial_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _crafted(url)
    rdb = open_storage(url)
    reader = open_reader(url)
    with _Statements(reader) as status_sent:
        studies(reader)
    with _Statements(rdb.engine) as topup_sent:
        topup.top_up(rdb, 1, cap=40)
        topup.top_up(rdb, 1, cap=30)  # skips the newest WAITING ones
    assert len(status_sent.sent) > 10 and len(topup_sent.sent) > 3
    assert _scans(url, status_sent.sent) == []
    assert _scans(url, topup_sent.sent) == []
    # each study's states but COMPLETE are two ranges of the queue's index (``!=`` would walk
    # every trial of the study in it)
    engine = sqlalchemy.create_engine(url)
    counts = [(s, p) for s, p in status_sent.sent if "UNION ALL" in s]
    assert len(counts) == 7
    for statement, parameters in counts:
        plan = _plan(engine, statement, parameters)
        assert "(study_id=? AND state<?)" in plan and "(study_id=? AND state>?)" in plan, plan
    # each best is a walk of the values' index from its best end (not of the study's trials)
    best = [(s, p) for s, p in status_sent.sent if " LIMIT " in s and "trial_values" in s]
    assert len(best) >= 5
    for statement, parameters in best:
        plan = _plan(engine, statement, parameters)
        assert re.search(r"SEARCH trial_values USING INDEX ix_sweep_values_best", plan), plan

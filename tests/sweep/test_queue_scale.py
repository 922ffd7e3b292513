"""The queue of a big study: every read of it goes through sweep's index, the index is made
once by whoever opens the database for writing (and by no reader), optuna does not mind it,
and a capped study's top-up counts instead of reading every trial.

Plans are pinned, not timed: ``EXPLAIN`` of the statements the operations really issue, on a
study of 10^5 finished trials built in SQL with what a worker leaves behind (a heartbeat, its
tags, the fixed parameters, a value), and analysed on PostgreSQL so that its plans are the
ones a real study gets.
"""

import logging
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from sweep.queue import claims, coverage, progress, recovery, topup
from sweep.queue import tables as tb
from sweep.queue.storage import open_storage
from tests.sweep.helpers import WORKER_TAGS

INDEX = tb.QUEUE_INDEX.name
OPTUNA = Path(sys.executable).with_name("optuna")


def _finished(engine: sqlalchemy.Engine, study_id: int, n: int) -> None:
    """Append ``n`` COMPLETE trials to the study, each with the rows a sweep worker leaves."""
    with engine.begin() as conn:
        if engine.name == "sqlite":
            conn.exec_driver_sql(
                "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < ? - 1) "
                "SELECT i, ?, 'COMPLETE', '2026-01-01 00:00:00', '2026-01-01 00:00:01' FROM k",
                (n, study_id),
            )
        else:
            conn.exec_driver_sql(
                "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                "SELECT g, %(sid)s, 'COMPLETE', now(), now() FROM generate_series(0, %(n)s - 1) g",
                {"sid": study_id, "n": n},
            )
        done = f"FROM trials WHERE study_id = {int(study_id)} AND state = 'COMPLETE'"
        for sql in (
            f"INSERT INTO trial_heartbeats (trial_id, heartbeat) SELECT trial_id, "
            f"datetime_complete {done}",
            f"INSERT INTO trial_user_attributes (trial_id, key, value_json) SELECT trial_id, "
            f"'run', '\"old\"' {done}",
            f"INSERT INTO trial_user_attributes (trial_id, key, value_json) SELECT trial_id, "
            f"'worker', '\"host:1\"' {done}",
            f"INSERT INTO trial_system_attributes (trial_id, key, value_json) SELECT trial_id, "
            f"'fixed_params', '{{}}' {done}",
            f"INSERT INTO trial_values (trial_id, objective, value, value_type) SELECT trial_id, "
            f"0, 50.0, 'FINITE' {done}",
        ):
            conn.exec_driver_sql(sql)
    if engine.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")


class _Statements:
    """The statements (and their parameters) an engine sends while this is open."""

    def __init__(self, engine: sqlalchemy.Engine) -> None:
        self.engine, self.sent = engine, []

    def _grab(self, _conn, _cursor, statement, parameters, _context, _many) -> None:
        self.sent.append((statement, parameters))

    def __enter__(self) -> "_Statements":
        sqlalchemy.event.listen(self.engine, "before_cursor_execute", self._grab)
        return self

    def __exit__(self, *exc: object) -> None:
        sqlalchemy.event.remove(self.engine, "before_cursor_execute", self._grab)

    def reads(self) -> list[tuple[str, object]]:
        """The SELECTs that involve the trials table."""
        return [(s, p) for s, p in self.sent if s.lstrip().startswith("SELECT") and "trials" in s]


def _plan(engine: sqlalchemy.Engine, statement: str, parameters: object) -> str:
    sqlite = engine.name == "sqlite"
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            ("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + statement, parameters
        ).all()
        conn.rollback()
    return "\n".join(str(row[-1]) for row in rows)


def _big_study(url: str, n: int) -> tuple[optuna.storages.RDBStorage, int]:
    """A study of ``n`` finished trials, then 5 WAITING and 2 RUNNING (claimed) ones."""
    rdb = open_storage(url)
    study = optuna.create_study(study_name="big", storage=rdb, direction="maximize")
    _finished(rdb.engine, study._study_id, n)
    topup.top_up(rdb, study._study_id, cap=n + 7)
    for _ in range(2):
        assert claims.claim(rdb, study._study_id, WORKER_TAGS) is not None
    if rdb.engine.name == "postgresql":
        with rdb.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    return rdb, study._study_id


@pytest.mark.slow
def test_every_queue_read_of_a_big_study_goes_through_the_index(storage_url):
    rdb, sid = _big_study(storage_url, 100_000)
    issued = {
        "claim": lambda: claims.claim(rdb, sid, WORKER_TAGS),
        "pending": lambda: progress.pending(rdb, sid),
        "recover": lambda: recovery.recover(rdb, sid, grace=3600, max_retries=3),
        "release_run": lambda: recovery.release_run(rdb, sid, "no such run"),
    }
    for name, operation in issued.items():
        with _Statements(rdb.engine) as sent:
            operation()
        reads = [(s, p) for s, p in sent.reads() if "FROM trials" in s]
        assert reads or (name == "claim" and sent.reads()), f"{name} read no trials"
        for statement, parameters in reads:
            plan = _plan(rdb.engine, statement, parameters)
            shown = f"{name}: {statement}\n{plan}"
            assert INDEX in plan, shown
            if rdb.engine.name == "sqlite":
                assert f"USING INDEX {INDEX} (study_id=? AND state=?)" in plan, shown
                assert "SCAN trials" not in plan and "TEMP B-TREE" not in plan, shown
            else:
                assert "Seq Scan on trials" not in plan and "Sort" not in plan, shown
                assert "study_id = " in plan and "state = " in plan, shown
    # The claim's statements are the prepared ones of the hot path, the same pair on every
    # database, found at once: the trials that resume a checkpoint first, through their own
    # partial index, then the oldest (through the queue's index, checked above).
    with _Statements(rdb.engine) as sent:
        claims.claim(rdb, sid, WORKER_TAGS)
    claim = [tb.SQL.resumable_waiting, tb.SQL.oldest_waiting]
    reads = sent.reads()
    assert [s for s, _ in reads] == [str(c.compile(dialect=rdb.engine.dialect)) for c in claim]
    plan = _plan(rdb.engine, *reads[0])
    assert tb.RESUME_INDEX.name in plan, plan
    if rdb.engine.name == "sqlite":  # a walk of the partial index (the waiting resumable
        # trials only), in order, each looked up by its key
        assert f"trial_system_attributes USING INDEX {tb.RESUME_INDEX.name}" in plan, plan
        assert "SEARCH trials USING INTEGER PRIMARY KEY" in plan, plan
        assert "SCAN trials" not in plan, plan
    else:
        assert "Seq Scan" not in plan and "Sort" not in plan, plan


def _indexes(engine: sqlalchemy.Engine) -> list[str]:
    inspect = sqlalchemy.inspect(engine)
    tables = ("trials", "trial_values", "trial_system_attributes")
    return [ix["name"] for table in tables for ix in inspect.get_indexes(table)]


def _drop_index(engine: sqlalchemy.Engine) -> None:
    with engine.begin() as conn:
        for index in tb.INDEXES:
            conn.execute(sqlalchemy.schema.DropIndex(index, if_exists=True))


@pytest.mark.slow
def test_the_index_is_made_once_by_many_openings_at_once(storage_url, caplog):
    rdb = open_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=rdb)
    _finished(rdb.engine, study._study_id, 50_000)  # a build that takes a while to race
    _drop_index(rdb.engine)
    rdb.engine.dispose()
    start, failures = threading.Barrier(8), []

    def open_at_once() -> None:
        start.wait()
        try:
            open_storage(storage_url).engine.dispose()
        except Exception as e:  # reported below
            failures.append(e)

    caplog.set_level(logging.INFO, logger="sweep.queue.storage")
    openers = [threading.Thread(target=open_at_once) for _ in range(8)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join()
    assert not failures
    assert [r.message for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert sum("created index" in r.message for r in caplog.records) == len(tb.INDEXES)
    assert all(_indexes(rdb.engine).count(index.name) == 1 for index in tb.INDEXES)
    caplog.clear()
    open_storage(storage_url)  # and once made, it is only looked up
    assert not any("created index" in r.message for r in caplog.records)


def test_only_an_opening_for_writing_makes_the_index(storage_url, caplog):
    engine = sqlalchemy.create_engine(storage_url)
    optuna.create_study(study_name="theirs", storage=storage_url)  # plain optuna: no index
    assert INDEX not in _indexes(engine)
    caplog.set_level(logging.INFO, logger="sweep.queue.storage")
    open_storage(storage_url, read_only=True).get_all_studies()
    assert INDEX not in _indexes(engine)
    assert not [r for r in caplog.records if r.name == "sweep.queue.storage"]  # not even tried
    open_storage(storage_url)
    assert INDEX in _indexes(engine)


@pytest.mark.slow
def test_optuna_takes_no_notice_of_the_index(storage_url):
    open_storage(storage_url)
    upgrade = subprocess.run(
        [str(OPTUNA), "storage", "upgrade", "--storage", storage_url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stderr
    assert "This storage is up-to-date." in upgrade.stdout + upgrade.stderr
    study = optuna.create_study(study_name="plain", storage=storage_url)
    study.enqueue_trial({"x": 0.25})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    loaded = optuna.load_study(study_name="plain", storage=storage_url)
    assert [t.state for t in loaded.trials] == [TrialState.COMPLETE] * 3
    assert loaded.trials[0].params == {"x": 0.25}
    optuna.copy_study(from_study_name="plain", from_storage=storage_url,
                      to_storage=storage_url, to_study_name="copy")  # fmt: skip
    optuna.delete_study(study_name="plain", storage=storage_url)
    assert len(optuna.load_study(study_name="copy", storage=storage_url).trials) == 3
    assert INDEX in _indexes(sqlalchemy.create_engine(storage_url))


def test_a_database_that_refuses_the_index_is_still_used(postgres_server, caplog):
    from tests.postgres import fresh_database

    url = fresh_database(postgres_server)
    optuna.create_study(study_name="s", storage=url)  # the owner's schema, without the index
    role = url.rsplit("/", 1)[1] + "_worker"  # roles are the server's: one per database
    with sqlalchemy.create_engine(url).begin() as conn:  # a worker's role: rows, not tables
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        conn.exec_driver_sql(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    caplog.set_level(logging.WARNING, logger="sweep.queue.storage")
    rdb = open_storage(url.replace("postgres@", f"{role}@"))
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "sweep.queue.storage"]
    assert f"cannot create index {INDEX} (" in warning and "owner" in warning
    sid = rdb.get_study_id_from_name("s")
    topup.top_up(rdb, sid, cap=2)
    assert claims.claim(rdb, sid, WORKER_TAGS) is not None


# -- top-up ----------------------------------------------------------------------------------


def _rows_read(engine: sqlalchemy.Engine, reads: list[tuple[str, object]]) -> list[int]:
    """How many rows each of these SELECTs returns (run again, in a rolled-back transaction)."""
    with engine.connect() as conn:
        counts = [len(conn.exec_driver_sql(s, p).all()) for s, p in reads]
        conn.rollback()
    return counts


def test_a_capped_top_up_counts_instead_of_reading_every_trial(storage_url):
    rdb, sid = _big_study(storage_url, 2_000)
    for cap in (2_010, 2_003):  # more slots; fewer (the newest WAITING ones are skipped)
        with _Statements(rdb.engine) as sent:
            topup.top_up(rdb, sid, cap=cap)
        rows = _rows_read(rdb.engine, sent.reads())
        assert rows and max(rows) <= 20, (rows, sent.reads())


def _mixed_study(url: str) -> tuple[optuna.storages.RDBStorage, int]:
    """Every kind of trial a capped study meets, WAITING ones between the others."""
    rdb = open_storage(url)
    study = optuna.create_study(study_name="m", storage=rdb, direction="maximize")
    sid = study._study_id
    add = lambda state, **attrs: study.add_trial(  # noqa: E731
        optuna.trial.create_trial(state=state, value=1.0 if state.is_finished()
                                  and state != TrialState.FAIL else None, user_attrs=attrs)
    )  # fmt: skip
    add(TrialState.COMPLETE)
    topup.top_up(rdb, sid, cap=4)  # three WAITING
    add(TrialState.FAIL, fail_reason="diverged")  # counts
    add(TrialState.FAIL)  # lost: does not count
    add(TrialState.FAIL, skipped="beyond the trial cap of 1")  # does not count
    add(TrialState.PRUNED)
    claims.claim(rdb, sid, WORKER_TAGS)  # one of the WAITING ones RUNNING
    topup.top_up(rdb, sid, cap=9)  # more WAITING, after the others
    return rdb, sid


def _expected(trials: list[optuna.trial.FrozenTrial], cap: int) -> tuple[int, set[int], int]:
    """What top-up did when it read every trial: (total, the numbers skipped, how many it
    enqueued), worked out from optuna's view of the study."""
    live = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    counting = [
        t for t in trials
        if t.state in live or (t.state == TrialState.FAIL and "fail_reason" in t.user_attrs)
    ]  # fmt: skip
    waiting = [t.number for t in trials if t.state == TrialState.WAITING]
    surplus = waiting[::-1][: max(0, len(counting) - cap)]
    return max(cap, len(counting) - len(surplus)), set(surplus), max(0, cap - len(counting))


@pytest.mark.parametrize("chunk", [coverage.CHUNK, 2])
def test_a_capped_top_up_does_what_it_did(storage_url, monkeypatch, chunk):
    monkeypatch.setattr(coverage, "CHUNK", chunk)  # 2: skips span several statements
    monkeypatch.setattr(topup, "_ENQUEUED_AT_ONCE", chunk)  # and enqueued slots several slices
    rdb, sid = _mixed_study(storage_url)
    for cap in (9, 12, 7, 2, 0, 5, 5):
        before = optuna.load_study(study_name="m", storage=rdb).get_trials()
        total, skipped, enqueued = _expected(before, cap)
        assert topup.top_up(rdb, sid, cap=cap) == total, cap
        after = optuna.load_study(study_name="m", storage=rdb).get_trials()
        assert len(after) == len(before) + enqueued, cap
        assert all(t.state == TrialState.WAITING for t in after[len(before) :]), cap
        now_skipped = {
            t.number for t in after
            if t.state == TrialState.FAIL and t.number < len(before)
            and before[t.number].state == TrialState.WAITING
        }  # fmt: skip
        assert now_skipped == skipped, cap
        why = {after[n].user_attrs["skipped"] for n in skipped}
        assert why <= {f"beyond the trial cap of {cap}"}, cap


def test_a_grid_reads_parameters_only_of_trials_without_fixed_ones(storage_url):
    rdb = open_storage(storage_url)
    study = optuna.create_study(study_name="g", storage=rdb, direction="maximize")
    points = [{"x": 0.0}, {"x": 0.5}, {"x": 1.0}]
    topup.top_up(rdb, study._study_id, points=points[:2])
    theirs = optuna.trial.create_trial(
        params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
        value=1.0,
    )  # fmt: skip
    study.add_trial(theirs)  # another client ran the third point
    with _Statements(rdb.engine) as sent:
        assert topup.top_up(rdb, study._study_id, points=points) == 3
    assert len(study.get_trials()) == 3  # the foreign trial covers its point
    (params_read,) = [(s, p) for s, p in sent.sent if "FROM trial_params" in s]
    bound = params_read[1].values() if isinstance(params_read[1], dict) else params_read[1]
    assert list(bound) == [study.trials[2]._trial_id]

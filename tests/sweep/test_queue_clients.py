"""Other optuna clients in a sweep's study (``ask``/``tell``, ``optimize``): a grid point is
done only by a trial that trained it, and a launcher says so truthfully."""

import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from sweep import runner
from sweep.errors import UnfinishedError
from sweep.queue import guard, progress, topup
from sweep.queue.coverage import point_key
from sweep.queue.storage import open_storage
from sweep.queue.writeback import WriteBackStorage
from sweep.study.joining import open_study, top_up
from sweep.study.spec import load_spec
from tests.sweep.helpers import (
    WORKER_TAGS,
    completed_points,
    count_state,
    grid_study,
    load,
    run_cli,
    run_sql,
    start_cli,
    wait_for,
)

#: Another client, as a user would run one: ask/tell, then optimize with an objective that
#: suggests nothing, then one that suggests learning_rate from a float distribution (the grid
#: stores it as categorical). It starts (imports optuna) at once and begins on a line on its
#: standard input, so that it reaches a queue still full even on a loaded machine; it prints how
#: many trials waited when it began.
THEIRS = """
import optuna, sys
optuna.logging.set_verbosity(optuna.logging.ERROR)
sys.stdin.readline()
study = optuna.load_study(study_name="g", storage=sys.argv[1])
print(len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))))
trial = study.ask()
study.tell(trial, 1.0)
study.optimize(lambda t: 0.5, n_trials=3)
try:
    study.optimize(lambda t: t.suggest_float("learning_rate", 0.001, 1.0), n_trials=1)
except ValueError as e:
    assert "different distribution" in str(e), e
"""


def _theirs(url: str) -> subprocess.Popen:
    """The other client in a process of its own, waiting for its cue (``_begin``)."""
    pipe = subprocess.PIPE
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(THEIRS), url], text=True,
                            stdin=pipe, stdout=pipe, stderr=pipe)  # fmt: skip


def _begin(theirs: subprocess.Popen) -> int:
    """Let the other client begin; how many trials waited when it did."""
    out, err = theirs.communicate("\n", timeout=120)
    assert theirs.returncode == 0, err
    return int(out)


def _grid_run_with_another_client(tmp_path, url: str, *, guarded: bool):
    """`sweep run` of the 8-point grid, one worker, trials of about a second each; once one
    trial is done (learning_rate is stored), the other client runs while trials wait."""
    study_file = grid_study(tmp_path, train_size=10_000, epochs=3)
    theirs = _theirs(url)
    run = start_cli("run", str(study_file), "--storage", url, "--jobs", "1")
    try:
        wait_for(lambda: count_state(url, "g", TrialState.COMPLETE) >= 1, interval=0.1)
        if not guarded:  # as on a database whose owner would not let sweep make it
            run_sql(url, f"DROP TRIGGER {guard.NAME}" + ("" if "sqlite" in url else " ON trials"))
        waited = _begin(theirs)
    finally:
        theirs.kill()
        _out, err = run.communicate(timeout=300)
    assert waited >= 2, "the run had nearly finished: nothing was exercised"
    return run.returncode, err.strip().splitlines(), load(url, "g")


def _every_point_trained_once(study: optuna.Study) -> None:
    done = completed_points(study)
    points = {k: n for k, n in done.items() if k != "{}"}  # the other client's have none
    assert len(points) == 8 and set(points.values()) == {1}, done
    ours = [t for t in study.trials if "run" in t.user_attrs]
    assert sorted(t.state for t in ours) == [TrialState.COMPLETE] * 8


@pytest.mark.slow
def test_another_clients_ask_and_optimize_take_none_of_the_queue(tmp_path, storage_url):
    code, err, study = _grid_run_with_another_client(tmp_path, storage_url, guarded=True)
    assert code == 0, err
    assert err[-1].startswith("8/8 trials"), err
    _every_point_trained_once(study)
    theirs = [t for t in study.trials if "run" not in t.user_attrs]
    # ask/tell, three trials of optimize and the one that failed on its distribution: each a
    # trial of their own, none of them a queued grid point
    assert [t.state for t in theirs] == [TrialState.COMPLETE] * 4 + [TrialState.FAIL]
    assert all("fixed_params" not in t.system_attrs for t in theirs)


@pytest.mark.slow
def test_points_another_client_took_from_the_queue_are_trained_anyway(tmp_path, storage_url):
    code, err, study = _grid_run_with_another_client(tmp_path, storage_url, guarded=False)
    assert code == 0, err
    assert err[-1].startswith("8/8 trials"), err
    _every_point_trained_once(study)
    theirs = [t for t in study.trials if "run" not in t.user_attrs]
    taken = [t for t in theirs if "fixed_params" in t.system_attrs]
    assert taken, "the other client took no queued trial: nothing was exercised"
    assert {t.state for t in taken} <= {TrialState.COMPLETE, TrialState.FAIL}


def _queued_points(url: str) -> tuple[optuna.Study, list[dict]]:
    rdb = open_storage(url)
    study = optuna.create_study(study_name="g", storage=rdb, direction="maximize")
    points = [{"x": x} for x in (0.0, 0.5, 1.0, 1.5)]
    topup.top_up(rdb, study._study_id, points=points)
    return study, points


def _fixed(study: optuna.Study, state: TrialState) -> list[dict]:
    trials = study.get_trials(deepcopy=False, states=(state,))
    return [t.system_attrs.get("fixed_params") for t in trials]


def test_a_top_up_queues_again_what_another_client_took_and_did_not_train(storage_url):
    # No guard here (a study without sweep's spec): optuna's ask pops the queue.
    study, points = _queued_points(storage_url)
    theirs = optuna.load_study(study_name="g", storage=storage_url)
    told = theirs.ask()  # pops {"x": 0.0}, suggests nothing
    theirs.tell(told, 1.0)
    theirs.ask()  # pops {"x": 0.5} and holds it: nobody promises to train it
    failed = theirs.ask()  # pops {"x": 1.0}, fails without a reason of sweep's
    theirs.tell(failed, state=TrialState.FAIL)
    trained = theirs.ask()  # pops {"x": 1.5} and trains it at the point: that covers it
    trained.suggest_float("x", 0, 2)
    theirs.tell(trained, 2.0)
    rdb = open_storage(storage_url)
    assert topup.top_up(rdb, study._study_id, points=points) == 4
    assert _fixed(study, TrialState.WAITING) == points[:3]
    assert progress.grid_done(rdb, study._study_id, points) == 1
    assert progress.tally(rdb, study._study_id, grid=True)[0] == 0  # none by sweep's workers
    assert topup.top_up(rdb, study._study_id, points=points) == 4  # nothing more
    assert len(study.get_trials(deepcopy=False)) == 7


def test_the_guard_leaves_sweeps_claims_and_other_studies_queues_alone(tmp_path, storage_url):
    spec = load_spec(grid_study(tmp_path))
    study = open_study(spec, open_storage(storage_url))
    top_up(study, spec)
    theirs = optuna.load_study(study_name="g", storage=storage_url)
    assert theirs.ask().number == 8  # a trial of its own
    assert [t.state for t in theirs.trials].count(TrialState.WAITING) == 8
    claimed = WriteBackStorage(open_storage(storage_url)).claim(study._study_id, WORKER_TAGS)
    assert claimed is not None
    # A study that is not sweep's keeps optuna's own queue: its ask pops what it enqueued.
    other = optuna.create_study(study_name="other", storage=storage_url)
    other.enqueue_trial({"y": 1})
    assert other.ask().number == 0
    with open_storage(storage_url).engine.connect() as conn:
        assert guard.installed(conn)


def _ask_overtaken_by_a_claim(study: optuna.Study, url: str) -> None:
    """Another client's ``ask()`` in the queued study, a sweep worker claiming the oldest
    queued trial just before the ask's first update: the ask gets a trial of its own, and the
    claim stays the worker's."""
    their_storage = optuna.storages.RDBStorage(url)
    theirs = optuna.load_study(study_name="g", storage=their_storage)
    worker = WriteBackStorage(open_storage(url))
    claimed = []

    def claim_first(conn, cursor, statement, *args):
        if statement.startswith("UPDATE trials SET") and not claimed:
            claimed.append(worker.claim(study._study_id, WORKER_TAGS))

    sqlalchemy.event.listen(their_storage.engine, "before_cursor_execute", claim_first)
    assert theirs.ask().number == 8  # a trial of its own
    assert claimed and claimed[0] is not None
    worker.set_trial_user_attr(claimed[0], "epoch", 1)
    worker.flush(claimed[0])  # a write-back of a RUNNING trial, which the guard lets through
    # and an earlier sweep's write-back, whose fence set RUNNING again (with the same start)
    run_sql(url, f"UPDATE trials SET state = 'RUNNING' WHERE trial_id = {claimed[0]}")
    worker.set_trial_state_values(claimed[0], TrialState.COMPLETE, [1.0])  # still the worker's
    assert count_state(url, "g", TrialState.WAITING) == 7


def test_an_ask_whose_read_a_claim_overtook_takes_nothing(tmp_path, storage_url):
    # optuna's pop reads a WAITING trial, then sets it RUNNING with a new start. On SQLite the
    # two are not one transaction: a sweep claim in between was overwritten, and the other
    # client's tell finished the trial under the worker's tags, untrained, while the worker's
    # own result was refused. (On PostgreSQL the pop locks the row: the claim takes the next.)
    spec = load_spec(grid_study(tmp_path))
    study = open_study(spec, open_storage(storage_url))
    top_up(study, spec)
    _ask_overtaken_by_a_claim(study, storage_url)


#: The first version of the guard, which let optuna's pop overwrite a claim (see above).
FIRST_GUARD = {
    "sqlite": ["CREATE TRIGGER sweep_queue_guard BEFORE UPDATE OF state ON trials FOR EACH ROW "
               "WHEN OLD.state = 'WAITING' AND NEW.state = 'RUNNING' AND NOT EXISTS (SELECT 1 "
               "FROM trial_heartbeats WHERE trial_id = OLD.trial_id) "
               "BEGIN SELECT RAISE(ABORT, 'refused'); END"],
    "postgresql": ["CREATE FUNCTION sweep_queue_guard() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   "BEGIN IF NOT EXISTS (SELECT 1 FROM trial_heartbeats WHERE trial_id = "
                   "OLD.trial_id) THEN RAISE EXCEPTION 'refused' USING ERRCODE = "
                   "'check_violation'; END IF; RETURN NEW; END $$",
                   "CREATE TRIGGER sweep_queue_guard BEFORE UPDATE OF state ON trials FOR EACH "
                   "ROW WHEN (OLD.state = 'WAITING' AND NEW.state = 'RUNNING') "
                   "EXECUTE FUNCTION sweep_queue_guard()"],
}  # fmt: skip


def _guards(url: str) -> list[str]:
    """The names of the triggers on ``trials`` and, on PostgreSQL, of functions named so."""
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        if "sqlite" in url:
            query = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        else:
            query = ("SELECT tgname FROM pg_trigger WHERE tgrelid = 'trials'::regclass AND NOT "
                     "tgisinternal UNION ALL SELECT proname || '()' FROM pg_proc WHERE proname "
                     "LIKE 'sweep_queue_guard%%'")  # fmt: skip
        names = sorted(conn.exec_driver_sql(query).scalars())
    engine.dispose()
    return names


def test_the_first_guard_is_replaced_where_it_is_found(tmp_path, storage_url):
    spec = load_spec(grid_study(tmp_path))
    study = open_study(spec, open_storage(storage_url))
    run_sql(storage_url, *FIRST_GUARD["sqlite" if "sqlite" in storage_url else "postgresql"])
    top_up(study, spec)
    expected = [guard.NAME] if "sqlite" in storage_url else [guard.NAME, guard.NAME + "()"]
    assert _guards(storage_url) == sorted(expected)
    # made again by a host that still runs the earlier sweep: replaced again
    run_sql(storage_url, *FIRST_GUARD["sqlite" if "sqlite" in storage_url else "postgresql"])
    top_up(study, spec)
    assert _guards(storage_url) == sorted(expected)
    _ask_overtaken_by_a_claim(study, storage_url)


def test_a_launcher_whose_points_were_taken_says_so_and_exits_1(tmp_path, monkeypatch):
    # Its workers find every queued trial taken by another client (as if the guard were
    # gone and the client faster than every refill): the last line must not read 8/8.
    import joblib

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec = load_spec(grid_study(tmp_path))

    def taken_by_another_client(*args, **kwargs):
        run_sql(url, f"DROP TRIGGER {guard.NAME}")
        theirs = optuna.load_study(study_name="g", storage=url)
        theirs.optimize(lambda t: 1.0, n_trials=8)
        return lambda tasks: list(tasks) and []

    monkeypatch.setattr(joblib, "Parallel", taken_by_another_client)
    lines = []
    with pytest.raises(UnfinishedError, match=r"^8 of 8 grid points were neither trained"):
        runner.run(spec, storage=url, jobs=1, on_progress=lines.append)
    assert (lines[-1].done, lines[-1].total) == (0, 8)
    assert all(line.done == 0 for line in lines)


@pytest.mark.slow
def test_a_parameter_another_client_stored_first_stops_the_run_in_one_line(tmp_path, storage_url):
    study_file = grid_study(tmp_path)
    spec = load_spec(study_file)
    top_up(open_study(spec, open_storage(storage_url)), spec)
    theirs = optuna.load_study(study_name="g", storage=storage_url)
    theirs.optimize(lambda t: t.suggest_float("learning_rate", 0.001, 1.0), n_trials=1)
    out = run_cli("run", str(study_file), "--storage", storage_url, "--jobs", "1")
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "sweep: error: parameter 'learning_rate' is stored in this study as FloatDistribution"
        )
    ), out.stderr
    study = load(storage_url, "g")
    assert _fixed(study, TrialState.WAITING) and not _fixed(study, TrialState.FAIL)


def test_a_claim_another_client_took_over_is_not_counted_as_its_point(storage_url):
    # Where the guard is gone, optuna's pop can still overwrite a fresh claim on SQLite (see
    # above): the worker's result is refused by its fence, and the trial, finished by the other
    # client without the point's parameters, must not count as the point trained.
    from sweep.worker import serve

    study, points = _queued_points(storage_url)
    theirs = optuna.load_study(study_name="g", storage=storage_url)
    taken = []

    def objective(trial: optuna.Trial) -> float:
        if not taken:  # the other client's pop of this trial (a new start), then its tell
            taken.append(trial.number)
            run_sql(storage_url, "UPDATE trials SET datetime_start = '2001-01-01 00:00:00' "
                                 f"WHERE trial_id = {trial._trial_id}")  # fmt: skip
            theirs.tell(trial.number, 0.5)
        return trial.suggest_float("x", 0, 2)

    assert serve(study, objective, run_id="r") == 3
    rdb = open_storage(storage_url)
    assert progress.grid_done(rdb, study._study_id, points) == 3
    topup.top_up(rdb, study._study_id, points=points)
    assert _fixed(study, TrialState.WAITING) == [points[0]]
    assert serve(study, objective, run_id="r") == 1
    assert completed_points(study) == {"{}": 1, **{point_key(p): 1 for p in points}}


def test_a_claim_released_and_claimed_again_stays_the_new_workers(storage_url):
    # A worker whose trial was given back (its launcher stopped) and claimed and finished by
    # another worker has its result refused, and must leave the other worker's trial as it is.
    from sweep.queue import claims
    from sweep.worker import serve

    study, points = _queued_points(storage_url)
    other = WriteBackStorage(open_storage(storage_url))
    again = []

    def objective(trial: optuna.Trial) -> float:
        if not again:
            assert claims.release(open_storage(storage_url), trial._trial_id)
            again.append(other.claim(study._study_id, {"run": "b", "worker": "elsewhere:1"}))
            other.set_trial_state_values(again[0], TrialState.COMPLETE, [1.0])
        return trial.suggest_float("x", 0, 2)

    assert serve(study, objective, run_id="r") == 3
    assert load(storage_url, "g").trials[0].user_attrs == {"run": "b", "worker": "elsewhere:1"}
    assert progress.grid_done(open_storage(storage_url), study._study_id, points) == 4


def test_a_trial_whose_objective_returns_nan_fails_for_good(storage_url):
    from sweep.worker import serve

    study, points = _queued_points(storage_url)
    assert serve(study, lambda t: float("nan"), run_id="r") == 4
    reasons = {t.user_attrs.get("fail_reason") for t in study.get_trials()}
    assert reasons == {"the objective returned nan"}
    rdb = open_storage(storage_url)
    assert topup.top_up(rdb, study._study_id, points=points) == 4  # failed for good: done
    assert progress.grid_done(rdb, study._study_id, points) == 4
    assert len(study.get_trials(deepcopy=False)) == 4


@pytest.mark.slow
def test_optuna_and_its_cli_read_and_upgrade_a_guarded_database(tmp_path, storage_url):
    spec = load_spec(grid_study(tmp_path))
    top_up(open_study(spec, open_storage(storage_url)), spec)
    optuna_cli = Path(sys.executable).with_name("optuna")

    def cli(*args):
        out = subprocess.run([str(optuna_cli), *args, "--storage", storage_url],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout + out.stderr

    assert "This storage is up-to-date." in cli("storage", "upgrade")
    assert cli("trials", "--study-name", "g", "-f", "json").count('"WAITING"') == 8
    optuna.delete_study(study_name="g", storage=storage_url)
    with open_storage(storage_url).engine.connect() as conn:
        assert guard.installed(conn)


@pytest.mark.parametrize("earlier", [False, True], ids=["none", "earlier-guard"])
def test_a_database_that_refuses_the_guard_is_still_used(
    tmp_path, postgres_server, caplog, earlier
):
    # A worker's role with rights on the rows, not the tables: no trigger, one warning, and
    # the queue still works (its top-up then puts back what another client takes). Where the
    # owner made an earlier guard, it stays, and the warning says how to replace it.
    import logging

    from tests.postgres import fresh_database

    url = fresh_database(postgres_server)
    optuna.create_study(study_name="other", storage=url)  # the owner's schema
    if earlier:
        run_sql(url, *FIRST_GUARD["postgresql"])
    role = url.rsplit("/", 1)[1] + "_worker"
    with sqlalchemy.create_engine(url).begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        conn.exec_driver_sql(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    worker_url = url.replace("postgres@", f"{role}@")
    spec = load_spec(grid_study(tmp_path))
    study = open_study(spec, open_storage(worker_url))
    caplog.set_level(logging.WARNING, logger="sweep.queue.guard")
    assert top_up(study, spec) == 8
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "sweep.queue.guard"]
    if earlier:
        assert f"cannot replace trigger sweep_queue_guard with {guard.NAME} (" in warning
        assert warning.endswith("run sweep once as the owner of the trials table to replace it")
        assert _guards(url) == ["sweep_queue_guard", "sweep_queue_guard()"]
    else:
        assert f"cannot create trigger {guard.NAME} (" in warning
        assert _guards(url) == []
    with open_storage(url).engine.connect() as conn:
        assert not guard.installed(conn)
    assert WriteBackStorage(open_storage(worker_url)).claim(study._study_id, WORKER_TAGS)

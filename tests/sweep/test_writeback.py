"""The worker's write-back storage stores exactly what optuna's own storage would."""

import math

import optuna
import pytest
from optuna.trial import TrialState

from sweep.queue import writeback
from sweep.queue.storage import open_storage
from sweep.queue.writeback import WriteBackStorage
from sweep.worker import serve
from tests.sweep.helpers import WORKER_TAGS


def _objective(trial: optuna.Trial) -> float:
    """Touches every kind of write a trial can make."""
    x = trial.suggest_float("x", 1e-3, 1.0, log=True)
    n = trial.suggest_int("n", 1, 8, step=1)
    act = trial.suggest_categorical("act", ["relu", "tanh"])
    for step, value in enumerate([0.5, float("nan"), float("inf"), -1.25]):
        trial.report(value, step)
    trial.set_user_attr("curve", [1.0, 2.5])
    trial.set_user_attr("curve", [1.0, 2.5, 3.0])  # overwritten: the last write wins
    trial.storage.set_trial_system_attr(trial._trial_id, "note", {"a": 1})
    return x * n + (act == "tanh")


def _fields(t: optuna.trial.FrozenTrial) -> tuple:
    steps = {k: (repr(v) if math.isnan(v) else v) for k, v in t.intermediate_values.items()}
    system = {k: v for k, v in t.system_attrs.items() if k != "fixed_params"}
    user = {k: v for k, v in t.user_attrs.items() if k not in ("run", "worker")}  # our tags
    return (t.number, t.state, t.values, t.params, t.distributions, user, system, steps)


def _claim(study: optuna.Study) -> int:
    """Claim the next trial as a sweep worker would."""
    return study._storage.claim(study._study_id, WORKER_TAGS)


def _queued(url: str, name: str, fixed: list[dict]) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=open_storage(url), direction="maximize")
    for params in fixed:
        study.enqueue_trial(params, skip_if_exists=False)
    return study


def test_a_written_back_trial_reads_back_as_optunas_own(storage_url):
    fixed = [{"x": 0.25, "n": 3, "act": "tanh"}, {"x": 0.5, "n": 2, "act": "relu"}]
    theirs = _queued(storage_url, "optuna", fixed)
    theirs.optimize(_objective, n_trials=2)
    _queued(storage_url, "ours", fixed)
    ours = optuna.load_study(study_name="ours", storage=WriteBackStorage(open_storage(storage_url)))
    assert serve(ours, _objective, run_id="r") == 2
    fresh = optuna.load_study(study_name="ours", storage=open_storage(storage_url))
    reference = [_fields(t) for t in theirs.get_trials()]
    assert [_fields(t) for t in fresh.get_trials()] == reference
    assert {t.user_attrs["run"] for t in fresh.get_trials()} == {"r"}
    assert all(t.datetime_complete >= t.datetime_start for t in fresh.get_trials())


def test_pending_writes_ride_on_the_next_heartbeat(storage_url, monkeypatch):
    monkeypatch.setattr(writeback, "FLUSH_INTERVAL_S", 3600.0)
    _queued(storage_url, "s", [{}])
    storage = WriteBackStorage(open_storage(storage_url))
    study = optuna.load_study(study_name="s", storage=storage)
    trial_id = _claim(study)
    storage.set_trial_intermediate_value(trial_id, 1, 97.5)
    reader = open_storage(storage_url)
    assert reader.get_trial(trial_id).intermediate_values == {}  # held back
    assert storage.get_trial(trial_id).intermediate_values == {1: 97.5}  # seen locally
    storage.record_heartbeat(trial_id)
    assert reader.get_trial(trial_id).intermediate_values == {1: 97.5}


def test_a_write_after_a_quiet_interval_goes_straight_through(storage_url, monkeypatch):
    monkeypatch.setattr(writeback, "FLUSH_INTERVAL_S", 0.0)
    _queued(storage_url, "s", [{}])
    storage = WriteBackStorage(open_storage(storage_url))
    trial_id = _claim(optuna.load_study(study_name="s", storage=storage))
    storage.set_trial_user_attr(trial_id, "epoch", 1)
    assert open_storage(storage_url).get_trial(trial_id).user_attrs["epoch"] == 1


def test_a_trial_failed_elsewhere_is_not_overwritten(storage_url):
    _queued(storage_url, "s", [{}])
    storage = WriteBackStorage(open_storage(storage_url))
    trial_id = _claim(optuna.load_study(study_name="s", storage=storage))
    storage.set_trial_user_attr(trial_id, "late", True)
    open_storage(storage_url).set_trial_state_values(trial_id, TrialState.FAIL)  # stale check
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError, match="no longer held"):
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])
    stored = open_storage(storage_url).get_trial(trial_id)
    assert stored.state == TrialState.FAIL and "late" not in stored.user_attrs


def test_an_incompatible_distribution_is_refused_when_suggested(storage_url):
    _queued(storage_url, "s", [{}, {}])
    study = optuna.load_study(study_name="s", storage=open_storage(storage_url))
    serve(study, lambda t: t.suggest_float("x", 0, 1), run_id="r")  # both trials
    optuna.load_study(study_name="s", storage=open_storage(storage_url)).enqueue_trial({})
    storage = WriteBackStorage(open_storage(storage_url))
    study = optuna.load_study(study_name="s", storage=storage)
    trial = optuna.Trial(study, _claim(study))
    with pytest.raises(ValueError, match="different distribution"):
        trial.suggest_categorical("x", ["a", "b"])


def test_an_unstorable_value_fails_in_the_caller_and_holds_nothing_up(storage_url):
    _queued(storage_url, "s", [{}])
    storage = WriteBackStorage(open_storage(storage_url))
    trial_id = _claim(optuna.load_study(study_name="s", storage=storage))
    with pytest.raises(TypeError, match="JSON serializable"):
        storage.set_trial_user_attr(trial_id, "bad", {1, 2})  # a set: as optuna's storage
    storage.set_trial_user_attr(trial_id, "good", [1])
    storage.record_heartbeat(trial_id)
    assert storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])
    stored = open_storage(storage_url).get_trial(trial_id)
    assert stored.user_attrs["good"] == [1] and "bad" not in stored.user_attrs


def test_a_nan_result_is_a_failed_trial_not_a_dead_worker(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _queued(url, "s", [{}, {}])
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    assert serve(study, lambda t: float("nan"), run_id="r") == 2
    assert {t.state for t in study.get_trials()} == {TrialState.FAIL}


def test_a_trial_failed_elsewhere_while_running_ends_as_that_failure(storage_url):
    # Its heartbeat's write-back finds it FAIL (another worker judged it stale); optuna's
    # tell must then reach us and be refused, not see a FAIL trial and raise ValueError.
    _queued(storage_url, "s", [{}])
    storage = WriteBackStorage(open_storage(storage_url))
    study = optuna.load_study(study_name="s", storage=storage)
    trial = optuna.Trial(study, _claim(study))
    trial.set_user_attr("epoch", 1)
    open_storage(storage_url).set_trial_state_values(trial._trial_id, TrialState.FAIL)
    storage.record_heartbeat(trial._trial_id)  # logs the lost write-back, does not raise
    trial.set_user_attr("epoch", 2)  # dropped
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        study.tell(trial, 1.0)
    stored = open_storage(storage_url).get_trial(trial._trial_id)
    assert stored.state == TrialState.FAIL and "epoch" not in stored.user_attrs


@pytest.mark.parametrize("read_only", [False, True])
def test_an_optuna_whose_schema_moved_is_refused_in_one_line_before_anything_opens(
    tmp_path, monkeypatch, read_only
):
    from sweep.errors import StorageError
    from sweep.queue import storage, tables

    moved = {**tables.COLUMNS, "trials": (*tables.COLUMNS["trials"], "renamed_column")}
    monkeypatch.setattr(tables, "COLUMNS", moved)
    monkeypatch.setattr(tables, "optuna_version", "6.0.0")
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    opening = storage.open_reader if read_only else storage.open_storage
    with pytest.raises(StorageError) as refused:
        opening(url)
    assert str(refused.value) == (
        "optuna 6.0.0 has a table 'trials' without the column 'renamed_column': sweep reads and "
        "writes optuna's tables itself, as optuna 5.0, 5.1 lay them out; install one of those"
    )
    assert not (tmp_path / "studies.db").exists()


def test_stored_datetimes_are_naive_utc_as_optuna_writes_them(storage_url, monkeypatch):
    # In a time zone far from UTC, so that local and UTC times cannot be mistaken.
    import time as clock

    monkeypatch.setenv("TZ", "Asia/Kathmandu")  # UTC+05:45
    clock.tzset()
    try:
        theirs = _queued(storage_url, "optuna", [{}])
        theirs.optimize(lambda t: 1.0, n_trials=1)
        _queued(storage_url, "ours", [{}])
        study = optuna.load_study(
            study_name="ours", storage=WriteBackStorage(open_storage(storage_url))
        )
        assert serve(study, lambda t: 1.0, run_id="r") == 1
        engine = open_storage(storage_url).engine
        with engine.connect() as conn:
            raw = conn.exec_driver_sql(
                "SELECT datetime_start, datetime_complete FROM trials ORDER BY trial_id"
            ).all()
        (their_start, their_end), (our_start, our_end) = raw
        assert abs(_as_datetime(our_start) - _as_datetime(their_start)).total_seconds() < 60
        assert abs(_as_datetime(our_end) - _as_datetime(their_end)).total_seconds() < 60
        fresh = optuna.load_study(study_name="ours", storage=open_storage(storage_url))
        mine, reference = fresh.trials[0], theirs.trials[0]
        assert abs(mine.datetime_start - reference.datetime_start).total_seconds() < 60
        assert abs(mine.datetime_complete - reference.datetime_complete).total_seconds() < 60
    finally:
        monkeypatch.delenv("TZ")
        clock.tzset()


def _as_datetime(value):
    """A stored datetime as the driver returns it (SQLite: text)."""
    from datetime import datetime

    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def test_a_topped_up_trial_reads_back_as_an_enqueued_one(storage_url):
    from sweep.queue import topup

    theirs = _queued(storage_url, "optuna", [{"x": 0.5}])
    ours = _queued(storage_url, "ours", [])
    topup.top_up(open_storage(storage_url), ours._study_id, points=[{"x": 0.5}])
    mine, reference = ours.get_trials()[0], theirs.get_trials()[0]
    assert (mine.number, mine.state, mine.params, mine.user_attrs, mine.system_attrs) == (
        reference.number, reference.state, reference.params, reference.user_attrs,
        reference.system_attrs,
    )  # fmt: skip
    assert mine.datetime_start is None is reference.datetime_start

"""A trial's work outlives its worker: the trial that takes over a dead or released trial runs
the same parameters and starts from its last checkpoint (``sweep.queue.handover``'s ``checkpoint``
→ ``resume_from``), whatever another client wrote into those attributes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from sweep.queue import attrs, claims, recovery
from sweep.queue.storage import open_storage, rdb_of
from sweep.study.joining import open_study, top_up
from sweep.study.space import suggest
from sweep.study.spec import load_spec
from sweep.worker import as_worker_study
from tests.sweep.helpers import WORKER_TAGS, grid_study, states

# A space of every kind of parameter: two ranges of integers (the second's bounds depend on
# the first), a log range of floats and a list.
SPACE = """
[study]
name = "s"
sampler = "{sampler}"
trials = 3
[budget]
min_params = 20_000
max_params = 60_000
[data]
train_size = 2000
[train]
epochs = 5
[space]
hidden_1 = {{ low = 16, high = 64 }}
hidden_2 = {{ low = 8, high = 64 }}
learning_rate = {{ low = 0.001, high = 0.5, log = true }}
activation = ["relu", "tanh"]
"""
SAVED = {"artifact_id": "0b7e9c1e-5d1f-4c5e-9a39-1f0c2d7e4a10", "epoch": 2}
HOW = ["recover", "abandon_run"]
ROOT = Path(__file__).parents[2]


def _queued(tmp_path: Path, url: str, sampler: str):
    """A study of ``sampler`` with its queue topped up, its heartbeats fast."""
    if sampler == "grid":
        spec = load_spec(grid_study(tmp_path, name="s"))
    else:
        path = tmp_path / "s.toml"
        path.write_text(SPACE.format(sampler=sampler))
        spec = load_spec(path)
    study = open_study(spec, open_storage(url, heartbeat_interval=1, grace_period=1))
    top_up(study, spec)
    return study, spec


def _start(study: optuna.Study, spec, checkpoint: dict | None = None):
    """A worker claims the next trial, suggests its settings as the objective does, records
    ``checkpoint`` and writes everything back (as its heartbeat does); then it stops.
    The trial as the database holds it, and the settings."""
    worker = as_worker_study(study)
    trial_id = worker._storage.claim(study._study_id, WORKER_TAGS)
    assert trial_id is not None
    trial = optuna.Trial(worker, trial_id)
    settings = suggest(trial, spec)
    if checkpoint is not None:
        worker._storage.set_trial_system_attr(trial_id, attrs.CHECKPOINT, checkpoint)
    worker._storage.record_heartbeat(trial_id)
    return _stored(study, trial_id), settings


def _take(study: optuna.Study, spec, number: int, checkpoint: dict | None = None):
    """``_start`` on trial ``number``; another run claims the trials handed out before it."""
    while _next(study) != number:
        claims.claim(rdb_of(study._storage), study._study_id, {**WORKER_TAGS, "run": "elsewhere"})
    return _start(study, spec, checkpoint)


def _next(study: optuna.Study) -> int:
    """The number of the trial the queue hands out next: the oldest resuming a checkpoint,
    else the oldest."""
    waiting = _waiting(study)
    resuming = [t for t in waiting if attrs.RESUME_FROM in t.system_attrs]
    return (resuming or waiting)[0].number


def _stored(study: optuna.Study, trial_id: int) -> optuna.trial.FrozenTrial:
    """The trial as the database holds it (not as a cache remembers it)."""
    return open_storage(rdb_of(study._storage).url).get_trial(trial_id)


def _die(study: optuna.Study, how: str, max_retries: int = 3) -> list[int]:
    """The claiming worker is gone: found silent, or its run's processes died."""
    rdb = rdb_of(study._storage)
    if how == "recover":
        # Its heartbeat is old: against a cutoff in the future, as it would be once the grace
        # period had passed (waiting for it, tested in test_queue.py, took 2.2 s a call).
        return recovery.recover(rdb, study._study_id, grace=-2, max_retries=max_retries)
    return recovery.abandon_run(rdb, study._study_id, "r", max_retries=max_retries)


def _waiting(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.WAITING,))


def _newest(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The study's newest trial, read alone (optuna cannot read a study with a trial that
    has an attribute that is not JSON)."""
    rdb = rdb_of(study._storage)
    with rdb.engine.connect() as conn:
        newest = conn.execute(sqlalchemy.text("SELECT max(trial_id) FROM trials")).scalar_one()
    return _stored(study, newest)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_dead_slot_is_rerun_with_its_parameters_from_its_checkpoint(
    tmp_path, storage_url, sampler, how
):
    study, spec = _queued(tmp_path, storage_url, sampler)
    orphan, settings = _start(study, spec, SAVED)
    assert orphan.system_attrs[attrs.FIXED] == {}  # its sampler chose them
    assert len(orphan.params) == 4
    assert _die(study, how) == [orphan.number]
    replacement = study.trials[-1]
    assert replacement.state == TrialState.WAITING
    assert replacement.system_attrs[attrs.FIXED] == orphan.params
    assert replacement.system_attrs[attrs.RESUME_FROM] == {**SAVED, "trial": orphan.number}
    # optuna's Trial returns the fixed parameters whatever the sampler would draw.
    taken_over, again = _take(study, spec, replacement.number)
    assert again == settings
    assert taken_over.params == orphan.params
    assert taken_over.distributions == orphan.distributions


@pytest.mark.parametrize("how", HOW)
def test_a_dead_grid_trial_is_rerun_at_its_point_from_its_checkpoint(tmp_path, storage_url, how):
    study, spec = _queued(tmp_path, storage_url, "grid")
    orphan, settings = _start(study, spec, SAVED)
    assert _die(study, how) == [orphan.number]
    replacement = study.trials[-1]
    assert replacement.system_attrs[attrs.FIXED] == orphan.system_attrs[attrs.FIXED]
    assert replacement.system_attrs[attrs.RESUME_FROM] == {**SAVED, "trial": orphan.number}
    top_up(study, spec)  # the replacement covers the point: it is not queued again
    assert len(study.trials) == 9 and len(_waiting(study)) == 8
    assert _take(study, spec, replacement.number)[1] == settings


def _release(study: optuna.Study, trial_id: int, how: str) -> None:
    rdb = rdb_of(study._storage)
    if how == "release":
        assert claims.release(rdb, trial_id)
    else:
        assert recovery.release_run(rdb, study._study_id, "r") == 1


@pytest.mark.parametrize("how", ["release", "release_run"])
@pytest.mark.parametrize("sampler", ["tpe", "grid"])
def test_a_released_trial_keeps_its_parameters_and_its_checkpoint(
    tmp_path, storage_url, sampler, how
):
    study, spec = _queued(tmp_path, storage_url, sampler)
    trial, settings = _start(study, spec, SAVED)
    name = "artifacts:" + SAVED["artifact_id"]  # as optuna's upload_artifact names it
    _write_attr(storage_url, trial._trial_id, name, '{"artifact_id": "x"}')
    _release(study, trial._trial_id, how)
    back = _stored(study, trial._trial_id)
    assert back.state == TrialState.WAITING
    assert back.params == {} and back.user_attrs == {}  # what it ran is gone, as before
    assert back.system_attrs == {
        attrs.FIXED: trial.params,
        attrs.RESUME_FROM: {**SAVED, "trial": trial.number},
        name: {"artifact_id": "x"},  # its files are still there: the trial's end deletes them
    }
    if sampler == "grid":  # the point it was enqueued with
        assert back.system_attrs[attrs.FIXED] == trial.system_attrs[attrs.FIXED]
    assert _take(study, spec, trial.number)[1] == settings


def test_a_released_trial_that_had_not_started_goes_back_as_it_came(tmp_path, storage_url):
    study, _spec = _queued(tmp_path, storage_url, "tpe")
    rdb = open_storage(storage_url)
    claimed = claims.claim(rdb, study._study_id, WORKER_TAGS)
    assert claims.release(rdb, claimed.trial_id)
    assert _stored(study, claimed.trial_id).system_attrs == {attrs.FIXED: {}}


def test_a_resumed_trial_that_dies_before_its_own_checkpoint_passes_on_what_it_was_given(
    tmp_path, storage_url
):
    # Trial 0 saved epoch 2 and died; trial 3 took over, died before its first checkpoint;
    # its successor still starts from trial 0's epoch 2, and once one saves, from its own.
    study, spec = _queued(tmp_path, storage_url, "random")
    first, _ = _start(study, spec, SAVED)
    _die(study, "abandon_run", max_retries=9)
    second, _ = _take(study, spec, 3)
    assert second.system_attrs[attrs.RESUMED_FROM]["trial"] == first.number
    _die(study, "abandon_run", max_retries=9)
    third, _ = _take(study, spec, 4)
    assert third.system_attrs[attrs.RESUMED_FROM] == {**SAVED, "trial": first.number}
    _release(study, third._trial_id, "release")
    assert _stored(study, third._trial_id).system_attrs[attrs.RESUME_FROM]["trial"] == 0
    fourth, _ = _take(study, spec, 4, {"artifact_id": "later", "epoch": 4})
    _die(study, "abandon_run", max_retries=9)
    expected = {"artifact_id": "later", "epoch": 4, "trial": fourth.number}
    assert _waiting(study)[-1].system_attrs[attrs.RESUME_FROM] == expected


@pytest.mark.parametrize("how", ["abandon_run", "release"])
def test_a_trial_that_resumes_a_checkpoint_is_claimed_before_older_ones(tmp_path, storage_url, how):
    # A checkpoint waiting in the queue is a file on disk: it is handed on first, and the
    # claim renames the pointer, so that the claimed trial is no longer found as waiting.
    study, spec = _queued(tmp_path, storage_url, "random")
    plain, _ = _start(study, spec)  # trial 0, no checkpoint
    saved, _ = _start(study, spec, SAVED)  # trial 1
    if how == "release":
        for trial in (plain, saved):
            _release(study, trial._trial_id, how)
        assert [t.number for t in _waiting(study)] == [0, 1, 2]
        expected, then = saved.number, plain.number
    else:
        _die(study, how)
        assert [t.number for t in _waiting(study)] == [2, 3, 4]  # 3 and 4 replace 0 and 1
        expected, then = 4, 2
    taken, _ = _start(study, spec)
    assert taken.number == expected
    assert taken.system_attrs[attrs.RESUMED_FROM] == {**SAVED, "trial": saved.number}
    assert attrs.RESUME_FROM not in taken.system_attrs
    after, _ = _start(study, spec)  # and then the queue's order again
    assert after.number == then
    assert attrs.RESUMED_FROM not in after.system_attrs


def test_max_retries_still_ends_a_trial_with_a_checkpoint_without_a_replacement(
    tmp_path, storage_url
):
    study, spec = _queued(tmp_path, storage_url, "tpe")
    _start(study, spec, SAVED)
    assert _die(study, "abandon_run", max_retries=2) == [0]
    replacement = _take(study, spec, 3, SAVED)
    assert _die(study, "abandon_run", max_retries=2) == [3]
    trials = study.trials
    assert trials[3].state == TrialState.FAIL
    assert trials[3].user_attrs[attrs.FAIL_REASON] == "worker died 2 times"
    assert len(trials) == 4 and [t.number for t in _waiting(study)] == [1, 2]  # no 4th
    assert replacement[0].system_attrs[attrs.RETRY_HISTORY] == [0]


@pytest.mark.parametrize("how", ["abandon_run", "release"])
def test_a_trial_enqueued_with_some_parameters_is_rerun_with_all_it_ran(tmp_path, storage_url, how):
    study, spec = _queued(tmp_path, storage_url, "random")
    study.enqueue_trial({"activation": "tanh"})  # by hand; the sampler draws the rest
    trial, settings = _take(study, spec, 3, SAVED)
    assert trial.params["activation"] == "tanh" and len(trial.params) == 4
    if how == "release":
        _release(study, trial._trial_id, how)
    else:
        _die(study, how)
    assert _newest(study).system_attrs[attrs.FIXED] == trial.params
    assert _take(study, spec, _newest(study).number)[1] == settings


# -- what another client may have written ----------------------------------------------------

HOSTILE = [
    "not json {",
    "null",
    '["0b7e", 2]',
    '"0b7e"',
    '{"epoch": 2}',
    '{"artifact_id": "0b7e"}',
    '{"artifact_id": 7, "epoch": 2}',
    '{"artifact_id": "", "epoch": 2}',
    '{"artifact_id": "../../home/user/.ssh/id_rsa", "epoch": 2}',
    '{"artifact_id": "a/b", "epoch": 2}',
    '{"artifact_id": ".hidden", "epoch": 2}',
    '{"artifact_id": "' + "a" * 129 + '", "epoch": 2}',
    '{"artifact_id": "0b7e", "epoch": 0}',
    '{"artifact_id": "0b7e", "epoch": -3}',
    '{"artifact_id": "0b7e", "epoch": 2.0}',
    '{"artifact_id": "0b7e", "epoch": "2"}',
    '{"artifact_id": "0b7e", "epoch": true}',
    '{"artifact_id": "0b7e", "epoch": 1e400}',
    "[" * 100_000 + "]" * 100_000,  # deeper than the JSON parser's recursion
]


def _write_attr(url: str, trial_id: int, key: str, text: str) -> None:
    """``key`` = ``text`` on the trial, written by SQL (optuna would write only JSON)."""
    with sqlalchemy.create_engine(url).begin() as conn:
        conn.execute(
            sqlalchemy.text(
                "INSERT INTO trial_system_attributes (trial_id, key, value_json) "
                "VALUES (:t, :k, :v)"
            ),
            {"t": trial_id, "k": key, "v": text},
        )


@pytest.mark.parametrize("how", ["abandon_run", "release"])
@pytest.mark.slow
def test_a_hostile_checkpoint_gives_no_resume_point(tmp_path, storage_url, how):
    study, spec = _queued(tmp_path, storage_url, "random")
    for text in HOSTILE:
        trial, _ = _start(study, spec)
        _write_attr(storage_url, trial._trial_id, attrs.CHECKPOINT, text)
        given = text.replace("}", ', "trial": 0}')  # as a resume point it was given
        _write_attr(storage_url, trial._trial_id, attrs.RESUMED_FROM, given)
        if how == "release":
            _release(study, trial._trial_id, how)
            after = _stored(study, trial._trial_id)
        else:
            assert _die(study, how, max_retries=99) == [trial.number]
            after = _newest(study)
        assert attrs.RESUME_FROM not in after.system_attrs, text
        assert after.system_attrs[attrs.FIXED] == trial.params, text


@pytest.mark.parametrize("how", ["abandon_run", "release"])
def test_parameters_that_are_not_numbers_are_left_to_the_sampler(tmp_path, storage_url, how):
    study, spec = _queued(tmp_path, storage_url, "random")
    trial, _ = _start(study, spec, SAVED)
    engine = sqlalchemy.create_engine(storage_url)
    with engine.begin() as conn:  # another client's SQL: NULL, NaN, an unreadable distribution
        for name, sql in [
            ("hidden_1", "param_value = NULL"),
            ("learning_rate", "param_value = 'NaN'"),  # a float (SQLite keeps the text)
            ("hidden_2", "distribution_json = 'not json {'"),
        ]:
            conn.execute(
                sqlalchemy.text(
                    f"UPDATE trial_params SET {sql} WHERE trial_id = :t AND param_name = :n"
                ),
                {"t": trial._trial_id, "n": name},
            )
    if how == "release":
        _release(study, trial._trial_id, how)
        after = _stored(study, trial._trial_id)
    else:
        _die(study, how)
        after = _newest(study)
    assert after.system_attrs[attrs.FIXED] == {"activation": trial.params["activation"]}
    assert after.system_attrs[attrs.RESUME_FROM] == {**SAVED, "trial": trial.number}


# -- a real death ----------------------------------------------------------------------------

_WORKER = """
import json, sys, time, optuna
from sweep.queue import attrs, claims, recovery
from sweep.study.space import suggest
from sweep.study.spec import load_spec
from sweep.queue.storage import open_storage
from sweep.worker import as_worker_study

spec = load_spec(sys.argv[2])
study = as_worker_study(optuna.load_study(study_name="s", storage=open_storage(sys.argv[1])))
trial_id = study._storage.claim(study._study_id, {"run": "r", "worker": "doomed:1"})
trial = optuna.Trial(study, trial_id)
settings = suggest(trial, spec)
study._storage.set_trial_system_attr(trial_id, attrs.CHECKPOINT, json.loads(sys.argv[3]))
study._storage.record_heartbeat(trial_id)
print(json.dumps(trial.params), flush=True)
time.sleep(600)
"""


def test_a_worker_killed_mid_trial_leaves_its_parameters_and_checkpoint(tmp_path, storage_url):
    study, _spec = _queued(tmp_path, storage_url, "tpe")
    doomed = subprocess.Popen(
        [sys.executable, "-c", _WORKER, storage_url, str(tmp_path / "s.toml"), json.dumps(SAVED)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        params = json.loads(doomed.stdout.readline())
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
    assert params
    assert _die(study, "recover") == [0]
    replacement = _waiting(study)[-1]
    assert replacement.system_attrs[attrs.FIXED] == params
    assert replacement.system_attrs[attrs.RESUME_FROM] == {**SAVED, "trial": 0}
    assert states(study)[TrialState.FAIL] == 1


def test_a_checkpoint_written_while_the_hand_over_waits_is_the_one_handed_on(
    tmp_path, postgres_server
):
    """On PostgreSQL a hand-over that waits for the trial's row (the worker is writing back
    its next checkpoint) passes on that checkpoint, not the one it replaced: the worker
    deletes the replaced file once its pointer is committed."""
    from tests.postgres import fresh_database

    url = fresh_database(postgres_server)
    study, spec = _queued(tmp_path, url, "random")
    stored, _ = _start(study, spec, SAVED)
    newer = {"artifact_id": "5d1f0b7e-9c1e-4c5e-9a39-0c2d7e4a101f", "epoch": 3}
    rdb = rdb_of(study._storage)
    done: list = []
    worker = sqlalchemy.create_engine(url)
    try:
        with worker.connect() as conn, conn.begin():
            # The worker's write-back: the fenced update locks the trial's row, then the
            # pointer to the new checkpoint.
            conn.execute(
                sqlalchemy.text("UPDATE trials SET state = state WHERE trial_id = :t"),
                {"t": stored._trial_id},
            )
            conn.execute(
                sqlalchemy.text(
                    "UPDATE trial_system_attributes SET value_json = :v"
                    " WHERE trial_id = :t AND key = :k"
                ),
                {"t": stored._trial_id, "k": attrs.CHECKPOINT, "v": json.dumps(newer)},
            )
            waiting = threading.Thread(
                target=lambda: done.append(
                    recovery.abandon_run(rdb, study._study_id, "r", max_retries=3)
                )
            )
            waiting.start()
            _until_blocked(conn)
        waiting.join(timeout=30)
    finally:
        worker.dispose()
    assert done, "the hand-over did not finish"
    taker = _newest(study)
    assert taker.state == TrialState.WAITING
    assert taker.system_attrs[attrs.RESUME_FROM] == {**newer, "trial": stored.number}


def _until_blocked(conn: sqlalchemy.Connection) -> None:
    """Return once another session waits for a lock that ``conn``'s transaction holds."""
    me = conn.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar_one()
    blocked = sqlalchemy.text(
        "SELECT count(*) FROM pg_stat_activity WHERE :me = ANY(pg_blocking_pids(pid))"
    )
    deadline = time.monotonic() + 30
    while conn.execute(blocked, {"me": me}).scalar_one() == 0:
        assert time.monotonic() < deadline, "the hand-over never waited for the trial's row"
        time.sleep(0.02)

"""Every part of the queue's guards that no other test reaches alone: the state check and the
start-time fence on a claim's writes (``sweep.queue.tables.held_by``), and the study lock of a
recovery (``sweep.queue.recovery.recover``)."""

import threading

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from sweep.errors import StudyGone
from sweep.queue import claims, recovery, topup
from sweep.queue.storage import open_storage
from sweep.queue.transactions import writing
from sweep.queue.writeback import WriteBackStorage
from tests.sweep.helpers import WORKER_TAGS


def _one_queued(url: str) -> tuple[optuna.storages.RDBStorage, int]:
    rdb = open_storage(url)
    study = optuna.create_study(study_name="s", storage=rdb, direction="maximize")
    topup.top_up(rdb, study._study_id, cap=1)
    return rdb, study._study_id


def test_a_late_write_back_never_brings_a_trial_failed_elsewhere_back_to_running(storage_url):
    # The mid-trial write-back's first statement moves nothing but must find the trial RUNNING:
    # a trial failed as stale keeps its start time, so the fence alone would let it through.
    rdb, sid = _one_queued(storage_url)
    worker = WriteBackStorage(rdb)
    trial_id = worker.claim(sid, WORKER_TAGS)
    assert recovery.recover(rdb, sid, grace=-2, max_retries=3) == [0]  # silent "too long"
    worker.set_trial_user_attr(trial_id, "epoch", 3)  # held until the flush
    with pytest.raises(UpdateFinishedTrialError):
        worker.flush(trial_id)
    stored = rdb.get_trial(trial_id)
    assert stored.state == TrialState.FAIL and "epoch" not in stored.user_attrs


def test_a_released_and_reclaimed_trial_never_takes_the_old_claims_result(storage_url):
    # Released (its launcher interrupted) and claimed again: the same trial RUNNING, by another
    # claim. Only the start time tells the two claims apart.
    rdb, sid = _one_queued(storage_url)
    old, new = WriteBackStorage(rdb), WriteBackStorage(rdb)
    trial_id = old.claim(sid, WORKER_TAGS)
    assert claims.release(rdb, trial_id)
    assert new.claim(sid, WORKER_TAGS) == trial_id
    with pytest.raises(UpdateFinishedTrialError):
        old.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])
    stored = rdb.get_trial(trial_id)
    assert stored.state == TrialState.RUNNING and stored.values is None
    new.set_trial_state_values(trial_id, TrialState.COMPLETE, [2.0])
    assert rdb.get_trial(trial_id).values == [2.0]


@pytest.mark.slow
def test_a_recovery_numbers_its_replacements_after_an_enqueue_in_flight(storage_url):
    # What the study lock protects beside an enqueue: the trials' numbers, which each counts.
    # On PostgreSQL a recovery that did not wait for the study's row would count the trials
    # committed so far and give its replacement the number the enqueue in flight just took;
    # on SQLite every writer waits for the database anyway (BEGIN IMMEDIATE).
    rdb, sid = _one_queued(storage_url)
    WriteBackStorage(rdb).claim(sid, WORKER_TAGS)  # trial 0, RUNNING, about to be found silent
    failed: list[list[int]] = []
    recovering = threading.Thread(
        target=lambda: failed.append(recovery.recover(rdb, sid, grace=-2, max_retries=3))
    )
    with writing(rdb.engine, lock=sid) as conn:  # a top-up (or optuna's own new trial) in flight
        topup.enqueue(conn, sid, [{}])  # trial 1
        recovering.start()
        recovering.join(timeout=2)  # long enough for a recovery that does not wait to finish
    recovering.join()
    assert failed == [[0]]
    numbers = sorted(t.number for t in rdb.get_all_trials(sid))
    assert numbers == [0, 1, 2]


def test_a_recovery_of_a_deleted_study_queues_nothing_and_says_so(storage_url):
    rdb, sid = _one_queued(storage_url)
    WriteBackStorage(rdb).claim(sid, WORKER_TAGS)
    optuna.delete_study(study_name="s", storage=rdb)
    with pytest.raises(StudyGone):
        recovery.recover(rdb, sid, grace=-2, max_retries=3)
    assert rdb.get_all_studies() == []

"""What a launcher and ``sweep status`` count: workers running only while they beat, trials
skipped by a cap shown as skipped."""

import time

import optuna

from sweep import runner
from sweep.queue import progress, topup
from sweep.queue.storage import open_storage
from sweep.queue.writeback import WriteBackStorage
from sweep.report.summary import trial_table
from sweep.study.joining import open_study, top_up
from sweep.study.spec import load_spec
from tests.sweep.helpers import WORKER_TAGS, grid_study, run_sql


def test_a_worker_whose_heartbeat_stopped_is_not_counted_running(tmp_path, storage_url):
    spec = load_spec(grid_study(tmp_path))
    study = open_study(spec, open_storage(storage_url))
    total = top_up(study, spec)
    claims = WriteBackStorage(open_storage(storage_url))
    silent = claims.claim(study._study_id, {**WORKER_TAGS, "worker": "dead:1"})
    claims.claim(study._study_id, {**WORKER_TAGS, "worker": "alive:2"})
    older = (
        "datetime(heartbeat, '-60 seconds')"
        if storage_url.startswith("sqlite")
        else "heartbeat - interval '60 seconds'"
    )
    run_sql(
        storage_url, f"UPDATE trial_heartbeats SET heartbeat = {older} WHERE trial_id = {silent}"
    )
    shown = runner._progress(study, spec, total, time.monotonic(), "another run")
    assert (shown.running, shown.workers, shown.here) == (1, 1, 0)
    assert (
        len(progress.pending(open_storage(storage_url), study._study_id).running) == 2
    )  # waited for
    assert shown.waiting_for is None  # trials still wait: it claims, it does not wait


def test_trials_skipped_by_a_lowered_cap_are_shown_as_skipped(storage_url):
    rdb = open_storage(storage_url)
    study = optuna.create_study(study_name="g", storage=rdb, direction="maximize")
    points = [{"x": x} for x in (0.0, 0.5, 1.0)]
    topup.top_up(rdb, study._study_id, points=points)
    topup.top_up(rdb, study._study_id, points=points[:1], beyond=points[1:])  # cap lowered
    table, _ = trial_table(optuna.load_study(study_name="g", storage=rdb))
    states = [line.split()[1] for line in table.splitlines()[1:]]
    assert states == ["skipped", "skipped"], table
    assert "not in the grid's first 1 points" in table  # why, not a failure's reason

"""A study deleted by another client (``optuna delete-study``) under running launchers and
workers: they stop in one line, and the database stays usable: a rerun trains the grid once."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy
from optuna.trial import TrialState

from sweep.errors import StudyGone
from sweep.queue.storage import open_storage
from sweep.queue.writeback import WriteBackStorage
from sweep.study.joining import open_study, recover, top_up
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
    states,
    wait_for,
)

OPTUNA = Path(sys.executable).with_name("optuna")
GONE = "sweep: error: study 'g' was deleted while sweep worked on it"
#: The lines of a launcher's progress display (its header, then one line per change).
# the run's header and progress lines, a trial's epochs and a worker's claims and ends
# (sweep.progress)
_PROGRESS = re.compile(
    r"study 'g' \(grid\) in |\d+/\d+ trials |trial \d+ (claimed$|epoch \d+/\d+ \d|complete: )"
)
_LOST_CHECKPOINT = re.compile(
    r"WARNING sweep.trial.checkpoint: trial \d+: checkpoint of epoch \d+ failed: (its name could "
    r"not be written to the study database|trial id \d+ is no longer held by this claim; its "
    r"writes were dropped)$"
)  # the second when the delete took the trial's row before the pointer's write looked for it


def _exists(url: str) -> bool:
    with open_storage(url).engine.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT 1 FROM studies")).first() is not None


def _grid_once(url: str) -> None:
    study = load(url, "g")
    assert states(study) == {TrialState.COMPLETE: 8}
    assert len(completed_points(study)) == 8 and set(completed_points(study).values()) == {1}


@pytest.mark.slow
def test_a_study_deleted_under_a_run_and_a_worker_then_rerun(tmp_path, storage_url):
    study_file = grid_study(tmp_path, train_size=50_000, epochs=4)  # a few seconds a trial
    store = ("--artifacts", str(tmp_path / "artifacts"))  # the same store, said once
    run = start_cli("run", str(study_file), "--storage", storage_url, "--jobs", "1", *store)
    wait_for(lambda: count_state(storage_url, "g", TrialState.COMPLETE) >= 1, interval=0.1)
    worker = start_cli("worker", "--study", "g", "--storage", storage_url, *store)
    wait_for(lambda: count_state(storage_url, "g", TrialState.RUNNING) >= 2, interval=0.1)
    assert count_state(storage_url, "g", TrialState.WAITING) >= 3, "too late to exercise"
    delete = subprocess.run(
        [str(OPTUNA), "delete-study", "--study-name", "g", "--storage", storage_url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert delete.returncode == 0, delete.stderr
    deleted = not _exists(storage_url)  # PostgreSQL may refuse it: a row came in meanwhile
    for proc in (run, worker):
        _out, err = proc.communicate(timeout=300)
        assert "Traceback" not in err, err
        if deleted:
            assert proc.returncode == 1, err
            # One line, after the progress lines; a checkpoint that was being named when the
            # study went may say so first (sweep.trial.checkpoint's warning, not this change's).
            said = [line for line in err.splitlines() if not _PROGRESS.match(line)]
            assert said[-1].startswith(GONE), err
            assert all(_LOST_CHECKPOINT.match(line) for line in said[:-1]), err
        else:
            assert proc.returncode == 0, err
    assert deleted or "sqlite" not in storage_url, "SQLite's delete was refused"
    if deleted:  # a new study of the same name: quicker trials will do
        (tmp_path / "rerun").mkdir()
        study_file = grid_study(tmp_path / "rerun")
    rerun = run_cli("run", str(study_file), "--storage", storage_url, "--jobs", "2")
    assert rerun.returncode == 0, rerun.stderr
    _grid_once(storage_url)


def _claimed(url: str, tmp_path: Path, n: int) -> tuple[Path, list[int]]:
    """A queued grid study with ``n`` trials claimed by a worker (heartbeats, tags)."""
    study_file = grid_study(tmp_path)
    spec = load_spec(study_file)
    study = open_study(spec, open_storage(url))
    top_up(study, spec)
    storage = WriteBackStorage(open_storage(url))
    return study_file, [storage.claim(study._study_id, WORKER_TAGS) for _ in range(n)]


@pytest.mark.parametrize("left", ["rows of its trials", "a trial queued meanwhile"])
@pytest.mark.slow
def test_rows_a_racing_delete_left_behind_do_not_fail_a_rerun(tmp_path, left):
    # What optuna's delete leaves on SQLite when a worker writes while it runs: it deletes
    # what it had read (the study, its trials), not the heartbeats and attributes written
    # since, nor a trial queued since. Their ids are the ones SQLite gives next.
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study_file, claimed = _claimed(url, tmp_path, 2)
    assert claimed == [1, 2]
    queued = [
        "INSERT INTO trials (number, study_id, state) VALUES (8, 1, 'WAITING')",
        "INSERT INTO trial_system_attributes (trial_id, key, value_json) "
        "VALUES (9, 'fixed_params', '{}')",
    ]
    run_sql(
        url,
        *(queued if left == "a trial queued meanwhile" else []),
        "DELETE FROM trials WHERE trial_id <= 8",
        "DELETE FROM trial_system_attributes WHERE trial_id <= 6",  # 7 and 8 left
        "DELETE FROM study_directions",
        "DELETE FROM studies",
    )  # the heartbeats and tags of trials 1 and 2 left, and the study's attributes
    out = run_cli("run", str(study_file), "--storage", url, "--jobs", "2")
    assert out.returncode == 0, out.stderr
    _grid_once(url)
    assert "row(s) that a deleted study left behind" in out.stderr
    with open_storage(url).engine.connect() as conn:
        for table in ("trial_heartbeats", "trial_user_attributes", "trial_system_attributes"):
            orphans = conn.execute(sqlalchemy.text(
                f"SELECT count(*) FROM {table} WHERE trial_id NOT IN (SELECT trial_id FROM trials)"
            )).scalar()  # fmt: skip
            assert orphans == 0, table


def test_a_deleted_study_is_neither_topped_up_nor_recovered(tmp_path, storage_url):
    spec = load_spec(grid_study(tmp_path))
    study = open_study(spec, open_storage(storage_url))
    run_sql(storage_url, "DELETE FROM study_system_attributes", "DELETE FROM study_user_attributes",
            "DELETE FROM study_directions", "DELETE FROM studies")  # fmt: skip
    for operation in (lambda: top_up(study, spec), lambda: recover(study, max_retries=3)):
        with pytest.raises(StudyGone, match=r"^study 'g' was deleted while sweep worked on it"):
            operation()
    with open_storage(storage_url).engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM trials")).scalar() == 0


def test_a_launcher_whose_study_is_deleted_as_its_workers_end_says_so(tmp_path, monkeypatch):
    # Deleted after the workers' last look at it: the launcher's own last reads must not
    # meet optuna's "Record does not exist" (it ended in a traceback from the trial table).
    import joblib
    import optuna

    from sweep import runner

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    path = tmp_path / "g.toml"  # random: no point to count, which would meet the gap first
    path.write_text(
        '[study]\nname = "g"\nsampler = "random"\ntrials = 2\n[data]\ntrain_size = 2000\n'
        "[budget]\nmin_params = 20_000\nmax_params = 60_000\n[train]\nepochs = 1\n"
        "[space]\nhidden_1 = { low = 16, high = 64 }\n"
    )
    spec = load_spec(path)

    def deleted_meanwhile(*args, **kwargs):
        optuna.delete_study(study_name="g", storage=url)
        return lambda tasks: list(tasks) and []

    monkeypatch.setattr(joblib, "Parallel", deleted_meanwhile)
    with pytest.raises(StudyGone, match=r"^study 'g' was deleted while sweep worked on it"):
        runner.run(spec, storage=url, jobs=1, on_progress=lambda p: None)


def test_a_running_trial_whose_study_is_deleted_stops_at_its_next_write(
    tmp_path, storage_url, caplog
):
    # Its heartbeat finds it gone and says nothing; the training thread's next write raises,
    # so the trial stops at once instead of training on for a study that can store nothing.
    from sweep.queue.writeback import TrialDeleted

    study_file = grid_study(tmp_path)
    spec = load_spec(study_file)
    study = open_study(spec, open_storage(storage_url))
    top_up(study, spec)
    storage = WriteBackStorage(open_storage(storage_url))
    trial_id = storage.claim(study._study_id, WORKER_TAGS)
    run_sql(storage_url, *[f"DELETE FROM {t}" for t in (
        "trial_heartbeats", "trial_user_attributes", "trial_system_attributes", "trials",
        "study_user_attributes", "study_system_attributes", "study_directions", "studies",
    )])  # fmt: skip
    caplog.clear()
    with caplog.at_level("WARNING"):
        storage.record_heartbeat(trial_id)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
    with pytest.raises(TrialDeleted):
        storage.set_trial_user_attr(trial_id, "epoch", 2)
    with open_storage(storage_url).engine.connect() as conn:
        assert (
            conn.execute(sqlalchemy.text("SELECT count(*) FROM trial_user_attributes")).scalar()
            == 0
        )

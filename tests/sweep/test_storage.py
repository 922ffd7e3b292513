import sqlite3
import subprocess
import sys
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from sweep.errors import SpecError, StorageError, SweepError
from sweep.queue.storage import open_storage, resolve_url

POP = textwrap.dedent(
    """
    import sys, optuna
    from sweep.queue.storage import open_storage
    from sweep.queue.writeback import WriteBackStorage
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, how = sys.argv[1:]
    storage = open_storage(url) if how == "optuna" else WriteBackStorage(open_storage(url))
    study = optuna.load_study(study_name="q", storage=storage)
    tags = {"run": "r", "worker": "w"}
    ours = lambda: storage.claim(study._study_id, tags)  # noqa: E731
    pop = study._pop_waiting_trial_id if how == "optuna" else ours
    popped = []
    while (trial_id := pop()) is not None:
        popped.append(trial_id)
    print(" ".join(map(str, popped)))
    """
)


@pytest.mark.parametrize("how", ["optuna", "writeback"])
@pytest.mark.slow
def test_four_processes_claim_200_trials_each_exactly_once(storage_url, how):
    # "optuna": its own pop, made safe on SQLite by BEGIN IMMEDIATE; "writeback": our claim.
    url = storage_url
    study = optuna.create_study(study_name="q", storage=open_storage(url))
    for i in range(200):
        study.enqueue_trial({"i": i}, skip_if_exists=False)
    procs = [
        subprocess.Popen([sys.executable, "-c", POP, url, how], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    claimed = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        claimed += [int(x) for x in out.split()]
    assert len(claimed) == 200 == len(set(claimed))
    assert {t.state for t in study.get_trials()} == {TrialState.RUNNING}


def test_sqlite_is_in_wal_mode_with_a_busy_timeout(tmp_path):
    path = tmp_path / "w.db"
    storage = open_storage(f"sqlite:///{path}")
    optuna.create_study(study_name="w", storage=storage)
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60_000
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_url_resolution(monkeypatch):
    monkeypatch.delenv("SWEEP_STORAGE", raising=False)
    assert resolve_url() == "sqlite:///runs/sweep.db"
    monkeypatch.setenv("SWEEP_STORAGE", "sqlite:///x.db")
    assert resolve_url() == "sqlite:///x.db"
    assert resolve_url("sqlite:///y.db") == "sqlite:///y.db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "redis://localhost",
            r"storage URL 'redis://localhost' is not supported; use sqlite:///PATH",
        ),
        (
            "postgresql://u:pw@127.0.0.1:1/db",
            r"storage postgresql://u:\*\*\*@127.0.0.1:1/db: cannot",
        ),
    ],
)
def test_unusable_urls_are_one_line_errors(url, message):
    with pytest.raises(SweepError, match=message) as info:
        open_storage(url)
    assert "\n" not in str(info.value) and "pw" not in str(info.value)


def test_a_folder_is_not_a_database(tmp_path):
    with pytest.raises(StorageError, match="is a folder, not a database file"):
        open_storage(f"sqlite:///{tmp_path}")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_url_is_refused(url):
    # Each worker process would get a database of its own: a run would never finish.
    with pytest.raises(SpecError, match="in-memory SQLite database cannot be shared"):
        open_storage(url)

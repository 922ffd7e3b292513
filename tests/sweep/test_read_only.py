"""Read-only commands (status, report) never change a database: not a foreign file handed to
them by mistake, not a study database (no tables, no journal mode), not a file that is missing.
"""

import hashlib
import sqlite3
from pathlib import Path

import optuna
import pytest

from sweep.errors import StorageError
from sweep.storage import open_storage, root_cause
from tests.sweep.helpers import run_cli


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file in the folder and its digest."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _foreign_sqlite(path: Path) -> None:
    """Someone else's SQLite database, with a table of optuna's names among its own."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE studies (id INTEGER, title TEXT)")
    conn.execute("INSERT INTO studies VALUES (1, 'mine')")
    conn.commit()
    conn.close()


FOREIGN = {
    "text": lambda p: p.write_text("a shopping list, not a database\n"),
    "empty": lambda p: p.write_bytes(b""),
    "sqlite with a studies table": _foreign_sqlite,
}
READ_ONLY_COMMANDS = [["status"], ["report", "all"], ["report", "g"]]


@pytest.mark.parametrize("kind", FOREIGN)
@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=" ".join)
def test_a_foreign_file_is_one_line_and_left_byte_identical(tmp_path, kind, command):
    path = tmp_path / "theirs.db"
    FOREIGN[kind](path)
    before = _snapshot(tmp_path)
    out = run_cli(*command, "--storage", f"sqlite:///{path}")
    assert out.returncode == 1, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"storage sqlite:///{path}: not an optuna study database" in out.stderr
    assert _snapshot(tmp_path) == before  # no tables, no journal, no WAL, no new files


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=" ".join)
def test_a_missing_database_is_not_created(tmp_path, command):
    path = tmp_path / "none.db"
    out = run_cli(*command, "--storage", f"sqlite:///{path}")
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert f"no such database file {path}" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_status_and_report_leave_a_study_database_as_it_was(tmp_path):
    # A database another optuna client made: rollback journal, not WAL. Reading it must not
    # switch its journal mode (a header change) or touch anything else in it.
    path = tmp_path / "theirs.db"
    study = optuna.create_study(study_name="g", storage=f"sqlite:///{path}")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    del study
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for command in [["status"], ["report", "g", "--out", str(tmp_path / "out")]]:
        out = run_cli(*command, "--storage", f"sqlite:///{path}")
        assert out.returncode == 0, out.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_a_read_only_storage_refuses_writes(storage_url):
    optuna.create_study(study_name="g", storage=open_storage(storage_url))
    reader = open_storage(storage_url, read_only=True)
    assert [s.study_name for s in optuna.get_all_study_summaries(reader)] == ["g"]
    with pytest.raises(optuna.exceptions.StorageInternalError) as refused:
        optuna.create_study(study_name="h", storage=reader)
    assert "read" in str(root_cause(refused.value)).lower()  # "readonly", "read-only"
    assert [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage_url))] == [
        "g"
    ]


def test_a_database_without_optuna_tables_is_refused_read_only(storage_url):
    if storage_url.startswith("sqlite"):
        _foreign_sqlite(Path(storage_url.removeprefix("sqlite:///")))
    with pytest.raises(StorageError, match="not an optuna study database"):
        open_storage(storage_url, read_only=True)

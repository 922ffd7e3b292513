"""Read-only commands (status, report) never change a database: not a foreign file handed to
them by mistake, not a study database (no tables, no journal mode), not a file that is missing.
"""

import hashlib
import re
import sqlite3
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from sweep.errors import StorageError
from sweep.queue import schema
from sweep.queue.storage import open_reader, open_storage, root_cause
from tests.sweep.helpers import run_cli, run_sql


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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=" ".join)
def test_a_missing_database_is_not_created(tmp_path, command):
    path = tmp_path / "none.db"
    out = run_cli(*command, "--storage", f"sqlite:///{path}")
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert f"no such database file {path}" in out.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
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


# --- sweep status's reader: optuna's tables read without optuna's storage object ------------


def _optuna_reader(url: str) -> sqlalchemy.engine.Engine:
    return open_storage(url, heartbeat_interval=None, grace_period=None, read_only=True).engine


#: ``sweep status``'s reader, and optuna's own storage opened read-only: one verdict.
READERS = {"open_reader": open_reader, "open_storage": _optuna_reader}


def _rows(url: str, table: str) -> list[tuple]:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sqlalchemy.text(f"SELECT * FROM {table}"))]
    engine.dispose()
    return sorted(rows)


@pytest.mark.parametrize("reader", READERS)
def test_the_status_reader_refuses_writes(storage_url, reader):
    optuna.create_study(study_name="g", storage=open_storage(storage_url))
    engine = READERS[reader](storage_url)
    with pytest.raises(sqlalchemy.exc.DBAPIError) as refused, engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE studies SET study_name = 'h'"))
    assert "read" in str(root_cause(refused.value)).lower()  # "readonly", "read-only"
    assert _rows(storage_url, "studies") == [(1, "g")]


@pytest.mark.parametrize("reader", READERS)
def test_the_status_reader_refuses_a_database_without_optuna_tables(storage_url, reader):
    if storage_url.startswith("sqlite"):
        _foreign_sqlite(Path(storage_url.removeprefix("sqlite:///")))
    with pytest.raises(StorageError, match="not an optuna study database"):
        READERS[reader](storage_url)


def test_the_schema_revision_read_from_optunas_scripts_is_alembics_head():
    from optuna.storages._rdb.storage import _VersionManager

    # the head as optuna finds it: alembic loading every migration script
    versions = _VersionManager.__new__(_VersionManager)
    versions.url = "sqlite://"
    assert schema.head() == versions.get_head_version() is not None


#: A database optuna made, then changed by hand or by another version of optuna: each is
#: refused by both readers, with optuna's own verdict where optuna gives one, in one line.
ODD_SCHEMAS = {
    "an older schema": (["UPDATE alembic_version SET version_num = 'v3.0.0.d'"],
                        "is no longer compatible with the table schema"),
    "an unknown revision": (["UPDATE alembic_version SET version_num = 'v9.9.9.z'"],
                            "is no longer compatible with the table schema"),
    "two revisions": (["INSERT INTO alembic_version VALUES ('v3.0.0.d')"], "more than one head"),
    # optuna would stamp the revision or add the row: a write, refused
    "no revision": (["DELETE FROM alembic_version"], "read-?only"),
    "no version row": (["DELETE FROM version_info"], "read-only|not an optuna study database"),
    "no studies table": (["DROP TABLE studies CASCADE"], "not an optuna study database"),
    "two version rows": (
        ["ALTER TABLE version_info DROP CONSTRAINT version_info_version_info_id_check",
         "INSERT INTO version_info VALUES (2, 12, '5.0.0')"], "[Mm]ultiple rows"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("odd", ODD_SCHEMAS)
@pytest.mark.parametrize("reader", READERS)
def test_a_schema_optuna_would_not_read_is_refused_unchanged(storage_url, reader, odd):
    statements, message = ODD_SCHEMAS[odd]
    if storage_url.startswith("sqlite"):
        if odd == "two version rows":
            pytest.skip("SQLite cannot drop a CHECK constraint")
        statements = [s.removesuffix(" CASCADE") for s in statements]
    optuna.create_study(study_name="g", storage=open_storage(storage_url))
    run_sql(storage_url, *statements)
    before = {t: _rows(storage_url, t) for t in ("alembic_version", "version_info", "trials")}
    with pytest.raises(StorageError) as refused:
        READERS[reader](storage_url)
    assert re.search(message, str(refused.value)) and "\n" not in str(refused.value), refused.value
    assert {t: _rows(storage_url, t) for t in before} == before
    if reader == "open_storage":
        return
    out = run_cli("status", "--storage", storage_url)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("sweep: error: storage ") and re.search(message, out.stderr)


def _scripts(folder: Path, *revisions: tuple[str, str]) -> Path:
    folder.mkdir()
    for i, (revision, down) in enumerate(revisions):
        (folder / f"s{i}.py").write_text(f'"""A migration."""\nrevision = {revision}\n'
                                         f"down_revision = {down}\n")  # fmt: skip
    return folder


@pytest.mark.parametrize(("revisions", "head"), [
    ([('"a"', "None"), ('"b"', '"a"'), ("'c'", "'b'")], "c"),
    ([('"a"', "None")], "a"),
    ([('"a"', "None"), ('"b"', '"a"'), ('"c"', '"a"')], None),  # a branch: two heads
    ([('"a"', "None"), ('"b"', '"a"'), ('"c"', '("a", "b")')], None),  # a merge
    ([('"a"', "None"), ('"c"', '"b"')], None),  # a missing script
    ([('"a"', "None"), ('"b"', '"c"'), ('"c"', '"b"')], None),  # a cycle beside the chain
    ([('"a"', "None"), ('"a"', "None")], None),  # one revision twice
    ([('"a"', "None"), ("make_revision()", '"a"')], None),  # not a literal
], ids=["chain", "one", "branch", "merge", "gap", "cycle", "twice", "computed"])  # fmt: skip
def test_a_head_is_read_only_from_one_chain_of_scripts(tmp_path, revisions, head):
    assert schema.head_of(_scripts(tmp_path / "versions", *revisions)) == head

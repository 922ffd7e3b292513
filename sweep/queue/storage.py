"""Study storage: a URL → an optuna RDB storage that is safe for many worker processes, or a
read-only engine for sweep's own reads; and the database's errors as one line.

Every way a study database is opened (for writing; read-only through optuna; read-only without
it, ``open_reader``) shares the URL checks, engine settings and one-line errors here, so that a
fix to one is a fix to all. What makes SQLite safe for many processes is ``sweep.queue.sqlite``.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from sweep.errors import SpecError, StorageError
from sweep.queue import schema
from sweep.queue.sqlite import BUSY_TIMEOUT_S, configure, into_wal
from sweep.queue.tables import INDEXES, moved_schema, studies
from sweep.queue.transactions import reading, writing
from sweep.queue.urls import mask_password, parse_url, redact
from sweep.text import printable

logger = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///runs/sweep.db"
STORAGE_ENV = "SWEEP_STORAGE"
# A running trial proves its worker is alive every HEARTBEAT_INTERVAL_S; one silent for
# GRACE_PERIOD_S is stale (its worker is gone) and is run again. Tests shorten both.
HEARTBEAT_INTERVAL_S = int(os.environ.get("SWEEP_HEARTBEAT_INTERVAL", "5"))
GRACE_PERIOD_S = int(os.environ.get("SWEEP_GRACE_PERIOD", "30"))


def resolve_url(url: str | None = None) -> str:
    """The storage URL: the argument, else ``$SWEEP_STORAGE``, else ``sqlite:///runs/sweep.db``."""
    return url or os.environ.get(STORAGE_ENV) or DEFAULT_URL


#: What optuna and SQLAlchemy raise when the database fails (not the caller's mistake).
STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///")
    return None if path in ("", ":memory:") else Path(path)


class MissingDatabase(StorageError):
    """Read-only: no database at the URL yet, or one without optuna's tables."""


def _read_only_sqlite(path: Path, shown: str) -> dict[str, Any]:
    """Engine arguments that open ``path`` read-only (SQLite's ``mode=ro``: the library itself
    refuses every write, so a foreign file cannot be changed by a bug of ours or optuna's set-up
    either), after checking that it is a regular file holding optuna's tables."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise MissingDatabase(f"storage {shown}: no such database file {path}") from None
    except OSError as e:
        raise StorageError(f"storage {shown}: cannot read {path}: {e.strerror}") from e
    if not stat.S_ISREG(mode):
        raise StorageError(f"storage {shown}: {path} is not a regular file")
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)

    try:
        conn = connect()
        try:
            names = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            versioned = schema.TABLES <= names and conn.execute(
                "SELECT count(*) FROM version_info").fetchone()[0] == 1  # fmt: skip
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:  # "file is not a database", a corrupt page, ...
        raise StorageError(f"storage {shown}: not an optuna study database ({e})") from e
    if not versioned:
        raise MissingDatabase(f"storage {shown}: not an optuna study database (no optuna tables)")
    return {"creator": connect}


def _check_optuna_tables(conn: sqlalchemy.Connection, shown: str) -> None:
    """The database holds optuna's tables, checked before optuna's own set-up would add them."""
    if not schema.TABLES <= schema.table_names(conn):
        raise MissingDatabase(f"storage {shown}: not an optuna study database (no optuna tables)")


_FORMS = "sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB"


def _supported(url: str | None) -> tuple[str, str, Path | None]:
    """The resolved URL, as shown in messages, and its SQLite file (None on PostgreSQL);
    StorageError if the installed optuna's tables moved (``sweep.queue.tables.moved_schema``:
    then no database can be used), SpecError (bad usage, exit 2) for a URL that does not parse
    or that sweep cannot share between worker processes."""
    url = resolve_url(url)
    shown = mask_password(url)
    moved = moved_schema()  # before any URL check: no database of this optuna can be used
    if moved:
        raise StorageError(moved)
    # MySQL is not offered: its DATETIME drops the microseconds that fence a claim.
    if not re.match(r"^(sqlite|postgresql|postgresql\+\w+)://", url):
        raise SpecError(f"storage URL {shown!r} is not supported; use {_FORMS}")
    try:
        parse_url(url)  # before any engine: SQLAlchemy's own error is a ValueError traceback
    except ValueError as e:
        raise SpecError(f"storage URL {shown!r} does not parse: {e}; use {_FORMS}") from None
    path = _sqlite_path(url)
    if url.startswith("sqlite") and path is None:
        raise SpecError(
            f"storage URL {shown!r}: an in-memory SQLite database cannot be shared by worker "
            "processes; give a file, sqlite:///PATH"
        )
    return url, shown, path


def checked_url(url: str | None) -> str:
    """The resolved URL, refused as every opening refuses it (``_supported``) but without
    opening anything: for a command that hands the URL on (``sweep submit``)."""
    return _supported(url)[0]


def _postgresql_kwargs(*, read_only: bool) -> dict[str, Any]:
    """Engine arguments for PostgreSQL; ``read_only``: the server refuses every write."""
    # A host cut off mid-transaction must not hold its row locks for the OS's two hours of TCP
    # keepalive: the server notices a silent peer within a minute and rolls back.
    return {
        "pool_pre_ping": True,  # survive server restarts between trials
        "connect_args": {
            "connect_timeout": 10,
            "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
            "keepalives_count": 3,
            "options": "-c idle_in_transaction_session_timeout=60000 "
            "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"
            + (" -c default_transaction_read_only=on" if read_only else ""),
        },
    }  # fmt: skip


def _no_driver(shown: str) -> StorageError:
    return StorageError(
        f"storage {shown}: its database driver is not installed "
        "(for PostgreSQL: pip install 'mlp-sweep[postgres]')"
    )


def open_storage(
    url: str | None = None,
    *,
    heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S,
    grace_period: int | None = GRACE_PERIOD_S,
    stale_trial_callback: Any = None,
    read_only: bool = False,
) -> optuna.storages.RDBStorage:
    """An optuna RDB storage for ``url`` (see ``resolve_url``), created if missing.

    ``read_only`` (status, report, the dashboard): the database must already exist and hold
    optuna's tables; nothing is created and nothing written, not even SQLite's journal mode.
    Raises StorageError, with the password masked, when the database cannot be reached or, read
    only, is not an optuna study database.
    """
    url, shown, path = _supported(url)
    engine_kwargs: dict[str, Any] = {}
    if path is not None and read_only:
        engine_kwargs = _read_only_sqlite(path, shown)
    elif path is not None:
        if path.is_dir():
            raise StorageError(f"storage {shown}: {path} is a folder, not a database file")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"storage {shown}: cannot create {path.parent}: {e.strerror}") from e
        engine_kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S}
        into_wal(path)
    else:
        engine_kwargs = _postgresql_kwargs(read_only=read_only)
    try:
        for attempt in range(_INIT_ATTEMPTS):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" since optuna 2.9
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    if read_only and path is None:
                        probe = sqlalchemy.create_engine(url, **engine_kwargs)
                        try:
                            with reading(probe) as conn:
                                _check_optuna_tables(conn, shown)
                        finally:
                            probe.dispose()
                    storage = optuna.storages.RDBStorage(
                        url,
                        engine_kwargs=engine_kwargs,
                        heartbeat_interval=heartbeat_interval,
                        grace_period=grace_period,
                        heartbeat_stale_trial_callback=stale_trial_callback,
                        skip_table_creation=read_only,
                    )
                break
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError,
                    sqlalchemy.exc.ProgrammingError) as e:  # fmt: skip
                # Two processes creating a new database at once race in optuna's schema
                # set-up ("UNIQUE constraint failed: alembic_version", "table alembic_version
                # already exists", PostgreSQL's duplicate pg_type row); the loser's retry
                # finds the schema made.
                racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e)
                if not racing or attempt == _INIT_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ImportError as e:
        raise _no_driver(shown) from e
    except _OPEN_ERRORS as e:
        raise StorageError(f"storage {shown}: cannot open: {_first_line(e, url)}") from e
    except Exception as e:
        # alembic's CommandError (a version table it cannot read: two revisions in it); read
        # only, optuna's StorageInternalError (its set-up tried to add a missing version row)
        refused = read_only and isinstance(e, optuna.exceptions.StorageInternalError)
        if not (refused or type(e).__module__.split(".")[0] == "alembic"):
            raise
        raise StorageError(f"storage {shown}: cannot open: {_first_line(e, url)}") from e
    if path is not None and not read_only:
        configure(storage.engine)
    if not read_only:
        _add_indexes(storage.engine, url)
    return storage


def open_reader(url: str | None = None) -> sqlalchemy.engine.Engine:
    """A read-only SQLAlchemy engine on the study database at ``url``, for sweep's own reads
    of optuna's tables (``sweep status``): refused as ``open_storage(read_only=True)`` refuses
    it, in the same one-line errors, but without optuna's storage object and its set-up, most
    of a reading command's start-up (``sweep.queue.schema``). One connection checks the tables; a
    schema ``sweep.queue.schema`` does not recognise as current is left to ``open_storage``."""
    url, shown, path = _supported(url)
    if path is not None:
        engine_kwargs = _read_only_sqlite(path, shown)
    else:
        engine_kwargs = _postgresql_kwargs(read_only=True)
    try:
        engine = sqlalchemy.create_engine(url, **engine_kwargs)
        with reading(engine) as conn:
            if path is None:  # the SQLite file was checked above, before it was opened
                _check_optuna_tables(conn, shown)
            current = schema.is_current(conn)
    except ImportError as e:
        raise _no_driver(shown) from e
    except _OPEN_ERRORS as e:
        raise StorageError(f"storage {shown}: cannot open: {_first_line(e, url)}") from e
    if current:
        return engine
    engine.dispose()
    return open_storage(url, heartbeat_interval=None, grace_period=None, read_only=True).engine


#: The PostgreSQL advisory lock that serialises creating sweep's indexes ("sweep" in ASCII).
_INDEX_LOCK = 0x7377656570


def _has_index(conn: sqlalchemy.Connection, name: str) -> bool:
    if conn.dialect.name == "sqlite":
        query = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = :name"
    else:  # the schema the search path finds ``trials`` in, as every other statement does
        query = "SELECT 1 WHERE to_regclass(:name) IS NOT NULL"
    return conn.execute(sqlalchemy.text(query), {"name": name}).first() is not None


def _add_indexes(engine: sqlalchemy.engine.Engine, url: str) -> None:
    """Create sweep's indexes (``sweep.queue.tables.INDEXES``: the queue's, the best values' and
    the resumable trials') unless they exist.

    One catalog read each when they do (no lock: SQLite's plain BEGIN). Otherwise they are
    built under the write lock (SQLite's ``BEGIN IMMEDIATE``; on PostgreSQL an advisory lock,
    since two ``CREATE INDEX IF NOT EXISTS`` at once can still collide in ``pg_class``), once,
    by the first of any number of processes opening the database at once; building one reads
    its table once and holds its writers up meanwhile (about a second for 10^6 trials). A
    database that refuses them (on PostgreSQL an index needs the table's owner) is still used,
    with a warning: every queue operation stays correct, only slower.
    """
    index, shown = INDEXES[0], mask_password(url)
    try:
        with reading(engine) as conn:
            if all(_has_index(conn, i.name) for i in INDEXES):
                return
        with writing(engine) as conn:  # SQLite: BEGIN IMMEDIATE, the write lock
            if conn.dialect.name == "postgresql":
                conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": _INDEX_LOCK})  # fmt: skip
            for index in INDEXES:
                if not _has_index(conn, index.name):  # else made while we waited for the lock
                    conn.execute(sqlalchemy.schema.CreateIndex(index, if_not_exists=True))
                    logger.info("storage %s: created index %s", shown, index.name)
    except sqlalchemy.exc.SQLAlchemyError as e:
        logger.warning(
            "storage %s: cannot create index %s (%s); claims and TPE asks will read past "
            "every finished trial of a study", shown, index.name, _first_line(e, url),
        )  # fmt: skip


_INIT_ATTEMPTS = 5
#: What opening a database raises for the URL's or the server's sake: a driver's ValueError
#: too (a host name of 70 letters: UnicodeError from the IDNA codec, issue 22).
_OPEN_ERRORS = (sqlalchemy.exc.SQLAlchemyError, ValueError, RuntimeError)


def _first_line(error: BaseException, url: str) -> str:
    """The useful line of a driver error about ``url`` (SQLAlchemy appends background links;
    optuna's StorageInternalError hides it under a sentence of its own), with the URL's
    secrets hidden and the server's control characters made printable."""
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__:
        error = error.__cause__
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip().splitlines()
    return redact(text[0], url) if text else type(orig).__name__


def rdb_of(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage:
    """The RDB storage a study's storage stands on: itself, or the one under a worker's
    write-back storage (``backend``) or optuna's cache (``_backend``). TypeError if there is
    none (optuna's in-memory storage): the queue lives in a database."""
    found = storage
    for _ in range(3):
        if isinstance(found, optuna.storages.RDBStorage):
            return found
        found = getattr(found, "backend", None) or getattr(found, "_backend", None)
    raise TypeError(f"a study queue needs an RDB storage; got {type(storage).__name__}")


def study_names(storage: optuna.storages.RDBStorage) -> list[str]:
    """Every study's name, in creation order: one narrow read (optuna's summaries read every
    trial of every study, 10 s at 10^4 trials)."""
    query = sqlalchemy.select(studies.c.study_name).order_by(studies.c.study_id)
    with reading(storage.engine) as conn:
        return list(conn.execute(query).scalars())


def root_cause(e: BaseException) -> BaseException:
    """The database driver's error under optuna's and SQLAlchemy's wrappers, else e itself."""
    seen = e
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__
        if type(seen).__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg2"):
            return seen
    return e


def root_message(e: BaseException) -> str:
    """The first line of what the database driver said under ``e``, else of ``e`` itself,
    printable (a server's text may hold ANSI escape codes)."""
    text = str(root_cause(e)).strip()
    return printable(text.splitlines()[0] if text else repr(e), 500)


def storage_failure(e: BaseException, url: str) -> StorageError:
    """One line naming what the database said, e.g. that the disk is full or a lock was held."""
    cause = redact(root_message(e), url)
    hint = ""
    if "locked" in cause:
        hint = (f" (another process held a write transaction for more than {BUSY_TIMEOUT_S:.0f} s;"
                " an open SQL shell or a stuck tool?)")  # fmt: skip
    elif "full" in cause or "No space" in cause:
        hint = " (free some space; what is stored is intact and a rerun resumes)"
    elif "readonly" in cause or "read-only" in cause:
        hint = " (the database file or its folder is not writable)"
    return StorageError(f"storage {mask_password(url)}: {cause}{hint}")

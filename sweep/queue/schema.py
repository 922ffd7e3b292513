"""optuna's schema, recognised by reading it: whether a database is an optuna study database at
the schema revision this optuna writes, without optuna's storage object or alembic.

optuna's ``RDBStorage`` checks the same when it opens a database, but its set-up imports
alembic, maps optuna's ORM models and loads every migration script as a module (together about
0.2 s of ``sweep status``, measured on PostgreSQL); here the revision is read from the scripts'
text, once per process. Only a positive answer is trusted: a database this module does not
recognise is opened by optuna, whose answer (an old schema, an upgrade hint) is the answer.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import sqlalchemy

#: The tables every optuna study database has (optuna's ``models.py`` and alembic's own).
TABLES = frozenset({"studies", "trials", "version_info", "alembic_version"})


def table_names(conn: sqlalchemy.Connection) -> set[str]:
    """The tables the connection sees (in PostgreSQL's default schema)."""
    return set(sqlalchemy.inspect(conn).get_table_names())


def is_current(conn: sqlalchemy.Connection) -> bool:
    """What optuna checks when it opens a database, read-only: one version row, and one alembic
    revision, the newest of this optuna's migration scripts (``head``). False when the tables
    say anything else, or say it oddly (a statement fails on them)."""
    revision = head()
    if revision is None:
        return False
    try:
        rows = conn.execute(sqlalchemy.text("SELECT count(*) FROM version_info")).scalar()
        stamped = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version"))
        return rows == 1 and list(stamped.scalars()) == [revision]
    except sqlalchemy.exc.SQLAlchemyError:
        return False


#: How alembic recognises a migration script in its versions folder (``alembic.script.base``).
_SCRIPT = re.compile(r"(?!\.#|__init__).*\.py")
_QUOTED = r"""["']([^"']+)["']"""
_REVISION = re.compile(rf"^revision\s*(?::[^=]*)?=\s*{_QUOTED}\s*$", re.M)
_DOWN = re.compile(rf"^down_revision\s*(?::[^=]*)?=\s*(?:None|{_QUOTED})\s*$", re.M)


@functools.cache
def head() -> str | None:
    """The alembic revision of the schema this optuna writes: the newest of its migration
    scripts, in the folder optuna hands alembic (``optuna/storages/_rdb/alembic/versions``).
    None where ``head_of`` finds none."""
    from optuna.storages._rdb import storage as optuna_rdb

    return head_of(Path(optuna_rdb.__file__).parent / "alembic" / "versions")


def head_of(folder: Path) -> str | None:
    """The newest revision of the alembic migration scripts in ``folder``, each read as text.
    None unless every script names one revision and one parent, and they form a single chain
    from the head down to the first script, so that alembic finds this head too."""
    parent: dict[str, str | None] = {}
    for script in folder.iterdir():
        if not _SCRIPT.fullmatch(script.name):
            continue
        text = script.read_text(encoding="utf-8")
        revision, down = _REVISION.findall(text), _DOWN.findall(text)
        if len(revision) != 1 or len(down) != 1 or revision[0] in parent:
            return None
        parent[revision[0]] = down[0] or None
    heads = set(parent) - set(parent.values())
    if len(heads) != 1:
        return None
    newest = revision = heads.pop()
    length = 0  # down the chain to the first script, through every one
    while revision is not None and revision in parent and length < len(parent):
        revision, length = parent[revision], length + 1
    return newest if revision is None and length == len(parent) else None

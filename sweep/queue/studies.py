"""A study's own row and spec: whether it is still there, and its spec, stored once."""

from __future__ import annotations

import sqlalchemy
from optuna.storages import RDBStorage

from sweep.queue import tables as tb
from sweep.queue.attrs import SPEC
from sweep.queue.study_attr import study_attrs, swap_study_attr
from sweep.queue.transactions import reading


def study_exists(storage: RDBStorage, study_id: int) -> bool:
    """Whether the study is still there (another client may delete it), read only."""
    query = sqlalchemy.select(tb.studies.c.study_id).where(tb.studies.c.study_id == study_id)
    with reading(storage.engine) as conn:
        return conn.execute(query).first() is not None


def adopt_spec(storage: RDBStorage, study_id: int, spec_json: str) -> str | None:
    """Store ``spec_json`` as the study's spec (its user attribute ``spec``) unless it has one,
    under the study lock (``study_attr.swap_study_attr``); return the stored one. Two launchers
    creating one study at once thus agree on whose spec it is, and the other is compared with
    it. A study without a spec that already has trials is another client's: nothing is stored
    and None comes back (unless a spec was stored since)."""
    stored = swap_study_attr(
        storage.engine, study_id, SPEC, lambda old: spec_json if old is None else None,
        user=True, before_trials=True,
    )  # fmt: skip
    if stored is not None:
        return stored
    # Ours, or nothing (the study has trials): a spec, once stored, is never replaced.
    return study_attrs(storage.engine, study_id, [SPEC], user=True).get(SPEC)

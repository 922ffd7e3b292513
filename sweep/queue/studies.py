"""A study's own row: whether it is still there, and its spec, stored once under its lock."""

from __future__ import annotations

import sqlalchemy
from optuna.storages import RDBStorage

from sweep.queue import tables as tb
from sweep.queue.attrs import SPEC
from sweep.queue.transactions import reading, writing


def study_exists(storage: RDBStorage, study_id: int) -> bool:
    """Whether the study is still there (another client may delete it), read only."""
    query = sqlalchemy.select(tb.studies.c.study_id).where(tb.studies.c.study_id == study_id)
    with reading(storage.engine) as conn:
        return conn.execute(query).first() is not None


def adopt_spec(storage: RDBStorage, study_id: int, spec_json: str) -> str | None:
    """Store ``spec_json`` as the study's spec (its user attribute ``spec``) unless it has one,
    under the study lock; return the stored one. Two launchers creating one study at once
    thus agree on whose spec it is, and the other is compared with it. A study without a spec
    that already has trials is another client's: nothing is stored and None comes back."""
    attrs = tb.study_user_attrs
    with writing(storage.engine, lock=study_id) as conn:
        stored = conn.execute(
            sqlalchemy.select(attrs.c.value_json).where(
                attrs.c.study_id == study_id, attrs.c.key == SPEC
            )
        ).scalar()
        if stored is not None:
            return stored
        trials = tb.trials
        if conn.execute(sqlalchemy.select(trials.c.trial_id).where(
                trials.c.study_id == study_id).limit(1)).first() is not None:  # fmt: skip
            return None
        conn.execute(attrs.insert(), {"study_id": study_id, "key": SPEC, "value_json": spec_json})
        return spec_json

"""A study's attributes read as stored, and the one compare-and-set of a study attribute.

Several processes decide a study attribute from its current value (two workers finishing at
once both offer their model as the ``best_model``; two launchers creating one study both offer
their spec): ``swap_study_attr`` reads and writes it in one transaction under the study lock
(``sweep.queue.transactions.writing``), so no decision is taken on a value another one has
already replaced.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy

from sweep.queue import tables as tb
from sweep.queue.transactions import reading, writing


def _table(user: bool) -> sqlalchemy.Table:
    return tb.study_user_attrs if user else tb.study_system_attrs


def swap_study_attr(
    engine: sqlalchemy.engine.Engine,
    study_id: int,
    key: str,
    new: Callable[[str | None], str | None],
    *,
    user: bool = False,
    before_trials: bool = False,
) -> str | None:
    """Compare-and-set the study's attribute ``key`` (a system attribute; a user attribute if
    ``user``): read its stored JSON text (None if unset), and store ``new(stored)`` in its place
    unless that is None, in one transaction under the study lock; return the text read.
    ``before_trials``: write nothing once the study has a trial (a spec is adopted only by a
    study that sweep made: one with trials and no spec is another client's).

    ``new`` is the comparison: e.g. ``lambda stored: spec if stored is None else None`` sets a
    value once (what is stored afterwards: the text returned, or ``spec`` if that is None), and
    ``lambda stored: value if stored == expected else None`` is the textbook compare-and-set.
    StudyGone if the study was deleted (nothing is written)."""
    attrs = _table(user)
    where = (attrs.c.study_id == study_id, attrs.c.key == key)
    with writing(engine, lock=study_id) as conn:
        text = conn.execute(sqlalchemy.select(attrs.c.value_json).where(*where)).scalar()
        encoded = new(text)
        if before_trials and encoded is not None:
            trials = tb.trials
            if conn.execute(sqlalchemy.select(trials.c.trial_id).where(
                    trials.c.study_id == study_id).limit(1)).first() is not None:  # fmt: skip
                encoded = None
        if encoded is None:
            pass
        elif text is None:
            conn.execute(attrs.insert(), {"study_id": study_id, "key": key, "value_json": encoded})
        else:
            conn.execute(attrs.update().where(*where).values(value_json=encoded))
    return text


def study_attrs(
    engine: sqlalchemy.engine.Engine, study_id: int, keys: list[str], *, user: bool = False
) -> dict[str, str]:
    """The study's system attributes (user attributes if ``user``) among ``keys``, as stored
    (JSON text, undecoded: another client's odd value elsewhere is not the caller's)."""
    attrs = _table(user)
    query = sqlalchemy.select(attrs.c.key, attrs.c.value_json).where(
        attrs.c.study_id == study_id, attrs.c.key.in_(keys)
    )
    with reading(engine) as conn:
        return {key: value for key, value in conn.execute(query)}

"""A study's trials counted by state without walking its COMPLETE ones: what ``sweep status``
shows and what a capped top-up (``sweep.queue.topup``) counts, at the same cost at 10^6
trials as at 10^3.

Every state but COMPLETE is counted through the queue's index (``tables.QUEUE_INDEX``: the
study's WAITING, RUNNING, FAIL and PRUNED trials, and any state name SQL wrote); the COMPLETE
ones are the rest of the study's total, and the total is the number of its newest trial plus
one. optuna numbers a study's trials 0, 1, … in the order it makes them (a new trial's number
is the count of the study's trials before it, taken under the study's lock:
``TrialModel.count_past_trials``; ``topup.enqueue`` numbers its trials the same way), and
deletes a trial only with its whole study. Counting every trial by state cost 100 ms at 10^6
trials on SQLite (more than all the rest of ``sweep status``) and 220 ms in a top-up of 20
slots; these are four index probes and a walk of the unfinished and failed trials.

Note: a study whose trials another client renumbered or deleted in SQL is counted as its
numbers say; where they cannot be right (no room left for the COMPLETE trials there are), its
COMPLETE trials are counted one by one instead.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import sqlalchemy
from optuna.trial import TrialState

from sweep.queue.tables import trials


def by_state(conn: Any, study_id: int) -> dict[str, int]:
    """The study's trials by stored state name (any name SQL wrote, as text), none at zero."""
    sql, key = _statements(), {"sid": study_id}
    counts, newest = {}, []
    for name, n, last_id in conn.execute(sql.others, key):
        counts[name] = n
        newest.append(last_id)
    last_complete = conn.execute(sql.last_complete, key).scalar()
    if last_complete is None:
        return counts
    number = conn.execute(sql.number, {"tid": max([last_complete, *newest])}).scalar_one()
    complete = number + 1 - sum(counts.values()) if isinstance(number, int) else 0
    if complete < 1:  # numbers no optuna client gave: count them
        complete = conn.execute(sql.complete, key).scalar_one()
    return {**counts, TrialState.COMPLETE.name: complete}


@functools.cache
def _statements() -> SimpleNamespace:
    """``by_state``'s statements, built once (``sid``: the study; ``tid``: a trial): a
    database of 200 studies spent most of ``sweep status`` building them anew for each."""
    of_study = trials.c.study_id == sqlalchemy.bindparam("sid")
    complete = trials.c.state == TrialState.COMPLETE
    state = sqlalchemy.type_coerce(trials.c.state, sqlalchemy.String)  # an unknown name is kept
    # Two ranges of the index rather than ``!=`` (which SQLite walks the study's whole range
    # for): every state below COMPLETE and every one above, in each database's own order.
    others = sqlalchemy.union_all(*(
        sqlalchemy.select(state.label("state"), trials.c.trial_id).where(of_study, side)
        for side in (trials.c.state < TrialState.COMPLETE, trials.c.state > TrialState.COMPLETE)
    )).subquery()  # fmt: skip
    count = sqlalchemy.func.count()
    return SimpleNamespace(
        others=sqlalchemy.select(others.c.state, count, sqlalchemy.func.max(others.c.trial_id))
        .group_by(others.c.state),
        last_complete=sqlalchemy.select(sqlalchemy.func.max(trials.c.trial_id))
        .where(of_study, complete),
        number=sqlalchemy.select(trials.c.number)
        .where(trials.c.trial_id == sqlalchemy.bindparam("tid")),
        complete=sqlalchemy.select(count).select_from(trials).where(of_study, complete),
    )  # fmt: skip

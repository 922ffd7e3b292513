"""The newest trials of a study with the parameters that make their network: what ``sweep status``
judges against the study's budget (``sweep.study.audit``), by index walks whatever its size.

Nothing in the database says which trials another client made (optuna's ``ask`` makes a trial
as sweep's queue does, and nothing indexes what a trial lacks), so an exact count of the trials
outside the budget reads every trial's parameters. On the 10⁶-trial SQLite study of the scale
benchmark (one machine, 2 cores, load ~1), judging every trial through these reads took 11.6 s,
and one SQL aggregate over the two width parameters alone (a GROUP BY of 2·10⁶ rows, the budget
computed in SQL) 2.1 s, against a target for all of ``sweep status`` of 0.1 s above an empty
database's. The newest ``JUDGED`` took 12 ms; ``sweep status`` judges those (and the best
trial), and says how many it judged; ``sweep report`` judges every trial. In-process medians
of 15 calls of ``sweep.report.summary.status`` with and without this read: 13.4 against 2.1 ms
on that SQLite study, 23.4 against 5.9 ms on a PostgreSQL study of 10⁵ (tests.postgres's
server on loopback).

The walks: per state a trial can have parameters in (all but WAITING: a queued trial's are its
fixed parameters, judged when it is claimed), the newest by the queue's index
(``tables.QUEUE_INDEX``: study, state, trial id) from its newest end, merged; then each trial's
parameters by optuna's unique index on (trial, name). The parameters are read as anyone may
have stored them (``attrs.stored_param``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy
from optuna.trial import TrialState

from sweep.queue import tables as tb
from sweep.queue.attrs import stored_param
from sweep.queue.coverage import chunks
from sweep.queue.tables import trials
from sweep.queue.transactions import reading

#: How many of a study's newest trials ``sweep status`` judges (12 ms at 10⁶ trials, above).
JUDGED = 1_000
#: The states whose trials ``newest`` reads: every one a trial has run in.
_STATES = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def newest(
    engine: sqlalchemy.engine.Engine, study_ids: Sequence[int], names: Sequence[str],
    *, limit: int | None = None,
) -> dict[int, list[tuple[int, dict[str, Any]]]]:  # fmt: skip
    """Per study, its newest ``limit`` (default ``JUDGED``) trials that have run (by trial id,
    newest first) as (number, parameters): those of its parameters named ``names`` (a parameter
    stored badly left out), in one read-only transaction."""
    limit = JUDGED if limit is None else limit
    out: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    with reading(engine) as conn:
        for study_id in study_ids:
            rows = conn.execute(_newest(study_id, limit)).all()
            found = _params(conn, [r[0] for r in rows], names)
            out[study_id] = [(number, found.get(trial_id, {})) for trial_id, number in rows]
    return out


def _newest(study_id: int, limit: int) -> sqlalchemy.Select:
    """The study's newest ``limit`` trials that have run: (trial id, number), newest first. One
    walk per state, each bounded (a single walk ordered by id would sort the whole study on a
    database whose planner does not walk the index backwards for it)."""
    walks = [
        sqlalchemy.select(trials.c.trial_id, trials.c.number)
        .where(trials.c.study_id == study_id, trials.c.state == state)
        .order_by(trials.c.trial_id.desc())
        .limit(limit)
        .subquery()
        for state in _STATES
    ]
    merged = sqlalchemy.union_all(*(sqlalchemy.select(w) for w in walks)).subquery()
    return sqlalchemy.select(merged).order_by(merged.c.trial_id.desc()).limit(limit)


def _params(conn: Any, trial_ids: Sequence[int], names: Sequence[str]) -> dict[int, dict[str, Any]]:
    """The parameters named ``names`` of these trials, as optuna shows them."""
    p = tb.params
    found: dict[int, dict[str, Any]] = {}
    for chunk in chunks(trial_ids):
        for trial_id, name, value, distribution in conn.execute(
            sqlalchemy.select(p.c.trial_id, p.c.param_name, p.c.param_value,
                              p.c.distribution_json)
            .where(p.c.trial_id.in_(chunk), p.c.param_name.in_(list(names)))
        ):  # fmt: skip
            param = stored_param(value, distribution)
            if param is not None:
                found.setdefault(trial_id, {})[name] = param[0]
    return found

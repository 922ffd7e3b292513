"""The newest trials of sweep's studies with the parameters that make their network: what
``sweep status`` judges against each study's budget (``sweep.study.audit``), by index walks
whatever the studies' sizes and a bound on their number in all.

Nothing in the database says which trials another client made (optuna's ``ask`` makes a trial
as sweep's queue does, and nothing indexes what a trial lacks), so an exact count of the trials
outside the budget reads every trial's parameters. On the 10⁶-trial SQLite study of the scale
benchmark (one machine, 2 cores, load ~1), judging every trial through these reads took 11.6 s,
and one SQL aggregate over the two width parameters alone (a GROUP BY of 2·10⁶ rows, the budget
computed in SQL) 2.1 s, against a target for all of ``sweep status`` of 0.1 s above an empty
database's. The newest 1,000 took 12 ms; ``sweep status`` judges those (and the best
trial), and says how many it judged; ``sweep report`` judges every trial. In-process medians
of 15 calls of ``sweep.report.summary.status`` with and without this read: 13.4 against 2.1 ms
on that SQLite study, 23.4 against 5.9 ms on a PostgreSQL study of 10⁵ (tests.postgres's
server on loopback).

One bound for the whole database, not one per study: on a SQLite database of 200 sweep studies
of 1,050 trials each, a cap of 1,000 per study read 2·10⁵ trials in 2.1 s; their shares of
``JUDGED`` (``shares``: evenly, a study with fewer trials than its share judged whole and what
it leaves shared among the others, at least ``EACH`` each), 2,000 in all, took 26 ms.

The walks: per state a trial can have run in (not WAITING: a queued trial's parameters are its
fixed ones, judged when it is claimed), the newest by the queue's index (``tables.QUEUE_INDEX``:
study, state, trial id) from its newest end, merged; then each trial's parameters by optuna's
unique index on (trial, name), those of every study in one read (``coverage.stored_params``).
The FAIL walk passes over the slots a lowered cap skipped (``sweep.queue.topup``: never ran,
no parameters) by their lack of a start time, read from the row the walk visits anyway: on a
SQLite study whose newest 10⁵ FAIL trials were skipped slots, the newest 1,000 that ran took
22 ms so, 36 ms by the lack of a ``skipped`` attribute (one more index probe a row).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy
from optuna.trial import TrialState

from sweep.queue.coverage import stored_params
from sweep.queue.tables import trials
from sweep.queue.transactions import reading

#: How many trials ``sweep status`` judges in all, shared among the database's sweep studies
#: (``shares``; 12 ms for 1,000 of a 10⁶-trial study, above).
JUDGED = 1_000
#: How many of each sweep study's trials it judges at least, however many studies share
#: ``JUDGED`` (all of a study that has run fewer).
EACH = 10
#: The states whose trials ``newest`` reads: every one a trial has run in.
RAN = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def shares(ran: Mapping[int, int]) -> dict[int, int]:
    """How many of its newest trials to judge, per study (``ran``: how many of its trials have
    run, by study id): ``JUDGED`` shared out evenly, a study that has run fewer than its share
    judged whole and the rest shared among the others, never fewer than ``EACH`` (nor more
    than it has run). In all at most ``JUDGED`` plus ``EACH`` per study, whatever their sizes."""
    out: dict[int, int] = {}
    left = JUDGED
    smallest_first = sorted(ran, key=lambda study_id: ran[study_id])
    for i, study_id in enumerate(smallest_first):
        fair = max(EACH, left // (len(smallest_first) - i))
        out[study_id] = min(max(ran[study_id], 0), fair)
        left = max(left - out[study_id], 0)
    return out


def newest(
    engine: sqlalchemy.engine.Engine, judged: Mapping[int, int], names: Sequence[str]
) -> dict[int, list[tuple[int, dict[str, Any]]]]:
    """Per study, its newest ``judged[study_id]`` trials that have run (``shares``; by trial id,
    newest first) as (number, parameters): those of its parameters named ``names`` (a
    parameter stored badly left out), in one read-only transaction."""
    with reading(engine) as conn:
        rows = {study_id: conn.execute(_newest(), {"sid": study_id, "n": n}).all() if n > 0 else []
                for study_id, n in judged.items()}  # fmt: skip
        ids = [trial_id for found in rows.values() for trial_id, _ in found]
        params = stored_params(conn, ids, names=names)
    return {study_id: [(number, params.get(trial_id, {})) for trial_id, number in found]
            for study_id, found in rows.items()}  # fmt: skip


@functools.cache
def _newest() -> sqlalchemy.Select:
    """The newest ``n`` trials that have run of study ``sid``: (trial id, number), newest
    first. One walk per state, each bounded (a single walk ordered by id would sort the whole
    study on a database whose planner does not walk the index backwards for it); a FAIL trial
    that never started (a skipped slot) passed over. Built once: the walks of 200 studies took
    292 ms with the statement built anew for each, 26 ms so."""
    sid, n = sqlalchemy.bindparam("sid"), sqlalchemy.bindparam("n")
    walks = []
    for state in RAN:
        started = [trials.c.datetime_start.is_not(None)] if state == TrialState.FAIL else []
        walks.append(
            sqlalchemy.select(trials.c.trial_id, trials.c.number)
            .where(trials.c.study_id == sid, trials.c.state == state, *started)
            .order_by(trials.c.trial_id.desc())
            .limit(n)
            .subquery()
        )
    merged = sqlalchemy.union_all(*(sqlalchemy.select(w) for w in walks)).subquery()
    return sqlalchemy.select(merged).order_by(merged.c.trial_id.desc()).limit(n)

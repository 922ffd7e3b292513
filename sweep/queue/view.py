"""A study's bounded view for TPE, read from optuna's tables: its best COMPLETE trials, its
newest finished ones and its RUNNING ones (``sweep.study.sampler``'s ``BoundedTPESampler``).

The ids come from three bounded queries: the newest and the running trials through sweep's
index on the queue (``sweep.queue.tables.QUEUE_INDEX``: study, state, trial id), the best by
walking ``VALUE_INDEX`` (``trial_values (value_type, value)``) from its best end where the
database has it, else by reading the study's values once. Then only the trials not yet known
are loaded, as TPE reads them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable
from typing import Any

import sqlalchemy
from optuna import distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

from sweep.queue import tables as tb
from sweep.queue.transactions import reading

logger = logging.getLogger(__name__)

_CHUNK = 500  # ids per IN list: under every database's limit of bound parameters
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_VALUE = models.TrialValueModel.TrialValueType


def read_view(
    engine: sqlalchemy.engine.Engine,
    study_id: int,
    *,
    best: int,
    recent: int,
    maximize: bool,
    known: Collection[int] = (),
) -> tuple[set[int], dict[int, FrozenTrial]]:
    """(the view's finished trial ids, its trials by id but the finished ones in ``known``),
    in one read-only transaction: the ``best`` COMPLETE trials, the ``recent`` newest COMPLETE
    or PRUNED ones and every RUNNING one. Finished trials never change, so a caller that keeps
    them passes their ids as ``known``."""
    with reading(engine) as conn:
        finished, running = view_ids(conn, study_id, best=best, recent=recent, maximize=maximize)
        return finished, load_trials(conn, (finished - set(known)) | running)


def view_ids(
    conn: Any, study_id: int, *, best: int, recent: int, maximize: bool
) -> tuple[set[int], set[int]]:
    """The view's finished trial ids and its RUNNING ones, by three bounded queries in ``conn``'s
    transaction (also the dashboard's bounded view, ``sweep.queue.bounded``)."""
    trials = tb.trials
    of_study = trials.c.study_id == study_id
    running = sqlalchemy.select(trials.c.trial_id).where(
        of_study, trials.c.state == TrialState.RUNNING
    )
    newest = (
        sqlalchemy.select(trials.c.trial_id)
        .where(of_study, trials.c.state.in_(_FINISHED))
        .order_by(trials.c.trial_id.desc())
        .limit(recent)
    )
    # Two queries an index on trial_values (value_type, value) serves by walking it from the
    # best end: the infinitely good values (rare), then the best numbers. Not
    # ``tables.best_first`` (status's one best trial, ties by trial id): its tie order and its
    # ``study_id + 0`` made a TPE ask take 127-147 ms at 10^5 trials on PostgreSQL (make
    # bench-scale's steady state; 20 ms this way, in the same hour).
    values = tb.values
    infinite, order = (
        (_VALUE.INF_POS, values.c.value.desc()) if maximize else (_VALUE.INF_NEG, values.c.value)
    )
    complete = (
        sqlalchemy.select(trials.c.trial_id)
        .join(values, values.c.trial_id == trials.c.trial_id)
        .where(of_study, trials.c.state == TrialState.COMPLETE, values.c.objective == 0)
    )
    infinitely_good = complete.where(values.c.value_type == infinite).order_by(order)
    top = list(conn.execute(infinitely_good.limit(best)).scalars())
    if len(top) < best:
        finite = complete.where(values.c.value_type == _VALUE.FINITE).order_by(order)
        top += conn.execute(finite.limit(best - len(top))).scalars()
    finished = set(conn.execute(newest).scalars()) | set(top)
    return finished, set(conn.execute(running).scalars())


def _chunks(ids: Iterable[int]) -> Iterable[list[int]]:
    ids = sorted(ids)
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def load_trials(conn: Any, ids: Iterable[int], *, whole: bool = False) -> dict[int, FrozenTrial]:
    """Trials by id, as TPE reads them (no user attributes; intermediate values of PRUNED
    trials only), or ``whole`` as the dashboard shows them (user attributes and every trial's
    intermediate values too). A trial whose stored fields another client made unreadable is
    left out."""
    out: dict[int, FrozenTrial] = {}
    for chunk in _chunks(ids):
        rows: dict[int, dict[str, Any]] = {}
        t = tb.trials
        query = sqlalchemy.select(
            t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete
        ).where(t.c.trial_id.in_(chunk))
        for tid, number, state, start, complete in conn.execute(query):
            rows[tid] = dict(number=number, state=state, start=start, complete=complete,
                             params=[], values=[], system=[], user=[], steps=[])  # fmt: skip
        stepped = [tid for tid, r in rows.items() if whole or r["state"] == TrialState.PRUNED]
        reads = [
            ("params", tb.params, ("param_name", "param_value", "distribution_json"), chunk),
            ("values", tb.values, ("objective", "value", "value_type"), chunk),
            ("system", tb.system_attrs, ("key", "value_json"), chunk),
            ("steps", tb.steps, ("step", "intermediate_value", "intermediate_value_type"), stepped),
            ("user", tb.user_attrs, ("key", "value_json"), chunk if whole else []),
        ]
        for name, table, columns, wanted in reads:
            if not wanted:
                continue
            query = sqlalchemy.select(table.c.trial_id, *(table.c[c] for c in columns))
            for tid, *fields in conn.execute(query.where(table.c.trial_id.in_(wanted))):
                rows[tid][name].append(fields)
        for tid, row in rows.items():
            try:
                out[tid] = _frozen(tid, row)
            except Exception as e:  # untrusted rows: the trial is left out of the view
                logger.debug("trial id %d left out of the bounded view: %s", tid, e)
    return out


def _frozen(trial_id: int, row: dict[str, Any]) -> FrozenTrial:
    dists = {name: distributions.json_to_distribution(text) for name, _, text in row["params"]}
    stored = sorted(row["values"], key=lambda r: r[0])  # by objective
    if [objective for objective, _, _ in stored] != list(range(len(stored))):
        raise ValueError("objectives not numbered 0, 1, ...")
    to_value = models.TrialValueModel.stored_repr_to_value
    values = [to_value(v, kind) for _, v, kind in stored] or None
    if row["state"] == TrialState.COMPLETE and not values:
        raise ValueError("a COMPLETE trial without a value")
    to_step = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
    return FrozenTrial(
        number=row["number"],
        state=row["state"],
        value=None,
        values=values,
        datetime_start=row["start"],
        datetime_complete=row["complete"],
        params={name: dists[name].to_external_repr(value) for name, value, _ in row["params"]},
        distributions=dists,
        user_attrs={key: json.loads(text) for key, text in row["user"]},
        system_attrs={key: json.loads(text) for key, text in row["system"]},
        intermediate_values={step: to_step(v, kind) for step, v, kind in row["steps"]},
        trial_id=trial_id,
    )

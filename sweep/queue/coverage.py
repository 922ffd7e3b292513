"""Which trial covers which grid point: what a grid's top-up, and a launcher's last word on
it, are decided by.

A point is covered by a trial that trained it or will: a COMPLETE or PRUNED trial with the
point's parameters, from any client (a sweep worker, or optuna's own ``optimize`` running
``sweep.trial.objective``); a FAIL that failed for good by sweep's rules (its ``fail_reason``); a
WAITING trial queued for it; a RUNNING trial a sweep worker claimed (its tags). It is not
covered by a trial another client took from the queue and finished without the point's
parameters (``study.ask()`` then ``tell``, an objective that suggests nothing or something
else, one that failed on a distribution of its own), nor by one another client holds RUNNING:
nobody promises to train it there, so the top-up queues the point again.

Reading the parameters back costs a row per parameter and a decoding, so they are read only
where the trial's own attributes do not settle it: a finished trial a sweep worker ran (its
tags) ran its fixed parameters, since the grid objective suggests every dimension of the grid
and optuna returns a fixed parameter for each.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy
from optuna.trial import TrialState

from sweep.queue import tables as tb
from sweep.queue.attrs import FAIL_REASON, FIXED, RUN_TAG, attr, stored_param
from sweep.queue.tables import trials

#: The states of a trial that counts toward the cap whatever its attributes (``counting``).
LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
_TRAINED = (TrialState.COMPLETE, TrialState.PRUNED)

#: Trial ids per statement where a list of them is bound (SQLite allows 32766 parameters in
#: one statement, PostgreSQL's protocol 65535; a study may hold more trials than either).
CHUNK = 1000


def chunks(ids: Sequence[int]) -> list[Sequence[int]]:
    return [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)]


def point_key(params: dict[str, Any]) -> str:
    """A grid point (or a trial's parameters) as a comparable key."""
    return json.dumps(params, sort_keys=True)


def keyed(table: Any, key: str, name: str) -> Any:
    """``table`` (a trial attribute table) aliased as ``name`` and limited to ``key``: the
    alias, and the join condition to ``trials``."""
    alias = table.alias(name)
    return alias, sqlalchemy.and_(alias.c.trial_id == trials.c.trial_id, alias.c.key == key)


def has_reason() -> Any:
    """The condition that a trial has a ``fail_reason`` (one indexed probe)."""
    attrs = tb.user_attrs
    return (
        sqlalchemy.exists()
        .where(attrs.c.trial_id == trials.c.trial_id, attrs.c.key == FAIL_REASON)
        .correlate(trials)
    )


def counting() -> Any:
    """The condition that a trial counts toward the cap and may cover its grid point: live or
    finished, or failed for a reason of its own (an interrupted or skipped one is run again).
    The reason is looked up for FAIL trials only."""
    failed = sqlalchemy.and_(trials.c.state == TrialState.FAIL, has_reason())
    return sqlalchemy.or_(trials.c.state.in_(LIVE), failed)


@dataclasses.dataclass(frozen=True)
class Cover:
    """What one trial of a study covers."""

    trial_id: int
    waiting: bool  # queued: WAITING
    done: bool  # trained (COMPLETE, PRUNED) or failed for good
    key: str | None  # the point it covers (``point_key``); None: none


def covering(conn: Any, study_id: int) -> list[Cover]:
    """Every trial of the study that covers a point, oldest first (see the module's rules):
    one narrow row per trial that counts, and the parameters of those whose attributes do
    not say what they ran (another client's, and trials without fixed parameters)."""
    fixed, on_fixed = keyed(tb.system_attrs, FIXED, "fixed")
    run, on_run = keyed(tb.user_attrs, RUN_TAG, "run")
    rows = conn.execute(
        sqlalchemy.select(trials.c.trial_id, trials.c.state, fixed.c.value_json,
                          run.c.trial_id.is_not(None))
        .select_from(trials.outerjoin(fixed, on_fixed).outerjoin(run, on_run))
        .where(trials.c.study_id == study_id, counting())
        .order_by(trials.c.trial_id)
    ).all()  # fmt: skip
    found: list[tuple[int, TrialState, str | None]] = []
    unknown = []
    for trial_id, state, fixed_json, tagged in rows:
        if state == TrialState.RUNNING and not tagged:
            continue  # held by another client, which promises nothing
        point = attr(fixed_json, dict, {})
        if state in _TRAINED and not tagged:
            point = {}  # finished by another client: what it ran is in its parameters
        found.append((trial_id, state, point_key(point) if point else None))
        if not point:
            unknown.append(trial_id)
    stored = stored_params(conn, unknown)
    return [
        Cover(
            trial_id,
            waiting=state == TrialState.WAITING,
            done=state not in (TrialState.WAITING, TrialState.RUNNING),
            key=key if key is not None or trial_id not in stored else point_key(stored[trial_id]),
        )
        for trial_id, state, key in found
    ]


def done_points(conn: Any, study_id: int, points: Sequence[dict[str, Any]]) -> int:
    """How many of ``points`` a finished trial covers: trained, or failed for good."""
    done = {c.key for c in covering(conn, study_id) if c.done}
    return len({point_key(p) for p in points} & done)


def stored_params(
    conn: Any, trial_ids: Sequence[int], *, names: Sequence[str] | None = None
) -> dict[int, dict[str, Any]]:
    """The parameters these trials ran with (only those named ``names`` if given), as optuna
    shows them, in the order they were set (a trial another client made, or whose parameters a
    sampler chose; ``sweep status``'s best trials and those it judges against the budget); a
    parameter stored badly is left out (``attrs.stored_param``)."""
    p = tb.params
    named = [] if names is None else [p.c.param_name.in_(list(names))]
    stored: dict[int, dict[str, Any]] = {}
    for chunk in chunks(trial_ids):
        for tid, name, value, dist in conn.execute(
            sqlalchemy.select(p.c.trial_id, p.c.param_name, p.c.param_value,
                              p.c.distribution_json)
            .where(p.c.trial_id.in_(chunk), *named).order_by(p.c.param_id)
        ):  # fmt: skip
            param = stored_param(value, dist)
            if param is not None:
                stored.setdefault(tid, {})[name] = param[0]
    return stored

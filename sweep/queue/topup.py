"""Filling the queue: each missing grid point, or empty slots up to the trial cap, enqueued
under the study lock, and the WAITING trials beyond a lowered cap skipped.

``top_up`` holds the study lock for its whole read-then-enqueue (the ``studies`` row ``FOR
UPDATE`` on PostgreSQL, the lock optuna's own ``create_new_trial`` takes; ``BEGIN IMMEDIATE``
on SQLite), so any number of launchers started at once enqueue each point once. A capped (TPE,
random) study is counted, not read, at the same cost whatever its size (``sweep.queue.census``:
index probes and a walk of its trials that are not COMPLETE; a count of the whole study took
221 ms at 10^6 trials for a top-up of 20 slots), and the ids of the WAITING trials to skip read.
A grid reads what covers each point (``sweep.queue.coverage``: one row per counting trial, and
the parameters of the trials whose attributes do not say what they ran): a point whose queued
trial another client took and did not train there is queued again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from sweep.queue import census, orphans
from sweep.queue import tables as tb
from sweep.queue.attrs import FIXED, SKIPPED
from sweep.queue.coverage import LIVE, chunks, counting, covering, point_key
from sweep.queue.tables import trials
from sweep.queue.transactions import writing

#: WAITING trials inserted per statement pair by ``enqueue``.
_ENQUEUED_AT_ONCE = 10_000


def top_up(
    storage: RDBStorage,
    study_id: int,
    *,
    points: Sequence[dict[str, Any]] | None = None,
    beyond: Sequence[dict[str, Any]] = (),
    cap: int | None = None,
) -> int:
    """Enqueue what the study still needs, atomically; return its total (the progress target).

    A grid study passes its ``points`` under the cap, in the order to run them, and the grid
    points ``beyond`` it: each point no counting trial covers is enqueued, and a WAITING trial
    for a point beyond the cap, or a second one for a point, is skipped (trials for other
    points, enqueued by hand, are left alone). A TPE/random study passes ``cap``: empty slots
    are enqueued up to it, and the newest WAITING slots beyond it are skipped.
    """
    with writing(storage.engine, lock=study_id) as conn:
        if points is not None:
            _top_up_grid(conn, study_id, points, beyond)
            return len(points)
        assert cap is not None, "a TPE or random study has a trial cap"
        total, counted = _census(conn, study_id)
        skipped = 0
        if counted > cap:  # the newest WAITING slots beyond the cap
            surplus = conn.execute(
                sqlalchemy.select(trials.c.trial_id)
                .where(trials.c.study_id == study_id, trials.c.state == TrialState.WAITING)
                .order_by(trials.c.trial_id.desc())
                .limit(counted - cap)
            ).scalars().all()  # fmt: skip
            skipped = _skip(conn, surplus, f"beyond the trial cap of {cap}")
        enqueue(conn, study_id, [{}] * (cap - counted), base=total)
        return max(cap, counted - skipped)


def _top_up_grid(
    conn: Any, study_id: int, points: Sequence[dict[str, Any]], beyond: Sequence[dict[str, Any]]
) -> None:
    """``top_up`` of a grid, under the study lock: what covers each point is read
    (``sweep.queue.coverage``: one narrow row per counting trial). A point no trial covers is
    enqueued, one that another client took from the queue and ran at other parameters too."""
    keys = [point_key(p) for p in points]  # once: a grid of 10^5 points spends its time here
    wanted = set(keys)
    capped = {point_key(p) for p in beyond}
    covers = covering(conn, study_id)
    covered = {c.key for c in covers if c.done}  # a point done needs no queued trial
    beyond_cap, twice = [], []
    for c in covers:
        if c.waiting and c.key in capped:
            beyond_cap.append(c.trial_id)
        elif c.waiting and c.key in wanted and c.key in covered:
            twice.append(c.trial_id)
        covered.add(c.key)
    _skip(conn, beyond_cap, f"not in the grid's first {len(points)} points (the trial cap)")
    _skip(conn, twice, "its grid point is covered by another trial")
    enqueue(conn, study_id, [p for p, k in zip(points, keys, strict=True) if k not in covered])


def _census(conn: Any, study_id: int) -> tuple[int, int]:
    """(trials in the study, those that count), at the same cost whatever the study's size:
    its trials by state (``census.by_state``: index probes, and a walk of those not COMPLETE)
    and a lookup of the reason of its FAIL ones (``coverage.counting``: a FAIL trial counts
    only if it failed for a reason of its own)."""
    states = census.by_state(conn, study_id)
    failed_for_good = conn.execute(
        sqlalchemy.select(sqlalchemy.func.count())
        .where(trials.c.study_id == study_id, trials.c.state == TrialState.FAIL, counting())
    ).scalar_one()  # fmt: skip
    live = sum(states.get(state.name, 0) for state in LIVE)
    return sum(states.values()), live + failed_for_good


def enqueue(
    conn: Any,
    study_id: int,
    fixed: Sequence[dict[str, Any]],
    extra: Sequence[dict[str, Any]] | None = None,
    *,
    base: int | None = None,
) -> None:
    """Insert WAITING trials with these fixed parameters (and ``extra`` system attributes),
    numbered as optuna numbers them (``base``: the trials before them in the study, counted if
    not given); the caller holds the study lock, without which two enqueues could count the
    same trials and give two trials one number."""
    if not fixed:
        return
    orphans.clear(conn)  # a deleted study's rows, which the new trials' ids would meet
    if base is None:
        base = sum(census.by_state(conn, study_id).values())
    insert = trials.insert().returning(trials.c.trial_id, sort_by_parameter_order=True)
    extra = extra or [{}] * len(fixed)
    # in slices, so that the rows of a cap of 10^7 slots are never all in memory at once
    for start in range(0, len(fixed), _ENQUEUED_AT_ONCE):
        end = min(start + _ENQUEUED_AT_ONCE, len(fixed))
        rows = [
            {"study_id": study_id, "number": base + i, "state": TrialState.WAITING,
             "datetime_start": None, "datetime_complete": None}
            for i in range(start, end)
        ]  # fmt: skip
        ids = conn.execute(insert, rows).scalars().all()
        attrs = []
        for trial_id, params, more in zip(ids, fixed[start:end], extra[start:end], strict=True):
            for key, value in {FIXED: params, **more}.items():
                attrs.append({"trial_id": trial_id, "key": key, "value_json": json.dumps(value)})
        conn.execute(tb.system_attrs.insert(), attrs)


def _skip(conn: Any, trial_ids: list[int], why: str) -> int:
    """Mark WAITING trials as not to be run (FAIL with a ``skipped`` attribute saying why);
    one claimed meanwhile is left alone. How many it marked."""
    marked = []
    for chunk in chunks(trial_ids):
        marked += (
            conn.execute(
                trials.update()
                .where(trials.c.trial_id.in_(chunk), trials.c.state == TrialState.WAITING)
                .values(state=TrialState.FAIL, datetime_complete=tb.utc_now())
                .returning(trials.c.trial_id)
            )
            .scalars()
            .all()
        )
    if marked:
        conn.execute(
            tb.user_attrs.insert(),
            [{"trial_id": t, "key": SKIPPED, "value_json": json.dumps(why)} for t in marked],
        )
    return len(marked)

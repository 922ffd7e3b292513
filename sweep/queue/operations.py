"""The study as a queue: every operation a process joining a study performs on it.

A study's WAITING trials are its queue. Whoever joins a study (``sweep run``, ``sweep worker``,
on any host) goes through these few operations, each one transaction on optuna's own tables
(``sweep.queue.tables``) and the only SQL sweep issues against them:

  - ``top_up``: enqueue each missing grid point, or empty slots up to the cap, and mark the
    WAITING trials beyond a lowered cap as skipped. It holds the study-level lock for the whole
    read-then-enqueue (the ``studies`` row ``FOR UPDATE`` on PostgreSQL, the lock optuna's own
    ``create_new_trial`` takes; ``BEGIN IMMEDIATE`` on SQLite), so any number of launchers
    started at once enqueue each point once. A capped (TPE, random) study is counted, not
    read: one count over the study and the ids of the WAITING trials to skip. A grid reads what
    covers each point (``sweep.queue.coverage``: one row per counting trial, and the parameters of
    the trials whose attributes do not say what they ran): a point whose queued trial another
    client took and did not train there is queued again.
  - ``claim``: move the oldest WAITING trial to RUNNING with its first heartbeat and the
    claimer's tags (``run``, ``worker``), atomically (``FOR UPDATE SKIP LOCKED`` on
    PostgreSQL); the heartbeat goes first, which is what the queue's guard (``sweep.queue.guard``)
    lets through and optuna's own ``ask()`` never does.
  - ``release``: a trial whose worker failed (not the trial: its data, memory or storage went,
    or it was interrupted) goes back to WAITING as it was enqueued, in one transaction;
    ``release_run`` does so for every RUNNING trial of an interrupted launcher's run. It keeps
    the parameters it ran with (as fixed ones) and turns its ``checkpoint`` into ``resume_from``.
  - ``recover``: a trial that a sweep worker claimed and whose heartbeat stopped for longer
    than the grace period is failed and its replacement enqueued in the same transaction, with
    optuna's ``retry_history``, under the study lock; after ``max_retries`` deaths it stays
    FAIL with a ``fail_reason``. The replacement runs the orphan's parameters (fixed) and
    resumes from its last ``checkpoint`` (``resume_from``), so a killed trial loses only what
    it trained since (``sweep.trial.checkpoint``'s spacing: an epoch, more where epochs are cheap).
    Trials without sweep's tags (another optuna client's) are never touched.
    ``abandon_run`` does the same at once for a run whose processes died.
  - ``pending``, ``tally`` and ``grid_done``: what a launcher still waits for (it leaves only
    when nothing WAITING or RUNNING is left that it could take), its progress, and how many
    points of its grid are done, read-only, no lock.

Every read of the queue names a study and a state and goes through sweep's index on
``(study_id, state, trial_id)`` (``sweep.queue.tables.QUEUE_INDEX``, which ``sweep.queue.storage``
creates), so a claim, ``pending`` and ``recover`` cost the same in a study of 10^5 finished
trials as in one of 10^3 (their plans are pinned in ``tests/sweep/test_queue_scale.py``).
The counts of ``top_up`` and ``tally`` still pass over the study's index entries once.

Each claim is fenced by its start time: a write-back or release names the claim it belongs to,
so a worker that was cut off while its trial was recovered and claimed again can never write
into the new claim.

Longer than our usual 400 lines on purpose: every statement that changes the queue lives here,
so that its locking can be read in one place.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from sweep.queue import orphans
from sweep.queue import tables as tb
from sweep.queue.attrs import (  # the names sweep writes, re-exported: ``queue.RUN_TAG`` etc.
    CHECKPOINT,
    FAIL_REASON,
    FAILED_TRIAL,
    FIXED,
    RETRY_HISTORY,
    RUN_TAG,
    SKIPPED,
    SPEC,
    WORKER_TAG,
    attr,
)
from sweep.queue.coverage import (
    chunks,
    counting,
    covering,
    done_points,
    has_reason,
    keyed,
    point_key,
    stored_params,
)
from sweep.queue.tables import RESUME_FROM, RESUMED_FROM, trials
from sweep.queue.transactions import reading, writing


def study_exists(storage: RDBStorage, study_id: int) -> bool:
    """Whether the study is still there (another client may delete it), read only."""
    query = sqlalchemy.select(tb.studies.c.study_id).where(tb.studies.c.study_id == study_id)
    with reading(storage.engine) as conn:
        return conn.execute(query).first() is not None


def _locking(storage: RDBStorage) -> bool:
    return storage.engine.name != "sqlite"


# -- claim and release ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Claim:
    """A trial moved to RUNNING by one worker; ``started`` (naive UTC) fences it."""

    trial_id: int
    number: int
    started: datetime


def claim(storage: RDBStorage, study_id: int, tags: dict[str, Any]) -> Claim | None:
    """Move the study's oldest WAITING trial that resumes a checkpoint, else its oldest WAITING
    trial, to RUNNING, with its first heartbeat and ``tags`` (which must name the ``run`` and
    the ``worker``) as user attributes, in one transaction; None if nothing waits. A claimed
    trial's ``resume_from`` becomes ``resumed_from``."""
    assert RUN_TAG in tags and WORKER_TAG in tags, "recovery finds sweep's claims by their tags"
    locking, sql = _locking(storage), tb.SQL
    with writing(storage.engine) as conn:
        if locking:  # FOR UPDATE SKIP LOCKED: one statement each
            row = conn.execute(sql.resumable_waiting_locked, {"sid": study_id}).first()
            if row is None:
                row = conn.execute(sql.oldest_waiting_locked, {"sid": study_id}).first()
            resumes = True  # (see below)
        else:
            row = conn.execute(sql.next_waiting, {"sid": study_id}).first()
            resumes = row is not None and bool(row[2])
        if row is None:
            return None
        trial_id, number = row[0], row[1]
        started = tb.utc_now()
        # The heartbeat first: the queue's guard (``sweep.queue.guard``) lets a WAITING trial of a
        # sweep study become RUNNING only once it has one, which optuna's own pop never has.
        conn.execute(tb.heartbeats.insert(), {"trial_id": trial_id})
        conn.execute(sql.start, {"tid": trial_id, "started": started})
        # On SQLite the transaction holds the database: the oldest trial, if not the resumable
        # one, resumes nothing. On PostgreSQL each statement sees what was committed before
        # it, so the second may find a trial released back to the queue in between: rename.
        if resumes:
            conn.execute(sql.resumed, {"tid": trial_id})
        tb.replace_attrs(conn, tb.user_attrs, trial_id, {k: json.dumps(v) for k, v in tags.items()})
    return Claim(trial_id, number, started)


def release(storage: RDBStorage, trial_id: int, started: datetime | None = None) -> bool:
    """Put a RUNNING trial back in the queue: WAITING, with its fixed parameters (those it ran
    with, if none were fixed), its retry history, its checkpoint as ``resume_from`` and the
    names of its artifacts, and nothing else (its values, curves, heartbeat and every user
    attribute go, an enqueuer's included). With ``started``, only that claim of it. False if it
    was no longer RUNNING."""
    with writing(storage.engine) as conn:
        return _release(conn, trial_id, started)


def _release(conn: Any, trial_id: int, started: datetime | None) -> bool:
    where = tb.held_by(trial_id, started)
    number = conn.execute(
        trials.update()
        .where(*where)
        .values(state=TrialState.WAITING, datetime_start=None, datetime_complete=None)
        .returning(trials.c.number)
    ).scalar()
    if number is None:
        return False
    work = _handover(conn, trial_id, number)
    kept = {RESUME_FROM: work.resume_from}
    if work.fixed or work.had_fixed:
        kept[FIXED] = work.fixed
    for table in (tb.params, tb.values, tb.steps, tb.heartbeats, tb.user_attrs):
        conn.execute(table.delete().where(table.c.trial_id == trial_id))
    system = tb.system_attrs
    conn.execute(  # the names of its artifacts stay: the trial's end deletes those files
        system.delete().where(
            system.c.trial_id == trial_id,
            system.c.key.not_in([FAILED_TRIAL, RETRY_HISTORY]),
            sqlalchemy.not_(system.c.key.startswith(tb.ARTIFACT_PREFIX, autoescape=True)),
        )
    )
    rows = [
        {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
        for key, value in kept.items()
        if value is not None
    ]
    if rows:
        conn.execute(system.insert(), rows)
    return True


@dataclasses.dataclass(frozen=True)
class _Work:
    """What a trial's successor takes over: its parameters and where its training stands."""

    fixed: dict[str, Any]  # the fixed parameters, with those it ran with where none were fixed
    had_fixed: bool  # it was enqueued with fixed parameters (a grid point, or a user's)
    history: list[int]  # optuna's ``retry_history``: its failed predecessors' numbers
    resume_from: dict[str, Any] | None  # see ``_resume_point``


def _handover(conn: Any, trial_id: int, number: int) -> _Work:
    """The work of trial ``number``, read in the transaction that just took it from its claim.

    Read after that fenced update, never before: on PostgreSQL (READ COMMITTED) a statement
    that waited for the trial's row sees the rows committed meanwhile only if it starts after
    the wait, so a checkpoint pointer read together with the row lock could be the one the
    worker replaced (and deleted) while we waited, and the successor would retrain from
    epoch 1. Once the update holds the row, the worker's write-backs fail on the fence: the
    pointer read here is its last one.
    """
    system = tb.system_attrs
    keys = [FIXED, CHECKPOINT, RESUMED_FROM, RETRY_HISTORY]
    work = dict(
        conn.execute(
            sqlalchemy.select(system.c.key, system.c.value_json).where(
                system.c.trial_id == trial_id, system.c.key.in_(keys)
            )
        ).all()
    )
    ran = stored_params(conn, [trial_id]).get(trial_id, {})
    return _Work(
        fixed=_fixed(work.get(FIXED), ran),
        had_fixed=FIXED in work,
        history=_history(work.get(RETRY_HISTORY)),
        resume_from=_resume_point(number, work.get(CHECKPOINT), work.get(RESUMED_FROM)),
    )


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


# -- top-up ----------------------------------------------------------------------------------


def why_failed(user_attrs: dict[str, Any]) -> str:
    """Why a FAIL trial failed, in a few words, from attributes any client may have written."""
    if FAIL_REASON in user_attrs:
        return str(user_attrs[FAIL_REASON])
    if SKIPPED in user_attrs:
        return f"skipped: {user_attrs[SKIPPED]}"
    return "worker lost (rerun as another trial)"


def _census(conn: Any, study_id: int) -> tuple[int, int]:
    """(trials in the study, those that count), counted in the database: one pass over the
    study's entries in the queue index, and a lookup of the reason of its FAIL trials."""
    counts = sqlalchemy.func.count(sqlalchemy.case((counting(), 1)))  # NULL otherwise
    query = sqlalchemy.select(sqlalchemy.func.count(), counts).where(trials.c.study_id == study_id)
    return tuple(conn.execute(query).one())


def _enqueue(
    conn: Any,
    study_id: int,
    fixed: Sequence[dict[str, Any]],
    extra: Sequence[dict[str, Any]] | None = None,
    *,
    base: int | None = None,
) -> None:
    """Insert WAITING trials with these fixed parameters, numbered as optuna numbers them
    (``base``: the trials before them in the study, counted if not given); the caller holds
    the study lock."""
    if not fixed:
        return
    orphans.clear(conn)  # a deleted study's rows, which the new trials' ids would meet
    if base is None:
        count = sqlalchemy.select(sqlalchemy.func.count()).where(trials.c.study_id == study_id)
        base = conn.execute(count.select_from(trials)).scalar_one()
    rows = [
        {"study_id": study_id, "number": base + i, "state": TrialState.WAITING,
         "datetime_start": None, "datetime_complete": None}
        for i in range(len(fixed))
    ]  # fmt: skip
    insert = trials.insert().returning(trials.c.trial_id, sort_by_parameter_order=True)
    ids = conn.execute(insert, rows).scalars().all()
    attrs = []
    for trial_id, params, more in zip(ids, fixed, extra or [{}] * len(fixed), strict=True):
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
        _enqueue(conn, study_id, [{}] * (cap - counted), base=total)
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
    _enqueue(conn, study_id, [p for p, k in zip(points, keys, strict=True) if k not in covered])


# -- recovery --------------------------------------------------------------------------------


def _fixed(fixed_json: str | None, ran: dict[str, Any]) -> dict[str, Any]:
    """The parameters a trial's successor runs: its fixed ones, over those it ran with (a
    TPE/random slot has none fixed: its sampler chose them), so that every ``suggest_*`` of
    the successor returns what the trial's did and its checkpoint fits the same network."""
    return {**ran, **attr(fixed_json, dict, {})}


#: What an artifact id read from the database may look like (optuna's are uuid4 strings): a
#: name, never a path (a checkpoint named ``../../x`` must never be read or deleted).
ARTIFACT_ID = re.compile(r"[0-9A-Za-z_-][0-9A-Za-z_.-]{0,127}")


def pointer(value: Any) -> dict[str, Any] | None:
    """An attribute that names an artifact (``checkpoint``, ``resume_from``,
    ``resumed_from``, the study's ``best_model``), decoded, as far as it is well formed
    (another client may have written anything): a dict whose ``artifact_id`` is a plain
    name; None if not."""
    if not isinstance(value, dict):
        return None
    artifact = value.get("artifact_id")
    return value if isinstance(artifact, str) and ARTIFACT_ID.fullmatch(artifact) else None


def _pointer(text: str | None) -> dict[str, Any] | None:
    """A ``checkpoint`` or ``resume_from`` attribute as stored (JSON text), as far as it is well
    formed: an artifact pointer with an epoch >= 1 (None if not), with its ``trial``."""
    value = pointer(attr(text, dict, {}))
    if value is None or type(value.get("epoch")) is not int or value["epoch"] < 1:
        return None
    return {
        "artifact_id": value["artifact_id"],
        "epoch": value["epoch"],
        "trial": value.get("trial"),
    }


def _resume_point(
    number: int, checkpoint_json: str | None, resume_json: str | None
) -> dict[str, Any] | None:
    """Where the work of trial ``number`` resumes: its own ``checkpoint``, else the
    ``resume_from`` it was given and had not yet replaced by a checkpoint (its artifact is
    still there); None if neither is well formed. Another client may have written either."""
    own, given = _pointer(checkpoint_json), _pointer(resume_json)
    if given is not None and not (type(given["trial"]) is int and given["trial"] >= 0):
        given = None
    if own is not None and given is not None and own["artifact_id"] == given["artifact_id"]:
        return given  # it resumed and names what it was given: that trial's work, not its own
    if own is not None:
        return {**own, "trial": number}
    return given


def _history(text: str | None) -> list[int]:
    """A trial's ``retry_history`` (optuna's: the numbers of its failed predecessors)."""
    past = attr(text, list, [])
    return past if all(type(n) is int for n in past) else []


def _orphans(conn: Any, study_id: int, joins: Any, *where: Any) -> list[Any]:
    """(trial id, number, claim start, worker tag) of the study's RUNNING sweep-claimed trials
    that ``joins`` and ``where`` select; their rows locked on PostgreSQL until the transaction
    ends. What a successor takes over is read later, by ``_handover``."""
    tag, on_tag = keyed(tb.user_attrs, WORKER_TAG, "tag")
    return conn.execute(
        sqlalchemy.select(
            trials.c.trial_id, trials.c.number, trials.c.datetime_start, tag.c.value_json
        )
        .select_from(joins(trials.join(tag, on_tag)))
        .where(trials.c.study_id == study_id, trials.c.state == TrialState.RUNNING, *where)
        .order_by(trials.c.trial_id)
        .with_for_update(of=trials)
    ).all()  # fmt: skip


def _fail_and_requeue(
    conn: Any, study_id: int, orphans: list[Any], *, max_retries: int, why: str
) -> list[int]:
    """Fail each orphan whose claim still holds it and enqueue its replacement (its fixed
    parameters, else those it ran with, optuna's ``failed_trial`` and ``retry_history``, and
    its last checkpoint as ``resume_from``), unless its workers have died ``max_retries``
    times; the numbers of the trials failed."""
    failed, fixed, extras = [], [], []
    for trial_id, number, started, worker_json in orphans:
        update = conn.execute(
            trials.update()
            .where(*tb.held_by(trial_id, started))
            .values(state=TrialState.FAIL, datetime_complete=tb.utc_now())
        )
        if update.rowcount != 1:  # finished or released meanwhile: not an orphan after all
            continue
        failed.append(number)
        work = _handover(conn, trial_id, number)
        past = work.history
        attrs = {"lost": why.format(worker=attr(worker_json, str, "?"))}
        if len(past) + 1 >= max_retries:
            attrs[FAIL_REASON] = f"worker died {len(past) + 1} times"
        else:
            extra = {FAILED_TRIAL: past[0] if past else number, RETRY_HISTORY: [*past, number]}
            if work.resume_from is not None:
                extra[RESUME_FROM] = work.resume_from
            fixed.append(work.fixed)
            extras.append(extra)
        tb.replace_attrs(
            conn, tb.user_attrs, trial_id, {k: json.dumps(v) for k, v in attrs.items()}
        )
    _enqueue(conn, study_id, fixed, extras)
    return failed


def recover(storage: RDBStorage, study_id: int, *, grace: float, max_retries: int) -> list[int]:
    """Fail the sweep-claimed RUNNING trials whose heartbeat is older than ``grace`` seconds
    and enqueue each one's replacement in the same transaction; return the failed numbers.

    Heartbeats are compared with the database's clock, as optuna's own stale-trial check
    does, so hosts' clocks need not agree. A trial whose workers died ``max_retries`` times
    is not requeued: it ends FAIL with ``fail_reason = "worker died N times"``.
    """
    h = tb.heartbeats
    with writing(storage.engine, lock=study_id) as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        cutoff = now.replace(tzinfo=None) - timedelta(seconds=grace)
        orphans = _orphans(
            conn, study_id, lambda j: j.join(h, h.c.trial_id == trials.c.trial_id),
            h.c.heartbeat < cutoff,
        )  # fmt: skip
        why = "worker {worker} silent for more than " + f"{grace:g} s"
        return _fail_and_requeue(conn, study_id, orphans, max_retries=max_retries, why=why)


def _of_run(run_id: str) -> tuple[Any, Any]:
    """A join to the run tag, and the condition that it names ``run_id``."""
    run, on_run = keyed(tb.user_attrs, RUN_TAG, "run")
    return (lambda j: j.join(run, on_run)), run.c.value_json == json.dumps(run_id)


def abandon_run(storage: RDBStorage, study_id: int, run_id: str, *, max_retries: int) -> list[int]:
    """A launcher whose worker processes died (the OOM killer; loky then ends the others too)
    fails and requeues its run's RUNNING trials, each counted as a death as ``recover``
    would count it, at once rather than after the grace period."""
    joins, names_run = _of_run(run_id)
    with writing(storage.engine, lock=study_id) as conn:
        orphans = _orphans(conn, study_id, joins, names_run)
        why = "worker {worker} died with its run's processes"
        return _fail_and_requeue(conn, study_id, orphans, max_retries=max_retries, why=why)


def release_run(storage: RDBStorage, study_id: int, run_id: str) -> int:
    """Put every RUNNING trial of run ``run_id`` back in the queue (the launcher was
    interrupted); a trial another run has claimed since is not touched. How many it put back."""
    joins, names_run = _of_run(run_id)
    with writing(storage.engine) as conn:
        orphans = _orphans(conn, study_id, joins, names_run)
        return sum(_release(conn, trial_id, started) for trial_id, _, started, _ in orphans)


# -- what is left -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Running:
    """A RUNNING trial a sweep worker claimed."""

    number: int
    run: str  # the claiming launcher's run id
    worker: str  # host:pid
    silent: float  # seconds since its last heartbeat, by the database's clock


@dataclasses.dataclass(frozen=True)
class Pending:
    """What a launcher may still have to wait for."""

    waiting: int
    running: tuple[Running, ...]  # claimed by sweep workers, anywhere

    @property
    def empty(self) -> bool:
        """Nothing left that a sweep worker could take, now or after a recovery."""
        return not self.waiting and not self.running


def tally(storage: RDBStorage, study_id: int, *, grid: bool = False) -> tuple[int, float | None]:
    """(finished trials that count, the best finite value) of a maximised study, in one
    read-only transaction. A ``grid`` counts the trials its points were trained in only as
    far as a sweep worker ran them (its tags), so that another client's trials in the study
    are never counted as points: a lower bound while it runs, ``grid_done`` says exactly."""
    v = tb.values
    trained = trials.c.state.in_([TrialState.COMPLETE, TrialState.PRUNED])
    if grid:
        attrs = tb.user_attrs
        tagged = sqlalchemy.exists().where(
            attrs.c.trial_id == trials.c.trial_id, attrs.c.key == RUN_TAG
        )
        trained = sqlalchemy.and_(trained, tagged.correlate(trials))
    counted = sqlalchemy.or_(
        trained, sqlalchemy.and_(trials.c.state == TrialState.FAIL, has_reason())
    )
    done = sqlalchemy.select(sqlalchemy.func.count()).where(trials.c.study_id == study_id, counted)
    best = (
        sqlalchemy.select(sqlalchemy.func.max(v.c.value))
        .select_from(trials.join(v, v.c.trial_id == trials.c.trial_id))
        .where(
            trials.c.study_id == study_id,
            trials.c.state == TrialState.COMPLETE,
            v.c.objective == 0,
            v.c.value_type == tb.FINITE,
        )
    )
    with reading(storage.engine) as conn:
        return conn.execute(done).scalar_one(), conn.execute(best).scalar()


def grid_done(storage: RDBStorage, study_id: int, points: Sequence[dict[str, Any]]) -> int:
    """How many of the grid's ``points`` a finished trial covers (``sweep.queue.coverage``), read
    only: what a launcher's last line and its exit code say."""
    with reading(storage.engine) as conn:
        return done_points(conn, study_id, points)


def pending(storage: RDBStorage, study_id: int) -> Pending:
    """The study's WAITING count and its RUNNING trials, sweep's with their heartbeats."""
    run, on_run = keyed(tb.user_attrs, RUN_TAG, "run")
    worker, on_worker = keyed(tb.user_attrs, WORKER_TAG, "worker")
    h = tb.heartbeats
    query = (
        sqlalchemy.select(trials.c.number, trials.c.state, run.c.value_json,
                          worker.c.value_json, h.c.heartbeat)
        .select_from(
            trials.outerjoin(run, on_run).outerjoin(worker, on_worker)
            .outerjoin(h, h.c.trial_id == trials.c.trial_id)
        )
        .where(
            trials.c.study_id == study_id,
            trials.c.state.in_([TrialState.WAITING, TrialState.RUNNING]),
        )
    )  # fmt: skip
    with reading(storage.engine) as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        rows = conn.execute(query).all()
    now = now.replace(tzinfo=None)
    waiting, running = 0, []
    for number, state, run_json, worker_json, beat in rows:
        if state == TrialState.WAITING:
            waiting += 1
        elif None not in (run_json, worker_json, beat):  # else another client's: not waited for
            silent = max(0.0, (now - beat).total_seconds())
            running.append(
                Running(number, attr(run_json, str, "?"), attr(worker_json, str, "?"), silent)
            )
    return Pending(waiting, tuple(sorted(running, key=lambda r: r.number)))

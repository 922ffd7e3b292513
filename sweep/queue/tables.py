"""optuna's RDB tables as sweep writes them: the statements, and the check that they still fit.

Depends on optuna 5's schema, read from its SQLAlchemy models (``optuna.storages._rdb.models``,
private API): the tables ``studies``, ``trials``, ``trial_heartbeats``, ``trial_params``,
``trial_values``, ``trial_intermediate_values``, ``trial_user_attributes`` and
``trial_system_attributes``, the columns named in ``COLUMNS``, and the models' own value
encoders (``TrialValueModel.value_to_stored_repr`` and its intermediate-value twin). optuna
has kept them since 3.0. ``moved_schema()`` checks the columns when any command opens a study
database (``sweep.queue.storage``): where one moved, sweep refuses to start, in one line, rather
than write half of a trial through its own statements and half through optuna's API.
``tests/sweep/test_writeback.py`` checks every field written here against what optuna itself
reads back, datetimes included.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import sqlalchemy
from optuna import distributions
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from optuna.version import __version__ as optuna_version

from sweep.queue.attrs import RESUME_FROM, RESUMED_FROM

studies = models.StudyModel.__table__
trials = models.TrialModel.__table__
heartbeats = models.TrialHeartbeatModel.__table__
params = models.TrialParamModel.__table__
values = models.TrialValueModel.__table__
steps = models.TrialIntermediateValueModel.__table__
user_attrs = models.TrialUserAttributeModel.__table__
system_attrs = models.TrialSystemAttributeModel.__table__
study_system_attrs = models.StudySystemAttributeModel.__table__
study_user_attrs = models.StudyUserAttributeModel.__table__
directions = models.StudyDirectionModel.__table__
FINITE = models.TrialValueModel.TrialValueType.FINITE  # trial_values.value_type of a number

#: A study's trials by state, oldest first. Every
#: read of the queue names a study and a state (the claim's oldest WAITING trial, the WAITING
#: and RUNNING ones of ``pending`` and ``recover``, the FAIL ones whose reason a count needs),
#: and optuna's own index on ``study_id`` alone made each of them walk past every finished
#: trial of the study, inside the write lock: claim + finish took 1.9 ms with 10^3 finished
#: trials and 24.8 ms with 10^5 on SQLite (PostgreSQL 12 and 32 ms); with this index 1.6 ms
#: (PostgreSQL 8.6 ms) at 10^5, as at 10^3. ``sweep.queue.storage`` creates it when it opens a
#: database for writing.
#: Declared on a copy of the table, so that optuna's own metadata (its ``create_all``) is not
#: changed; optuna's alembic migrations neither know nor mind it (``optuna storage upgrade``
#: still finds the schema current, tested).
_copy = trials.to_metadata(sqlalchemy.MetaData())
QUEUE_INDEX = sqlalchemy.Index(
    "ix_sweep_trials_queue", _copy.c.study_id, _copy.c.state, _copy.c.trial_id
)
#: The best values first (``best_first``), for the bounded TPE sampler (``sweep.study.sampler``)
#: and ``sweep status``: a study's best trials are read by walking this index from the best end,
#: where TPE read every value of the study on every ask (27 ms at 5·10^4 trials; 1.4 ms for all
#: its lookups with the index).
_values_copy = values.to_metadata(sqlalchemy.MetaData())
VALUE_INDEX = sqlalchemy.Index(
    "ix_sweep_values_best", _values_copy.c.value_type, _values_copy.c.value
)
#: The WAITING trials that resume a checkpoint (their ``resume_from``), claimed before any other
#: (``sweep.queue.claims``): a checkpoint waiting in the queue is a file on disk, so the queue
#: hands it on at once rather than after everything queued before it. Partial, so it holds only the
#: attributes of such trials (a claim renames the attribute): a claim finds the next one, or that
#: there is none, in one index probe however large the study.
_attrs_copy = system_attrs.to_metadata(sqlalchemy.MetaData())
_is_resume = _attrs_copy.c.key == sqlalchemy.literal_column(f"'{RESUME_FROM}'")
RESUME_INDEX = sqlalchemy.Index(
    "ix_sweep_resumable", _attrs_copy.c.trial_id, sqlite_where=_is_resume,
    postgresql_where=_is_resume,
)  # fmt: skip
#: sweep's additions to optuna's schema, made by ``sweep.queue.storage`` when it opens for writing.
INDEXES = (QUEUE_INDEX, VALUE_INDEX, RESUME_INDEX)

_VALUE = models.TrialValueModel.TrialValueType


def best_first(study_id: Any, *, maximize: bool) -> list[sqlalchemy.Select]:
    """The study's COMPLETE trials (trial id, number, stored value) by their objective 0, best
    first, as three statements, each walking ``VALUE_INDEX`` from its best end and stopping at
    the limit its caller sets: the infinitely good values (+inf maximised, -inf minimised:
    rare), then the finite ones, then the infinitely bad. Within each, equals by trial id, so
    the first row of the first statement that has one is optuna's ``best_trial`` (the first
    of equals). A finite value only where it is a number: SQLite keeps NaN as NULL and text
    (which SQL may write) above every number, PostgreSQL sorts NaN above every number; a
    value type optuna does not know is in none of them.

    ``sweep status`` reads its best trial so (it read every value of the study: 450 ms at 10^6
    trials on SQLite, 630 ms on PostgreSQL); TPE's view walks it its own way (``queue.view``).

    Note: the walk passes the values of other studies (and objectives, and trials no longer
    COMPLETE) that are better; a database of many studies costs what their better values do.
    """
    good, bad = (_VALUE.INF_POS, _VALUE.INF_NEG) if maximize else (_VALUE.INF_NEG, _VALUE.INF_POS)
    # ``study_id + 0`` keeps SQLite's planner (which has no statistics) from walking the study's
    # COMPLETE trials through the queue's index instead, every one of them (0.65 s at 10^6
    # trials for the infinite values, which are rare): the walk starts from the values' index.
    of_study = trials.c.study_id + sqlalchemy.literal_column("0") == study_id
    complete = (
        sqlalchemy.select(trials.c.trial_id, trials.c.number, values.c.value)
        .select_from(values.join(trials, trials.c.trial_id == values.c.trial_id))
        .where(of_study, trials.c.state == TrialState.COMPLETE, values.c.objective == 0)
    )
    number = values.c.value.between(-sys.float_info.max, sys.float_info.max)
    by_value = values.c.value.desc() if maximize else values.c.value.asc()
    return [
        complete.where(values.c.value_type == good).order_by(trials.c.trial_id),
        complete.where(values.c.value_type == _VALUE.FINITE, number).order_by(
            by_value, trials.c.trial_id
        ),
        complete.where(values.c.value_type == bad).order_by(trials.c.trial_id),
    ]


#: Every column sweep reads or writes directly, by table.
COLUMNS: dict[str, tuple[str, ...]] = {
    "studies": ("study_id", "study_name"),
    "study_directions": ("study_id", "direction", "objective"),
    "trials": ("trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"),
    "trial_heartbeats": ("trial_id", "heartbeat"),
    "trial_params": ("trial_id", "param_name", "param_value", "distribution_json", "param_id"),
    "trial_values": ("trial_id", "objective", "value", "value_type"),
    "trial_intermediate_values": (
        "trial_id", "step", "intermediate_value", "intermediate_value_type",
    ),
    "trial_user_attributes": ("trial_id", "key", "value_json"),
    "trial_system_attributes": ("trial_id", "key", "value_json"),
    "study_system_attributes": ("study_id", "key", "value_json"),
    "study_user_attributes": ("study_id", "key", "value_json"),
}  # fmt: skip


#: The optuna releases (major.minor) this code was tested with: the lock's (``make test``) and
#: those ``make test-newest`` passed on. pyproject.toml's upper bound is the release after the
#: last; ``tests/test_versions.py`` keeps the three in step.
TESTED_OPTUNA = ("5.0", "5.1")


def untested_optuna(version: str | None = None) -> str | None:
    """One line if optuna ``version`` (the installed one) is not a release sweep was tested
    with, else None: sweep writes optuna's tables itself, so a new release may change what a
    worker must write even when every column is still there (``conforms``)."""
    version = version or optuna_version
    if ".".join(version.split(".")[:2]) in TESTED_OPTUNA:
        return None
    return (
        f"optuna {version} is not a release sweep was tested with ({', '.join(TESTED_OPTUNA)}); "
        "results may be stored wrongly: install a tested one, or run `make test-newest` first"
    )


def moved_schema() -> str | None:
    """None if the installed optuna's models still have every table and column sweep reads or
    writes (``COLUMNS``); else one line saying which is missing and what to install."""
    tables = models.BaseModel.metadata.tables
    for name, columns in COLUMNS.items():
        table = tables.get(name)
        missing = f"no table {name!r}" if table is None else None
        if table is not None and (gone := [c for c in columns if c not in table.c]):
            missing = f"a table {name!r} without the column {gone[0]!r}"
        if missing:
            return (
                f"optuna {optuna_version} has {missing}: sweep reads and writes optuna's tables "
                f"itself, as optuna {', '.join(TESTED_OPTUNA)} lay them out; install one of those"
            )
    return None


def utc_now() -> datetime:
    """optuna (5.x) stores trial times as naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def held_by(trial_id: Any, started: Any) -> tuple[Any, ...]:
    """The condition that the claim of ``trial_id`` that started at ``started`` still holds it:
    RUNNING since then (any claim, with ``started`` None). A claim is fenced by its start, so
    a worker that lost its trial never writes into a later claim of it."""
    held = (trials.c.trial_id == trial_id, trials.c.state == TrialState.RUNNING)
    return held if started is None else (*held, trials.c.datetime_start == started)


def _prepared() -> SimpleNamespace:
    """The statements of the hot path, built once (building them per call cost a third of
    a claim); ``tid`` and ``sid`` bind the trial and the study id."""
    tid = sqlalchemy.bindparam("tid")
    # A claim is fenced by its start time: a write names the claim it belongs to.
    running = held_by(tid, sqlalchemy.bindparam("fence", type_=trials.c.datetime_start.type))
    oldest_waiting = (
        sqlalchemy.select(trials.c.trial_id, trials.c.number)
        .where(
            trials.c.study_id == sqlalchemy.bindparam("sid"),
            trials.c.state == TrialState.WAITING,
        )
        .order_by(trials.c.trial_id)
        .limit(1)
    )
    # The literal (not a bound parameter) lets SQLite match the partial index's condition,
    # and ``study_id + 0`` keeps its planner from walking the study's WAITING trials through
    # the queue's index instead (all of a big grid's): the join starts from the partial index.
    resume = system_attrs.c.key == sqlalchemy.literal_column(f"'{RESUME_FROM}'")
    resumable_waiting = (
        sqlalchemy.select(trials.c.trial_id, trials.c.number)
        .select_from(system_attrs.join(trials, trials.c.trial_id == system_attrs.c.trial_id))
        .where(
            resume,
            trials.c.study_id + sqlalchemy.literal_column("0") == sqlalchemy.bindparam("sid"),
            trials.c.state == TrialState.WAITING,
        )
        .order_by(system_attrs.c.trial_id)
        .limit(1)
    )
    keys = sqlalchemy.bindparam("keys", expanding=True)
    reads = [
        ("params", params, ("param_name", "param_value", "distribution_json", "param_id")),
        ("steps", steps, ("step", "intermediate_value", "intermediate_value_type")),
        ("user", user_attrs, ("key", "value_json")),
        ("system", system_attrs, ("key", "value_json")),
    ]
    keyed = [(params, "param_name"), (steps, "step"), (user_attrs, "key"), (system_attrs, "key")]
    return SimpleNamespace(
        # The claim's pair, on every database: SKIP LOCKED on PostgreSQL, where claims run side
        # by side; SQLite has no row locks (SQLAlchemy drops the clause), and its claim holds
        # the whole database (BEGIN IMMEDIATE).
        resumable_waiting=resumable_waiting.with_for_update(of=trials, skip_locked=True),
        oldest_waiting=oldest_waiting.with_for_update(skip_locked=True),
        resumed=system_attrs.update()
        .where(system_attrs.c.trial_id == tid, resume)
        .values(key=RESUMED_FROM),
        start=trials.update()
        .where(trials.c.trial_id == tid)
        .values(state=TrialState.RUNNING, datetime_start=sqlalchemy.bindparam("started")),
        # A write-back's fence and row lock: no SET of ``state``, so the queue's guard never fires.
        touch=trials.update().where(*running).values(number=trials.c.number),
        end=trials.update()
        .where(*running)
        .values(
            state=sqlalchemy.bindparam("new_state", type_=trials.c.state.type),
            datetime_complete=sqlalchemy.bindparam("done"),
        ),
        read={
            name: sqlalchemy.select(*(table.c[c] for c in columns)).where(table.c.trial_id == tid)
            for name, table, columns in reads
        },
        delete={
            table: table.delete().where(table.c.trial_id == tid, table.c[column].in_(keys))
            for table, column in keyed
        },
    )


SQL = _prepared()


def replace_attrs(conn: Any, table: Any, trial_id: int, attrs: dict[str, str]) -> None:
    """Upsert JSON-encoded ``attrs`` as delete + insert: the same two statements on every
    database."""
    if not attrs:
        return
    conn.execute(SQL.delete[table], {"tid": trial_id, "keys": list(attrs)})
    conn.execute(
        table.insert(),
        [{"trial_id": trial_id, "key": k, "value_json": v} for k, v in attrs.items()],
    )


def read_claimed(conn: Any, trial_id: int, number: int, started_utc: datetime) -> FrozenTrial:
    """The claimed trial as optuna would read it: an enqueued trial may carry fixed
    parameters and attributes (and, made by ``add_trial``, anything else)."""

    def rows(name: str) -> list[Any]:
        return conn.execute(SQL.read[name], {"tid": trial_id}).all()

    stored = rows("params")
    dists = {
        name: distributions.json_to_distribution(text)
        for name, _, text, _ in sorted(stored, key=lambda r: r[3])
    }
    return FrozenTrial(
        number=number,
        state=TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=started_utc.replace(tzinfo=UTC).astimezone().replace(tzinfo=None),
        datetime_complete=None,
        params={name: dists[name].to_external_repr(value) for name, value, _, _ in stored},
        distributions=dists,
        user_attrs={k: json.loads(v) for k, v in rows("user")},
        system_attrs={k: json.loads(v) for k, v in rows("system")},
        intermediate_values={
            step: models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, kind)
            for step, value, kind in rows("steps")
        },
        trial_id=trial_id,
    )


class TrialGone(Exception):
    """The trial is no longer RUNNING (failed as stale or released by someone else)."""


def transition(conn: Any, trial_id: int, started: datetime, state: TrialState | None) -> None:
    """First statement of a write-back: move the trial to ``state`` (or leave it RUNNING),
    which also locks its row on PostgreSQL; raise TrialGone, writing nothing, if the claim
    that started at ``started`` no longer holds it (failed as stale, released, claimed anew)."""
    key = {"tid": trial_id, "fence": started}
    if state is None:
        update = conn.execute(SQL.touch, key)
    else:
        update = conn.execute(SQL.end, {**key, "new_state": state, "done": utc_now()})
    if update.rowcount != 1:
        raise TrialGone(trial_id)


def beat(conn: Any, trial_id: int, started: datetime) -> bool:
    """Record the heartbeat of the claim of ``trial_id`` that started at ``started``, by the
    database's clock as optuna does; False, recording nothing, if that claim has ended."""
    held = sqlalchemy.exists().where(*held_by(trial_id, started))
    update = conn.execute(
        heartbeats.update()
        .where(heartbeats.c.trial_id == trial_id, held)
        .values(heartbeat=sqlalchemy.func.now())
    )
    return update.rowcount == 1


def trial_exists(conn: Any, trial_id: int) -> bool:
    """Whether the trial's row is there (another client may delete its study)."""
    query = sqlalchemy.select(trials.c.trial_id).where(trials.c.trial_id == trial_id)
    return conn.execute(query).first() is not None


def has_study_system_attr(conn: Any, study_id: int, key: str) -> bool:
    """Whether the study carries system attribute ``key`` (one indexed read)."""
    attrs = study_system_attrs
    query = sqlalchemy.select(attrs.c.key).where(attrs.c.study_id == study_id, attrs.c.key == key)
    return conn.execute(query).first() is not None


def first_distribution(conn: Any, study_id: int, name: str) -> str | None:
    """The JSON distribution of parameter ``name`` in any trial of the study, or None."""
    query = (
        sqlalchemy.select(params.c.distribution_json)
        .join(trials, trials.c.trial_id == params.c.trial_id)
        .where(trials.c.study_id == study_id, params.c.param_name == name)
        .limit(1)
    )
    return conn.execute(query).scalar()


def write(
    conn: Any,
    trial_id: int,
    *,
    new_params: dict[str, tuple[float, distributions.BaseDistribution]],
    new_steps: dict[int, float],
    user: dict[str, str],
    system: dict[str, str],
) -> None:
    """A trial's pending writes, as one statement or two per table."""
    if new_params:  # delete first: a retried write-back must not trip the unique key
        conn.execute(SQL.delete[params], {"tid": trial_id, "keys": list(new_params)})
        conn.execute(
            params.insert(),
            [
                {"trial_id": trial_id, "param_name": name, "param_value": value,
                 "distribution_json": distributions.distribution_to_json(dist)}
                for name, (value, dist) in new_params.items()
            ],
        )  # fmt: skip
    replace_attrs(conn, user_attrs, trial_id, user)
    replace_attrs(conn, system_attrs, trial_id, system)
    if new_steps:
        conn.execute(SQL.delete[steps], {"tid": trial_id, "keys": list(new_steps)})
        rows = []
        for step, value in new_steps.items():
            stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(
                value
            )
            rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored,
                         "intermediate_value_type": kind})  # fmt: skip
        conn.execute(steps.insert(), rows)


def insert_values(conn: Any, trial_id: int, objective_values: Sequence[float]) -> None:
    """The objective values; a RUNNING trial has none yet (optuna sets them only when it
    finishes a trial)."""
    rows = []
    for objective, value in enumerate(objective_values):
        stored, kind = models.TrialValueModel.value_to_stored_repr(float(value))
        rows.append(
            {"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind}
        )
    conn.execute(values.insert(), rows)

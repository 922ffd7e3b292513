"""What ``sweep status`` and the table at the end of ``sweep run`` read: every study's name,
directions, spec, trial counts by state and best trial (or, for a study of several objectives,
its complete trials' values, from which ``sweep.report.front`` finds the front), and the first
trials of one study as that table lists them.

Aggregate statements on optuna's tables (``sweep.queue.tables``), never trial by trial.
``sweep status`` used to load every trial of every study through optuna: 13 s at 10⁴ trials,
minutes at 10⁵ (on PostgreSQL, on a busy host, long enough to outlive the read-only connection's
60-second idle-in-transaction limit and fail). ``studies`` is now a handful of statements
whatever the studies' size (the counts and the best value by index probes and walks,
``sweep.queue.census`` and ``tables.best_first``: a few ms at 10⁶ trials, where the
grouped counts took 100 ms and the best value 450 ms on SQLite, #27), and
``first_listed`` picks the trials a table shows in one ordered, limited statement. Each runs in
one read-only transaction (``sweep.queue.transactions.reading``).

Everything read is someone else's data (any optuna client, or SQL, may have written it): a state
or direction name outside optuna's is read as text, a value type outside optuna's is no value,
and the spec, metric names and the best trial's parameters go through the queue's decoders of
stored values (``sweep.queue.attrs``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from types import SimpleNamespace
from typing import Any

import sqlalchemy
from optuna.study import StudyDirection
from optuna.trial import TrialState

from sweep.queue import census
from sweep.queue import tables as tb
from sweep.queue.attrs import MAX_HOST, SKIPPED, SPEC, WORKER_TAG, attr, decoded, tag_host
from sweep.queue.coverage import stored_params
from sweep.queue.tables import trials
from sweep.queue.transactions import reading

#: The study system attribute where optuna keeps ``Study.metric_names``.
_METRIC_NAMES = "study:metric_names"
_TYPE = tb.values.c.value_type
_VALUE_TYPES = type(tb.FINITE)  # optuna's TrialValueType: FINITE, INF_POS, INF_NEG
#: What the reads take: an engine on the study database (a report never names sqlalchemy).
Engine = sqlalchemy.engine.Engine


@dataclasses.dataclass(frozen=True)
class Best:
    """A study's best trial, as much of it as its line in ``sweep status`` shows."""

    number: int
    value: float  # objective 0; ±inf when optuna stored an infinite value
    params: dict[str, Any]  # as optuna shows them (``attrs.stored_param``), in their order


@dataclasses.dataclass(frozen=True)
class StudyRow:
    """One study as ``studies`` reads it: plain values, none of them trusted yet."""

    study_id: int
    name: str
    directions: list[StudyDirection]  # NOT_SET for a name optuna does not know; [] if none
    user_attrs: dict[str, Any]  # the stored spec alone, if the study has one (any JSON)
    metric_names: list[Any] | None  # optuna's metric names, if stored as a list
    states: list[tuple[str, int]]  # trials by state as stored (any name SQL wrote), any order
    skipped: int  # FAIL trials marked ``SKIPPED`` (counted among the FAIL ones in ``states``)
    best: Best | None  # the best COMPLETE trial of a single-objective study
    #: the COMPLETE trials of a study of several objectives with a number for each objective,
    #: by number; empty for a single-objective study
    valued: list[Valued] = dataclasses.field(default_factory=list)
    #: the hosts whose sweep workers hold most of its RUNNING trials now (``HOSTS_SHOWN`` at
    #: most), each with how many, the busiest first (by the workers' tags, ``host:pid``, as
    #: stored: any text, ``attrs.tag_host``)
    running_by_host: dict[str, int] = dataclasses.field(default_factory=dict)
    #: its RUNNING trials held by sweep workers on other hosts than those
    running_elsewhere: int = 0


@dataclasses.dataclass(frozen=True)
class Valued:
    """A COMPLETE trial's values, one per objective: all a front is computed from."""

    trial_id: int
    number: int
    values: tuple[float, ...]  # ±inf as optuna stores them; never NaN or text

    state = TrialState.COMPLETE  # read as optuna's trials are, by ``sweep.report.front``


def studies(engine: Engine) -> list[StudyRow]:
    """Every study in the database (``engine``: ``sweep.queue.storage.open_reader``, or an optuna
    storage's), in creation order, read in one transaction: five statements, plus six or so
    per study (its counts by index probes, its running trials' hosts by the RUNNING range of the
    queue's index, its best by a walk of the values' index from the
    best end: none grows with the study), plus one for the values of every multi-objective
    study's complete trials (there is no best trial to pick in SQL: the front needs them all).

    Note: that last one does grow with a study of several objectives (every COMPLETE trial's
    values, to find the front from)."""
    with reading(engine) as conn:
        found = _studies(conn)
        states, skipped, best, hosts = {}, {}, {}, {}
        for study_id, _, directions, _, _ in found:
            states[study_id], skipped[study_id] = _counts(conn, study_id)
            hosts[study_id] = _hosts(conn, study_id)
            if len(directions) == 1:  # optuna has no best trial of several objectives
                row = _best(conn, study_id, maximize=directions[0] != StudyDirection.MINIMIZE)
                if row is not None:
                    best[study_id] = row
        params = stored_params(conn, [row[0] for row in best.values()])
        several = {study_id: len(d) for study_id, _, d, _, _ in found if len(d) > 1}
        valued = _valued(conn, several) if several else {}
    out = []
    for study_id, name, directions, user_attrs, metric_names in found:
        shown = None
        if study_id in best:
            trial_id, number, rank, value = best[study_id]
            value = float(value) if rank == 0 else math.copysign(math.inf, rank)
            shown = Best(number, value, params.get(trial_id, {}))
        out.append(StudyRow(study_id, name, directions, user_attrs, metric_names,
                            states.get(study_id, []), skipped.get(study_id, 0), shown,
                            valued.get(study_id, []), *hosts[study_id]))  # fmt: skip
    return out


def complete_values(engine: Engine, study_id: int, objectives: int) -> list[Valued]:
    """The values of the study's COMPLETE trials (``objectives`` of them each), by number, in
    one statement: what every front is found from (``sweep.queue.front``: the table at the end
    of ``sweep run``, the progress line, the models kept, the trial export picks)."""
    with reading(engine) as conn:
        return _valued(conn, {study_id: objectives}).get(study_id, [])


def _valued(conn: sqlalchemy.Connection, objectives: dict[int, int]) -> dict[int, list[Valued]]:
    """The COMPLETE trials of these studies (id: its number of objectives) with a number for
    every objective, each study's by trial number: one statement. A value optuna does not
    store (NaN, text, a type SQL invented) or a missing objective leaves the trial out, as a
    trial the front cannot place."""
    v = tb.values
    kind = sqlalchemy.type_coerce(_TYPE, sqlalchemy.String)  # an unknown name is not a number
    rows = conn.execute(
        sqlalchemy.select(trials.c.study_id, trials.c.trial_id, trials.c.number,
                          v.c.objective, v.c.value, kind)
        .select_from(trials.join(v, v.c.trial_id == trials.c.trial_id))
        .where(trials.c.study_id.in_(list(objectives)), trials.c.state == TrialState.COMPLETE)
        .order_by(trials.c.study_id, trials.c.number, trials.c.trial_id, v.c.objective)
    )  # fmt: skip
    found: dict[tuple[int, int, int], dict[int, float | None]] = {}
    for study_id, trial_id, number, objective, value, type_name in rows:
        found.setdefault((study_id, trial_id, number), {})[objective] = _number(value, type_name)
    out: dict[int, list[Valued]] = {}
    for (study_id, trial_id, number), values in found.items():
        row = [values.get(i) for i in range(objectives[study_id])]
        if len(values) == len(row) and None not in row:
            out.setdefault(study_id, []).append(Valued(trial_id, number, tuple(row)))  # type: ignore[arg-type]
    return out


def unreadable(engine: Engine, study_id: int) -> int:
    """How many of the study's trials optuna's own reading of trials fails on: a value it
    cannot decode (its decoder asserts: a finite one stored as NULL, as SQLite keeps a NaN; an
    infinite one stored with a number; a type it does not know), or objectives that are not
    0, 1, … without a gap (it indexes a list by them). The report of a study of several
    objectives reads its trials through optuna, so it counts them first (one statement)."""
    v = tb.values
    # compared as optuna's enum (PostgreSQL has no operator for its enum against text); a name
    # SQL wrote into SQLite matches neither, so it counts
    readable = sqlalchemy.or_(
        sqlalchemy.and_(_TYPE == _VALUE_TYPES.FINITE, v.c.value.is_not(None)),
        sqlalchemy.and_(_TYPE.in_([_VALUE_TYPES.INF_POS, _VALUE_TYPES.INF_NEG]),
                        v.c.value.is_(None)),
    )  # fmt: skip
    bad = (
        sqlalchemy.select(v.c.trial_id)
        .select_from(trials.join(v, v.c.trial_id == trials.c.trial_id))
        .where(trials.c.study_id == study_id)
        .group_by(v.c.trial_id)
        .having(sqlalchemy.or_(
            sqlalchemy.func.max(v.c.objective) >= sqlalchemy.func.count(),
            sqlalchemy.func.sum(sqlalchemy.case((readable, 0), else_=1)) > 0,
        ))
    ).subquery()  # fmt: skip
    with reading(engine) as conn:
        return conn.execute(
            sqlalchemy.select(sqlalchemy.func.count()).select_from(bad)
        ).scalar_one()


def _number(value: Any, type_name: str) -> float | None:
    """A stored objective value as optuna decodes it (±inf by its type), None for anything
    that is no number (NaN, text, an unknown type)."""
    if type_name == _VALUE_TYPES.INF_POS.name:
        return math.inf
    if type_name == _VALUE_TYPES.INF_NEG.name:
        return -math.inf
    if type_name != _VALUE_TYPES.FINITE.name or isinstance(value, bool):
        return None
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _rank() -> Any:
    """A value's type as a number that orders it: -inf < finite < +inf; NULL if unknown."""
    return sqlalchemy.case(
        (_TYPE == _VALUE_TYPES.INF_NEG, -1), (_TYPE == _VALUE_TYPES.FINITE, 0),
        (_TYPE == _VALUE_TYPES.INF_POS, 1),
    )  # fmt: skip


def _finite() -> Any:
    """The stored value of a finite one, 0 for an infinite one (optuna stores NULL there)."""
    return sqlalchemy.case((_TYPE == _VALUE_TYPES.FINITE, tb.values.c.value), else_=0.0)


def _studies(conn: sqlalchemy.Connection) -> list[tuple[int, str, list, dict, list | None]]:
    """(id, name, directions, spec attribute, metric names) of every study, in creation order:
    four statements in all."""
    names = conn.execute(
        sqlalchemy.select(tb.studies.c.study_id, tb.studies.c.study_name)
        .order_by(tb.studies.c.study_id)
    ).all()  # fmt: skip
    directions: dict[int, list[StudyDirection]] = {}
    for study_id, name in conn.execute(
        sqlalchemy.select(tb.directions.c.study_id,
                          sqlalchemy.type_coerce(tb.directions.c.direction, sqlalchemy.String))
        .order_by(tb.directions.c.study_id, tb.directions.c.objective)
    ):  # fmt: skip
        # read as text: an unknown name (written by SQL) would fail SQLAlchemy's Enum
        directions.setdefault(study_id, []).append(
            StudyDirection[name] if name in StudyDirection.__members__ else StudyDirection.NOT_SET
        )
    attrs = {}
    for table, key in [(tb.study_user_attrs, SPEC), (tb.study_system_attrs, _METRIC_NAMES)]:
        rows = conn.execute(
            sqlalchemy.select(table.c.study_id, table.c.value_json).where(table.c.key == key)
        )
        attrs[key] = {study_id: text for study_id, text in rows}
    out = []
    for study_id, name in names:
        spec = {SPEC: decoded(attrs[SPEC][study_id])} if study_id in attrs[SPEC] else {}
        metric_names = attr(attrs[_METRIC_NAMES].get(study_id), list, None)
        out.append((study_id, name, directions.get(study_id, []), spec, metric_names))
    return out


def _counts(conn: sqlalchemy.Connection, study_id: int) -> tuple[list[tuple[str, int]], int]:
    """The study's trials by stored state name (``census.by_state``: index probes and a walk of
    its trials that are not COMPLETE), and its FAIL ones marked skipped (a walk of those)."""
    marked = conn.execute(_prepared().skipped, {"sid": study_id}).scalar_one()
    return list(census.by_state(conn, study_id).items()), marked


#: Hosts ``sweep status`` shows per study (the busiest); the rest are counted together.
HOSTS_SHOWN = 20
#: Workers (distinct tags) read per study, the busiest first, and the characters of each tag
#: read: a host of ``MAX_HOST`` characters, each escaped in JSON (``\\uXXXX``), and a pid. The
#: database groups and counts the RUNNING trials (10⁶ of them are 10⁶ rows it reads, never
#: rows sent), so that what comes back is bounded whatever another client stored.
TAGS_READ, TAG_CHARS = 1000, 6 * MAX_HOST + 32


def _hosts(conn: sqlalchemy.Connection, study_id: int) -> tuple[dict[str, int], int]:
    """The hosts of the sweep workers that hold the study's RUNNING trials, the busiest
    ``HOSTS_SHOWN`` with how many each holds, and how many the others hold: the RUNNING range
    of the queue's index and each trial's worker tag by optuna's unique (trial_id, key) index,
    grouped by tag in SQL (``TAGS_READ`` tags at most, with the total). A trial without a tag
    is another client's, not counted; a tag is read by ``attrs.tag_host`` (one cut short at
    ``TAG_CHARS`` is not JSON: '?')."""
    by_host: dict[str, int] = {}
    rows = conn.execute(_prepared().running, {"sid": study_id}).all()
    for text, n, _ in rows:
        host = tag_host(decoded(text))
        by_host[host] = by_host.get(host, 0) + n
    total = rows[0][2] if rows else 0
    busiest = sorted(by_host.items(), key=lambda kv: (-kv[1], kv[0]))[:HOSTS_SHOWN]
    return dict(busiest), int(total or 0) - sum(n for _, n in busiest)


def _best(conn: sqlalchemy.Connection, study_id: int, *, maximize: bool) -> Any:
    """(trial id, number, rank, value) of the study's best COMPLETE trial, the first of equals,
    as optuna's ``best_trial`` (rank -1, 0, 1: -inf, a number, +inf); None if none has a value.
    A walk of the best values' index (``tables.best_first``) from its best end, stopped at the
    first: ``sweep status`` costs the same at 10^6 trials as at 10^3."""
    good, bad = (1, -1) if maximize else (-1, 1)
    for rank, query in zip((good, 0, bad), _prepared().best[maximize], strict=True):
        row = conn.execute(query, {"sid": study_id}).first()
        if row is not None:
            trial_id, number, value = row
            return trial_id, number, rank, value if rank == 0 else 0.0
    return None


@functools.cache
def _prepared() -> SimpleNamespace:
    """The statements read once per study, built once (``sid``: the study): building them
    anew for each study was most of the time of ``sweep status`` on a database of 200."""
    sid = sqlalchemy.bindparam("sid")
    skipped = tb.user_attrs.alias("skipped")
    tag = tb.user_attrs.alias("worker")
    text, held = sqlalchemy.func.substr(tag.c.value_json, 1, TAG_CHARS), sqlalchemy.func.count()
    return SimpleNamespace(
        running=sqlalchemy.select(text, held, sqlalchemy.func.sum(held).over())
        .select_from(trials.join(tag, sqlalchemy.and_(
            tag.c.trial_id == trials.c.trial_id, tag.c.key == WORKER_TAG)))
        .where(trials.c.study_id == sid, trials.c.state == TrialState.RUNNING)
        .group_by(text).order_by(held.desc(), text).limit(TAGS_READ),
        skipped=sqlalchemy.select(sqlalchemy.func.count())
        .select_from(trials.join(skipped, sqlalchemy.and_(
            skipped.c.trial_id == trials.c.trial_id, skipped.c.key == SKIPPED)))
        .where(trials.c.study_id == sid, trials.c.state == TrialState.FAIL),
        best={maximize: [q.limit(1) for q in tb.best_first(sid, maximize=maximize)]
              for maximize in (False, True)},
    )  # fmt: skip


def first_listed(
    engine: Engine, study_id: int, *, order: dict[TrialState, int],
    maximize: bool, limit: int,
) -> tuple[list[int], int]:  # fmt: skip
    """The ids of the study's first ``limit`` trials (not the queued ones) as a table lists
    them, and how many more there are: by ``order`` of their state (any other state last), a
    trial without a value first within its state, then the best value, then by number. One
    ordered, limited statement and one count."""
    v = tb.values
    listed = sqlalchemy.and_(trials.c.study_id == study_id, trials.c.state != TrialState.WAITING)
    state = sqlalchemy.case(*((trials.c.state == s, n) for s, n in order.items()), else_=len(order))
    rank, finite = _rank(), _finite()
    missing = sqlalchemy.case((v.c.trial_id.is_(None), 0),
                              (sqlalchemy.and_(_TYPE == _VALUE_TYPES.FINITE,
                                               v.c.value.is_(None)), 0), else_=1)  # fmt: skip
    by_value = (rank.desc(), finite.desc()) if maximize else (rank.asc(), finite.asc())
    query = (
        sqlalchemy.select(trials.c.trial_id)
        .select_from(trials.outerjoin(v, sqlalchemy.and_(v.c.trial_id == trials.c.trial_id,
                                                         v.c.objective == 0)))
        .where(listed)
        .order_by(state, missing, *by_value, trials.c.number)
        .limit(limit)
    )  # fmt: skip
    with reading(engine) as conn:
        ids = list(conn.execute(query).scalars().all())
        total = conn.execute(sqlalchemy.select(sqlalchemy.func.count()).where(listed)
                             .select_from(trials)).scalar_one()  # fmt: skip
    return ids, total - len(ids)

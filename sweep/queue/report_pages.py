"""A large study's trials as its report reads them: a page at a time, never all at once.

``sweep.queue.report_reads.read`` holds every trial as a record: 5.2 GB and 91 s for a report
of 10⁶ trials on SQLite (6.0 GB, 128 s on PostgreSQL, issue 27). A study of more than
``sweep.report.digest.LARGE`` finished trials is read here instead: one unordered statement
whose rows come ``PAGE`` at a time (a server-side cursor on PostgreSQL, SQLite's stepping
cursor), each row carrying its trial's parameters and attributes by joins (``_pivot``; a study
of more than ``MAX_JOINED`` parameter names has each page's read by trial id,
``report_reads.fill``); the report folds each page into its columns and stages its rows of
``trials.csv`` (``sweep.report.large``), then orders them. A few hundred trials are read whole
by id (``records``): the best, the sampled curves, the importance sample.

Everything read stays untrusted and decoded as ``report_reads`` decodes it. The pages are one
read-only transaction (``sweep.queue.transactions.reading``); the parameter names, the pages
and the trials read whole are three (on PostgreSQL's READ COMMITTED a parameter first stored
during a report may be missing from its ``trials.csv``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import TrialState

from sweep.queue import tables as tb
from sweep.queue.attrs import FAIL_REASON, SKIPPED, stored_param
from sweep.queue.report_reads import (
    ABSENT,
    ATTRS,
    MAX_VALUE_CHARS,
    Record,
    decoded,
    fill,
    warn_too_long,
)
from sweep.queue.transactions import reading

#: Trials per page: what a page holds is its records with their parameters and a few short
#: attributes (a series keeps its last value, ``fill``'s ``kept``), well under 100 MB.
PAGE = 2_000
#: The most parameter names ``pages`` joins into its one statement: SQLite joins at most 64
#: tables, and the statement joins two for the trial and one for each of ``ATTRS`` besides.
MAX_JOINED = 40
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _listed(study_id: int) -> Any:
    t = tb.trials
    return sqlalchemy.and_(t.c.study_id == study_id, t.c.state != TrialState.WAITING)


def finished_count(engine: sqlalchemy.engine.Engine, study_id: int) -> int:
    """How many of the study's trials are complete, pruned or failed (``digest.is_large``)."""
    t = tb.trials
    query = sqlalchemy.select(sqlalchemy.func.count()).where(
        t.c.study_id == study_id, t.c.state.in_(_FINISHED)
    )
    with reading(engine) as conn:
        return int(conn.execute(query).scalar_one())


def listed_count(engine: sqlalchemy.engine.Engine, study_id: int) -> int:
    """How many trials the study has, the queued ones aside."""
    query = sqlalchemy.select(sqlalchemy.func.count()).where(_listed(study_id))
    with reading(engine) as conn:
        return int(conn.execute(query).scalar_one())


def param_names(engine: sqlalchemy.engine.Engine, study_id: int) -> list[str]:
    """Every parameter name of the study's trials (not the queued ones) in order of first
    appearance, by trial number then the trial's own order, as ``shown.param_names`` finds
    them among records: a parameter stored badly (``stored_param``) does not count. One
    grouped statement, then each name's first row; a name whose first row is bad is looked
    for further, row by row."""
    t, p = tb.trials, tb.params
    rows = (
        sqlalchemy.select(t.c.number, p.c.param_id, p.c.param_value, p.c.distribution_json)
        .join(t, t.c.trial_id == p.c.trial_id)
        .where(_listed(study_id))
    )
    firsts = (
        sqlalchemy.select(p.c.param_name, sqlalchemy.func.min(t.c.number))
        .join(t, t.c.trial_id == p.c.trial_id)
        .where(_listed(study_id))
        .group_by(p.c.param_name)
    )
    found: list[tuple[int, int, str]] = []
    with reading(engine) as conn:
        for name, first in conn.execute(firsts).all():
            named = rows.where(p.c.param_name == name)
            at = conn.execute(named.where(t.c.number == first)).all()
            if not any(stored_param(v, d) is not None for *_, v, d in at):
                at = conn.execute(named.order_by(t.c.number).execution_options(yield_per=PAGE))
            for number, param_id, value, text in at:
                if stored_param(value, text) is not None:
                    found.append((number, param_id, name))
                    break
    return [name for *_, name in sorted(found)]


def _head() -> sqlalchemy.Select:
    t, v = tb.trials, tb.values
    return sqlalchemy.select(
        t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start, t.c.datetime_complete,
        v.c.value, v.c.value_type,
    ).select_from(t.outerjoin(v, sqlalchemy.and_(v.c.trial_id == t.c.trial_id,
                                                 v.c.objective == 0)))  # fmt: skip


def _record(row: Sequence[Any]) -> Record:
    tid, number, state, start, done, value, kind = row
    decode = models.TrialValueModel.stored_repr_to_value
    return Record(tid, number, state, None if kind is None else decode(value, kind), start, done)


def _pivot(names: Sequence[str]) -> tuple[sqlalchemy.Select, int]:
    """One row per trial carrying what ``fill`` reads in three statements: each parameter of
    ``names`` (its number and distribution), each of ``ATTRS`` (its length and its text where
    short enough) and a pruned trial's last step, by outer joins on optuna's unique
    (trial_id, param_name) and (trial_id, key), for the trials of a range of ids (bound
    ``low`` and ``high``). Returns the statement and where its parameters' columns start
    (after the trial id)."""
    t, s = tb.trials, tb.steps
    joined, columns = t, [t.c.trial_id]
    start = len(columns)
    for i, name in enumerate(names):
        p = tb.params.alias(f"p{i}")
        joined = joined.outerjoin(p, sqlalchemy.and_(p.c.trial_id == t.c.trial_id,
                                                     p.c.param_name == name))  # fmt: skip
        columns += [p.c.param_value, p.c.distribution_json]
    for i, key in enumerate(JOINED):
        u = tb.user_attrs.alias(f"u{i}")
        joined = joined.outerjoin(u, sqlalchemy.and_(u.c.trial_id == t.c.trial_id,
                                                     u.c.key == key))  # fmt: skip
        size = sqlalchemy.func.length(u.c.value_json)
        columns += [size, sqlalchemy.case((size <= MAX_VALUE_CHARS, u.c.value_json))]
    last = (
        sqlalchemy.select(sqlalchemy.func.max(s.c.step))
        .where(s.c.trial_id == t.c.trial_id)
        .scalar_subquery()
    )
    columns.append(sqlalchemy.case((t.c.state == TrialState.PRUNED, last)))
    within = t.c.trial_id.between(sqlalchemy.bindparam("low"), sqlalchemy.bindparam("high"))
    return sqlalchemy.select(*columns).select_from(joined).where(within), start


#: A range of trial ids, ``[low, high)``; None: unbounded (``bounds``).
Span = tuple[int | None, int | None]


def bounds(engine: sqlalchemy.engine.Engine, study_id: int, parts: int, total: int) -> list[Span]:
    """Ranges of trial ids, ``[low, high)`` (None: unbounded), that split the study's ``total``
    trials (not the queued ones: ``listed_count``, which the caller has already read) into
    ``parts`` of about equal counts, for ``pages`` to read apart; fewer where the study has
    fewer trials than ``parts``."""
    t = tb.trials
    ids = sqlalchemy.select(t.c.trial_id).where(_listed(study_id)).order_by(t.c.trial_id)
    cuts: list[int] = []
    with reading(engine) as conn:
        for k in range(1, parts):
            cut = conn.execute(ids.offset(k * total // parts).limit(1)).scalar_one_or_none()
            if cut is not None and (not cuts or cut > cuts[-1]):
                cuts.append(cut)
    edges: list[int | None] = [None, *cuts, None]
    return list(itertools.pairwise(edges))


def pages(
    engine: sqlalchemy.engine.Engine, study_id: int, names: Sequence[str], *,
    kept: Callable[[str, Any], Any] | None = None, span: Span = (None, None),
    too_long: list[tuple[int, str]],
) -> Iterator[list[Record]]:  # fmt: skip
    """The study's trials (not the queued ones) whose ids lie in ``span``, by id, ``PAGE``
    records at a time, each with its parameters (``names``: every one the study's trials
    hold, ``param_names``), ``ATTRS`` (through ``kept``) and last step, without learning
    curves, decoded as ``fill`` decodes them; one read-only transaction for all of them. The
    attributes left unread for their length are added to ``too_long`` (``warn_too_long``).

    Each page is its trials' heads, then one statement for the range of ids they span
    (``_pivot``): one statement of joins over the whole study made PostgreSQL scan each
    joined table once per join, and sorting it in SQL cost a quarter of a report's time on
    SQLite (issue 27); the reader orders trials itself (``sweep.report.columns``)."""
    t = tb.trials
    low, high = span
    heads = _head().where(_listed(study_id)).order_by(t.c.trial_id)
    if low is not None:
        heads = heads.where(t.c.trial_id >= low)
    if high is not None:
        heads = heads.where(t.c.trial_id < high)
    joined = len(names) <= MAX_JOINED  # else more joins than SQLite takes: filled by id
    query, start = _pivot(names) if joined else (None, 0)
    if query is not None:
        query = query.where(_listed(study_id))
    ends = start + 2 * len(names)
    with reading(engine) as conn:
        rows = conn.execute(heads.execution_options(yield_per=PAGE))
        for part in rows.partitions(PAGE):
            page = {row[0]: _record(row) for row in part}
            if not joined:
                too_long += fill(conn, page, kept=kept)
                yield list(page.values())
                continue
            span_of = {"low": part[0][0], "high": part[-1][0]}
            for row in conn.execute(query, span_of).all():
                record = page.get(row[0])
                if record is None:  # another study's trial, or a queued one, in the range
                    continue
                for name, value, text in zip(names, row[start:ends:2], row[start + 1 : ends : 2],
                                             strict=True):  # fmt: skip
                    if text is not None and (param := stored_param(value, text)) is not None:
                        record.params[name], record.distributions[name] = param
                for key, chars, text in zip(JOINED, row[ends:-1:2], row[ends + 1 : -1 : 2],
                                            strict=True):  # fmt: skip
                    if chars is not None:
                        _attr(record, key, chars, text, kept, too_long)
                record.last_step = row[-1]
            ended = [i for i, r in page.items() if r.state in (TrialState.PRUNED, TrialState.FAIL)]
            if ended:
                for tid, key, chars, text in conn.execute(_ENDED_QUERY, {"ids": ended}):
                    _attr(page[tid], key, chars, text, kept, too_long)
            yield list(page.values())


#: The attributes only a pruned or failed trial's report reads (why it ended): read for those
#: trials of a page alone, not joined for each trial (three joins of thirteen, issue 27). So one
#: too long on a complete or running trial (another client's) is not read, nor counted in the
#: warning about attributes left unread, as ``fill`` would count it.
ENDED = ("pruned_at", FAIL_REASON, SKIPPED)
JOINED = tuple(key for key in ATTRS if key not in ENDED)
_SIZE = sqlalchemy.func.length(tb.user_attrs.c.value_json)
_ENDED_QUERY = sqlalchemy.select(
    tb.user_attrs.c.trial_id, tb.user_attrs.c.key, _SIZE,
    sqlalchemy.case((_SIZE <= MAX_VALUE_CHARS, tb.user_attrs.c.value_json)),
).where(tb.user_attrs.c.trial_id.in_(sqlalchemy.bindparam("ids", expanding=True)),
        tb.user_attrs.c.key.in_(ENDED))  # fmt: skip


def _attr(
    record: Record, key: str, chars: int, text: str | None,
    kept: Callable[[str, Any], Any] | None, too_long: list[tuple[int, str]],
) -> None:  # fmt: skip
    """One attribute of ``record`` as ``fill`` decodes it: absent where it was too long to
    read (noted in ``too_long``) or is not JSON; else kept (``kept``)."""
    if text is None and chars > MAX_VALUE_CHARS:
        too_long.append((record.number, key))
    value = decoded(text)
    if value is not ABSENT:
        record.user_attrs[key] = value if kept is None else kept(key, value)


def records(engine: sqlalchemy.engine.Engine, ids: Sequence[int]) -> list[Record]:
    """These trials whole (as ``report_reads.read`` reads them), in the order of ``ids``."""
    t = tb.trials
    wanted = sqlalchemy.bindparam("ids", expanding=True)
    by_id: dict[int, Record] = {}
    with reading(engine) as conn:
        for i in range(0, len(ids), PAGE):
            chunk = {"ids": list(ids[i : i + PAGE])}
            for row in conn.execute(_head().where(t.c.trial_id.in_(wanted)), chunk):
                by_id[row[0]] = _record(row)
        warn_too_long(fill(conn, by_id))
    return [by_id[i] for i in ids if i in by_id]

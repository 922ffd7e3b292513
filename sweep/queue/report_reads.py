"""A study's trials as a report reads them: a few narrow SQL reads into plain records.

optuna's ``get_trials`` builds every trial whole (each attribute, system attribute and
intermediate value, through the ORM): 17 s of the 45 s a report of 10⁴ trials took, and most
of a 10⁵-trial report. The report needs less: each trial's state, value, parameters and the few
user attributes it shows, and learning curves only for the trials it draws. This module reads
exactly that with SQLAlchemy Core on optuna's tables (``sweep.queue.tables``), each read in one
read-only transaction (``sweep.queue.transactions.reading``), and decodes it the way optuna
does (its distributions' external values, its value encoders for ±inf and NaN).

Everything read stays untrusted: an attribute that is not JSON, or longer than
``MAX_VALUE_CHARS`` (one warning says how many), reads as absent, like one that was never
written; a parameter stored badly is left out (``sweep.queue.attrs.stored_param``); values are
optuna's decoding of what is stored (±inf and NaN included, for ``sweep.report.stored`` to judge).
A trial that finishes between two reads appears in the later one only: records are keyed by
trial id, and rows of a trial the first read did not see are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import sqlalchemy
from optuna import distributions as dists
from optuna.storages._rdb import models
from optuna.trial import TrialState

from sweep.queue import tables as tb
from sweep.queue.attrs import stored_param
from sweep.queue.transactions import reading

logger = logging.getLogger(__name__)

#: The user attributes the report shows; the others (run, worker, seed, …) are never read.
ATTRS = ("n_params", "seconds", "config", "pruned_at", "fail_reason", "skipped", "train_loss",
         "train_accuracy", "valid_loss", "valid_accuracy")  # fmt: skip
#: The longest attribute value read, in characters: a configuration or a failure is under a
#: kilobyte and a per-epoch list of 3,000 epochs under 64 KiB. A longer one (any client may
#: write one: 2,000 trials of 1 MB each took the report to 2.1 GB, issue 22) reads as absent,
#: and the database measures it without sending it.
MAX_VALUE_CHARS = 65_536
#: Trial ids per statement when reading curves (SQLite's bound-parameter limit is 32,766).
_CHUNK = 5_000


@dataclasses.dataclass
class Record:
    """One trial as the report reads it; the attribute names are ``FrozenTrial``'s, so the
    functions that order and describe trials (``sweep.report.summary.ordered``,
    ``sweep.report.stored``) take either."""

    trial_id: int
    number: int
    state: TrialState
    value: float | None  # the first objective, decoded as optuna does (±inf, NaN)
    datetime_start: datetime | None
    datetime_complete: datetime | None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # external values
    distributions: dict[str, dists.BaseDistribution] = dataclasses.field(default_factory=dict)
    user_attrs: dict[str, Any] = dataclasses.field(default_factory=dict)  # only ``ATTRS``
    intermediate_values: dict[int, float] = dataclasses.field(default_factory=dict)  # if read
    last_step: int | None = None  # a pruned trial's last reported step, read without its curve


def _in_study(table: sqlalchemy.Table, study_id: int) -> sqlalchemy.Select:
    """The rows of ``table`` (a per-trial table) whose trial is in the study and not queued."""
    t = tb.trials
    return (
        sqlalchemy.select(table)
        .join(t, t.c.trial_id == table.c.trial_id)
        .where(t.c.study_id == study_id, t.c.state != TrialState.WAITING)
    )


def read(engine: sqlalchemy.engine.Engine, study_id: int) -> list[Record]:
    """Every trial of the study except the queued (WAITING) ones, by number, with its first
    objective value, parameters and the user attributes in ``ATTRS``; no learning curves
    (``read_curves`` reads those for the trials that are drawn)."""
    t, v, p, u = tb.trials, tb.values, tb.params, tb.user_attrs
    head = (
        sqlalchemy.select(t.c.trial_id, t.c.number, t.c.state, t.c.datetime_start,
                          t.c.datetime_complete, v.c.value, v.c.value_type)
        .select_from(t.outerjoin(v, sqlalchemy.and_(v.c.trial_id == t.c.trial_id,
                                                     v.c.objective == 0)))
        .where(t.c.study_id == study_id, t.c.state != TrialState.WAITING)
        .order_by(t.c.number)
    )  # fmt: skip
    params = (
        _in_study(p, study_id)
        .with_only_columns(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json)
        .order_by(p.c.param_id)
    )  # optuna's order of a trial's parameters
    size = sqlalchemy.func.length(u.c.value_json)
    attrs = (
        _in_study(u, study_id)
        .with_only_columns(u.c.trial_id, u.c.key, size,
                           sqlalchemy.case((size <= MAX_VALUE_CHARS, u.c.value_json)))
        .where(u.c.key.in_(ATTRS))
    )  # fmt: skip
    decode = models.TrialValueModel.stored_repr_to_value
    with reading(engine) as conn:
        records = {
            tid: Record(
                tid, number, state, None if kind is None else decode(value, kind), start, done
            )
            for tid, number, state, start, done, value, kind in conn.execute(head)
        }
        for tid, name, value, text in conn.execute(params):
            record = records.get(tid)
            param = stored_param(value, text)
            if record is not None and param is not None:
                record.params[name], record.distributions[name] = param
        s = tb.steps
        last = (
            sqlalchemy.select(s.c.trial_id, sqlalchemy.func.max(s.c.step))
            .join(t, t.c.trial_id == s.c.trial_id)
            .where(t.c.study_id == study_id, t.c.state == TrialState.PRUNED)
            .group_by(s.c.trial_id)
        )
        for tid, step in conn.execute(last):
            if tid in records:
                records[tid].last_step = step
        too_long: list[tuple[int, str]] = []
        for tid, key, chars, text in conn.execute(attrs):
            record = records.get(tid)
            if record is not None and text is None and (chars or 0) > MAX_VALUE_CHARS:
                too_long.append((record.number, key))
            value = decoded(text)
            if record is not None and value is not ABSENT:
                record.user_attrs[key] = value
    warn_too_long(too_long)
    return list(records.values())


def fill(conn: sqlalchemy.Connection, by_id: dict[int, Record], *,
         kept: Callable[[str, Any], Any] | None = None) -> list[tuple[int, str]]:  # fmt: skip
    """Read the parameters, ``ATTRS`` and (of a pruned trial) last step of the records
    ``by_id`` (heads already read), by trial id in statements of at most ``_CHUNK`` ids, as
    ``read`` reads them for a whole study; ``kept(key, value)``: what a record keeps of an
    attribute (a page of a large study keeps a series' last value only). Returns the
    (number, key) of each attribute left unread for its length."""
    t, p, u, s = tb.trials, tb.params, tb.user_attrs, tb.steps
    ids = sqlalchemy.bindparam("ids", expanding=True)
    params = (
        sqlalchemy.select(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json)
        .where(p.c.trial_id.in_(ids))
        .order_by(p.c.param_id)
    )  # optuna's order of a trial's parameters
    size = sqlalchemy.func.length(u.c.value_json)
    attrs = (
        sqlalchemy.select(u.c.trial_id, u.c.key, size,
                          sqlalchemy.case((size <= MAX_VALUE_CHARS, u.c.value_json)))
        .where(u.c.trial_id.in_(ids), u.c.key.in_(ATTRS))
    )  # fmt: skip
    last = (
        sqlalchemy.select(s.c.trial_id, sqlalchemy.func.max(s.c.step))
        .join(t, t.c.trial_id == s.c.trial_id)
        .where(s.c.trial_id.in_(ids), t.c.state == TrialState.PRUNED)
        .group_by(s.c.trial_id)
    )
    too_long: list[tuple[int, str]] = []
    chunks = list(by_id)
    for i in range(0, len(chunks), _CHUNK):
        bound = {"ids": chunks[i : i + _CHUNK]}
        for tid, name, value, text in conn.execute(params, bound).all():
            param = stored_param(value, text)
            if param is not None:
                by_id[tid].params[name], by_id[tid].distributions[name] = param
        for tid, step in conn.execute(last, bound).all():
            by_id[tid].last_step = step
        for tid, key, chars, text in conn.execute(attrs, bound).all():
            record = by_id[tid]
            if text is None and (chars or 0) > MAX_VALUE_CHARS:
                too_long.append((record.number, key))
            value = decoded(text)
            if value is not ABSENT:
                record.user_attrs[key] = value if kept is None else kept(key, value)
    return too_long


def warn_too_long(too_long: list[tuple[int, str]]) -> None:
    """One warning for every attribute left unread for its length, naming the first."""
    if too_long:
        number, key = min(too_long)
        logger.warning(
            "%d trial attribute(s) longer than %s characters left unread, as if absent "
            "(the first: trial %d's %r)", len(too_long), f"{MAX_VALUE_CHARS:,}", number, key,
        )  # fmt: skip


def attribute_chars(engine: sqlalchemy.engine.Engine, study_id: int) -> int:
    """How many characters the study's trials hold in attributes (user and system), measured
    by the database: what optuna's ``get_trials`` would read whole."""
    total = 0
    with reading(engine) as conn:
        for table in (tb.user_attrs, tb.system_attrs):
            size = sqlalchemy.func.coalesce(sqlalchemy.func.sum(
                sqlalchemy.func.length(table.c.value_json)), 0)  # fmt: skip
            total += conn.execute(_in_study(table, study_id).with_only_columns(size)).scalar_one()
    return int(total)


def read_curves(engine: sqlalchemy.engine.Engine, records: Iterable[Record]) -> None:
    """Fill ``intermediate_values`` of ``records`` (only those), in statements of at most
    ``_CHUNK`` trial ids."""
    by_id = {r.trial_id: r for r in records}
    s = tb.steps
    ids = sqlalchemy.bindparam("ids", expanding=True)
    query = sqlalchemy.select(
        s.c.trial_id, s.c.step, s.c.intermediate_value, s.c.intermediate_value_type
    ).where(s.c.trial_id.in_(ids))
    decode = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
    chunks = list(by_id)
    with reading(engine) as conn:
        for i in range(0, len(chunks), _CHUNK):
            for tid, step, value, kind in conn.execute(query, {"ids": chunks[i : i + _CHUNK]}):
                by_id[tid].intermediate_values[step] = decode(value, kind)
    for record in by_id.values():  # optuna's FrozenTrial keeps its steps in order
        record.intermediate_values = dict(sorted(record.intermediate_values.items()))


def read_attr(engine: sqlalchemy.engine.Engine, records: Iterable[Record], key: str) -> None:
    """Fill ``user_attrs[key]`` of ``records`` (only those) with a user attribute outside
    ``ATTRS`` that one figure needs (the timeline's ``worker`` tag), in statements of at most
    ``_CHUNK`` trial ids; one longer than ``MAX_VALUE_CHARS`` or not JSON reads as absent."""
    by_id = {r.trial_id: r for r in records}
    u = tb.user_attrs
    ids = sqlalchemy.bindparam("ids", expanding=True)
    size = sqlalchemy.func.length(u.c.value_json)
    query = sqlalchemy.select(
        u.c.trial_id, sqlalchemy.case((size <= MAX_VALUE_CHARS, u.c.value_json))
    ).where(u.c.trial_id.in_(ids), u.c.key == key)
    chunks = list(by_id)
    with reading(engine) as conn:
        for i in range(0, len(chunks), _CHUNK):
            for tid, text in conn.execute(query, {"ids": chunks[i : i + _CHUNK]}):
                value = decoded(text) if text is not None else ABSENT
                if value is not ABSENT:
                    by_id[tid].user_attrs[key] = value


ABSENT = object()


def decoded(text: Any) -> Any:
    """Stored JSON, or ``ABSENT`` where it is not JSON (another client wrote raw text).

    ``json.loads``'s own scanner first, on the whole text: a report of 10⁶ trials decodes 7·10⁶
    short attributes, and ``loads``'s layers in Python (type checks, whitespace regexes) cost
    more than the scan (issue 27). A text the scanner reads to its end from its first character
    is one ``loads`` reads alike (no whitespace or byte-order mark to skip); any other goes
    through ``loads`` itself, which decides."""
    try:
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except Exception:  # StopIteration, a decode error, a RecursionError, a TypeError...
        pass  # ``loads`` below decides, exactly as it always did
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return ABSENT


_scan = json.JSONDecoder().scan_once  # ``json.loads``'s own decoder's scanner (C)

"""A study database at a glance: every study's state counts and best trial, and one study's
trials as an aligned text table.

Light on purpose (optuna, no matplotlib), so that ``sweep status`` answers at once; the report
(``sweep.report.writer``) orders its tables the same way, from here.

Both read with a few aggregate statements on optuna's tables (``sweep.queue.tables``), never trial
by trial. ``sweep status`` used to load every trial of every study through optuna: 13 s at
10⁴ trials, minutes at 10⁵ (on PostgreSQL, on a busy host, long enough to outlive the
read-only connection's 60-second idle-in-transaction limit and fail). The counts, the best
value and its trial's parameters are now a handful of statements whatever the study's size
(under 0.1 s at 10⁵ trials on SQLite and PostgreSQL), and the table at the end of ``sweep run``
reads only the trials it shows. The command's start-up is kept to what it reads with: no
training code, boto3 or alembic (``sweep.queue.storage.open_reader``, tests/sweep/test_startup.py);
at 10⁵ trials on PostgreSQL it took 0.65 s in all (1.2 s before, same machine, load ~2).
Everything read is someone else's data (any optuna client, or SQL, may have written it):
unknown states, directions and value types, odd JSON and non-finite values are shown as best
they can be, never a crash.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import json_to_distribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweep.queue import tables as tb
from sweep.queue.attrs import SKIPPED, SPEC, decoded, why_failed
from sweep.queue.tables import trials
from sweep.queue.transactions import READ_ONLY
from sweep.report.stored import Kind, count, printable, study_kind

#: How trials are listed: finished ones first, then those under way, then the failures.
ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2,
         TrialState.FAIL: 3, TrialState.WAITING: 4}  # fmt: skip

#: optuna's study directions table (not in ``sweep.queue.tables``, which holds what sweep writes).

#: The study system attribute where optuna keeps ``Study.metric_names``.
_METRIC_NAMES = "study:metric_names"
_TYPE = tb.values.c.value_type
_VALUE_TYPES = type(tb.FINITE)  # optuna's TrialValueType: FINITE, INF_POS, INF_NEG


def ordered(trials: list[FrozenTrial], *, maximize: bool = True) -> list[FrozenTrial]:
    """Trials by state (``ORDER``), the best value first within a state, then by number."""
    sign = -1 if maximize else 1

    def key(t: FrozenTrial) -> tuple[int, float, int]:
        value = t.value if t.value is not None else -sign * math.inf
        return ORDER[t.state], sign * value, t.number

    return sorted(trials, key=key)


@dataclasses.dataclass(frozen=True)
class Best:
    """A study's best trial, as much of it as its line in ``sweep status`` shows."""

    number: int
    value: float  # objective 0; ±inf when optuna stored an infinite value
    params: dict[str, Any]  # as optuna shows them (a categorical's choice, not its index)


@dataclasses.dataclass(frozen=True)
class StudyStatus:
    """One study's line in ``sweep status``."""

    name: str
    counts: dict[str, int]  # trials by state, lower case, with FAIL split off as "skipped"
    kind: Kind  # sweep's own study or another client's; its direction and metric
    best: Best | None  # the best COMPLETE trial of a single-objective study

    def best_value(self) -> str | None:
        """The best value as the study measures it: ``97.12%``, or ``loss 0.2031``."""
        if self.best is None:
            return None
        value = self.best.value
        return f"{value:.2f}%" if self.kind.sweep else f"{self.kind.metric} {value:.6g}"


def _reading(engine: sqlalchemy.engine.Engine) -> sqlalchemy.Connection:
    """A connection for one read-only transaction (no write lock on SQLite)."""
    return engine.connect().execution_options(**{READ_ONLY: True})


def _rank() -> Any:
    """A value's type as a number that orders it: -inf < finite < +inf; NULL if unknown."""
    return sqlalchemy.case(
        (_TYPE == _VALUE_TYPES.INF_NEG, -1), (_TYPE == _VALUE_TYPES.FINITE, 0),
        (_TYPE == _VALUE_TYPES.INF_POS, 1),
    )  # fmt: skip


def _finite() -> Any:
    """The stored value of a finite one, 0 for an infinite one (optuna stores NULL there)."""
    return sqlalchemy.case((_TYPE == _VALUE_TYPES.FINITE, tb.values.c.value), else_=0.0)


def _studies(conn: sqlalchemy.Connection) -> list[tuple[int, str, Kind, int]]:
    """(id, name, kind, number of objectives) of every study, in creation order: four
    statements in all."""
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
        attrs[key] = {study_id: decoded(text) for study_id, text in rows}
    out = []
    for study_id, name in names:
        user = {SPEC: attrs[SPEC][study_id]} if study_id in attrs[SPEC] else {}
        metric_names = attrs[_METRIC_NAMES].get(study_id)
        kind = study_kind(user, directions.get(study_id) or [StudyDirection.NOT_SET],
                          metric_names if isinstance(metric_names, list) else None)  # fmt: skip
        out.append((study_id, name, kind, len(directions.get(study_id, []))))
    return out


def _counts(conn: sqlalchemy.Connection) -> dict[int, dict[str, int]]:
    """Every study's trials by state (lower case, in ``TrialState`` order, FAIL split off as
    "skipped"), zeros left out: two grouped counts, of the trials by state and of the FAIL
    ones marked skipped (both read sweep's index on the queue, ``tables.QUEUE_INDEX``, alone:
    10^5 trials in 20 ms on SQLite, 100 ms without it)."""
    state = sqlalchemy.type_coerce(trials.c.state, sqlalchemy.String)  # an unknown name is shown
    by_state = conn.execute(
        sqlalchemy.select(trials.c.study_id, state, sqlalchemy.func.count())
        .group_by(trials.c.study_id, trials.c.state)
    ).all()  # fmt: skip
    skipped = tb.user_attrs.alias("skipped")
    marked = dict(conn.execute(
        sqlalchemy.select(trials.c.study_id, sqlalchemy.func.count())
        .select_from(trials.join(skipped, sqlalchemy.and_(
            skipped.c.trial_id == trials.c.trial_id, skipped.c.key == SKIPPED)))
        .where(trials.c.state == TrialState.FAIL)
        .group_by(trials.c.study_id)
    ).all())  # fmt: skip
    known = [s.name.lower() for s in TrialState]
    found: dict[int, dict[str, int]] = {}
    for study_id, name, n in sorted(by_state, key=lambda r: _place(str(r[1]).lower(), known)):
        counts = found.setdefault(study_id, {})
        shown = printable(str(name).lower(), 20)
        counts[shown] = counts.get(shown, 0) + n
    for study_id, n in marked.items():
        counts = found.setdefault(study_id, {})
        counts["fail"] = counts.get("fail", 0) - n
        counts["skipped"] = n
    return {study_id: {k: n for k, n in c.items() if n} for study_id, c in found.items()}


def _place(state: str, known: list[str]) -> tuple[int, str]:
    """Where a state goes in a study's counts: optuna's order, then unknown ones by name."""
    return (known.index(state), "") if state in known else (len(known), state)


def _best(conn: sqlalchemy.Connection, study_id: int, *, maximize: bool) -> Any:
    """(trial id, number, rank, value) of the study's best COMPLETE trial, the first of equals,
    as optuna's ``best_trial``; None if none has a value. One ORDER BY … LIMIT 1."""
    v = tb.values
    rank, finite = _rank(), _finite()
    order = (rank.desc(), finite.desc()) if maximize else (rank.asc(), finite.asc())
    # Finite values only where it says finite: SQLite keeps NaN as NULL and text as text (which
    # sorts above every number); PostgreSQL sorts NaN above every number.
    sane = sqlalchemy.or_(_TYPE != _VALUE_TYPES.FINITE,
                          v.c.value.between(-sys.float_info.max, sys.float_info.max))  # fmt: skip
    return conn.execute(
        sqlalchemy.select(trials.c.trial_id, trials.c.number, rank, finite)
        .select_from(trials.join(v, v.c.trial_id == trials.c.trial_id))
        .where(trials.c.study_id == study_id, trials.c.state == TrialState.COMPLETE,
               v.c.objective == 0, rank.is_not(None), sane)
        .order_by(*order, trials.c.trial_id)
        .limit(1)
    ).first()  # fmt: skip


def _external(value: Any, distribution: Any) -> Any:
    """A stored parameter as optuna shows it; the stored number if its distribution is not
    one optuna can read (or the number not one of its values)."""
    try:
        return json_to_distribution(distribution).to_external_repr(value)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError):
        return value


def _params(conn: sqlalchemy.Connection, trial_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The parameters of these few trials, in the order they were set."""
    p = tb.params
    found: dict[int, dict[str, Any]] = {t: {} for t in trial_ids}
    if trial_ids:
        for trial_id, name, value, distribution in conn.execute(
            sqlalchemy.select(p.c.trial_id, p.c.param_name, p.c.param_value,
                              p.c.distribution_json)
            .where(p.c.trial_id.in_(trial_ids)).order_by(p.c.param_id)
        ):  # fmt: skip
            found[trial_id][name] = _external(value, distribution)
    return found


def status(engine: sqlalchemy.engine.Engine) -> list[StudyStatus]:
    """Every study in the database (``engine``: ``sweep.queue.storage.open_reader``, or an optuna
    storage's), in creation order, read in one transaction: its counts by state, its kind, and
    the number, value and parameters of its best trial, in seven statements plus one per
    single-objective study, however many trials there are."""
    with _reading(engine) as conn:
        studies = _studies(conn)
        counts = _counts(conn)
        best = {}
        for study_id, _, kind, objectives in studies:
            if objectives == 1:  # optuna has no best trial of several objectives
                row = _best(conn, study_id, maximize=kind.maximize)
                if row is not None:
                    best[study_id] = row
        params = _params(conn, [row[0] for row in best.values()])
    out = []
    for study_id, name, kind, _ in studies:
        found = None
        if study_id in best:
            trial_id, number, rank, value = best[study_id]
            value = float(value) if rank == 0 else math.copysign(math.inf, rank)
            found = Best(number, value, params[trial_id])
        out.append(StudyStatus(name, counts.get(study_id, {}), kind, found))
    return out


def fmt(value: Any) -> str:
    """A parameter value in a line of text: floats short, anything else printable."""
    return f"{value:g}" if isinstance(value, float) else printable(str(value), 80)


def trial_table(study: optuna.Study, *, limit: int | None = None) -> tuple[str, int]:
    """The study's trials (not the queued ones) sorted as ``ordered``, as an aligned table of
    at most ``limit`` rows (every trial if None), and how many trials it leaves out.

    With a limit, only the trials shown are read: SQL picks them (ordered and limited as
    ``ordered`` would), so the table at the end of a run of 10⁵ trials costs what one of 20
    does; the parameter columns are those of the trials shown.
    """
    kind = study_kind(study.user_attrs, study.directions, study.metric_names)
    if limit is None:
        shown = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
        left_out = 0
    else:
        shown, left_out = _top(study, kind=kind, limit=limit)
    return _table(ordered(shown, maximize=kind.maximize), kind), left_out


def _top(study: optuna.Study, *, kind: Kind, limit: int) -> tuple[list[FrozenTrial], int]:
    """The first ``limit`` trials of the study as ``ordered`` lists them, and how many more
    there are: one ordered, limited statement, one count, then each trial shown."""
    from sweep.queue.storage import rdb_of

    rdb, study_id = rdb_of(study._storage), study._study_id
    v = tb.values
    listed = sqlalchemy.and_(trials.c.study_id == study_id, trials.c.state != TrialState.WAITING)
    state = sqlalchemy.case(*((trials.c.state == s, n) for s, n in ORDER.items()), else_=len(ORDER))
    rank, finite = _rank(), _finite()
    # ``ordered`` puts a trial without a value first within its state, as if it were best
    missing = sqlalchemy.case((v.c.trial_id.is_(None), 0),
                              (sqlalchemy.and_(_TYPE == _VALUE_TYPES.FINITE,
                                               v.c.value.is_(None)), 0), else_=1)  # fmt: skip
    order = (rank.desc(), finite.desc()) if kind.maximize else (rank.asc(), finite.asc())
    query = (
        sqlalchemy.select(trials.c.trial_id)
        .select_from(trials.outerjoin(v, sqlalchemy.and_(v.c.trial_id == trials.c.trial_id,
                                                         v.c.objective == 0)))
        .where(listed)
        .order_by(state, missing, *order, trials.c.number)
        .limit(limit)
    )  # fmt: skip
    with _reading(rdb.engine) as conn:
        ids = conn.execute(query).scalars().all()
        total = conn.execute(sqlalchemy.select(sqlalchemy.func.count()).where(listed)
                             .select_from(trials)).scalar_one()  # fmt: skip
    return [rdb.get_trial(trial_id) for trial_id in ids], total - len(ids)


def _table(trials: list[FrozenTrial], kind: Kind) -> str:
    """These trials, in this order, one aligned row each under a header."""
    names = sorted({k for t in trials for k in t.params})
    header = ["#", "state", *names, "params", "valid %" if kind.sweep else kind.metric]
    rows = []
    for t in trials:
        value = f"{t.value:.{'2f' if kind.sweep else '6g'}}" if t.value is not None else ""
        if t.state == TrialState.PRUNED:
            value += f" (pruned @{count(t, 'pruned_at') or '?'})"
        if t.state == TrialState.FAIL:
            value = printable(why_failed(t.user_attrs), 40)
        params = [fmt(t.params.get(n, "")) for n in names]
        state = t.state.name.lower()
        if t.state == TrialState.FAIL and SKIPPED in t.user_attrs:  # not run: not a failure
            state, value = "skipped", printable(str(t.user_attrs[SKIPPED]), 40)
        rows.append([str(t.number), state, *params,
                     str(count(t, "n_params") or ""), value])  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )

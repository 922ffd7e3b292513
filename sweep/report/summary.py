"""A study database at a glance: every study's state counts and best trial (or Pareto front,
``sweep.report.front``), and one study's trials as an aligned text table.

Light on purpose (optuna, no matplotlib), so that ``sweep status`` answers at once; the report
(``sweep.report.writer``) orders its tables the same way, from here.

``sweep status`` reads through ``sweep.queue.status_reads`` (a few aggregate statements, never
trial by trial) and shapes what it returns: the line's counts, the study's kind. The table reads
its trials through optuna, with a limit only the ones it shows (``status_reads`` picks them).
The command's start-up is kept to what it reads with: no training code, boto3 or alembic
(``sweep.queue.storage.open_reader``, tests/sweep/test_startup.py); at 10⁵ trials on PostgreSQL
it took 0.65 s in all (1.2 s before, same machine, load ~2).
Everything read is someone else's data (any optuna client, or SQL, may have written it):
unknown states, directions and value types, odd JSON and non-finite values are shown as best
they can be, never a crash.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweep.queue import status_reads
from sweep.queue.attrs import SKIPPED, why_failed
from sweep.queue.status_reads import Best, Valued
from sweep.report import front
from sweep.report.stored import Kind, count, printable, study_kind
from sweep.study.audit import outside_budget
from sweep.study.objectives import PARAMS

#: How trials are listed: finished ones first, then those under way, then the failures.
ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2,
         TrialState.FAIL: 3, TrialState.WAITING: 4}  # fmt: skip


def ordered(trials: list[Any], *, maximize: bool = True,
            value: Callable[[Any], float | None] | None = None) -> list[Any]:  # fmt: skip
    """Trials by state (``ORDER``), the best value first within a state (a trial without one
    before them), then by number. ``value``: which value (default: ``t.value``; a study of
    several objectives orders by its first, ``front.first``)."""
    sign = -1 if maximize else 1
    read = value or (lambda t: t.value)

    def key(t: Any) -> tuple[int, float, int]:
        v = read(t)
        return ORDER[t.state], sign * (v if v is not None else -sign * math.inf), t.number

    return sorted(trials, key=key)


def listed(trials: Sequence[Any], kind: Kind) -> tuple[list[Any], list[Any]]:
    """The trials as every table lists them, and the Pareto front along it: a study of several
    objectives lists its front first (``front.front``), then the others by ``ordered`` of their
    first value; a single-objective one ``ordered`` (its front is empty)."""
    if not kind.multi:
        return ordered(list(trials), maximize=kind.maximize), []
    along = front.front(trials, kind.objectives)
    on = {t.number for t in along}
    rest = [t for t in trials if t.number not in on]
    return along + ordered(rest, maximize=kind.maximize, value=front.first), along


@dataclasses.dataclass(frozen=True)
class StudyStatus:
    """One study's line in ``sweep status``."""

    name: str
    counts: dict[str, int]  # trials by state, lower case, with FAIL split off as "skipped"
    kind: Kind  # sweep's own study or another client's; its direction and metric
    best: Best | None  # the best COMPLETE trial of a single-objective study
    #: the front of a study of several objectives, along it (``front.front``); else empty
    front: list[Valued] = dataclasses.field(default_factory=list)
    #: the best trial's network, flagged if it is outside the budget (another client's trial:
    #: ``sweep.study.audit``); else None
    best_outside: str | None = None
    #: the hosts whose sweep workers hold most of its RUNNING trials, each with how many, the
    #: busiest first (``sweep.queue.status_reads.HOSTS_SHOWN`` at most), and how many the
    #: workers of other hosts hold
    running_by_host: dict[str, int] = dataclasses.field(default_factory=dict)
    running_elsewhere: int = 0

    def best_value(self) -> str | None:
        """The best value as the study measures it: ``97.12%``, or ``loss 0.2031``."""
        if self.best is None:
            return None
        value = self.best.value
        return f"{value:.2f}%" if self.kind.sweep else f"{self.kind.metric} {value:.6g}"

    def front_text(self) -> str | None:
        """The front's size and ends (``front.ends_text``); None for one objective."""
        return front.ends_text(self.kind, self.front)


def status(engine: status_reads.Engine) -> list[StudyStatus]:
    """Every study in the database (``engine``: ``sweep.queue.storage.open_reader``, or an optuna
    storage's), in creation order, read in one transaction (``status_reads.studies``): its
    counts by state, its kind, and the number, value and parameters of its best trial, or the
    front of a study of several objectives."""
    out = []
    for s in status_reads.studies(engine):
        kind = study_kind(s.user_attrs, s.directions or [StudyDirection.NOT_SET], s.metric_names)
        along = front.front(s.valued, kind.objectives) if kind.multi else []
        flag = outside_budget(s.best.params, kind.spec) if s.best and kind.spec else None
        out.append(StudyStatus(s.name, _counts(s.states, s.skipped), kind, s.best, along, flag,
                               s.running_by_host, s.running_elsewhere))  # fmt: skip
    return out


def _counts(states: list[tuple[str, int]], skipped: int) -> dict[str, int]:
    """A study's trials by state (lower case, in ``TrialState`` order, then unknown ones by
    name, FAIL split off as "skipped"), zeros left out."""
    known = [s.name.lower() for s in TrialState]
    counts: dict[str, int] = {}
    for name, n in sorted(states, key=lambda r: _place(str(r[0]).lower(), known)):
        shown = printable(str(name).lower(), 20)
        counts[shown] = counts.get(shown, 0) + n
    if skipped:
        counts["fail"] = counts.get("fail", 0) - skipped
        counts["skipped"] = skipped
    return {k: n for k, n in counts.items() if n}


def _place(state: str, known: list[str]) -> tuple[int, str]:
    """Where a state goes in a study's counts: optuna's order, then unknown ones by name."""
    return (known.index(state), "") if state in known else (len(known), state)


def fmt(value: Any) -> str:
    """A parameter value in a line of text: floats short, anything else printable."""
    return f"{value:g}" if isinstance(value, float) else printable(str(value), 80)


def trial_table(study: optuna.Study, *, limit: int | None = None) -> tuple[str, int]:
    """The study's trials (``shown_trials``) as an aligned table of at most ``limit`` rows
    (every trial if None), and how many trials it leaves out; the parameter columns are those
    of the trials shown."""
    shown, kind, on, left_out = shown_trials(study, limit=limit)
    return _table(shown, kind, on), left_out


def shown_trials(
    study: optuna.Study, *, limit: int | None = None
) -> tuple[list[FrozenTrial], Kind, set[int], int]:
    """The study's trials (not the queued ones) as ``listed`` lists them, at most ``limit``
    (every trial if None); the study's kind, the numbers of those shown on its front, and how
    many trials are left out: what ``trial_table`` and ``sweep run --format json`` show.

    With a limit, only the trials shown are read: SQL picks them (ordered and limited as
    ``ordered`` would), so the table at the end of a run of 10⁵ trials costs what one of 20
    does.
    """
    kind = study_kind(study.user_attrs, study.directions, study.metric_names)
    if limit is None:
        every = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
        shown, along = listed(every, kind)
        left_out = 0
    else:
        shown, along, left_out = _top(study, kind=kind, limit=limit)
    return shown, kind, {t.number for t in along}, left_out


def _top(study: optuna.Study, *, kind: Kind,
         limit: int) -> tuple[list[FrozenTrial], list[Any], int]:  # fmt: skip
    """The first ``limit`` trials of the study as ``listed`` lists them, those of the front
    among them, and how many more there are: one ordered, limited statement, one count (and,
    with several objectives, one read of the complete trials' values for the front), then
    each trial shown."""
    from sweep.queue.storage import rdb_of

    rdb = rdb_of(study._storage)
    along: list[Any] = []
    if kind.multi:
        valued = status_reads.complete_values(rdb.engine, study._study_id, len(kind.objectives))
        along = front.front(valued, kind.objectives)[:limit]
    ids, more = status_reads.first_listed(rdb.engine, study._study_id, order=ORDER,
                                          maximize=kind.maximize,
                                          limit=limit + len(along))  # fmt: skip
    on = {v.trial_id for v in along}
    chosen = [v.trial_id for v in along] + [i for i in ids if i not in on][: limit - len(along)]
    return [rdb.get_trial(i) for i in chosen], along, len(ids) + more - len(chosen)


def _table(trials: list[FrozenTrial], kind: Kind, on: set[int]) -> str:
    """These trials, in this order, one aligned row each under a header; with several
    objectives one column per objective, and the front's trials (numbers ``on``) marked."""
    names = sorted({k for t in trials for k in t.params})
    sized = not kind.multi or PARAMS not in kind.objectives  # else a column of its own
    metrics = list(kind.metrics) if kind.multi else ["valid %" if kind.sweep else kind.metric]
    header = ["#", "state", *names, *(["params"] if sized else []), *metrics]
    rows = []
    for t in trials:
        params = [fmt(t.params.get(n, "")) for n in names]
        size = [str(count(t, "n_params") or "")] if sized else []
        state, note = t.state.name.lower(), front.ON_FRONT if t.number in on else ""
        if t.state == TrialState.FAIL:
            note = printable(why_failed(t.user_attrs), 40)
            if SKIPPED in t.user_attrs:  # not run: not a failure
                state, note = "skipped", printable(str(t.user_attrs[SKIPPED]), 40)
        if kind.multi:
            values = [*(t.values or []), *[None] * len(metrics)]
            cells = [front.value_text(o, v, sweep=kind.sweep)
                     for o, v in zip(kind.objectives, values, strict=False)]  # fmt: skip
            rows.append([str(t.number), state, *params, *size, *cells, note])
            continue
        value = f"{t.value:.{'2f' if kind.sweep else '6g'}}" if t.value is not None else ""
        if t.state == TrialState.PRUNED:
            value += f" (pruned @{count(t, 'pruned_at') or '?'})"
        rows.append([str(t.number), state, *params, *size, note or value])
    if kind.multi:
        header.append("note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )

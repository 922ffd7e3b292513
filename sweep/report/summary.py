"""A study database at a glance: every study's state counts and best trial, and one study's
trials as an aligned text table.

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
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweep.queue import status_reads
from sweep.queue.attrs import SKIPPED, why_failed
from sweep.queue.status_reads import Best
from sweep.report.stored import Kind, count, printable, study_kind

#: How trials are listed: finished ones first, then those under way, then the failures.
ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2,
         TrialState.FAIL: 3, TrialState.WAITING: 4}  # fmt: skip


def ordered(trials: list[FrozenTrial], *, maximize: bool = True) -> list[FrozenTrial]:
    """Trials by state (``ORDER``), the best value first within a state, then by number."""
    sign = -1 if maximize else 1

    def key(t: FrozenTrial) -> tuple[int, float, int]:
        value = t.value if t.value is not None else -sign * math.inf
        return ORDER[t.state], sign * value, t.number

    return sorted(trials, key=key)


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


def status(engine: status_reads.Engine) -> list[StudyStatus]:
    """Every study in the database (``engine``: ``sweep.queue.storage.open_reader``, or an optuna
    storage's), in creation order, read in one transaction (``status_reads.studies``): its
    counts by state, its kind, and the number, value and parameters of its best trial."""
    return [
        StudyStatus(
            s.name, _counts(s.states, s.skipped),
            study_kind(s.user_attrs, s.directions or [StudyDirection.NOT_SET], s.metric_names),
            s.best,
        )
        for s in status_reads.studies(engine)
    ]  # fmt: skip


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

    rdb = rdb_of(study._storage)
    ids, more = status_reads.first_listed(rdb.engine, study._study_id, order=ORDER,
                                          maximize=kind.maximize, limit=limit)  # fmt: skip
    return [rdb.get_trial(trial_id) for trial_id in ids], more


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

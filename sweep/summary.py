"""A study database at a glance: every study's state counts and best trial, and one study's
trials as an aligned text table.

Light on purpose (optuna, no matplotlib), so that ``sweep status`` answers at once; the report
(``sweep.report``) orders its tables the same way, from here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.queue import SKIPPED, why_failed
from sweep.stored import Kind, count, printable, study_kind

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
    best: FrozenTrial | None

    def best_value(self) -> str | None:
        """The best value as the study measures it: ``97.12%``, or ``loss 0.2031``."""
        if self.best is None:
            return None
        value = self.best.value
        return f"{value:.2f}%" if self.kind.sweep else f"{self.kind.metric} {value:.6g}"


def status(storage: optuna.storages.BaseStorage) -> list[StudyStatus]:
    """Every study in the database, in creation order."""
    out = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        counts = {st.name.lower(): 0 for st in TrialState} | {"skipped": 0}
        for t in study.get_trials(deepcopy=False):
            skipped = t.state == TrialState.FAIL and SKIPPED in t.user_attrs
            counts["skipped" if skipped else t.state.name.lower()] += 1
        kind = study_kind(study.user_attrs, study.directions, study.metric_names)
        out.append(StudyStatus(s.study_name, {k: n for k, n in counts.items() if n}, kind,
                               s.best_trial))  # fmt: skip
    return out


def fmt(value: Any) -> str:
    """A parameter value in a line of text: floats short, anything else printable."""
    return f"{value:g}" if isinstance(value, float) else printable(str(value), 80)


def trial_table(study: optuna.Study, *, limit: int | None = None) -> str:
    """The study's trials (not the queued ones) sorted as ``ordered``, as an aligned table."""
    kind = study_kind(study.user_attrs, study.directions, study.metric_names)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    names = sorted({k for t in trials for k in t.params})
    header = ["#", "state", *names, "params", "valid %" if kind.sweep else kind.metric]
    rows = []
    for t in ordered(trials, maximize=kind.maximize)[:limit]:
        value = f"{t.value:.{'2f' if kind.sweep else '6g'}}" if t.value is not None else ""
        if t.state == TrialState.PRUNED:
            value += f" (pruned @{count(t, 'pruned_at') or '?'})"
        if t.state == TrialState.FAIL:
            value = printable(why_failed(t.user_attrs), 40)
        params = [fmt(t.params.get(n, "")) for n in names]
        rows.append([str(t.number), t.state.name.lower(), *params,
                     str(count(t, "n_params") or ""), value])  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )

"""A large study in a page: which trials to draw and which aggregates to print.

Above ``LARGE`` finished trials a report stops listing and drawing every trial (a table of 10⁵
rows is read by nobody, and one line per trial is a blot): ``report.md`` shows the ``TOP`` best
trials, the value's quantiles and each parameter's buckets, and says that ``trials.csv`` holds
every trial; learning curves are read for an even sample of ``CURVES`` trials and the
``BEST_CURVES`` best only (``sweep.queue.report_reads.read_curves``). Smaller studies keep the
full report. Pure functions of the trials (``sweep.queue.report_reads.Record`` or optuna's
``FrozenTrial``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from optuna.trial import TrialState

from sweep.report.stored import number
from sweep.report.summary import fmt, ordered

#: Finished trials (complete, pruned or failed) above which the report summarises.
LARGE = 1_000
TOP = 50  # trials listed in a large study's report.md
CURVES = 1_000  # trials sampled evenly for the learning-curve bands
BEST_CURVES = 5  # best trials whose curves are drawn as lines over the bands
IMPORTANCE_TRIALS = 2_000  # complete trials sampled evenly for the importance evaluator
HEATMAPS = 12  # a large grid's heatmaps: the learning rates with the best trials
BUCKETS = 5  # quantile buckets per numeric parameter
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def is_large(trials: Sequence[Any]) -> bool:
    """Whether the study has more than ``LARGE`` finished trials."""
    return sum(t.state in _FINISHED for t in trials) > LARGE


def evenly(items: Sequence[Any], k: int) -> list[Any]:
    """``k`` items spread evenly over ``items`` (first and last included), all if fewer."""
    n = len(items)
    if n <= k:
        return list(items)
    if k <= 1:
        return list(items[:k])
    return [items[round(i * (n - 1) / (k - 1))] for i in range(k)]


def best(done: Sequence[Any], k: int, *, maximize: bool) -> list[Any]:
    """The ``k`` best of ``done`` (complete, finite values), best first."""
    return ordered(list(done), maximize=maximize)[:k]


def curve_sample(trials: Sequence[Any]) -> list[Any]:
    """The trials whose curves make a large report's bands: ``CURVES`` complete or pruned
    trials spread evenly over the study's history."""
    curved = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return evenly(curved, CURVES)


def curve_trials(trials: Sequence[Any], top: Sequence[Any]) -> list[Any]:
    """The trials whose learning curves a large report reads: ``curve_sample`` and the
    ``BEST_CURVES`` first of ``top`` (the best, drawn as lines)."""
    chosen = {id(t): t for t in curve_sample(trials)}
    chosen |= {id(t): t for t in top[:BEST_CURVES]}
    return list(chosen.values())


def quantile_rows(columns: dict[str, Sequence[float]],
                  shown: Callable[[float], str]) -> tuple[list[str], list[list[Any]]]:  # fmt: skip
    """A table of ``QUANTILES`` (header, rows), one row per named column of finite numbers;
    ``shown`` formats the metric's row (the first)."""
    header = ["", "trials", *(_quantile_name(q) for q in QUANTILES)]
    rows = []
    for i, (name, values) in enumerate(columns.items()):
        if len(values) == 0:
            continue
        qs = np.quantile(np.asarray(values, dtype=float), QUANTILES)
        cell = shown if i == 0 else _plainly
        rows.append([name, f"{len(values):,}", *(cell(float(q)) for q in qs)])
    return header, rows


def _plainly(v: float) -> str:
    """A count or duration: whole thousands with separators, small values to 4 digits."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _quantile_name(q: float) -> str:
    return {0.0: "min", 0.5: "median", 1.0: "max"}.get(q, f"{q:.0%}")


def parameter_rows(
    done: Sequence[Any], names: Sequence[str], *, maximize: bool, shown: Callable[[float], str],
) -> tuple[list[str], list[list[Any]]]:  # fmt: skip
    """Each parameter's buckets among ``done`` (complete trials with a finite value): numbers
    in ``BUCKETS`` quantile buckets (fewer where values repeat), anything else by value (the
    10 most frequent); per bucket its trials, median and best value. The bucket with the best
    median is marked, so the good region of each parameter reads at a glance."""
    rows: list[list[Any]] = []
    for name in names:
        pairs = [(t.params[name], t.value) for t in done if name in t.params]
        if not pairs:
            continue
        numeric = [(number(p), v) for p, v in pairs]
        if all(p is not None for p, _ in numeric):
            groups = numeric_buckets(np.array([p for p, _ in numeric]),
                                     np.array([v for _, v in numeric]))  # fmt: skip
        else:
            groups = _by_value(pairs)
        rows += bucket_rows(name, groups, maximize=maximize, shown=shown)
    return PARAMETER_HEADER, rows


#: The columns of ``parameter_rows``.
PARAMETER_HEADER = ["parameter", "values", "trials", "median", "best", ""]


def bucket_rows(name: str, groups: list[tuple[str, list[float]]], *, maximize: bool,
                shown: Callable[[float], str]) -> list[list[Any]]:  # fmt: skip
    """One parameter's rows of ``parameter_rows``: per group (label, values) its trials,
    median and best value, the best median marked."""
    stats = [(label, len(vs), float(np.median(vs)), max(vs) if maximize else min(vs))
             for label, vs in groups]  # fmt: skip
    pick = max if maximize else min
    winner = pick(range(len(stats)), key=lambda i: stats[i][2])
    return [[fmt(name) if i == 0 else "", label, f"{n:,}", shown(median), shown(top),
             "best median" if i == winner and len(stats) > 1 else ""]
            for i, (label, n, median, top) in enumerate(stats)]  # fmt: skip


def numeric_buckets(params: np.ndarray, values: np.ndarray) -> list[tuple[str, list[float]]]:
    """A numeric parameter's groups: each value where there are few, else ``BUCKETS``
    quantile buckets (fewer where values repeat); ``params``, ``values``: (n,) float."""
    distinct = np.unique(params)
    if len(distinct) <= 2 * BUCKETS:
        return [(fmt(_plain(p)), values[params == p].tolist()) for p in distinct]
    edges = np.unique(np.quantile(params, np.linspace(0, 1, BUCKETS + 1)))
    which = np.clip(np.searchsorted(edges, params, side="right") - 1, 0, len(edges) - 2)
    out = []
    for b in range(len(edges) - 1):
        inside = which == b
        if inside.any():
            low, high = params[inside].min(), params[inside].max()
            out.append((f"{fmt(_plain(low))} – {fmt(_plain(high))}", values[inside].tolist()))
    return out


def _plain(x: np.floating) -> int | float:
    """A numpy number as the int or float it stands for (ints print without a point)."""
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else float(x)


def _by_value(pairs: list[tuple[Any, float]], limit: int = 10) -> list[tuple[str, list[float]]]:
    groups: dict[str, list[float]] = {}
    for p, v in pairs:
        groups.setdefault(fmt(p), []).append(v)
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    return ranked[:limit]


def note_rows(notes: Sequence[str], limit: int = 10) -> tuple[list[str], list[list[Any]]]:
    """The most frequent notes (why trials were pruned or failed), with their counts."""
    return note_rows_of(Counter(n for n in notes if n), limit)


def note_rows_of(counted_notes: Counter[str], limit: int = 10) -> tuple[list[str], list[list[Any]]]:
    """``note_rows`` of notes already counted (in order of first appearance)."""
    counted = counted_notes.most_common()
    rows: list[list[Any]] = [[note, f"{n:,}"] for note, n in counted[:limit]]
    if len(counted) > limit:
        rest = sum(n for _, n in counted[limit:])
        rows.append([f"{len(counted) - limit} other notes", f"{rest:,}"])
    return ["note", "trials"], rows

"""The scale benchmark's table: its rows, their targets and verdicts, and the cells.

A benchmark reports, it does not fail: each row prints medians with min and max at every size,
the ratio of the largest size to the smallest, and its target marked ok or MISSED.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

MILLION = 1_000_000
STATUS_MARGIN_S = 0.1  # issue 27: status at 10⁶ within 0.1 s of an empty database's
MEMORY_TARGET_MB = 1_000.0  # issue 27: report and dashboard within 1 GB at 10⁶


@dataclasses.dataclass
class Result:
    """One row at one size: its samples, or why there are none (a timeout, an error)."""

    samples: list[float] = dataclasses.field(default_factory=list)
    failed: str | None = None
    above: float | None = None  # set when it was stopped (timeout, memory cap): it exceeds this

    @property
    def median(self) -> float | None:
        return float(np.median(self.samples)) if self.samples and not self.failed else None


#: A backend's results: row key → study size → result.
Results = dict[str, dict[int, Result]]
#: (the row's results by size, every row's) → target met or not
Check = Callable[[dict[int, Result], Results], bool]


@dataclasses.dataclass(frozen=True)
class Row:
    """A measured operation, its unit and its target."""

    key: str
    title: str
    target: str
    check: Check | None = None  # None: no target


def _at_most(limit: float) -> Check:
    """At every measured size, the median is within ``limit``."""
    return lambda by_size, _: all(r.median is not None and r.median <= limit
                                  for r in by_size.values())  # fmt: skip


def _flat(factor: float) -> Check:
    """The largest size costs at most ``factor`` times the smallest."""

    def check(by_size: dict[int, Result], _: Results) -> bool:
        low, high = by_size[min(by_size)].median, by_size[max(by_size)].median
        return low is not None and high is not None and high <= factor * low

    return check


def _near(baseline: str, margin: float) -> Check:
    """At the largest size, the median is within ``margin`` of row ``baseline``'s median at
    that size (measured alternately with it, so that the machine's load falls on both)."""

    def check(by_size: dict[int, Result], results: Results) -> bool:
        n = max(by_size)
        mine, base = by_size[n].median, results.get(baseline, {}).get(n, Result()).median
        return mine is not None and base is not None and mine <= base + margin

    return check


def _tpe_target(sizes: list[int]) -> int:
    return 10_000 if 10_000 in sizes else max(sizes)


def rows(sizes: list[int]) -> tuple[Row, ...]:
    """Every row, in the table's order."""
    at, top = _tpe_target(sizes), max(sizes)

    def tpe(by_size: dict[int, Result], results: Results) -> bool:
        return _at_most(50.0)({at: by_size[at]}, results)

    mb = f"≤ {MEMORY_TARGET_MB:,.0f} MB"
    return (
        Row("claim", "claim + finish per trial, ms", f"≤ 1.5× at {min(sizes):,}", _flat(1.5)),
        Row("first_ask", "TPE ask, first of a fresh worker, ms", "none"),
        Row("ask", "TPE ask, steady state, ms", f"≤ 50 ms at {at:,}", tpe),
        Row("status_empty", "`sweep status` on an empty database, s", "none"),
        Row("status", "`sweep status`, s",
            f"≤ empty + {STATUS_MARGIN_S} s at {top:,}", _near("status_empty", STATUS_MARGIN_S)),
        Row("startup", "run start-up (launch → first claim), s", "≤ 5 s", _at_most(5.0)),
        Row("topup", "top-up of 20 slots, ms", f"≤ 1.5× at {min(sizes):,}", _flat(1.5)),
        Row("report", "`sweep report`, s", "≤ 60 s", _at_most(60.0)),
        Row("report_mb", "`sweep report`, peak memory, MB", mb, _at_most(MEMORY_TARGET_MB)),
        Row("dashboard", "dashboard trial list, first call, s", "≤ 5 s", _at_most(5.0)),
        Row("dashboard_mb", "dashboard server, peak memory, MB", mb,
            _at_most(MEMORY_TARGET_MB)),
    )  # fmt: skip


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def cell(r: Result) -> str:
    if r.failed:
        return r.failed
    if len(r.samples) == 1:
        return _num(r.samples[0])
    return f"{_num(r.median)} ({_num(min(r.samples))}–{_num(max(r.samples))})"


def _ratio(by_size: dict[int, Result]) -> str:
    low, high = by_size[min(by_size)], by_size[max(by_size)]
    if low.median is None or low.median == 0:
        return "—"
    if high.above is not None:
        return f"> {high.above / low.median:.0f}×"
    return "—" if high.median is None else f"{high.median / low.median:.2f}×"


def _extrapolated(by_size: dict[int, Result]) -> str:
    """The median at 10⁶ by a least-squares line through the medians at the measured sizes."""
    points = [(n, r.median) for n, r in sorted(by_size.items())]
    if len(points) < 2 or any(m is None for _, m in points):
        return "—"
    slope, intercept = np.polyfit(*zip(*points, strict=True), deg=1)
    if slope <= 0:  # no growth to extrapolate: the largest size's median stands
        return f"{_num(points[-1][1])} (flat)"
    return _num(slope * MILLION + intercept)


def table(title: str, sizes: list[int], results: Results) -> list[str]:
    """The backend's results as a markdown table: a row per operation, a column per size;
    a column extrapolated to 10⁶ when the run stopped short of it."""
    fit = max(sizes) < MILLION
    head = ["operation", *(f"{n:,}" for n in sizes), f"{max(sizes):,} / {min(sizes):,}",
            *(["10⁶ (linear fit)"] if fit else []), "target", ""]  # fmt: skip
    lines = [f"\n## {title}: median (min–max) at each study size, in trials\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for row in rows(sizes):
        by_size = results.get(row.key, {})
        if set(by_size) != set(sizes):
            continue
        verdict = "" if row.check is None else "ok" if row.check(by_size, results) else "MISSED"
        cells = [row.title, *(cell(by_size[n]) for n in sizes), _ratio(by_size),
                 *([_extrapolated(by_size)] if fit else []), row.target, verdict]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines

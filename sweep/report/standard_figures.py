"""The plots a user of optuna, Ray Tune or W&B Sweeps reaches for, in matplotlib like the rest:
parallel coordinates, slice, contour of two parameters, the empirical distribution (EDF) of
the values, and the timeline of trials per worker. Pure functions from plain data to a PNG,
like ``sweep.report.figures`` (whose size, resolution, saving and colour scale they share).

Each draws its marks as one collection, not an artist per trial, so that a report of 1,000
trials pays about what one of 10 does (``sweep.report.digest`` decides what a larger study
draws).

A parameter's values become positions on an axis (``Axis``): numbers as they are (on a log
axis where the study samples them so, or where they span two decades or more, as grids of
learning rates do), anything else as evenly spaced categories in the order first seen.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.tri import Triangulation

from sweep.report.figures import DPI, SIZE, TALL, _save, plt
from sweep.report.quantities import quantity
from sweep.report.scale import Scale
from sweep.report.stored import number
from sweep.text import printable

MAX_CATEGORIES = 12  # category labels an axis prints; past that every other, and so on
MAX_SLICES = 8  # parameters a slice figure shows (the most important first)
#: A numeric axis of a slice panel (a quarter of the figure's width) with more distinct values
#: than this gets at most this many ticks, not one per value: 12 labels overlapped there.
_SLICE_TICKS = 5
#: The colour of each trial state in the timeline (optuna's plot_timeline uses these hues).
STATE_COLOURS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red",
                 "RUNNING": "tab:green"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Axis:
    """A parameter as positions on an axis: one float per trial (NaN where it has none),
    with the ticks and labels to print and whether the positions are log10 of the values."""

    name: str
    at: np.ndarray  # (n,) float
    ticks: list[float]
    labels: list[str]
    log: bool = False
    categorical: bool = False

    @classmethod
    def of(cls, name: str, values: Sequence[Any], *, log: bool = False) -> Axis:
        """``values`` (``None`` where a trial lacks the parameter) on an axis; ``log``: the
        study samples it on a log scale."""
        present = [v for v in values if v is not None]
        numbers = [number(v) for v in present]
        if present and None not in numbers:
            at = np.array([np.nan if v is None else float(v) for v in values])
            low, high = np.nanmin(at), np.nanmax(at)
            log = low > 0 and (log or high >= 100 * low)
            if log:
                at = np.log10(at)
            distinct = np.unique(at[np.isfinite(at)])  # a grid's few values: a tick each
            ticks = distinct.tolist() if len(distinct) <= MAX_CATEGORIES else []
            axis = cls(name, at, ticks, [], log)
            return dataclasses.replace(axis, labels=[axis.text(t) for t in ticks])
        keys = list(dict.fromkeys(repr(v) for v in present))
        shown = {repr(v): printable(str(v), 20) for v in present}
        place = {k: float(i) for i, k in enumerate(keys)}
        at = np.array([np.nan if v is None else place[repr(v)] for v in values])
        step = max(1, -(-len(keys) // MAX_CATEGORIES))
        ticks = [float(i) for i in range(0, len(keys), step)]
        return cls(name, at, ticks, [shown[keys[int(i)]] for i in ticks], categorical=True)

    def span(self) -> tuple[float, float]:
        """The lowest and highest position, widened where they are one."""
        low, high = float(np.nanmin(self.at)), float(np.nanmax(self.at))
        return (low - 0.5, high + 0.5) if low == high else (low, high)

    def text(self, position: float) -> str:
        """What a position stands for: the category, or the number (10^x on a log axis)."""
        if self.categorical:
            return self.labels[self.ticks.index(position)] if position in self.ticks else ""
        value = 10**position if self.log else position
        # a count of parameters as every table writes it (54,375), not 5.438e+04
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"

    def label(self) -> str:
        return f"{self.name} (log scale)" if self.log else self.name

    def dress(self, ax: plt.Axes, which: str) -> None:
        """Label ``ax``'s ``which`` axis ("x" or "y") with this parameter's ticks."""
        axis = ax.xaxis if which == "x" else ax.yaxis
        if self.ticks:
            (ax.set_xticks if which == "x" else ax.set_yticks)(self.ticks, self.labels)
        else:
            if self.log and np.subtract(*self.span()[::-1]) >= 1:  # whole decades: 0.01, 0.1
                axis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            axis.set_major_formatter(matplotlib.ticker.FuncFormatter(
                lambda x, _: self.text(x)))  # fmt: skip
        (ax.set_xlabel if which == "x" else ax.set_ylabel)(self.label())


def parallel_coordinates(axes: Sequence[Axis], values: Sequence[float], path: Path, *,
                         scale: Scale, metric: str, title: str) -> Path:  # fmt: skip
    """One line per trial across one vertical axis per parameter and a last one for its value,
    coloured by the value in the report's ``scale``, the best drawn last (on top). Each axis
    runs from its lowest to its highest value, printed at its ends."""
    ys = np.asarray(values, dtype=float)
    columns = [*axes, Axis(metric, ys, [], [])]
    spans = [c.span() for c in columns]
    unit = np.column_stack([(c.at - low) / (high - low) for c, (low, high) in
                            zip(columns, spans, strict=True)])  # fmt: skip
    order = np.argsort(ys if scale.maximize else -ys, kind="stable")  # the best last
    xs = np.arange(len(columns), dtype=float)
    segments = [np.column_stack([xs, unit[i]]) for i in order]
    fig, ax = plt.subplots(figsize=(max(SIZE[0], 1.3 * len(columns)), SIZE[1]))
    lines = LineCollection(segments, cmap=scale.cmap, norm=scale.norm, linewidths=1.0,
                           alpha=0.7)  # fmt: skip
    lines.set_array(ys[order])
    ax.add_collection(lines)
    for x, c, (low, high) in zip(xs, columns, spans, strict=True):
        ax.axvline(x, color="0.3", linewidth=0.8)
        if c.ticks:
            for tick, label in zip(c.ticks, c.labels, strict=True):
                ax.annotate(label, (x, (tick - low) / (high - low)), fontsize=7, ha="right",
                            va="center", xytext=(-3, 0), textcoords="offset points")  # fmt: skip
        else:
            for end, at in ((low, -0.03), (high, 1.03)):
                ax.annotate(c.text(end), (x, at), fontsize=7, ha="center",
                            va="top" if at < 0 else "bottom")  # fmt: skip
    ax.set_xticks(xs, [c.label() for c in columns], fontsize=8, rotation=15)
    ax.set(xlim=(-0.3, len(columns) - 0.7), ylim=(-0.1, 1.1), yticks=[], title=title)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.colorbar(lines, ax=ax, label=metric)
    return _save(fig, path)


def slices(axes: Sequence[Axis], values: Sequence[float], numbers: Sequence[int], path: Path, *,
           metric: str, title: str) -> Path:  # fmt: skip
    """The value against each parameter, one panel per parameter (at most ``MAX_SLICES``),
    sharing the value axis; points coloured by trial number, so where later trials
    concentrate shows how the sampler narrowed its search."""
    shown = list(axes[:MAX_SLICES])
    ncols = min(4, len(shown))
    nrows = -(-len(shown) // ncols)
    fig, grid = plt.subplots(nrows, ncols, sharey=True, squeeze=False, layout="constrained",
                             figsize=SIZE if nrows == 1 else TALL)  # fmt: skip
    points = None
    for ax, a in zip(grid.flat, shown, strict=False):
        points = ax.scatter(a.at, values, c=numbers, cmap="Blues", s=14, edgecolor="0.4",
                            linewidths=0.3)  # fmt: skip
        if not a.categorical and len(a.ticks) > _SLICE_TICKS:
            a = dataclasses.replace(a, ticks=[], labels=[])
        a.dress(ax, "x")
        if a.log and not a.ticks:  # round values (0.02, 0.05, 0.1), short enough to fit
            ax.set_xticks(_round_log_ticks(*a.span()))
        elif not a.categorical and not a.ticks:  # matplotlib's own ran together here too
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=_SLICE_TICKS - 1))
        ax.grid(alpha=0.3)
    for ax in grid.flat[len(shown) :]:
        ax.set_visible(False)
    for row in grid:
        row[0].set_ylabel(metric)
    fig.suptitle(title)
    if points is not None:
        fig.colorbar(points, ax=grid, label="trial number", fraction=0.03)
    fig.savefig(path, dpi=DPI)  # constrained, not ``_save``'s tight layout: the shared bar
    plt.close(fig)
    return path


def _round_log_ticks(low: float, high: float) -> list[float]:
    """Positions (log10) of round values between ``low`` and ``high`` (log10 positions): 1, 2
    and 5 times a power of ten, or only the powers where those are more than ``_SLICE_TICKS``;
    where fewer than two lie between (learning rates 0.011 to 0.019), the ends too
    (``_ends``), so that a narrow panel is never without numbers."""
    decades = range(int(np.floor(low)), int(np.ceil(high)) + 1)
    for steps in ((1, 2, 5), (1,)):
        ticks = [float(np.log10(m * 10.0**e)) for e in decades for m in steps]
        ticks = [t for t in ticks if low <= t <= high]
        if len(ticks) < 2:
            return sorted({*ticks, *_ends(low, high)})
        if len(ticks) <= _SLICE_TICKS:
            return ticks
    return ticks[:: -(-len(ticks) // _SLICE_TICKS)]


def _ends(low: float, high: float) -> list[float]:
    """Positions (log10) of the ends' values rounded inward, to the fewest significant digits
    (up to six) that keep them apart: 0.012 and 0.018 of 0.0110034 to 0.0189917, not numbers of
    seven digits a narrow panel runs together."""
    lo, hi = 10.0**low, 10.0**high
    for digits in range(1, 7):
        up = 10.0 ** (np.floor(np.log10(lo)) - digits + 1)
        down = 10.0 ** (np.floor(np.log10(hi)) - digits + 1)
        # a tolerance: 10**log10(0.011) is 0.011000000000000001, which must not round up
        a, b = np.ceil(lo / up - 1e-9) * up, np.floor(hi / down + 1e-9) * down
        if a < b:
            return [max(float(low), float(np.log10(a))), min(float(high), float(np.log10(b)))]
    return [float(low), float(high)]


def contour(x: Axis, y: Axis, values: Sequence[float], path: Path, *, scale: Scale,
            metric: str, best: int | None) -> Path:  # fmt: skip
    """The value over two parameters: filled contours interpolated linearly between the
    trials (a Delaunay triangulation of their positions, averaged where several trials share
    one), in the report's ``scale``, the trials on top and the ``best``-th starred. Where
    the trials lie on one line there is nothing to interpolate: the points alone."""
    vs = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=SIZE)
    merged: dict[tuple[float, float], list[float]] = {}
    for px, py, v in zip(x.at, y.at, vs, strict=True):
        if np.isfinite(px) and np.isfinite(py):
            merged.setdefault((px, py), []).append(v)
    if len(merged) >= 3:
        (px, py), pv = np.array(list(merged)).T, [np.mean(v) for v in merged.values()]
        try:
            levels = np.linspace(scale.low, scale.high, 15)
            ax.tricontourf(Triangulation(px, py), pv, levels=levels, extend="both",
                           cmap=scale.cmap, norm=scale.norm)  # fmt: skip
        except (RuntimeError, ValueError):  # collinear points: no triangle to fill
            pass
    # the trials as dots over the colours (painted in them, they vanished into the contours)
    ax.scatter(x.at, y.at, s=10, color="black", alpha=0.7, linewidths=0, label="trial")
    if best is not None:
        ax.scatter([x.at[best]], [y.at[best]], marker="*", s=220, color="tab:red",
                   edgecolor="white", zorder=3,
                   label=f"best: {quantity(metric, vs[best])}")  # fmt: skip
    ax.legend(fontsize=8, loc="best")
    x.dress(ax, "x")
    y.dress(ax, "y")
    for a, limits in ((x, ax.set_xlim), (y, ax.set_ylim)):  # a grid's edge trials stay whole
        low, high = a.span()
        limits(low - 0.04 * (high - low), high + 0.04 * (high - low))
    ax.set_title(f"Contour of {metric} over the two most important parameters", fontsize=10)
    fig.colorbar(matplotlib.cm.ScalarMappable(scale.norm, scale.cmap), ax=ax, label=metric)
    return _save(fig, path)


def edf(values: Sequence[float], path: Path, *, metric: str, maximize: bool,
        title: str, best: str = "best trial") -> Path:  # fmt: skip
    """The empirical distribution function of the values: the share of trials whose value is
    at most x. A curve that rises late means most trials reached high values. ``best``: the
    legend of the line at the best value."""
    ys = np.sort(np.asarray(values, dtype=float))
    share = np.arange(1, len(ys) + 1) / len(ys)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.step(np.r_[ys[0], ys], np.r_[0.0, share], where="post", color="tab:blue", linewidth=1.5)
    ax.axvline(ys[-1] if maximize else ys[0], color="tab:red", linestyle=":", linewidth=1.2,
               label=best)  # fmt: skip
    ax.set(title=title, xlabel=metric, ylabel="share of trials with a value ≤ x", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


@dataclasses.dataclass(frozen=True)
class Span:
    """One trial in the timeline: where it ran, when, and how it ended."""

    worker: str  # the worker's tag (host:pid), or "" where the trial carries none
    start: datetime
    end: datetime
    state: str  # TrialState's name


#: Worker rows a timeline draws at most: a row is 0.28 in high, and 3,000 workers (a worker
#: per trial, as SLURM array tasks are) made a figure 840 in high.
TIMELINE_ROWS = 40  # each of them labelled (the labels step past 40)


def timeline(spans: Sequence[Span], path: Path, *, title: str) -> Path:
    """Each trial as a bar on its worker's row, from its start to its end, in the colour of
    its state: gaps on a row are a worker idle, rows of unequal length workers that ended
    early. Past ``TIMELINE_ROWS`` workers, those with the most trials (the title says so)."""
    first = min(s.start for s in spans)
    total = max((s.end - first).total_seconds() for s in spans)
    unit, per = ("min", 60) if total >= 120 else ("s", 1)  # a quick study in seconds
    workers = sorted({s.worker for s in spans}, key=lambda w: (w == "", w))
    if len(workers) > TIMELINE_ROWS:
        trials = Counter(s.worker for s in spans)
        kept = set(sorted(workers, key=lambda w: -trials[w])[:TIMELINE_ROWS])  # stable: by name
        title += f"\nthe {TIMELINE_ROWS} of its {len(workers):,} workers with the most trials"
        workers = [w for w in workers if w in kept]
        spans = [s for s in spans if s.worker in kept]
    row = {w: i for i, w in enumerate(workers)}
    fig, ax = plt.subplots(figsize=(SIZE[0], max(SIZE[1], 1.5 + 0.28 * len(workers))))
    for state in dict.fromkeys(s.state for s in spans):
        mine = [s for s in spans if s.state == state]
        bars = [((s.start - first).total_seconds() / per,
                 max((s.end - s.start).total_seconds() / per, 1e-3)) for s in mine]  # fmt: skip
        for w in {s.worker for s in mine}:
            ax.broken_barh([b for b, s in zip(bars, mine, strict=True) if s.worker == w],
                           (row[w] - 0.4, 0.8), color=STATE_COLOURS.get(state, "0.5"),
                           edgecolor="white", linewidth=0.3)  # fmt: skip
        ax.barh([], [], color=STATE_COLOURS.get(state, "0.5"), label=state.lower())
    step = max(1, -(-len(workers) // 40))
    ticks = list(range(0, len(workers), step))
    ax.set_yticks(ticks, [printable(workers[i], 40) or "(no worker tag)" for i in ticks],
                  fontsize=7)  # fmt: skip
    ax.set(title=title, xlabel=f"wall time since the first trial began ({unit})", ylabel="worker",
           ylim=(-0.6, len(workers) - 0.4))  # fmt: skip
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)

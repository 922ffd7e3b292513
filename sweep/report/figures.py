"""The figures of a report (and of ``sweep gradcheck``): pure functions from plain data to a
PNG file.

A large study's figures (``sweep.report.digest`` decides when) summarise instead of drawing every
trial: ``binned`` for values over trials or time, ``curve_bands`` for learning curves,
``accuracy_hexbin`` for accuracy against size. They live in ``sweep.report.digest_figures``.

matplotlib is imported here only (here and there, with the headless Agg backend), so that the
rest of the framework, and ``sweep --help``, never pay for it.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sweep.report.quantities import ACCURACY  # the label of every accuracy axis
from sweep.report.scale import Scale

SIZE = (7.5, 4.6)  # inches; at DPI this is 900 × 552 pixels, readable at 100% zoom
TALL = (7.5, 7.6)  # two panels sharing their x axis: 900 × 912 pixels
DPI = 120
#: Heatmap cells that still get a printed value: 9-point text fills a 10 × 10 grid's cells.
LABELLED_CELLS = 100
MAX_TICKS = 20  # per heatmap axis, so that tick labels never overlap
#: Learning curves above which each panel's lines are drawn as one collection, without markers.
MANY_CURVES = 100


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def history(
    numbers: Sequence[int], values: Sequence[float], path: Path, *,
    metric: str = ACCURACY, maximize: bool = True,
) -> Path:  # fmt: skip
    """The objective value of every completed trial, and the best so far (in the study's
    direction)."""
    fig, ax = plt.subplots(figsize=SIZE)
    ax.scatter(numbers, values, s=18, color="tab:blue", label="trial")
    best, running = [], -math.inf if maximize else math.inf
    for v in values:
        running = max(running, v) if maximize else min(running, v)
        best.append(running)
    ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    ax.set(title="Optimisation history", xlabel="trial number", ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")  # "lower right" sat on the last trials of a grid
    return _save(fig, path)


def accuracy_over_time(
    minutes: Sequence[float], values: Sequence[float], path: Path, *,
    reference: tuple[str, float] | None = None,
) -> Path:  # fmt: skip
    """Best validation accuracy so far against wall time since the study's first trial began,
    with an optional reference line (the notebook's best)."""
    fig, ax = plt.subplots(figsize=SIZE)
    order = sorted(range(len(minutes)), key=lambda i: minutes[i])
    best, running = [], -math.inf
    for i in order:
        running = max(running, values[i])
        best.append(running)
    ax.scatter([minutes[i] for i in order], [values[i] for i in order], s=16, color="tab:blue",
               alpha=0.6, label="completed trial")  # fmt: skip
    ax.step([minutes[i] for i in order], best, where="post", color="tab:red", label="best so far")
    if reference is not None:
        ax.axhline(reference[1], color="0.3", linestyle="--", linewidth=1, label=reference[0])
    ax.set(title="Accuracy against search time", xlabel="wall time since the first trial (min)",
           ylabel=ACCURACY)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, path)


class Curve(NamedTuple):
    """One trial's learning curves: the value it reported per step (``label``'s line), whether
    it was pruned, and its training and validation loss per epoch from epoch 1 (empty where it
    stored none: another client's study)."""

    label: str
    steps: Sequence[int]
    values: Sequence[float]
    pruned: bool = False
    train_loss: Sequence[float] = ()
    valid_loss: Sequence[float] = ()


def learning_curves(
    curves: Sequence[Curve], path: Path, *, metric: str = ACCURACY,
    legend_title: str | None = None,
) -> Path:  # fmt: skip
    """The reported value per step, one line per trial; below it, where the trials stored
    them, each one's training (dashed) and validation (solid) loss per epoch in its colour.

    The gap between the two losses is what distortions of the training digits and dropout
    open (they make training harder than validation), so it is drawn, not only the value.
    With ``legend_title`` the labels are groups (``learning_rate = 0.1``): one colour and one
    legend entry each, so that 24 lines read as three families. Pruned trials are grey and
    dashed, so the survivors stand out.
    """
    if len(curves) > MANY_CURVES:
        return _many_curves(curves, path, metric=metric, legend_title=legend_title)
    fig, ax, loss_ax = _with_losses(curves)
    colours: dict[str, str] = {}
    for c in curves:
        if c.pruned:
            line = ax.plot(c.steps, c.values, color="0.6", linestyle="--", linewidth=1,
                           label="_pruned")  # fmt: skip
        elif legend_title is not None:
            first = c.label not in colours
            colour = colours.setdefault(c.label, f"C{len(colours) % 10}")
            line = ax.plot(c.steps, c.values, marker="o", markersize=3, linewidth=1.2,
                           color=colour, alpha=0.8,
                           label=c.label if first else "_same")  # fmt: skip
        else:
            line = ax.plot(c.steps, c.values, marker="o", markersize=3, linewidth=1.2,
                           label=c.label)  # fmt: skip
        if loss_ax is not None:
            _losses(loss_ax, c, line[0].get_color())
    if any(c.pruned for c in curves):
        ax.plot([], [], color="0.6", linestyle="--", label="pruned")
    if loss_ax is not None:
        _finish_losses(loss_ax, curves)
    ax.set(title="Learning curves", xlabel="" if loss_ax else "epoch", ylabel=metric)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(ax.get_legend_handles_labels()[1]) <= 12:  # beyond that a legend hides the curves
        ax.legend(fontsize=7, loc="lower right", title=legend_title, title_fontsize=7)
    return _save(fig, path)


def _many_curves(curves: Sequence[Curve], path: Path, *, metric: str,
                 legend_title: str | None) -> Path:  # fmt: skip
    """``learning_curves`` of more than ``MANY_CURVES`` trials: the same lines, colours and
    styles without markers, each panel's lines one collection (3,000 separate lines took 3.6 s
    of a 5.4 s report of 1,000 trials)."""
    from matplotlib.collections import LineCollection

    fig, ax, loss_ax = _with_losses(curves)
    groups = dict.fromkeys(c.label for c in curves if not c.pruned)
    colour = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    colours = ["0.6" if c.pruned else colour[c.label] for c in curves]
    ax.add_collection(LineCollection(
        [np.column_stack([c.steps, c.values]) for c in curves], colors=colours, linewidths=0.8,
        alpha=0.6, linestyles=["--" if c.pruned else "-" for c in curves]))  # fmt: skip
    ax.autoscale_view()
    if loss_ax is not None:
        for key, style in (("train_loss", "--"), ("valid_loss", "-")):
            drawn = [(np.column_stack([np.arange(1, len(v) + 1), v]), k)
                     for c, k in zip(curves, colours, strict=True)
                     if (v := getattr(c, key))]  # fmt: skip
            loss_ax.add_collection(LineCollection([d for d, _ in drawn], linestyles=style,
                                                  colors=[k for _, k in drawn], linewidths=0.8,
                                                  alpha=0.6, label="_loss"))  # fmt: skip
        loss_ax.autoscale_view()
        _finish_losses(loss_ax, curves)
    if legend_title is not None and len(groups) <= 12:
        for g in groups:
            ax.plot([], [], color=colour[g], label=g)
    if any(c.pruned for c in curves):
        ax.plot([], [], color="0.6", linestyle="--", label="pruned")
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7, loc="lower right", title=legend_title, title_fontsize=7)
    ax.set(title=f"Learning curves ({len(curves):,} trials)", xlabel="" if loss_ax else "epoch",
           ylabel=metric)  # fmt: skip
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _with_losses(curves: Sequence[Curve]) -> tuple[plt.Figure, plt.Axes, plt.Axes | None]:
    """A figure for learning curves: one panel, or two (value above, loss below, sharing the
    epochs) when any curve has a loss."""
    if not any(c.train_loss or c.valid_loss for c in curves):
        fig, ax = plt.subplots(figsize=SIZE)
        return fig, ax, None
    fig, (ax, loss_ax) = plt.subplots(2, 1, sharex=True, figsize=TALL)
    return fig, ax, loss_ax


def _losses(ax: plt.Axes, c: Curve, colour: str) -> None:
    """A curve's training (dashed) and validation (solid) loss per epoch, in ``colour``."""
    faint = {"alpha": 0.5, "linewidth": 0.8} if c.pruned else {"linewidth": 1.2}
    for values, style in ((c.train_loss, "--"), (c.valid_loss, "-")):
        ax.plot(range(1, len(values) + 1), values, color=colour, linestyle=style,
                label="_loss", **faint)  # fmt: skip


def _finish_losses(ax: plt.Axes, curves: Sequence[Curve]) -> None:
    """The loss panel's key to its two styles, labels and scale: logarithmic where every loss
    is positive (a gap of 0.03 against 0.01 then shows as plainly as 0.3 against 0.1)."""
    lowest = min((min(v) for c in curves for v in (c.train_loss, c.valid_loss) if v), default=1)
    ax.plot([], [], color="0.2", linestyle="--", label="training loss")
    ax.plot([], [], color="0.2", linestyle="-", label="validation loss")
    ax.legend(fontsize=7, loc="upper right")
    ax.set(title="Loss per epoch", xlabel="epoch", ylabel="cross-entropy")
    ax.set_yscale("log" if lowest > 0 else "linear")
    plain = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}")  # 0.4, not 4 × 10⁻¹
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(alpha=0.3, which="both")


def accuracy_vs_params(
    n_params: Sequence[int], values: Sequence[float], bounds: tuple[int, int], path: Path, *,
    groups: Sequence[str] | None = None, legend_title: str | None = None,
    front: Sequence[bool] | None = None,
) -> Path:  # fmt: skip
    """Final validation accuracy against model size, with the budget's bounds drawn; points
    coloured by ``groups`` (the learning curves' colours, in the same order) if given; the
    non-dominated points (``front``: no other trial as accurate with as few parameters) ringed
    and joined by a step line, so a single-objective study shows its front too (#26)."""
    fig, ax = plt.subplots(figsize=SIZE)
    if groups is None:
        ax.scatter(n_params, values, s=22, color="tab:blue", label="trial")
    else:
        for i, group in enumerate(dict.fromkeys(groups)):
            mine = [k for k, g in enumerate(groups) if g == group]
            ax.scatter([n_params[k] for k in mine], [values[k] for k in mine], s=22,
                       color=f"C{i % 10}", label=group)  # fmt: skip
    if front is not None:
        _front_line(ax, n_params, values, front, "non-dominated (max accuracy, min parameters)")
    if groups is not None or front is not None:
        ax.legend(fontsize=7, loc="best", title=legend_title, title_fontsize=7)
    _bounds(ax, bounds)
    ax.set(title="Accuracy against parameter count", xlabel="parameters",
           ylabel=ACCURACY)  # fmt: skip
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _bounds(ax: plt.Axes, bounds: tuple[int, int]) -> None:
    """The budget's bounds on the parameter axis, as labelled vertical lines."""
    for b, name in zip(bounds, ("min_params", "max_params"), strict=True):
        ax.axvline(b, color="tab:red", linestyle=":", linewidth=1.2)
        ax.annotate(f"{name} = {b:,}", (b, 0.02), xycoords=("data", "axes fraction"),
                    rotation=90, fontsize=8, color="tab:red", ha="right")  # fmt: skip


def _front_line(ax: plt.Axes, xs: Sequence[float], ys: Sequence[float], on: Sequence[bool],
                label: str) -> None:  # fmt: skip
    """The points ``on`` the front (maximised y, minimised x), ringed and joined by the step
    line of what each x buys: the best y at that x or less holds until the next point."""
    points = sorted((x, y) for x, y, o in zip(xs, ys, on, strict=True) if o)
    if points:
        ax.step([x for x, _ in points], [y for _, y in points], where="post", color="tab:red",
                linewidth=1.4, marker="o", markersize=8, markerfacecolor="none",
                label=label)  # fmt: skip


def pareto(
    xs: Sequence[float], ys: Sequence[float], path: Path, *, front: Sequence[bool],
    steps: Sequence[bool], xlabel: str, title: str, bounds: tuple[int, int] | None = None,
) -> Path:  # fmt: skip
    """Validation accuracy (``ys``) against a minimised objective (``xs``: parameters, or
    seconds per epoch): the study's front (``front``: optuna's ``best_trials``) in full colour,
    the dominated trials faded, the step line through the points non-dominated in these two
    (``steps``: the front itself with two objectives), and the budget's ``bounds``."""
    fig, ax = plt.subplots(figsize=SIZE)
    faded = {"color": "0.55", "alpha": 0.35, "label": "dominated trial"}
    for on, style in ((False, faded), (True, {"color": "tab:blue", "label": "on the front"})):
        mine = [k for k, f in enumerate(front) if f == on]
        if mine:
            ax.scatter([xs[k] for k in mine], [ys[k] for k in mine], s=22, zorder=3, **style)
    _front_line(ax, xs, ys, steps, "non-dominated in these two")
    if bounds is not None:
        _bounds(ax, bounds)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.set(title=title, xlabel=xlabel, ylabel=ACCURACY)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")  # the front's ends sit in any corner
    return _save(fig, path)


def hypervolume(numbers: Sequence[int], volumes: Sequence[float], path: Path, *,
                ylabel: str) -> Path:  # fmt: skip
    """The hypervolume of the trials completed up to each trial number."""
    fig, ax = plt.subplots(figsize=SIZE)
    ax.step(numbers, volumes, where="post", color="tab:blue", marker="o", markersize=3)
    ax.set(title="Hypervolume over trials", xlabel="trial number", ylabel=ylabel)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def importances(scores: dict[str, float], path: Path, *, metric: str = ACCURACY) -> Path:
    """Parameter importances (optuna's default evaluator, PED-ANOVA), largest on top."""
    names = sorted(scores, key=scores.get)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.barh(names, [scores[n] for n in names], color="tab:blue")
    ax.set(title="Parameter importances",
           xlabel=f"importance for {metric}, the parameters' sum 1 (PED-ANOVA)")  # fmt: skip
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def grid_heatmap(
    title: str, rows: Sequence[int], cols: Sequence[int], cells: dict[tuple[int, int], float],
    path: Path, *, scale: Scale | None = None, label: str = ACCURACY,
) -> Path:  # fmt: skip
    """hidden_1 × hidden_2 cells annotated with validation accuracy (up to ``LABELLED_CELLS``
    cells; a larger grid is read by its colours alone), coloured in the report's ``scale``
    (default: the span of these cells alone); missing cells blank."""
    scale = scale or Scale.of(list(cells.values()))
    grid = np.full((len(rows), len(cols)), np.nan)
    for (r, c), v in cells.items():
        grid[rows.index(r), cols.index(c)] = v
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    image = ax.imshow(grid, origin="lower", aspect="auto", **scale.kwargs())
    labelled = len(rows) * len(cols) <= LABELLED_CELLS
    for i in range(len(rows) if labelled else 0):
        for j in range(len(cols)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color=scale.text_colour(grid[i, j]), fontweight="bold")  # fmt: skip
    # every tick where they fit; beyond MAX_TICKS, evenly spaced ones (the colours carry it)
    xs = range(0, len(cols), max(1, math.ceil(len(cols) / MAX_TICKS)))
    ys = range(0, len(rows), max(1, math.ceil(len(rows) / MAX_TICKS)))
    ax.set_xticks(xs, [str(cols[j]) for j in xs])
    ax.set_yticks(ys, [str(rows[i]) for i in ys])
    ax.set(title=title, xlabel="hidden_2", ylabel="hidden_1")
    fig.colorbar(image, ax=ax, label=f"{label}, one scale for the report")
    return _save(fig, path)


def distortions(originals: np.ndarray, draws: Sequence[np.ndarray], path: Path, *,
                title: str) -> Path:  # fmt: skip
    """Training digits as they are (first column) and as each of ``draws`` distorted them (one
    column per draw), a digit per row: ``originals`` and every draw (n, 784) in [0, 1)."""
    side, gap = 28, 2
    n, columns = len(originals), 1 + len(draws)
    tiles = np.stack([originals, *draws], axis=1).reshape(n, columns, side, side)
    mosaic = np.full((n * (side + gap) - gap, columns * (side + gap) - gap), np.nan)
    for r in range(n):
        for c in range(columns):
            top, left = r * (side + gap), c * (side + gap)
            mosaic[top : top + side, left : left + side] = tiles[r, c]
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * columns, 1.2 + 0.62 * n))
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="white")
    ax.imshow(mosaic, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.axvline(side + gap / 2 - 0.5, color="tab:red", linewidth=1)  # originals | draws
    ax.set_xticks([c * (side + gap) + side / 2 - 0.5 for c in range(columns)],
                  ["as is", *(str(k) for k in range(1, columns))], fontsize=8)  # fmt: skip
    ax.set_yticks([])
    ax.set_xlabel("fresh draws of the distortions", fontsize=8)
    ax.set_title(textwrap.fill(title, width=12 * columns), fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return _save(fig, path)


def init_loss(losses: dict[str, Sequence[float]], path: Path, *, log: bool = False) -> int:
    """Training loss per epoch, one line per initialisation (the notebook's figure).

    Returns the number of lines drawn.
    """
    fig, ax = plt.subplots(figsize=SIZE)
    # Zeros and Normal can draw the same flat line; distinct dashes keep both visible.
    for (name, values), style in zip(losses.items(), ["-", "--", ":", "-."] * 4, strict=False):
        ax.plot(range(1, len(values) + 1), values, linestyle=style, marker="o", markersize=3,
                label=name)  # fmt: skip
    if log:
        ax.set_yscale("log")
    ax.set(title="Training loss by initialisation", xlabel="epoch",
           ylabel="mean training cross-entropy" + (" (log scale)" if log else ""))  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    drawn = len(ax.get_lines())
    _save(fig, path)
    return drawn


def gradcheck(ns: Sequence[int], diffs: Sequence[float], path: Path) -> Path:
    """max |finite difference - backprop| against N = 1/ε, log-log."""
    fig, ax = plt.subplots(figsize=SIZE)
    ax.loglog(ns, diffs, marker="o", color="tab:blue")
    ax.set(title="Gradient check: finite differences against backprop",
           xlabel="N (ε = 1/N)", ylabel="max |finite difference − backprop|")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)

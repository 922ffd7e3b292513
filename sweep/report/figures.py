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
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sweep.study.spec import METRIC as ACCURACY

SIZE = (7.5, 4.6)  # inches; at DPI this is 900 × 552 pixels, readable at 100% zoom
DPI = 120
#: Heatmap cells that still get a printed value: 9-point text fills a 10 × 10 grid's cells.
LABELLED_CELLS = 100
MAX_TICKS = 20  # per heatmap axis, so that tick labels never overlap


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


def learning_curves(
    curves: Sequence[tuple[str, Sequence[int], Sequence[float], bool]], path: Path, *,
    metric: str = ACCURACY, legend_title: str | None = None,
) -> Path:  # fmt: skip
    """The reported value per step, one line per trial (label, steps, values, pruned).

    With ``legend_title`` the labels are groups (``learning_rate = 0.1``): one colour and one
    legend entry each, so that 24 lines read as three families. Pruned trials are grey and
    dashed, so the survivors stand out.
    """
    fig, ax = plt.subplots(figsize=SIZE)
    colours: dict[str, str] = {}
    for label, epochs, acc, pruned in curves:
        if pruned:
            ax.plot(epochs, acc, color="0.6", linestyle="--", linewidth=1, label="_pruned")
        elif legend_title is not None:
            first = label not in colours
            colour = colours.setdefault(label, f"C{len(colours) % 10}")
            ax.plot(epochs, acc, marker="o", markersize=3, linewidth=1.2, color=colour,
                    alpha=0.8, label=label if first else "_same")  # fmt: skip
        else:
            ax.plot(epochs, acc, marker="o", markersize=3, linewidth=1.2, label=label)
    if any(p for *_, p in curves):
        ax.plot([], [], color="0.6", linestyle="--", label="pruned")
    ax.set(title="Learning curves", xlabel="epoch", ylabel=metric)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(ax.get_legend_handles_labels()[1]) <= 12:  # beyond that a legend hides the curves
        ax.legend(fontsize=7, loc="lower right", title=legend_title, title_fontsize=7)
    return _save(fig, path)


def accuracy_vs_params(
    n_params: Sequence[int], values: Sequence[float], bounds: tuple[int, int], path: Path, *,
    groups: Sequence[str] | None = None, legend_title: str | None = None,
) -> Path:  # fmt: skip
    """Final validation accuracy against model size, with the budget's bounds drawn; points
    coloured by ``groups`` (the learning curves' colours, in the same order) if given."""
    fig, ax = plt.subplots(figsize=SIZE)
    if groups is None:
        ax.scatter(n_params, values, s=22, color="tab:blue", label="trial")
    else:
        for i, group in enumerate(dict.fromkeys(groups)):
            mine = [k for k, g in enumerate(groups) if g == group]
            ax.scatter([n_params[k] for k in mine], [values[k] for k in mine], s=22,
                       color=f"C{i % 10}", label=group)  # fmt: skip
        ax.legend(fontsize=7, loc="best", title=legend_title, title_fontsize=7)
    for b, name in zip(bounds, ("min_params", "max_params"), strict=True):
        ax.axvline(b, color="tab:red", linestyle=":", linewidth=1.2)
        ax.annotate(f"{name} = {b:,}", (b, 0.02), xycoords=("data", "axes fraction"),
                    rotation=90, fontsize=8, color="tab:red", ha="right")  # fmt: skip
    ax.set(title="Accuracy against parameter count", xlabel="parameters",
           ylabel=ACCURACY)  # fmt: skip
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
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
    path: Path,
) -> Path:  # fmt: skip
    """hidden_1 × hidden_2 cells annotated with validation accuracy (up to ``LABELLED_CELLS``
    cells; a larger grid is read by its colours alone); missing cells blank."""
    import numpy as np

    grid = np.full((len(rows), len(cols)), np.nan)
    for (r, c), v in cells.items():
        grid[rows.index(r), cols.index(c)] = v
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    image = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    labelled = len(rows) * len(cols) <= LABELLED_CELLS
    for i in range(len(rows) if labelled else 0):
        for j in range(len(cols)):
            if not np.isnan(grid[i, j]):
                # dark text on viridis' bright (yellow-green) end, white on its dark end
                bright = image.norm(grid[i, j]) > 0.6
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="black" if bright else "white", fontweight="bold")  # fmt: skip
    # every tick where they fit; beyond MAX_TICKS, evenly spaced ones (the colours carry it)
    xs = range(0, len(cols), max(1, math.ceil(len(cols) / MAX_TICKS)))
    ys = range(0, len(rows), max(1, math.ceil(len(rows) / MAX_TICKS)))
    ax.set_xticks(xs, [str(cols[j]) for j in xs])
    ax.set_yticks(ys, [str(rows[i]) for i in ys])
    ax.set(title=title, xlabel="hidden_2 (units)", ylabel="hidden_1 (units)")
    fig.colorbar(image, ax=ax, label=ACCURACY)
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

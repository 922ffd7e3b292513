"""A large study's figures: distributions over trials instead of one mark per trial.

Ten thousand dots or lines are an opaque blot that takes minutes to draw (one learning curve
per trial cost 17 s of a 45 s report at 10⁴ trials). These figures bin or summarise: values
over trials or time as per-bin quantiles with the running best, learning curves as a median
and 10–90% band over a sample of trials with the best few drawn as lines, accuracy against size
as a hexagonal 2-D histogram. Pure functions from plain data to a PNG, like ``sweep.report.figures``
(whose size, resolution and saving they share).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

from sweep.report.figures import (
    ACCURACY,
    SIZE,
    Curve,
    _finish_losses,
    _losses,
    _save,
    _with_losses,
    plt,
)

BINS = 100  # bins along the x axis of ``binned``: ~9 pixels each at the figures' width
MIN_PER_STEP = 5  # trials at a step below which a learning-curve band is not drawn


def _running_best(x: np.ndarray, y: np.ndarray, maximize: bool) -> tuple[np.ndarray, np.ndarray]:
    """The best value so far along ``x``, at the points where it changes (and the last x)."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    best = np.maximum.accumulate(y) if maximize else np.minimum.accumulate(y)
    changes = np.flatnonzero(np.r_[True, best[1:] != best[:-1]])
    return np.r_[x[changes], x[-1]], np.r_[best[changes], best[-1]]


def binned(
    x: Sequence[float], y: Sequence[float], path: Path, *, title: str, xlabel: str,
    ylabel: str = ACCURACY, maximize: bool = True, reference: tuple[str, float] | None = None,
) -> Path:  # fmt: skip
    """Values against ``x`` (trial number, minutes) in ``BINS`` bins: each bin's median and
    10–90% band, and the best value so far (in the study's direction) as a step line."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    edges = np.linspace(xs.min(), xs.max(), BINS + 1) if len(xs) else np.zeros(2)
    which = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, BINS - 1)
    centres, low, mid, high = [], [], [], []
    for b in np.unique(which):
        inside = ys[which == b]
        centres.append((edges[b] + edges[b + 1]) / 2)
        q10, q50, q90 = np.quantile(inside, [0.1, 0.5, 0.9])
        low.append(q10), mid.append(q50), high.append(q90)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.fill_between(centres, low, high, color="tab:blue", alpha=0.25, linewidth=0,
                    label="10–90% of the trials in a bin")  # fmt: skip
    ax.plot(centres, mid, color="tab:blue", linewidth=1.2, marker=".", markersize=4,
            label="median of a bin")  # fmt: skip
    bx, by = _running_best(xs, ys, maximize)
    ax.step(bx, by, where="post", color="tab:red", linewidth=1.5, label="best so far")
    if reference is not None:
        ax.axhline(reference[1], color="0.3", linestyle="--", linewidth=1, label=reference[0])
    ax.set(title=f"{title} ({len(xs):,} trials in {BINS} bins)", xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if maximize else "upper right", fontsize=8)
    return _save(fig, path)


def curve_bands(
    sampled: Sequence[tuple[Sequence[int], Sequence[float]]],
    best: Sequence[Curve], path: Path, *, metric: str = ACCURACY, of: int,
) -> Path:  # fmt: skip
    """Learning curves of many trials: per step, the median and 10–90% band over the
    ``sampled`` curves (steps, values) of ``of`` trials in all, and the ``best`` few as lines,
    with their training and validation losses below where they stored them (as
    ``figures.learning_curves`` draws them). Non-finite values are left out; a step reached
    by fewer than ``MIN_PER_STEP`` sampled trials gets no band."""
    at: dict[int, list[float]] = {}
    for steps, values in sampled:
        for s, v in zip(steps, values, strict=True):
            if np.isfinite(v):
                at.setdefault(s, []).append(v)
    steps = sorted(s for s, vs in at.items() if len(vs) >= MIN_PER_STEP)
    q = np.array([np.quantile(at[s], [0.1, 0.5, 0.9]) for s in steps]).reshape(-1, 3)
    fig, ax, loss_ax = _with_losses(best)
    ax.fill_between(steps, q[:, 0], q[:, 2], color="tab:blue", alpha=0.25, linewidth=0,
                    label="10–90% of the sampled trials")  # fmt: skip
    ax.plot(steps, q[:, 1], color="tab:blue", linewidth=2, label="median")
    for i, c in enumerate(best):
        colour = f"C{(i + 1) % 10}"
        ax.plot(c.steps, c.values, color=colour, marker="o", markersize=3, linewidth=1.2,
                label=c.label)  # fmt: skip
        if loss_ax is not None:
            _losses(loss_ax, c, colour)
    if loss_ax is not None:
        _finish_losses(loss_ax, best)
    ax.set(title=f"Learning curves: {len(sampled):,} of {of:,} trials, sampled evenly",
           xlabel="" if loss_ax else "epoch", ylabel=metric)  # fmt: skip
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def accuracy_hexbin(
    n_params: Sequence[int], values: Sequence[float], bounds: tuple[int, int], path: Path, *,
    best: tuple[int, float] | None = None,
) -> Path:  # fmt: skip
    """Final validation accuracy against model size as a 2-D histogram of hexagonal cells
    coloured by how many trials fall in each (log scale), the budget's bounds and the best
    trial marked."""
    fig, ax = plt.subplots(figsize=SIZE)
    cells = ax.hexbin(n_params, values, gridsize=(60, 25), bins="log", mincnt=1, cmap="viridis",
                      linewidths=0)  # fmt: skip
    fig.colorbar(cells, ax=ax, label="trials per cell (log scale)")
    if best is not None:
        ax.scatter([best[0]], [best[1]], marker="*", s=160, color="tab:red", edgecolor="white",
                   zorder=3, label="best trial")  # fmt: skip
        ax.legend(fontsize=8, loc="best")
    for b, name in zip(bounds, ("min_params", "max_params"), strict=True):
        ax.axvline(b, color="tab:red", linestyle=":", linewidth=1.2)
        ax.annotate(f"{name} = {b:,}", (b, 0.02), xycoords=("data", "axes fraction"),
                    rotation=90, fontsize=8, color="tab:red", ha="right")  # fmt: skip
    ax.set(title=f"Accuracy against parameter count ({len(values):,} trials)",
           xlabel="parameters", ylabel=ACCURACY)  # fmt: skip
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.grid(alpha=0.3)
    return _save(fig, path)

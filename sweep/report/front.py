"""A study of several objectives: its Pareto front, how its values read, and its report.

The front is the study's non-dominated COMPLETE trials, optuna's ``study.best_trials``
(tests/sweep/test_report_front.py holds them equal), found from the values alone
(``sweep.queue.front.along``, as every other part of sweep finds it): so
``sweep status`` finds it from one read of the complete trials' values
(``sweep.queue.status_reads``), the table at the end of ``sweep run`` without reading every
trial whole, and a report without ``best_trials`` raising on a trial another client stored
with too few values. It is listed along the front, the first objective's best first (sweep's:
the most accurate network first, down to the smallest).

A value reads as its objective says (``sweep.study.objectives``): accuracy to 2 decimals in
percent, parameters as an integer with separators, seconds per epoch with the label saying
they were measured on the trial's worker; another client's values plainly, integers as
integers. The hypervolume is optuna's exact one, against a reference point stated with it.

Light at import (numpy, optuna): ``sweep status`` reads fronts with it, and only the report's
``write`` loads matplotlib (``sweep.report.figures``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import optuna
from optuna.trial import TrialState

from sweep.queue.front import along, non_dominated
from sweep.report.shown import md_table, network, param_names, reason
from sweep.report.stored import Kind, count, printable
from sweep.study.audit import outside_budget, outside_line, outside_numbers
from sweep.study.objectives import ACCURACY, EPOCH_TIME, PARAMS, Objective

T = TypeVar("T")  # optuna's FrozenTrial, or ``status_reads.Valued``: a state and values
#: Points on the hypervolume curve, evenly spread over the trials: each is one exact
#: computation over the trials before it, and 200 draw a curve as smooth as every trial would.
CURVE_POINTS = 200
#: The note of a trial on the front, in every table and CSV that marks it.
ON_FRONT = "Pareto front"
#: Where each of sweep's objectives is at its best: the far corner of the hypervolume's box.
IDEAL = {ACCURACY.name: 100.0, PARAMS.name: 0.0, EPOCH_TIME.name: 0.0}


def _number(v: Any) -> float | None:
    """A stored value as a number (±inf included, as optuna's front includes it); None for
    NaN or anything else (SQLite hands back the text SQL stored as a value)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
        return None
    return float(v)


def finite_values(listed: Sequence[Any], k: int) -> list[tuple[Any, tuple[float, ...]]]:
    """The COMPLETE trials of ``listed`` with ``k`` finite values, and those, by number: the
    ones a figure can place."""
    placed = ((t, v) for t in listed if (v := readable_values(t, k)) and all(map(math.isfinite, v)))
    return sorted(placed, key=lambda p: p[0].number)


def readable_values(t: Any, k: int) -> tuple[float, ...] | None:
    """A COMPLETE trial's ``k`` values, if it holds ``k`` numbers; None for any other trial."""
    values = t.values if t.state == TrialState.COMPLETE else None
    if values is None or len(values) != k:
        return None
    out = tuple(_number(v) for v in values)
    return None if None in out else out  # type: ignore[return-value]


def losses(values: Sequence[float], objectives: Sequence[Objective]) -> tuple[float, ...]:
    """Values as losses, lower is better in each: maximised ones negated."""
    return tuple(-v if o.maximize else v for v, o in zip(values, objectives, strict=True))


def front(trials: Sequence[T], objectives: Sequence[Objective]) -> list[T]:
    """The non-dominated COMPLETE trials (optuna's ``study.best_trials``), along the front:
    the first objective's best first, then the next objective's, then by number."""
    placed = [t for t in trials if readable_values(t, len(objectives)) is not None]
    return along(placed, [o.maximize for o in objectives])


def first(t: Any) -> float | None:
    """A trial's first value (sweep's: its accuracy), None if it has none: how the trials off
    the front are ordered (``sweep.report.summary.ordered``)."""
    return _number(t.values[0]) if t.values else None


def value_text(o: Objective, v: float | None, *, sweep: bool) -> str:
    """One value as a table shows it: accuracy to 2 decimals, integers (parameters, any
    client's whole numbers) with separators, a measured time to 3 digits (the worker's load
    moves the next), anything else to 6."""
    if v is None:
        return ""
    if _number(v) is None:
        return printable(str(v), 20)  # "nan", or whatever text SQL stored
    v = float(v)
    if sweep and o.name == ACCURACY.name and math.isfinite(v):
        return f"{v:.2f}"
    if v.is_integer() and abs(v) < 2**53:
        return f"{int(v):,}"
    return f"{v:.3g}" if sweep and o.measured else f"{v:.6g}"


def _with_unit(o: Objective, v: float, *, sweep: bool) -> str:
    """``86.83%``, ``34,195 parameters``, ``0.06 s``; another client's ``loss 0.2``."""
    text = value_text(o, v, sweep=sweep)
    if not o.unit:
        return f"{o.label} {text}"
    return text + ("" if o.unit == ACCURACY.unit else " ") + o.unit


def point_text(kind: Kind, t: Any) -> str:
    """A trial's place in the objectives: ``86.83% at 34,195 parameters`` (sweep's study),
    ``loss 0.2, size 1,000`` (another client's)."""
    head, *rest = [_with_unit(o, v, sweep=kind.sweep)
                   for o, v in zip(kind.objectives, t.values, strict=True)]  # fmt: skip
    return f"{head} at {', '.join(rest)}" if kind.sweep else ", ".join([head, *rest])


def ends_text(kind: Kind, along: Sequence[Any]) -> str | None:
    """The front's size and its two ends, the first objective's worst end first: ``front 5
    trials: 97.10% at 512,000 parameters (trial 3) … 98.32% at 937,000 parameters (trial 8)``;
    a measured objective's unit is explained after them. None for an empty front."""
    if not along:
        return None
    return f"front {len(along)} trial{'s' if len(along) > 1 else ''}: {_ends(kind, along)}"


def _ends(kind: Kind, along: Sequence[Any]) -> str:
    low, high = along[-1], along[0]
    text = f"{point_text(kind, low)} (trial {low.number})"
    if len(along) > 1:
        text += f" … {point_text(kind, high)} (trial {high.number})"
    return text + "".join(f"; {o.unit}: {o.label}" for o in kind.objectives if o.measured)


def reference(kind: Kind, done: Sequence[Any]) -> list[tuple[float, str]] | None:
    """The hypervolume's reference point of a sweep study, one (value, why) per objective:
    accuracy 0 %, the budget's max_params, the largest measured time among ``done`` (the
    placeable trials); None for another client's study (no natural one) or no measured time."""
    if kind.spec is None:
        return None
    out = []
    for i, o in enumerate(kind.objectives):
        if o.name == ACCURACY.name:
            out.append((0.0, ""))
        elif o.name == PARAMS.name:
            out.append((float(kind.spec.budget.max_params), "the budget's max_params"))
        else:
            times = [v for t in done if math.isfinite(v := t.values[i])]
            if not times:
                return None
            out.append((max(times), "the largest measured"))
    return out


def hypervolumes(done: Sequence[Any], objectives: Sequence[Objective],
                 ref: Sequence[float]) -> tuple[list[int], list[float]]:  # fmt: skip
    """The hypervolume of the trials up to each of ``CURVE_POINTS`` trial numbers spread over
    ``done`` (by number): optuna's exact computation (``optuna._hypervolume``, private, the one
    its ``plot_hypervolume_history`` uses). A trial beyond the reference point in an objective
    adds nothing, so it is left out, as is one with an infinite value."""
    from optuna._hypervolume import compute_hypervolume

    if not done:
        return [], []
    loss = np.array([losses(t.values, objectives) for t in done])
    point = np.array(losses(ref, objectives))
    inside = np.all(np.isfinite(loss), axis=1) & np.all(loss <= point, axis=1)
    ends = np.unique(np.linspace(1, len(done), min(len(done), CURVE_POINTS)).round().astype(int))
    volumes = [float(compute_hypervolume(loss[:e][inside[:e]], point)) for e in ends]
    return [done[e - 1].number for e in ends], volumes


def _plain(v: Any) -> Any:
    """A value in the CSV: whole numbers as integers (``937500``, never ``937500.0``)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return "" if v is None else v


def write(study: optuna.Study, listed: Sequence[Any], along: Sequence[Any], kind: Kind,
          out: Path, files: list[str], standard: Sequence[str] = ()) -> str | None:  # fmt: skip
    """The report of a study of several objectives: ``listed`` (its trials, the front first,
    ``sweep.report.summary.listed``) in trials.csv and report.md, ``along`` (its front) as a
    table; for sweep's study, figures of accuracy against parameters and time with the front
    drawn, and the hypervolume over trials; then ``standard``, the sections of the standard
    plots already drawn (``sweep.report.drawn.draw_front_standard``). Returns the front's ends
    (``ends_text``)."""
    k, names, on = len(kind.objectives), param_names(listed), {t.number for t in along}
    ours = ["network", "n_params"] if kind.sweep else []
    with (out / "trials.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", *names, *ours, *kind.metrics, "pareto_front", "reason",
                    "outside_budget"])  # fmt: skip
        for t in listed:
            values = list(t.values or []) + [None] * k
            sized = [network(t), count(t, "n_params") or ""] if kind.sweep else []
            flag = outside_budget(t.params, kind.spec) if kind.spec is not None else None
            w.writerow([t.number, t.state.name, *(_plain(t.params.get(n)) for n in names),
                        *sized, *(_plain(v) for v in values[:k]), int(t.number in on),
                        reason(t), flag or ""])  # fmt: skip
    counts = {s.name.lower(): sum(t.state == s for t in listed) for s in TrialState}
    lines = [f"# Study `{printable(study.study_name, 400)}`", ""]
    if kind.spec is not None:
        spec = kind.spec
        lines += [f"- sampler: {spec.sampler}"
                  + (f" (population {spec.population})" if spec.sampler == "nsga2" else "")
                  + f", pruner: {spec.pruner}",
                  f"- budget: {spec.budget.min_params:,} < parameters < "
                  f"{spec.budget.max_params:,}"]  # fmt: skip
    else:
        lines.append("- not made by sweep (several objectives): a plain report of its values")
    directions = ", ".join(d.name.lower() for d in study.directions)
    lines += [f"- directions: {directions}; metrics: {kind.metric}",
              "- trials: " + ", ".join(f"{n:,} {s}" for s, n in counts.items() if n),
              f"- {len(along)} trial(s) on the Pareto front"
              + (f": {_ends(kind, along)}" if along else "")]  # fmt: skip
    if kind.spec is not None and (outside := outside_line(outside_numbers(listed, kind.spec))):
        lines.append(outside)
    lines.append("")
    if kind.sweep:
        lines += _drawn(listed, on, kind, out, files)
    lines += standard
    front_rows = [[t.number, *([network(t)] if kind.sweep else []),
                   *(value_text(o, v, sweep=kind.sweep) for o, v in zip(kind.objectives, t.values,
                                                                          strict=True)),
                   *(t.params.get(n, "") for n in names)] for t in along]  # fmt: skip
    rows = []
    for t in listed:
        values = list(t.values or []) + [None] * k
        note = ON_FRONT if t.number in on else reason(t)
        if kind.spec is not None and (flag := outside_budget(t.params, kind.spec)):
            note = f"{note}; {flag}" if note else flag
        rows.append([t.number, t.state.name.lower(), *(t.params.get(n, "") for n in names),
                     *([network(t)] if kind.sweep else []),
                     *(value_text(o, v, sweep=kind.sweep)
                       for o, v in zip(kind.objectives, values[:k], strict=True)),
                     note])  # fmt: skip
    net = ["network"] if kind.sweep else []
    lines += ["## The Pareto front", "", "Its trials along it, the best "
              f"{kind.metrics[0]} first.", "",
              md_table(["#", *net, *kind.metrics, *names], front_rows), "",
              "## Trials", "", md_table(["#", "state", *names, *net, *kind.metrics, "note"], rows),
              ""]  # fmt: skip
    (out / "report.md").write_text("\n".join(lines))
    return ends_text(kind, along)


def _drawn(listed: Sequence[Any], on: set[int], kind: Kind, out: Path,
           files: list[str]) -> list[str]:  # fmt: skip
    """Sweep's figures of the front, and the hypervolume's sections of report.md."""
    from sweep.report import figures

    k, names = len(kind.objectives), [o.name for o in kind.objectives]
    done = [t for t, _ in finite_values(listed, k)]
    lines: list[str] = []
    spec = kind.spec
    assert spec is not None
    drawn = [
        (PARAMS.name, "pareto.png", PARAMS.label),
        (EPOCH_TIME.name, "pareto_time.png", EPOCH_TIME.label),
    ]
    for x_name, name, title in drawn:
        if x_name in names:
            i = names.index(x_name)
            placed = [(t.values[i], t) for t in done]
        elif x_name == PARAMS.name:  # the size of every sweep trial, an objective or not
            placed = [(n, t) for t in done if (n := count(t, "n_params")) is not None]
        else:
            continue
        if not placed:
            continue
        xs, ys = [x for x, _ in placed], [t.values[0] for _, t in placed]
        steps = non_dominated(np.array([[-y, x] for x, y in zip(xs, ys, strict=True)]))
        figures.pareto(xs, ys, out / name, front=[t.number in on for _, t in placed],
                       steps=steps.tolist(), xlabel=title, title=f"Accuracy against {title}",
                       bounds=(spec.budget.min_params, spec.budget.max_params)
                       if x_name == PARAMS.name else None)  # fmt: skip
        files.append(name)
        lines += [f"## Accuracy against {title}", "", f"![accuracy against {title}]({name})", ""]
    ref = reference(kind, done)
    if ref is None or not done:
        return lines
    numbers, volumes = hypervolumes(done, kind.objectives, [r for r, _ in ref])
    units = "·".join(o.unit for o in kind.objectives)
    figures.hypervolume(numbers, volumes, out / "hypervolume.png",
                        ylabel=f"hypervolume [{units}]")  # fmt: skip
    files.append("hypervolume.png")
    box = math.prod(abs(IDEAL[o.name] - r) for o, (r, _) in zip(kind.objectives, ref,
                                                                  strict=True))  # fmt: skip
    point = ", ".join(_with_unit(o, r, sweep=True) + (f" ({why})" if why else "")
                      for o, (r, why) in zip(kind.objectives, ref, strict=True))  # fmt: skip
    corner = ", ".join(_with_unit(o, IDEAL[o.name], sweep=True) for o in kind.objectives)
    share = f"; {volumes[-1] / box:.3f} of the box from it to {corner}" if box > 0 else ""
    lines += ["## Hypervolume over trials", "",
              f"The volume the complete trials dominate, up to the reference point {point}: "
              f"**{volumes[-1]:.4g}** {units} after {len(done):,} trials{share}.", "",
              "![hypervolume over trials](hypervolume.png)", ""]  # fmt: skip
    return lines

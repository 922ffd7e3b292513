"""Which figures a report draws, and the sections built around figures (the grid's heatmaps,
the initialisation study's losses): the full set for a small study, the summarising ones
(``sweep.report.digest_figures``) for a large one, whose best trials ``top`` lists.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from sweep.errors import SpecError
from sweep.queue.attrs import WORKER_TAG
from sweep.queue.front import non_dominated
from sweep.report import digest, figures, standard_figures
from sweep.report.quantities import LEARNING_RATE, PARAMETERS, quantity
from sweep.report.scale import Scale
from sweep.report.shown import (
    Trial,
    cell,
    config,
    finished,
    hidden,
    md_table,
    network,
    param_names,
    varying,
)
from sweep.report.stored import Kind, count, number, printable, series
from sweep.study.spec import StudySpec

logger = logging.getLogger(__name__)

NOTEBOOK_BEST = 97.74  # validation accuracy of the notebook's best grid point, percent
REFERENCE = ("the notebook's best (97.74%)", NOTEBOOK_BEST)  # the search-time figures' line


def grid_section(done: Sequence[Trial], out: Path, files: list[str], large: bool, *,
                 scale: Scale | None = None) -> str:  # fmt: skip
    """The notebook's table and one heatmap per learning rate, for grids over the network; a
    large grid's table is left to trials.csv, and only the ``digest.HEATMAPS`` learning rates
    with the best trials get a heatmap. Every heatmap is painted in ``scale``, the report's
    one colour scale (default: the span of ``done``'s values).

    A heatmap's axes are hidden_1 × hidden_2, so only a grid whose trials all have two hidden
    layers gets them; one over several depths is compared by its accuracy against parameter
    count, and a configuration whose network cannot be read is one line in their place."""
    why = _no_heatmaps(done)
    if why is None:
        rows = sorted((config(t)["hidden_1"], config(t)["hidden_2"], count(t, "n_params"),
                       config(t)["learning_rate"], t.value) for t in done)  # fmt: skip
        header = ["hidden_1", "hidden_2", PARAMETERS, LEARNING_RATE, figures.ACCURACY]
        shown = [[h1, h2, quantity(PARAMETERS, n), lr, quantity(figures.ACCURACY, v)]
                 for h1, h2, n, lr, v in rows]  # fmt: skip
    else:
        nets = sorted((count(t, "n_params") or 0, network(t), config(t)["learning_rate"], t.value)
                      for t in done)  # fmt: skip
        header = ["network", PARAMETERS, LEARNING_RATE, figures.ACCURACY]
        shown = [[net, quantity(PARAMETERS, n or None), lr, quantity(figures.ACCURACY, v)]
                 for n, net, lr, v in nets]  # fmt: skip
    if large:
        text = (f"## The grid\n\n{len(done):,} grid points; each one's values are in "
                "[trials.csv](trials.csv).")  # fmt: skip
    else:
        text = "## The grid\n\n" + md_table(header, shown)
    if why is not None:
        return f"{text}\n\n{why}\n"
    h1s = sorted({r[0] for r in rows})
    h2s = sorted({r[1] for r in rows})
    by_lr: dict[Any, dict[tuple[Any, Any], float]] = {}
    for h1, h2, _, lr, v in rows:
        by_lr.setdefault(lr, {})[h1, h2] = v
    lrs = sorted(by_lr, reverse=True)
    if large and len(lrs) > digest.HEATMAPS:
        lrs = sorted(sorted(lrs, key=lambda lr: -max(by_lr[lr].values()))[: digest.HEATMAPS],
                     reverse=True)  # fmt: skip
        text += (f" The heatmaps show the {digest.HEATMAPS} of {len(by_lr)} learning rates "
                 "with the best trials.")  # fmt: skip
    scale = scale or Scale.of([v for *_, v in rows])
    for lr in lrs:
        name = f"grid_lr_{lr:g}.png"
        figures.grid_heatmap(f"{figures.ACCURACY}, {LEARNING_RATE} = {lr:g}", h1s, h2s,
                             by_lr[lr], out / name, scale=scale)  # fmt: skip
        files.append(name)
        text += f"\n\n![validation accuracy at learning_rate {lr:g}]({name})"
    return text + "\n"


def _no_heatmaps(done: Sequence[Trial]) -> str | None:
    """Why the grid gets no hidden_1 × hidden_2 heatmaps, in one line; None if it does."""
    depths: set[int] = set()
    for t in done:
        try:
            widths = hidden(t)
        except SpecError as e:  # anyone's JSON: the one line a user sees of it
            logger.warning("No hidden_1 × hidden_2 heatmaps: %s.", e)
            return f"No hidden_1 × hidden_2 heatmaps: {e}."
        if widths is None:
            return f"No hidden_1 × hidden_2 heatmaps: trial {t.number} stores no widths."
        depths.add(len(widths))
    if depths == {2}:
        return None
    *most, last = sorted(depths)
    listed = f"{', '.join(map(str, most))} and {last}" if most else str(last)
    return (f"Trials of {listed} hidden layers: no hidden_1 × hidden_2 heatmaps; the accuracy "
            "against parameter count compares them.")  # fmt: skip


def init_section(trials: Sequence[Trial], out: Path, files: list[str], log: bool) -> str:
    """The initialisation study's section: each init's training loss, from its latest trial."""
    losses = {
        str(config(t).get("init")): series(t, "train_loss")
        for t in sorted(trials, key=lambda t: t.number)
        if series(t, "train_loss")
    }
    return init_text(losses, out, files, log)


def init_text(losses: dict[str, list[float]], out: Path, files: list[str], log: bool) -> str:
    """``init_section`` of the losses it shows (init → training loss per epoch)."""
    figures.init_loss(losses, out / "init_loss.png", log=log)
    files.append("init_loss.png")
    rows = [[name, f"{v[0]:.5g}", f"{v[-1]:.5g}", len(v)] for name, v in losses.items()]
    table = md_table(["init", "loss after epoch 1", "final loss", "epochs"], rows)
    return f"## Initialisation\n\n![training loss by initialisation](init_loss.png)\n\n{table}\n"


def is_grid(done: Sequence[Trial], varying: list[str], kind: Kind) -> bool:
    """A grid over the network (hidden_1 × hidden_2, or the depth) whose configurations are
    all numbers: the table's columns, the heatmaps' axes."""
    if not (done and ({"hidden_1", "hidden_2"} <= set(varying) or "depth" in varying)
            and kind.spec is not None and kind.spec.sampler == "grid"):  # fmt: skip
        return False
    return all(
        all(number(config(t).get(k)) is not None for k in ("hidden_1", "hidden_2",
                                                              "learning_rate"))
        for t in done
    )  # fmt: skip


def _colour_by(trials: Sequence[Trial], scores: dict[str, float]) -> str | None:
    """The searched parameter whose values tell the curves apart: the most important one (or
    learning_rate) among those with 2 to 10 values; None if there is none."""

    def values(name: str) -> int:
        return len({repr(t.params.get(name)) for t in trials})

    candidates = [n for n in param_names(trials) if 2 <= values(n) <= 10]
    ranked = sorted(candidates, key=lambda n: (-scores.get(n, 0.0), n != "learning_rate"))
    return ranked[0] if ranked else None


def _group(t: Trial, name: str | None) -> str:
    return f"{name} = {cell(t.params.get(name))}" if name else f"#{t.number}"


def _group_order(trials: Sequence[Trial], name: str | None) -> list[Trial]:
    """Trials ordered by the colouring parameter's value, so the legend reads in order."""
    if name is None:
        return list(trials)

    def key(t: Trial) -> tuple[bool, float, str, int]:
        value = number(t.params.get(name))
        return value is None, value or 0.0, repr(t.params.get(name)), t.number

    return sorted(trials, key=key)


def importances(study: optuna.Study, done: Sequence[Trial], kind: Kind, *,
                large: bool) -> dict[str, float]:  # fmt: skip
    """optuna's importances (its default evaluator, PED-ANOVA); for a large study, of
    ``digest.IMPORTANCE_TRIALS`` complete trials spread evenly over it (copied into an
    in-memory study), since optuna would load every trial and score all of them.

    PED-ANOVA warns of every parameter some trials lack (the widths past a trial's depth, #25)
    on stderr; the scores stand, so the report keeps the warnings to itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _scores(study, done, kind, large)


def _scores(study: optuna.Study, done: Sequence[Trial], kind: Kind,
            large: bool) -> dict[str, float]:  # fmt: skip
    if not large:
        return optuna.importance.get_param_importances(study)
    sample = optuna.create_study(direction="maximize" if kind.maximize else "minimize")
    sample.add_trials([
        optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.value)
        for t in digest.evenly(list(done), digest.IMPORTANCE_TRIALS)
    ])  # fmt: skip
    return optuna.importance.get_param_importances(sample)


def draw(study: optuna.Study, trials: Sequence[Trial], kind: Kind, out: Path,
         files: list[str]) -> tuple[str | None, dict[str, float]]:  # fmt: skip
    """The figures every single-objective study gets (of a small study: a large one's are
    ``sweep.report.large``'s), labelled with its metric; returns the parameter the curves are
    coloured by, and the parameters' importances (empty where none were found)."""
    done = finished(trials)
    if done:
        figures.history([t.number for t in done], [t.value for t in done], out / "history.png",
                        metric=kind.metric, maximize=kind.maximize)  # fmt: skip
        files.append("history.png")
    scores = importance_figure(study, done, varying(done), kind, out, files, large=False)
    colour = _colour_by(trials, scores)
    curves = [curve(t, _group(t, colour)) for t in _group_order(trials, colour)
              if t.intermediate_values]  # fmt: skip
    if curves:
        figures.learning_curves(curves, out / "learning_curves.png", metric=kind.metric,
                                legend_title=colour and "coloured by")  # fmt: skip
        files.append("learning_curves.png")
    return colour, scores


def importance_figure(study: optuna.Study, done: Sequence[Trial], varies: list[str], kind: Kind,
                      out: Path, files: list[str], *, large: bool) -> dict[str, float]:  # fmt: skip
    """The parameters' importances among ``done`` (of a large study: its even sample), drawn
    where two or more parameters vary; returns the scores (none if not drawn)."""
    scores: dict[str, float] = {}
    if len(varies) >= 2 and len(done) >= 2:
        try:
            scores = importances(study, done, kind, large=large)
            figures.importances(scores, out / "importances.png", metric=kind.metric)
            files.append("importances.png")
        except (ValueError, RuntimeError) as e:  # e.g. a dynamic search space
            logger.info("no importances for %s: %s", study.study_name, e)
    return scores


def curve(t: Trial, label: str) -> figures.Curve:
    """The trial's learning curves: its reported values, and the training and validation loss
    per epoch that sweep's objective stores (``train_loss``, ``valid_loss``)."""
    steps = sorted(t.intermediate_values)
    return figures.Curve(label, steps, [t.intermediate_values[e] for e in steps],
                         t.state == TrialState.PRUNED, series(t, "train_loss"),
                         series(t, "valid_loss"))  # fmt: skip


def draw_sweep(trials: Sequence[Trial], spec: StudySpec, out: Path, files: list[str],
               colour: str | None) -> None:  # fmt: skip
    """Sweep's own figures of a small study: accuracy against model size (the budget) and
    search time."""
    done = finished(trials)
    sized = _group_order([t for t in done if count(t, "n_params") is not None], colour)
    bounds = (spec.budget.min_params, spec.budget.max_params)
    if sized:
        sizes, values = [count(t, "n_params") for t in sized], [t.value for t in sized]
        figures.accuracy_vs_params(
            sizes, values, bounds, out / "accuracy_vs_params.png",
            groups=[_group(t, colour) for t in sized] if colour else None,
            legend_title=colour and "coloured by",
            front=non_dominated(np.array([sizes, [-v for v in values]]).T).tolist(),
        )  # fmt: skip
        files.append("accuracy_vs_params.png")
    if done:
        first = min(t.datetime_start for t in trials if t.datetime_start is not None)
        minutes = [(t.datetime_complete - first).total_seconds() / 60 for t in done]
        figures.accuracy_over_time(minutes, [t.value for t in done],
                                   out / "accuracy_over_time.png", reference=REFERENCE)  # fmt: skip
        files.append("accuracy_over_time.png")


#: The standard plots (``sweep.report.standard_figures``), in the order report.md shows them.
STANDARD = {"parallel_coordinates.png": "Parallel coordinates", "slice.png": "Slice",
            "contour.png": "Contour of the two most important parameters",
            "edf.png": "Empirical distribution of the values",
            "timeline.png": "Timeline: trials per worker"}  # fmt: skip


def draw_standard(
    trials: Sequence[Trial], kind: Kind, scores: dict[str, float], out: Path, files: list[str],
    *, scale: Scale, of: int | None = None,
) -> None:  # fmt: skip
    """The standard plots of ``trials``: parallel coordinates, slice, contour of the two most
    important parameters (by ``scores``, else the first two that vary), EDF and the timeline
    of trials per worker (the ``worker`` attribute sweep's claims write). The heatmaps are
    painted in the report's ``scale``. ``of``: the study's trials in all, where ``trials``
    is a sample of them (a large study's), which the titles then say."""
    done = finished(trials)
    varies = sorted(varying(done), key=lambda n: -scores.get(n, 0.0))  # stable: ties in order
    values = [t.value for t in done]
    which = (f"{len(done):,} complete trials" if of is None
             else f"{len(done):,} of {of:,} trials, sampled evenly")  # fmt: skip
    axes = [standard_figures.Axis.of(n, [t.params.get(n) for t in done], log=_log(done, n))
            for n in varies]  # fmt: skip
    if axes:
        standard_figures.parallel_coordinates(
            axes, values, out / "parallel_coordinates.png", scale=scale, metric=kind.metric,
            title=f"Parallel coordinates ({which})")  # fmt: skip
        standard_figures.slices(axes, values, [t.number for t in done], out / "slice.png",
                                metric=kind.metric, title=f"Slice ({which})")  # fmt: skip
        files += ["parallel_coordinates.png", "slice.png"]
    if len(axes) >= 2:
        best = (max if kind.maximize else min)(range(len(done)), key=lambda i: values[i])
        standard_figures.contour(axes[0], axes[1], values, out / "contour.png", scale=scale,
                                 metric=kind.metric, best=best)  # fmt: skip
        files.append("contour.png")
    if len(done) >= 2:
        standard_figures.edf(values, out / "edf.png", metric=kind.metric, maximize=kind.maximize,
                             title=f"Empirical distribution ({which})")  # fmt: skip
        files.append("edf.png")
    spans = _spans(trials)
    if spans:
        counted = (f"{len(spans):,} trials" if of is None
                   else f"{len(spans):,} of {of:,} trials, sampled evenly")  # fmt: skip
        title = f"Timeline: trials per worker ({counted})"
        standard_figures.timeline(spans, out / "timeline.png", title=title)
        files.append("timeline.png")


def _log(done: Sequence[Trial], name: str) -> bool:
    """Whether the study samples parameter ``name`` on a log scale."""
    return any(getattr(t.distributions.get(name), "log", False) for t in done[:1])


def _spans(trials: Sequence[Trial]) -> list[standard_figures.Span]:
    """The trials that began, as the timeline draws them: a running trial up to the latest
    moment the study records."""
    began = [t for t in trials if t.datetime_start is not None]
    if not began:
        return []
    last = max(t.datetime_complete or t.datetime_start for t in began)
    return [standard_figures.Span(printable(str(t.user_attrs.get(WORKER_TAG, "")), 60),
                                  t.datetime_start, t.datetime_complete or last, t.state.name)
            for t in began]  # fmt: skip


def draw_front_standard(done: Sequence[Trial], values: Sequence[Sequence[float]],
                        trials: Sequence[Trial], kind: Kind, out: Path,
                        files: list[str]) -> list[str]:  # fmt: skip
    """The standard plots of a study of several objectives, and their sections of report.md:
    per objective, parallel coordinates (coloured in that objective's own scale), slice and
    EDF of ``done`` (its complete trials with a finite value per objective, ``values``: one
    tuple each), at most ``digest.LARGE`` of them sampled evenly; the timeline of ``trials``.
    No contour: which two parameters matter most differs by objective."""
    picked = digest.evenly(range(len(done)), digest.LARGE)
    shown = [done[i] for i in picked]
    which = (f"{len(shown):,} complete trials" if len(shown) == len(done)
             else f"{len(shown):,} of {len(done):,} complete trials, sampled evenly")  # fmt: skip
    axes = [standard_figures.Axis.of(n, [t.params.get(n) for t in shown], log=_log(shown, n))
            for n in varying(shown)]  # fmt: skip
    lines: list[str] = []
    for i, (objective, metric) in enumerate(zip(kind.objectives, kind.metrics, strict=True)):
        ys = [float(values[j][i]) for j in picked]
        key = objective.name if kind.sweep else f"objective{i + 1}"  # another's: any text
        drawn = []
        if axes:
            name = f"parallel_coordinates_{key}.png"
            standard_figures.parallel_coordinates(
                axes, ys, out / name, metric=metric, title=f"Parallel coordinates ({which})",
                scale=Scale.of(ys, maximize=objective.maximize))  # fmt: skip
            drawn += [("Parallel coordinates", name)]
            name = f"slice_{key}.png"
            standard_figures.slices(axes, ys, [t.number for t in shown], out / name,
                                    metric=metric, title=f"Slice ({which})")  # fmt: skip
            drawn += [("Slice", name)]
        if len(shown) >= 2:
            name = f"edf_{key}.png"
            standard_figures.edf(ys, out / name, metric=metric, maximize=objective.maximize,
                                 title=f"Empirical distribution ({which})",
                                 best="best on this objective alone")  # fmt: skip
            drawn += [("Empirical distribution", name)]
        for title, name in drawn:
            files.append(name)
            lines += [f"## {title}: {metric}", "", f"![{title.lower()}]({name})", ""]
    spans = _spans(trials)
    if spans:
        standard_figures.timeline(
            spans,
            out / "timeline.png",
            title=f"Timeline: trials per worker ({len(spans):,} trials)",
        )
        files.append("timeline.png")
        lines += ["## Timeline: trials per worker", "", "![timeline](timeline.png)", ""]
    return lines

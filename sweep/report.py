"""Reports: a study in the database → a folder a person can read without the dashboard.

Reads only the database (never trains), so it works on a study still running or finished on
another host. Writes ``report.md`` (figures embedded by relative path), ``trials.csv`` and PNG
figures with stable names.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import figures
from sweep.errors import SweepError
from sweep.queue import why_failed
from sweep.spec import StudySpec
from sweep.storage import mask_password, study_names
from sweep.stored import Kind, count, number, printable, series, study_kind
from sweep.summary import ordered

logger = logging.getLogger(__name__)

NOTEBOOK_BEST = 97.74  # validation accuracy of the notebook's best grid point, percent
METRICS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")


@dataclasses.dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote, and the best trial it found."""

    out_dir: Path
    files: tuple[str, ...]  # file names inside out_dir
    best_number: int | None
    best_value: float | None
    best_config: dict[str, Any] | None
    best_text: str | None  # e.g. "best trial 3: 97.12%", in the study's own metric


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """The study, or a one-line SweepError naming the studies that do exist."""
    names = study_names(storage)
    if name not in names:
        where = mask_password(getattr(storage, "url", "the database"))
        raise SweepError(
            f"study {printable(name, 200)!r} not found in {where}; studies there: "
            f"{', '.join(printable(n, 60) for n in names[:20]) or 'none'}"
            + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        )
    return optuna.load_study(study_name=name, storage=storage)


_SLUG_LENGTH = 60


def report_folder(root: Path, storage: optuna.storages.BaseStorage, name: str) -> Path:
    """The folder under ``root`` for study ``name``'s report: a study name is someone else's
    text (any client of the shared database may choose or rename it), so it is never a path.
    It becomes a slug of letters, digits, '.', '_' and '-', with the study id appended where
    the slug differs from the name or ends in "-<digits>" (so two names never share a
    folder), and the folder is checked to lie inside ``root``. The real name stands inside the
    report."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:_SLUG_LENGTH] or "study"
    # A name that ends like "-<number>" gets the id too, so no name can take the folder of
    # another's slug and id ("a b" is a-b-1; a study named "a-b-1" becomes a-b-1-2).
    if slug != name or re.search(r"-\d+$", name):
        slug = f"{slug}-{storage.get_study_id_from_name(name)}"
    folder = root / slug
    if not folder.resolve().is_relative_to(root.resolve()):  # e.g. a link planted in root
        raise SweepError(f"study {name!r}: its report folder {folder} leads outside {root}")
    return folder


def _finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The complete trials with a finite value: the ones a figure can place (another client
    may have stored inf)."""
    return [t for t in trials if t.state == TrialState.COMPLETE and math.isfinite(t.value)]


def _varying(done: list[FrozenTrial]) -> list[str]:
    """The parameters that take more than one value among ``done``."""
    return [n for n in _param_names(done) if len({repr(t.params.get(n)) for t in done}) > 1]


def _reason(t: FrozenTrial) -> str:
    if t.state == TrialState.PRUNED:
        epoch = count(t, "pruned_at") or max(t.intermediate_values, default="?")
        return f"pruned at epoch {epoch}"
    if t.state == TrialState.FAIL:
        return printable(why_failed(t.user_attrs), 200)
    return ""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else printable(v, 80)


def _final(t: FrozenTrial, key: str) -> float | None:
    values = series(t, key)
    return values[-1] if values else None


def _param_names(trials: list[FrozenTrial]) -> list[str]:
    names: list[str] = []
    for t in trials:
        names += [k for k in t.params if k not in names]
    return names


def write_csv(trials: list[FrozenTrial], path: Path, *, maximize: bool = True) -> None:
    """One row per trial: number, state, every parameter, size, value, final metrics, reason."""
    names = _param_names(trials)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", *names, "n_params", "value", *METRICS, "seconds", "reason"])
        for t in ordered(trials, maximize=maximize):
            w.writerow([
                t.number, t.state.name, *(t.params.get(n, "") for n in names),
                count(t, "n_params") or "", "" if t.value is None else t.value,
                *("" if (v := _final(t, m)) is None else v for m in METRICS),
                number(t.user_attrs.get("seconds")) or "", _reason(t),
            ])  # fmt: skip


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_fmt(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _config(t: FrozenTrial) -> dict[str, Any]:
    config = t.user_attrs.get("config")
    return config if isinstance(config, dict) else dict(t.params)


def _grid_section(done: list[FrozenTrial], out: Path, files: list[str]) -> str:
    """The notebook's table and one heatmap per learning rate, for hidden_1 × hidden_2 grids."""
    rows = sorted(
        (_config(t)["hidden_1"], _config(t)["hidden_2"], count(t, "n_params"),
         _config(t)["learning_rate"], t.value)
        for t in done
    )  # fmt: skip
    text = "## The grid\n\n" + md_table(
        ["hidden_1", "hidden_2", "parameters", "lr", "r_valid [%]"],
        [[h1, h2, f"{n:,}" if n is not None else "?", lr, f"{v:.2f}"]
         for h1, h2, n, lr, v in rows],
    )  # fmt: skip
    h1s = sorted({r[0] for r in rows})
    h2s = sorted({r[1] for r in rows})
    for lr in sorted({r[3] for r in rows}, reverse=True):
        name = f"grid_lr_{lr:g}.png"
        cells = {(h1, h2): v for h1, h2, _, r, v in rows if r == lr}
        figures.grid_heatmap(f"Validation accuracy (%), learning rate {lr:g}", h1s, h2s, cells,
                             out / name)  # fmt: skip
        files.append(name)
        text += f"\n\n![validation accuracy at lr {lr:g}]({name})"
    return text + "\n"


def _init_section(trials: list[FrozenTrial], out: Path, files: list[str], log: bool) -> str:
    losses = {
        str(_config(t).get("init")): series(t, "train_loss")
        for t in sorted(trials, key=lambda t: t.number)
        if series(t, "train_loss")
    }
    figures.init_loss(losses, out / "init_loss.png", log=log)
    files.append("init_loss.png")
    rows = [[name, f"{v[0]:.5g}", f"{v[-1]:.5g}", len(v)] for name, v in losses.items()]
    table = md_table(["init", "loss after epoch 1", "final loss", "epochs"], rows)
    return f"## Initialisation\n\n![training loss by initialisation](init_loss.png)\n\n{table}\n"


def _is_grid(done: list[FrozenTrial], varying: list[str], kind: Kind) -> bool:
    """A hidden_1 × hidden_2 grid whose configurations are all numbers (the heatmaps' axes)."""
    numeric = all(
        all(number(_config(t).get(k)) is not None for k in ("hidden_1", "hidden_2",
                                                              "learning_rate"))
        for t in done
    )  # fmt: skip
    return (bool(done) and numeric and {"hidden_1", "hidden_2"} <= set(varying)
            and kind.spec is not None and kind.spec.sampler == "grid")  # fmt: skip


def _colour_by(trials: list[FrozenTrial], scores: dict[str, float]) -> str | None:
    """The searched parameter whose values tell the curves apart: the most important one (or
    learning_rate) among those with 2 to 10 values; None if there is none."""

    def values(name: str) -> int:
        return len({repr(t.params.get(name)) for t in trials})

    candidates = [n for n in _param_names(trials) if 2 <= values(n) <= 10]
    ranked = sorted(candidates, key=lambda n: (-scores.get(n, 0.0), n != "learning_rate"))
    return ranked[0] if ranked else None


def _group(t: FrozenTrial, name: str | None) -> str:
    return f"{name} = {_fmt(t.params.get(name))}" if name else f"#{t.number}"


def _group_order(trials: list[FrozenTrial], name: str | None) -> list[FrozenTrial]:
    """Trials ordered by the colouring parameter's value, so the legend reads in order."""
    if name is None:
        return trials

    def key(t: FrozenTrial) -> tuple[bool, float, str, int]:
        value = number(t.params.get(name))
        return value is None, value or 0.0, repr(t.params.get(name)), t.number

    return sorted(trials, key=key)


def _figures(study: optuna.Study, trials: list[FrozenTrial], kind: Kind, out: Path,
             files: list[str]) -> str | None:  # fmt: skip
    """The figures every single-objective study gets, labelled with its metric; returns the
    parameter the curves are coloured by."""
    done = _finished(trials)
    if done:
        figures.history([t.number for t in done], [t.value for t in done], out / "history.png",
                        metric=kind.metric, maximize=kind.maximize)  # fmt: skip
        files.append("history.png")
    scores: dict[str, float] = {}
    varying = _varying(done)
    if len(varying) >= 2 and len(done) >= 2:
        try:
            scores = optuna.importance.get_param_importances(study)
            figures.importances(scores, out / "importances.png", metric=kind.metric)
            files.append("importances.png")
        except (ValueError, RuntimeError) as e:  # e.g. a dynamic search space
            logger.info("no importances for %s: %s", study.study_name, e)
    colour = _colour_by(trials, scores)
    curves = [
        (_group(t, colour), sorted(t.intermediate_values), [t.intermediate_values[e] for e in
         sorted(t.intermediate_values)], t.state == TrialState.PRUNED)
        for t in _group_order(trials, colour) if t.intermediate_values
    ]  # fmt: skip
    if curves:
        figures.learning_curves(curves, out / "learning_curves.png", metric=kind.metric,
                                legend_title=colour and "coloured by")  # fmt: skip
        files.append("learning_curves.png")
    return colour


def _sweep_figures(trials: list[FrozenTrial], spec: StudySpec, out: Path, files: list[str],
                   colour: str | None) -> None:  # fmt: skip
    """Sweep's own figures: accuracy against model size (the budget) and search time."""
    done = _finished(trials)
    sized = _group_order([t for t in done if count(t, "n_params") is not None], colour)
    if sized:
        figures.accuracy_vs_params(
            [count(t, "n_params") for t in sized], [t.value for t in sized],
            (spec.budget.min_params, spec.budget.max_params), out / "accuracy_vs_params.png",
            groups=[_group(t, colour) for t in sized] if colour else None,
            legend_title=colour and "coloured by",
        )  # fmt: skip
        files.append("accuracy_vs_params.png")
    if done:
        first = min(t.datetime_start for t in trials if t.datetime_start is not None)
        figures.accuracy_over_time(
            [(t.datetime_complete - first).total_seconds() / 60 for t in done],
            [t.value for t in done], out / "accuracy_over_time.png",
            reference=("the notebook's best (97.74%)", NOTEBOOK_BEST),
        )  # fmt: skip
        files.append("accuracy_over_time.png")


def write_report(
    storage: optuna.storages.BaseStorage, study_name: str, *, out_dir: Path,
    log_loss: bool = False,
) -> Report:  # fmt: skip
    """Write the study's report folder; return what was written.

    A study sweep made gets its budget, grid and initialisation sections; any other (another
    optuna client's, in the same database) gets a plain report in its own direction and metric
    name. Raises SweepError for an unknown study or one without trials.
    """
    study = load_study(storage, study_name)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    if not trials:
        raise SweepError(f"study {study_name!r} has no trials yet; run it with `sweep run`")
    kind = study_kind(study.user_attrs, study.directions, study.metric_names)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not out_dir.is_dir():
            raise NotADirectoryError(20, "not a folder")
    except OSError as e:
        raise SweepError(f"cannot write the report of study {printable(study_name, 200)!r} "
                         f"to {out_dir}: {e.strerror or e}") from e  # fmt: skip
    files = ["report.md", "trials.csv"]
    if len(study.directions) > 1:
        return _write_multi(study, trials, kind, out_dir, files)
    write_csv(trials, out_dir / "trials.csv", maximize=kind.maximize)
    colour = _figures(study, trials, kind, out_dir, files)
    sections = []
    if kind.spec is not None:
        _sweep_figures(trials, kind.spec, out_dir, files, colour)
        done = _finished(trials)
        varying = _varying(done)
        if _is_grid(done, varying, kind):
            sections.append(_grid_section(done, out_dir, files))
        if "init" in varying or kind.spec.dimension("init") is not None:
            sections.append(_init_section(trials, out_dir, files, log_loss))
    best = study.best_trial if any(t.state == TrialState.COMPLETE for t in trials) else None
    lines = [f"# Study `{printable(study_name, 400)}`", "", *_summary(study, trials, kind, best)]
    for name, title in [("history.png", "Optimisation history"),
                        ("accuracy_over_time.png", "Accuracy against search time"),
                        ("learning_curves.png", "Learning curves"),
                        ("accuracy_vs_params.png", "Accuracy against parameter count"),
                        ("importances.png", "Parameter importances")]:  # fmt: skip
        if name in files:
            lines += [f"## {title}", "", f"![{title.lower()}]({name})", ""]
    lines += sections
    names = _param_names(trials)
    rows = []
    for t in ordered(trials, maximize=kind.maximize):
        value = "" if t.value is None else f"{t.value:.{'2f' if kind.sweep else '6g'}}"
        ours = [count(t, "n_params") or "", value, number(t.user_attrs.get("seconds")) or ""]
        rows.append([t.number, t.state.name.lower(), *(t.params.get(n, "") for n in names),
                     *(ours if kind.sweep else [value]), _reason(t)])  # fmt: skip
    columns = ["parameters", kind.metric, "seconds"] if kind.sweep else [kind.metric]
    lines += ["## Trials", "", md_table(["#", "state", *names, *columns, "note"], rows), ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    best_text = None
    if best is not None:
        best_text = f"best trial {best.number}: " + (
            f"{best.value:.2f}%" if kind.sweep else f"{kind.metric} {best.value:.6g}"
        )
    return Report(out_dir, tuple(files), best and best.number, best and best.value,
                  best and _config(best), best_text)  # fmt: skip


def _summary(study: optuna.Study, trials: list[FrozenTrial], kind: Kind,
             best: FrozenTrial | None) -> list[str]:  # fmt: skip
    """The report's opening list: how the study searched, what it found."""
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    direction = "maximize" if kind.maximize else "minimize"
    if kind.spec is not None:
        lines = [
            f"- sampler: {kind.spec.sampler}, pruner: {kind.spec.pruner}",
            f"- budget: {kind.spec.budget.min_params:,} < parameters < "
            f"{kind.spec.budget.max_params:,}",
        ]
    else:
        lines = ["- not made by sweep (no valid stored spec): a plain report of its values",
                 f"- direction: {direction}, metric: {kind.metric}"]  # fmt: skip
    lines.append("- trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if best is not None and kind.sweep:
        cfg = ", ".join(f"{_fmt(k)}={_fmt(v)}" for k, v in _config(best).items())
        lines.append(
            f"- best: trial {best.number}, validation accuracy **{best.value:.2f}%** ({cfg})"
        )
    elif best is not None:
        params = ", ".join(f"{_fmt(k)}={_fmt(v)}" for k, v in best.params.items())
        lines.append(f"- best: trial {best.number}, {kind.metric} **{best.value:.6g}** ({params})")
    test = number(study.user_attrs.get("test_accuracy"))
    if kind.sweep and test is not None:
        which = number(study.user_attrs.get("test_trial"))
        lines.append(
            f"- test accuracy of the best configuration (trial "
            f"{'?' if which is None else int(which)}, evaluated once): **{test:.2f}%**"
        )
    return [*lines, ""]


def _write_multi(study: optuna.Study, trials: list[FrozenTrial], kind: Kind, out: Path,
                 files: list[str]) -> Report:  # fmt: skip
    """A multi-objective study (another client's): its trials and Pareto front as tables."""
    metrics = kind.metrics if study.metric_names else [
        f"value {i}" for i in range(len(study.directions))]  # fmt: skip
    names = _param_names(trials)
    with (out / "trials.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", *names, *metrics, "reason"])
        for t in sorted(trials, key=lambda t: t.number):
            w.writerow([t.number, t.state.name, *(t.params.get(n, "") for n in names),
                        *(t.values or [""] * len(metrics)), _reason(t)])  # fmt: skip
    front = {t.number for t in study.best_trials}
    rows = [[t.number, t.state.name.lower(), *(t.params.get(n, "") for n in names),
             *(t.values or [""] * len(metrics)), "Pareto front" if t.number in front else ""]
            for t in sorted(trials, key=lambda t: t.number)]  # fmt: skip
    directions = ", ".join(d.name.lower() for d in study.directions)
    lines = [f"# Study `{printable(study.study_name, 400)}`", "",
             "- not made by sweep (several objectives): a plain report of its values",
             f"- directions: {directions}; metrics: {', '.join(metrics)}",
             f"- {len(front)} trial(s) on the Pareto front", "", "## Trials", "",
             md_table(["#", "state", *names, *metrics, "note"], rows), ""]  # fmt: skip
    (out / "report.md").write_text("\n".join(lines))
    return Report(out, tuple(files), None, None, None, None)

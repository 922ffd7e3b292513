"""Reports: a study in the database → a folder a person can read without the dashboard.

Reads the database (never trains), so it works on a study still running or finished on
another host; the one exception is the figure of a study's distortions, which shows a few
training digits of its dataset if this host has them (``sweep.report.distortions``). Writes
``report.md`` (figures embedded by relative path), ``trials.csv`` and PNG figures with stable
names.

Trials are read narrowly (``sweep.queue.report_reads``: what the report shows, curves only for the
trials drawn), and a study of more than ``digest.LARGE`` finished trials is summarised rather than
listed (``sweep.report.digest``): its best trials, quantiles and per-parameter buckets in
``report.md``, binned figures, and every trial still in ``trials.csv``. At 10⁵ trials the
report takes seconds where optuna's loading alone took minutes.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.errors import SweepError
from sweep.queue import report_reads, status_reads
from sweep.queue.storage import mask_password, study_names
from sweep.report import digest, digest_figures, distortions, drawn, front
from sweep.report.shown import (
    Trial,
    cell,
    config,
    final,
    finished,
    in_use,
    md_table,
    network,
    param_names,
    reason,
    varying,
)
from sweep.report.stored import Kind, count, number, printable, study_kind
from sweep.report.summary import listed, ordered

logger = logging.getLogger(__name__)

METRICS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")
#: The most attribute text a report reads through optuna's ``get_trials`` (a study with
#: several objectives), which builds every trial whole: 2,000 trials of 1 MB took 4 GB.
MAX_OPTUNA_READ = 200_000_000


@dataclasses.dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote, and the best trial it found."""

    out_dir: Path
    files: tuple[str, ...]  # file names inside out_dir
    best_number: int | None
    best_value: float | None
    best_config: dict[str, Any] | None
    best_text: str | None  # "best trial 3: 97.12%" in the study's own metric; or its front's ends


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """The study, or a one-line SweepError naming the studies that do exist (listed only then:
    optuna's study summaries read every trial of every study)."""
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        names = study_names(storage)
        where = mask_password(getattr(storage, "url", "the database"))
        raise SweepError(
            f"study {printable(name, 200)!r} not found in {where}; studies there: "
            f"{', '.join(printable(n, 60) for n in names[:20]) or 'none'}"
            + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        ) from None
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


def write_csv(trials: Sequence[Trial], path: Path, *, maximize: bool = True) -> None:
    """One row per trial: number, state, every parameter, size, value, final metrics, reason."""
    names = param_names(trials)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", *names, "network", "n_params", "value", *METRICS,
                    "seconds", "reason"])  # fmt: skip
        for t in ordered(list(trials), maximize=maximize):
            w.writerow([
                t.number, t.state.name, *(t.params.get(n, "") for n in names), network(t),
                count(t, "n_params") or "", "" if t.value is None else t.value,
                *("" if (v := final(t, m)) is None else v for m in METRICS),
                number(t.user_attrs.get("seconds")) or "", reason(t),
            ])  # fmt: skip


def write_report(
    storage: optuna.storages.BaseStorage, study_name: str, *, out_dir: Path,
    log_loss: bool = False, data_path: str | None = None,
) -> Report:  # fmt: skip
    """Write the study's report folder; return what was written.

    A study sweep made gets its budget, grid, initialisation and distortion sections; any
    other (another optuna client's, in the same database) gets a plain report in its own
    direction and metric name. A study of more than ``digest.LARGE`` finished trials is
    summarised. ``data_path``: this host's copy of MNIST for the distortions' figure (default:
    the study's, else this host's cache). Raises SweepError for an unknown study or one
    without trials.
    """
    study = load_study(storage, study_name)
    multi = len(study.directions) > 1
    if multi:  # read by optuna (sweep's narrow records hold the first objective only)
        chars = report_reads.attribute_chars(storage.engine, study._study_id)
        if chars > MAX_OPTUNA_READ:  # optuna reads them whole: 4 GB for 2 GB of them
            raise SweepError(
                f"study {printable(study_name, 200)!r} has several objectives and its trials "
                f"hold {chars:,} characters of attributes; a report of such a study reads "
                f"them all, at most {MAX_OPTUNA_READ:,}"
            )
        unreadable = status_reads.unreadable(storage.engine, study._study_id)
        if unreadable:  # optuna's reading would stop at the first, with an AssertionError
            raise SweepError(
                f"study {printable(study_name, 200)!r} has {unreadable:,} trial(s) whose "
                "stored values optuna cannot read; a trial's values are one per objective "
                "from 0, each a number stored as FINITE, or INF_POS or INF_NEG stored as NULL "
                "(SQLite keeps a NaN as NULL)"
            )
        trials: list[Trial] = [t for t in study.get_trials(deepcopy=False)
                               if t.state != TrialState.WAITING]  # fmt: skip
    else:
        trials = list(report_reads.read(storage.engine, study._study_id))
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
    if multi:  # its front: ``sweep.report.front``
        shown, along = listed(trials, kind)
        ends = front.write(study, shown, along, kind, out_dir, files)
        return Report(out_dir, tuple(files), None, None, None, ends)
    large = digest.is_large(trials)
    top = digest.best(finished(trials), digest.TOP, maximize=kind.maximize) if large else None
    # learning curves only for the trials drawn: every one of a small study
    drawn_trials = digest.curve_trials(trials, top) if top is not None else trials
    report_reads.read_curves(storage.engine, drawn_trials)
    write_csv(trials, out_dir / "trials.csv", maximize=kind.maximize)
    colour = drawn.draw(study, trials, kind, out_dir, files, top)
    sections = []
    if kind.spec is not None:
        drawn.draw_sweep(trials, kind.spec, out_dir, files, colour, large)
        done = finished(trials)
        varies = varying(done)
        if drawn.is_grid(done, varies, kind):
            sections.append(drawn.grid_section(done, out_dir, files, large))
        if "init" in varies or kind.spec.dimension("init") is not None:
            sections.append(drawn.init_section(trials, out_dir, files, log_loss))
        # the best trials' settings: a large study's listed ones, a small study's every trial
        best_first = top if top is not None else ordered(list(trials), maximize=kind.maximize)
        shown = distortions.section(best_first, out_dir, files,
                                    data_path=data_path or kind.spec.data_path,
                                    train_size=kind.spec.train_size)  # fmt: skip
        if shown is not None:
            sections.append(shown)
    best = study.best_trial if any(t.state == TrialState.COMPLETE for t in trials) else None
    lines = [f"# Study `{printable(study_name, 400)}`", "", *_summary(study, trials, kind, best)]
    if large:
        lines[-1:] = [
            f"- {len(trials):,} trials: this report shows the {digest.TOP} best and summarises "
            "the rest; every trial is in [trials.csv](trials.csv)",
            f"- figures: values in {digest_figures.BINS} bins of trials or time, learning curves "
            f"of {digest.CURVES:,} trials sampled evenly and the {digest.BEST_CURVES} best, "
            f"accuracy against size as a 2-D histogram, importances from "
            f"{digest.IMPORTANCE_TRIALS:,} trials sampled evenly",
            "",
        ]
    for name, title in [("history.png", "Optimisation history"),
                        ("accuracy_over_time.png", "Accuracy against search time"),
                        ("learning_curves.png", "Learning curves"),
                        ("accuracy_vs_params.png", "Accuracy against parameter count"),
                        ("importances.png", "Parameter importances")]:  # fmt: skip
        if name in files:
            lines += [f"## {title}", "", f"![{title.lower()}]({name})", ""]
    lines += sections
    names = param_names(trials)
    columns = ["network", "parameters", kind.metric, "seconds"] if kind.sweep else [kind.metric]
    header = ["#", "state", *names, *columns, "note"]
    if large:
        lines += _digest_sections(trials, kind, names)
        lines += [f"## The {digest.TOP} best trials", "",
                  md_table(header, _trial_rows(top or [], kind, names)), ""]  # fmt: skip
    else:
        lines += ["## Trials", "", md_table(header, _trial_rows(trials, kind, names)), ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    best_text = None
    if best is not None:
        best_text = f"best trial {best.number}: " + (
            f"{best.value:.2f}%" if kind.sweep else f"{kind.metric} {best.value:.6g}"
        )
    return Report(out_dir, tuple(files), best and best.number, best and best.value,
                  best and config(best), best_text)  # fmt: skip


def _trial_rows(trials: Sequence[Trial], kind: Kind, names: list[str]) -> list[list[Any]]:
    """The trials table's rows, in ``ordered`` order."""
    rows = []
    for t in ordered(list(trials), maximize=kind.maximize):
        value = "" if t.value is None else f"{t.value:.{'2f' if kind.sweep else '6g'}}"
        ours = [network(t), count(t, "n_params") or "", value,
                number(t.user_attrs.get("seconds")) or ""]  # fmt: skip
        rows.append([t.number, t.state.name.lower(), *(t.params.get(n, "") for n in names),
                     *(ours if kind.sweep else [value]), reason(t)])  # fmt: skip
    return rows


def _digest_sections(trials: Sequence[Trial], kind: Kind, names: list[str]) -> list[str]:
    """A large study's aggregates: the value's quantiles, each parameter's buckets, why trials
    were pruned or failed."""
    done = finished(trials)

    def shown(v: float) -> str:
        return f"{v:.2f}" if kind.sweep else f"{v:.6g}"

    columns = {kind.metric: [t.value for t in done]}
    if kind.sweep:
        columns["parameters"] = [n for t in done if (n := count(t, "n_params")) is not None]
        seconds = (number(t.user_attrs.get("seconds")) for t in done)
        columns["seconds"] = [s for s in seconds if s is not None]
    text = [f"## Values of the {len(done):,} complete trials", "",
            md_table(*digest.quantile_rows(columns, shown)), ""]  # fmt: skip
    text += ["## Parameters", "",
             f"Each parameter's values in buckets of about equal counts, with the {kind.metric} "
             "of their complete trials.", "",
             md_table(*digest.parameter_rows(done, names, maximize=kind.maximize, shown=shown)),
             ""]  # fmt: skip
    notes = [reason(t) for t in trials if t.state in (TrialState.PRUNED, TrialState.FAIL)]
    if any(notes):
        text += ["## Pruned and failed trials", "", md_table(*digest.note_rows(notes)), ""]
    return text


def _summary(study: optuna.Study, trials: Sequence[Trial], kind: Kind,
             best: FrozenTrial | None) -> list[str]:  # fmt: skip
    """The report's opening list: how the study searched, what it found."""
    states = Counter(t.state for t in trials)
    counts = {s.name.lower(): states[s] for s in TrialState}
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
    lines.append("- trials: " + ", ".join(f"{n:,} {s}" for s, n in counts.items() if n))
    if best is not None and kind.sweep:
        cfg = ", ".join(f"{cell(k)}={cell(v)}" for k, v in in_use(best).items())
        net = network(best)
        lines.append(f"- best: trial {best.number}, validation accuracy **{best.value:.2f}%** "
                     f"({f'{net}; ' if net else ''}{cfg})")  # fmt: skip
    elif best is not None:
        params = ", ".join(f"{cell(k)}={cell(v)}" for k, v in best.params.items())
        lines.append(f"- best: trial {best.number}, {kind.metric} **{best.value:.6g}** ({params})")
    test = number(study.user_attrs.get("test_accuracy"))
    if kind.sweep and test is not None:
        which = number(study.user_attrs.get("test_trial"))
        lines.append(
            f"- test accuracy of the best configuration (trial "
            f"{'?' if which is None else int(which)}, evaluated once): **{test:.2f}%**"
        )
    return [*lines, ""]

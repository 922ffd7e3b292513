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
from sweep.queue import report_pages, report_reads, status_reads
from sweep.queue.attrs import WORKER_TAG
from sweep.queue.storage import mask_password, study_names
from sweep.report import digest, digest_figures, distortions, drawn, front
from sweep.report import large as large_report
from sweep.report.quantities import PARAMETERS, SECONDS, quantity
from sweep.report.scale import Scale
from sweep.report.shown import (
    Trial,
    cell,
    config,
    csv_header,
    csv_row,
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
from sweep.study.audit import outside_budget, outside_line, outside_numbers
from sweep.study.space import SearchSpec

logger = logging.getLogger(__name__)

#: The most attribute text a report reads through optuna's ``get_trials`` (a study with
#: several objectives), which builds every trial whole: 2,000 trials of 1 MB took 4 GB.
MAX_OPTUNA_READ = 200_000_000
#: The most trials a report reads through optuna's ``get_trials`` (a study of several
#: objectives): one objective's report held 6.5 kB a trial that way (648 MB at 10⁵, issue 27).
MAX_OPTUNA_TRIALS = 100_000


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


def write_csv(trials: Sequence[Trial], path: Path, *, maximize: bool = True,
              spec: SearchSpec | None = None) -> None:  # fmt: skip
    """One row per trial (``shown.csv_row``) in ``ordered`` order; those outside ``spec``'s
    budget flagged."""
    names = param_names(trials)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(csv_header(names))
        for t in ordered(list(trials), maximize=maximize):
            w.writerow(csv_row(t, names, outside_budget(t.params, spec) if spec else None))


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
    engine, sid = storage.engine, study._study_id
    large = not multi and report_pages.finished_count(engine, sid) > digest.LARGE
    trials: list[Trial] = []
    if multi:  # read by optuna (sweep's narrow records hold the first objective only)
        trials = _optuna_read(study, study_name, engine)
    elif not large:  # a large study is read a page at a time (``sweep.report.large``)
        trials = list(report_reads.read(engine, sid))
    if not trials and not large:
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
        placed = front.finite_values(shown, len(kind.objectives))
        standard = drawn.draw_front_standard([t for t, _ in placed], [v for _, v in placed],
                                             shown, kind, out_dir, files)  # fmt: skip
        ends = front.write(study, shown, along, kind, out_dir, files, standard)
        return Report(out_dir, tuple(files), None, None, None, ends)
    if large:
        got = large_report.write(storage, study, kind, out_dir, files, log_loss=log_loss,
                                 data_path=data_path)  # fmt: skip
        counts, sections, top = got.counts, got.sections, got.top
    else:
        report_reads.read_curves(engine, trials)  # every learning curve of a small study
        write_csv(trials, out_dir / "trials.csv", maximize=kind.maximize, spec=kind.spec)
        # one colour scale for every heatmap of the report: the span of its values
        scale = Scale.of([t.value for t in finished(trials)], maximize=kind.maximize)
        colour, scores = drawn.draw(study, trials, kind, out_dir, files)
        report_reads.read_attr(engine, trials, WORKER_TAG)  # the timeline's rows
        drawn.draw_standard(trials, kind, scores, out_dir, files, scale=scale)
        counts, sections = Counter(t.state for t in trials), []
        if kind.spec is not None:
            drawn.draw_sweep(trials, kind.spec, out_dir, files, colour)
            sections = _sections(trials, kind, out_dir, files, log_loss=log_loss,
                                 data_path=data_path, scale=scale)  # fmt: skip
    best = _best(study, top if large else ordered(finished(trials), maximize=kind.maximize),
                 complete=counts[TrialState.COMPLETE] > 0)  # fmt: skip
    lines = [f"# Study `{printable(study_name, 400)}`", "", *_summary(study, counts, kind, best)]
    found = got.outside if large else outside_numbers(trials, kind.spec) if kind.spec else []
    if outside := outside_line(found):
        lines[-1:] = [outside, ""]
    if large:
        lines[-1:] = [
            f"- {got.trials:,} trials: this report shows the {digest.TOP} best and summarises "
            "the rest; every trial is in [trials.csv](trials.csv)",
            f"- figures: values in {digest_figures.BINS} bins of trials or time, learning curves "
            f"of {digest.CURVES:,} trials sampled evenly and the {digest.BEST_CURVES} best, "
            f"accuracy against size as a 2-D histogram, importances and the standard plots "
            f"from {digest.IMPORTANCE_TRIALS:,} complete trials sampled evenly",
            "",
        ]
    for name, title in [("history.png", "Optimisation history"),
                        ("accuracy_over_time.png", "Accuracy against search time"),
                        ("learning_curves.png", "Learning curves"),
                        ("accuracy_vs_params.png", "Accuracy against parameter count"),
                        ("importances.png", "Parameter importances"),
                        *drawn.STANDARD.items()]:  # fmt: skip
        if name in files:
            lines += [f"## {title}", "", f"![{title.lower()}]({name})", ""]
    lines += sections
    names = got.names if large else param_names(trials)
    columns = ["network", PARAMETERS, kind.metric, SECONDS] if kind.sweep else [kind.metric]
    header = ["#", "state", *names, *columns, "note"]
    if large:
        lines += got.aggregates
        lines += [f"## The {digest.TOP} best trials", "",
                  md_table(header, _trial_rows(top, kind, names)), ""]  # fmt: skip
    else:
        lines += ["## Trials", "", md_table(header, _trial_rows(trials, kind, names)), ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    best_text = None
    if best is not None:
        best_text = f"best trial {best.number}: " + (
            f"{best.value:.2f}%" if kind.sweep else f"{kind.metric} {best.value:.6g}"
        )
        if kind.spec is not None and (flag := outside_budget(best.params, kind.spec)):
            best_text += f" ({flag})"
    return Report(out_dir, tuple(files), best and best.number, best and best.value,
                  best and config(best), best_text)  # fmt: skip


def _best(study: optuna.Study, done: Sequence[Trial], *, complete: bool) -> Trial | None:
    """optuna's ``best_trial`` (``complete``: the study has a COMPLETE trial); where optuna cannot
    read it (an attribute another client nested past the stack: its ``json.loads`` recurses),
    the first of ``done``, the report's own reading of its finished trials, best first."""
    if not complete:
        return None
    try:
        return study.best_trial
    except RecursionError:
        return done[0] if done else None


def _optuna_read(study: optuna.Study, study_name: str, engine: Any) -> list[Trial]:
    """A study of several objectives read whole by optuna's ``get_trials``, refused past what
    that may hold: ``MAX_OPTUNA_READ`` characters of attributes, ``MAX_OPTUNA_TRIALS`` trials,
    values optuna cannot read, or an attribute nested past its JSON decoder's recursion (found
    by reading: nothing but a decoder measures a JSON value's depth)."""
    name = printable(study_name, 200)
    chars = report_reads.attribute_chars(engine, study._study_id)
    if chars > MAX_OPTUNA_READ:  # optuna reads them whole: 4 GB for 2 GB of them
        raise SweepError(
            f"study {name!r} has several objectives and its trials hold {chars:,} characters "
            f"of attributes; a report of such a study reads them all, at most "
            f"{MAX_OPTUNA_READ:,}"
        )
    listed_trials = report_pages.listed_count(engine, study._study_id)
    if listed_trials > MAX_OPTUNA_TRIALS:
        raise SweepError(
            f"study {name!r} has several objectives and {listed_trials:,} trials; a report of "
            f"such a study reads every trial whole, at most {MAX_OPTUNA_TRIALS:,}"
        )
    unreadable = status_reads.unreadable(engine, study._study_id)
    if unreadable:  # optuna's reading would stop at the first, with an AssertionError
        raise SweepError(
            f"study {name!r} has {unreadable:,} trial(s) whose "
            "stored values optuna cannot read; a trial's values are one per objective "
            "from 0, each a number stored as FINITE, or INF_POS or INF_NEG stored as NULL "
            "(SQLite keeps a NaN as NULL)"
        )
    try:
        return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    except RecursionError:  # optuna's json.loads of an attribute another client nested deep
        raise SweepError(
            f"study {name!r} has several objectives and a trial holds an attribute nested too "
            "deeply for optuna to read (another client wrote it); a report of such a study "
            "reads every trial through optuna, an attribute nested at most about 900 deep"
        ) from None


def _sections(trials: Sequence[Trial], kind: Kind, out_dir: Path, files: list[str], *,
              log_loss: bool, data_path: str | None, scale: Scale) -> list[str]:  # fmt: skip
    """A small sweep study's grid, initialisation and distortions sections."""
    assert kind.spec is not None
    sections = []
    done = finished(trials)
    varies = varying(done)
    if drawn.is_grid(done, varies, kind):
        sections.append(drawn.grid_section(done, out_dir, files, False, scale=scale))
    if "init" in varies or kind.spec.dimension("init") is not None:
        sections.append(drawn.init_section(trials, out_dir, files, log_loss))
    # the best trials' settings: every trial of a small study, best first
    shown = distortions.section(ordered(list(trials), maximize=kind.maximize), out_dir, files,
                                data_path=data_path or kind.spec.data_path,
                                train_size=kind.spec.train_size)  # fmt: skip
    if shown is not None:
        sections.append(shown)
    return sections


def _trial_rows(trials: Sequence[Trial], kind: Kind, names: list[str]) -> list[list[Any]]:
    """The trials table's rows, in ``ordered`` order."""
    rows = []
    for t in ordered(list(trials), maximize=kind.maximize):
        value = "" if t.value is None else f"{t.value:.{'2f' if kind.sweep else '6g'}}"
        ours = [network(t), quantity(PARAMETERS, count(t, "n_params")), value,
                quantity(SECONDS, number(t.user_attrs.get("seconds")))]  # fmt: skip
        flag = kind.spec and outside_budget(t.params, kind.spec)
        rows.append([t.number, t.state.name.lower(), *(t.params.get(n, "") for n in names),
                     *(ours if kind.sweep else [value]),
                     "; ".join(filter(None, [reason(t), flag]))])  # fmt: skip
    return rows


def _summary(study: optuna.Study, states: Counter[TrialState], kind: Kind,
             best: FrozenTrial | None) -> list[str]:  # fmt: skip
    """The report's opening list: how the study searched, what it found."""
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
        flag = outside_budget(best.params, kind.spec) if kind.spec else None
        lines.append(f"- best: trial {best.number}, validation accuracy **{best.value:.2f}%** "
                     f"({f'{net}; ' if net else ''}{cfg})"
                     + (f": **{flag}**" if flag else ""))  # fmt: skip
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

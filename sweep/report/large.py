"""A large study's report, read a page at a time: ``trials.csv`` staged and ordered, figures
and tables from columns.

Above ``digest.LARGE`` finished trials the report already summarised (``sweep.report.digest``),
but it held every trial as a record to do so: 5.2 GB and 91 s at 10⁶ trials (issue 27). Here the
trials come in pages (``sweep.queue.report_pages``), in parts read by a process each
(``sweep.report.parts``); each page's rows of ``trials.csv`` are staged and its trials folded
into columns (``sweep.report.columns``), then dropped; the rows are written in the order the
report lists trials (``Columns.listed``). The few trials shown whole are read again by id: the
``digest.TOP`` best, the learning-curve sample, the importance sample, each initialisation's
latest. What it writes is what the summarising report wrote from records
(tests/sweep/test_report_pages.py compares them).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from sweep.queue import report_pages, report_reads
from sweep.queue.attrs import WORKER_TAG
from sweep.queue.report_reads import Record
from sweep.report import digest, digest_figures, distortions, drawn, parts
from sweep.report.columns import Columns
from sweep.report.scale import Scale
from sweep.report.shown import md_table
from sweep.report.stored import Kind, series
from sweep.report.summary import ORDER


@dataclasses.dataclass(frozen=True)
class Digest:
    """What a large study's report.md shows, besides the figures written."""

    counts: Counter[TrialState]  # trials by state
    trials: int  # every trial but the queued ones
    sections: list[str]  # the grid, initialisation and distortions sections
    aggregates: list[str]  # quantiles, parameter buckets, notes (``digest_sections``)
    top: list[Record]  # the ``digest.TOP`` best, best first, whole
    names: list[str]  # every parameter name, in order of first appearance
    outside: list[int]  # the numbers of the trials outside the budget, in order


def write(storage: optuna.storages.BaseStorage, study: optuna.Study, kind: Kind, out: Path,
          files: list[str], *, log_loss: bool, data_path: str | None) -> Digest:  # fmt: skip
    """Write ``trials.csv`` and the figures of a large single-objective study into ``out``
    (their names appended to ``files``); return what ``report.md`` shows of it."""
    engine, sid = storage.engine, study._study_id
    names = report_pages.param_names(engine, sid)
    grid = kind.spec is not None and kind.spec.sampler == "grid"
    with parts.staging(out) as folder:
        staged = parts.read(engine, sid, names, grid=grid, spec=kind.spec, folder=Path(folder))
        cols = staged.cols
        listed = cols.listed(ORDER, maximize=kind.maximize)
        staged.write_listed(names, listed, out / "trials.csv")
    best = listed[cols.is_done[listed]][: digest.TOP]
    top = report_pages.records(engine, [int(i) for i in cols.tid[best]])
    _figures(engine, study, cols, kind, out, files, top)
    sections = []
    if kind.spec is not None:
        varies = cols.varying()
        if cols.grid is not None and drawn.is_grid(cols.grid, varies, kind):
            sections.append(drawn.grid_section(cols.grid, out, files, True))
        if "init" in varies or kind.spec.dimension("init") is not None:
            inits = cols.inits()
            latest = {t.trial_id: t for t in report_pages.records(engine, [i for _, i in inits])}
            losses = {init: series(latest[i], "train_loss") for init, i in inits if i in latest}
            sections.append(drawn.init_text(losses, out, files, log_loss))
        shown = distortions.section(top, out, files, data_path=data_path or kind.spec.data_path,
                                    train_size=kind.spec.train_size)  # fmt: skip
        if shown is not None:
            sections.append(shown)
    return Digest(
        cols.counts(),
        len(cols.number),
        sections,
        digest_sections(cols, kind),
        top,
        names,
        list(cols.outside),
    )


def _figures(engine: Any, study: optuna.Study, cols: Columns, kind: Kind, out: Path,
             files: list[str], top: list[Record]) -> None:  # fmt: skip
    """The summarising figures (``digest_figures``), in the order the report lists them."""
    done = cols.done
    values = cols.value[done]
    if len(done):
        digest_figures.binned(cols.number[done], values, out / "history.png",
                              title="Optimisation history", xlabel="trial number",
                              ylabel=kind.metric, maximize=kind.maximize)  # fmt: skip
        files.append("history.png")
    evenly = digest.evenly(done, digest.IMPORTANCE_TRIALS)
    sample = report_pages.records(engine, [int(cols.tid[i]) for i in evenly])
    scores = drawn.importance_figure(study, sample, cols.varying(), kind, out, files, large=True)
    # the standard plots from the same even sample, painted in the whole study's scale
    report_reads.read_attr(engine, sample, WORKER_TAG)
    span = [float(values.min()), float(values.max())] if len(values) else []
    drawn.draw_standard(sample, kind, scores, out, files,
                        scale=Scale.of(span, maximize=kind.maximize), of=len(done))  # fmt: skip
    _curve_bands(engine, cols, top, kind, out, files)
    if kind.spec is None:
        return
    sized = done[np.isfinite(cols.n_params[done])]
    if len(sized):
        best = sized[np.argmax(cols.value[sized])]  # ties: the first, the lowest number
        spec = kind.spec
        digest_figures.accuracy_hexbin(
            cols.n_params[sized].astype(np.int64).tolist(), cols.value[sized].tolist(),
            (spec.budget.min_params, spec.budget.max_params), out / "accuracy_vs_params.png",
            best=(int(cols.n_params[best]), float(cols.value[best])),
        )  # fmt: skip
        files.append("accuracy_vs_params.png")
    if len(done):
        minutes = (cols.complete[done] - np.nanmin(cols.start)) / 1e6 / 60
        digest_figures.binned(minutes, values, out / "accuracy_over_time.png",
                              title="Accuracy against search time",
                              xlabel="wall time since the first trial (min)",
                              reference=drawn.REFERENCE)  # fmt: skip
        files.append("accuracy_over_time.png")


def _curve_bands(engine: Any, cols: Columns, top: list[Record], kind: Kind, out: Path,
                 files: list[str]) -> None:  # fmt: skip
    """Learning curves: bands over an even sample of the complete and pruned trials, the
    ``digest.BEST_CURVES`` best as lines; curves are read for those trials only."""
    curved = cols.which(TrialState.COMPLETE, TrialState.PRUNED)
    whole = {t.trial_id: t for t in top}
    sample = [whole.get(int(cols.tid[i])) or Record(int(cols.tid[i]), int(cols.number[i]),
                                                    cols.state_of(i), None, None, None)
              for i in digest.evenly(curved, digest.CURVES)]  # fmt: skip
    drawn_ids = {r.trial_id for r in sample}
    report_reads.read_curves(engine,
                             sample + [t for t in top[: digest.BEST_CURVES]
                                       if t.trial_id not in drawn_ids])  # fmt: skip
    sampled = [(list(t.intermediate_values), list(t.intermediate_values.values()))
               for t in sample if t.intermediate_values]  # fmt: skip
    best = [drawn.curve(t, f"#{t.number} (best {i + 1})")
            for i, t in enumerate(top[: digest.BEST_CURVES]) if t.intermediate_values]  # fmt: skip
    if sampled:
        digest_figures.curve_bands(sampled, best, out / "learning_curves.png",
                                   metric=kind.metric, of=len(curved))  # fmt: skip
        files.append("learning_curves.png")


def digest_sections(cols: Columns, kind: Kind) -> list[str]:
    """A large study's aggregates: the value's quantiles, each parameter's buckets, why trials
    were pruned or failed."""
    done = cols.done

    def shown(v: float) -> str:
        return f"{v:.2f}" if kind.sweep else f"{v:.6g}"

    columns: dict[str, Any] = {kind.metric: cols.value[done]}
    if kind.sweep:
        n_params, seconds = cols.n_params[done], cols.seconds[done]
        columns["parameters"] = n_params[np.isfinite(n_params)]
        columns["seconds"] = seconds[np.isfinite(seconds)]
    text = [f"## Values of the {len(done):,} complete trials", "",
            md_table(*digest.quantile_rows(columns, shown)), ""]  # fmt: skip
    rows: list[list[Any]] = []
    for name in cols.names:
        groups = cols.groups(name)
        if groups is not None:
            rows += digest.bucket_rows(name, groups, maximize=kind.maximize, shown=shown)
    text += ["## Parameters", "",
             f"Each parameter's values in buckets of about equal counts, with the {kind.metric} "
             "of their complete trials.", "",
             md_table(digest.PARAMETER_HEADER, rows), ""]  # fmt: skip
    notes = cols.notes()
    if notes:
        text += ["## Pruned and failed trials", "", md_table(*digest.note_rows_of(notes)), ""]
    return text

"""The standard plots a report draws (parallel coordinates, slice, contour, EDF, the timeline of
trials per worker), its one colour scale for every heatmap, its one name and number format per
quantity, and the ``viz`` extra that optuna's own plotly and contour plots need (#28)."""

from __future__ import annotations

import json
import sqlite3
import tomllib
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pytest

from sweep.queue.attrs import WORKER_TAG
from sweep.queue.storage import open_storage
from sweep.report import figures, standard_figures, writer
from sweep.report.scale import Scale
from tests.sweep.test_report_figures import sweep_study

ROOT = Path(__file__).parents[2]
STANDARD = ["parallel_coordinates.png", "slice.png", "contour.png", "edf.png", "timeline.png"]


def _tagged(tmp_path) -> str:
    """``sweep_study``'s four grid points (values 94, 93, 92, 91), run by two workers."""
    url = sweep_study(tmp_path, [{}, {}, {}, {}])
    with sqlite3.connect(tmp_path / "db.sqlite") as db:  # a finished trial, tagged as claimed
        db.executemany(
            "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, ?, ?)",
            [(tid, WORKER_TAG, json.dumps(f"host-{n % 2}:1"))
             for tid, n in db.execute("SELECT trial_id, number FROM trials")],
        )  # fmt: skip
    return url


def _saved(monkeypatch, *modules) -> dict[str, object]:
    """Each figure the ``modules`` save, by file name, before it is closed."""
    saved: dict[str, object] = {}
    for module in modules:

        def keep(fig, path, real=module._save):
            saved[path.name] = fig
            return real(fig, path)

        monkeypatch.setattr(module, "_save", keep)
    return saved


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of ``_tagged``'s study, written once: what it wrote, its report.md, each
    figure it saved (by file name) and the trials the timeline was handed."""
    tmp = tmp_path_factory.mktemp("standard")
    spans = []
    real = standard_figures.timeline

    def spy(given, *args, **kwargs):
        spans.extend(given)
        return real(given, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        saved = _saved(mp, figures, standard_figures)
        mp.setattr(standard_figures, "timeline", spy)
        written = writer.write_report(open_storage(_tagged(tmp)), "g", out_dir=tmp / "o")
    return written, (tmp / "o" / "report.md").read_text(), saved, spans


def test_the_standard_plots_are_written_and_shown(report):
    written, md, _, _ = report
    for name in STANDARD:
        assert name in written.files
        assert (written.out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    assert "## Contour of the two most important parameters" in md


def test_every_heatmap_of_a_report_shares_one_colour_scale(report):
    _, _, saved, _ = report
    # two learning rates: lr 0.1 holds 94 and 92, lr 0.05 holds 93 and 91; one scale 91–94
    for name in ("grid_lr_0.1.png", "grid_lr_0.05.png"):
        assert saved[name].axes[0].images[0].get_clim() == (91.0, 94.0), name
    [filled] = [c for c in saved["contour.png"].axes[0].collections if hasattr(c, "levels")]
    assert (filled.norm.vmin, filled.norm.vmax) == (91.0, 94.0)
    [lines] = saved["parallel_coordinates.png"].axes[0].collections
    assert (lines.norm.vmin, lines.norm.vmax) == (91.0, 94.0)


def test_the_contour_and_parallel_coordinates_paint_in_the_scale_they_are_given(
    tmp_path, monkeypatch
):
    saved = _saved(monkeypatch, standard_figures)
    x = standard_figures.Axis.of("a", [1.0, 2.0, 1.0, 2.0])
    y = standard_figures.Axis.of("b", [1.0, 1.0, 2.0, 2.0])
    scale = Scale(80.0, 100.0)  # wider than these values: the report's, not theirs
    values = [90.0, 91.0, 92.0, 94.0]
    standard_figures.contour(x, y, values, tmp_path / "c.png", scale=scale, metric="m", best=3)
    standard_figures.parallel_coordinates([x, y], values, tmp_path / "p.png", scale=scale,
                                          metric="m", title="t")  # fmt: skip
    [filled] = [c for c in saved["c.png"].axes[0].collections if hasattr(c, "levels")]
    assert (filled.norm.vmin, filled.norm.vmax) == (80.0, 100.0)
    assert (filled.levels[0], filled.levels[-1]) == (80.0, 100.0)
    [lines] = saved["p.png"].axes[0].collections
    assert (lines.norm.vmin, lines.norm.vmax) == (80.0, 100.0)


def test_the_timeline_has_a_row_per_worker(report):
    spans = report[3]
    assert sorted(s.worker for s in spans) == ["host-0:1", "host-0:1", "host-1:1", "host-1:1"]
    assert all(s.state == "COMPLETE" and s.end >= s.start for s in spans)


def test_tables_name_and_format_each_quantity_once(report):
    md = report[1]
    header = "| hidden_1 | hidden_2 | parameters | learning_rate | validation accuracy [%] |"
    assert header in md
    assert "r_valid" not in md and "| lr |" not in md
    grid_row = next(ln for ln in md.split("## The grid")[1].splitlines()
                    if ln.startswith("| 128 | 64 |"))  # fmt: skip
    trial_row = next(ln for ln in md.split("## Trials")[1].splitlines() if ln.startswith("| 0 |"))
    assert "| 109,386 |" in grid_row and "| 109,386 |" in trial_row  # 784-128-64-10, alike
    assert "| 94.00 |" in grid_row and "| 94.00 |" in trial_row
    assert "| 128 | 64 | 0.1 | 784-128-64-10 |" in trial_row


def test_the_scale_puts_the_best_end_on_yellow_either_way():
    up, down = Scale.of([91.0, 94.0]), Scale.of([0.1, 0.4], maximize=False)
    assert up.cmap(up.norm(94.0)) == down.cmap(down.norm(0.1))  # the best: the same yellow
    assert up.text_colour(94.0) == "black" and up.text_colour(91.0) == "white"
    assert Scale.of([5.0]) == Scale(4.5, 5.5)


def test_a_parameter_becomes_an_axis():
    lr = standard_figures.Axis.of("learning_rate", [1.0, 0.1, 0.01, None])
    assert lr.log and lr.labels == ["0.01", "0.1", "1"]  # two decades: a log axis
    assert np.isnan(lr.at[3])
    width = standard_figures.Axis.of("hidden_1", [64, 128], log=False)
    assert not width.log and list(width.at) == [64.0, 128.0]
    act = standard_figures.Axis.of("activation", ["relu", "tanh", "relu"])
    assert act.categorical and list(act.at) == [0.0, 1.0, 0.0] and act.labels == ["relu", "tanh"]


def test_many_learning_curves_are_drawn_as_collections(tmp_path, monkeypatch):
    saved = _saved(monkeypatch, figures)
    n = figures.MANY_CURVES + 1
    curves = [figures.Curve(f"g{i % 3}", [1, 2], [90.0, 91.0 + i / n], i % 7 == 0, [0.5, 0.3],
                            [0.4, 0.35]) for i in range(n)]  # fmt: skip
    figures.learning_curves(curves, tmp_path / "learning_curves.png", legend_title="by")
    values, loss = saved["learning_curves.png"].axes
    assert [len(c.get_segments()) for c in values.collections] == [n]
    assert [len(c.get_segments()) for c in loss.collections] == [n, n]  # training, validation
    assert [t.get_text() for t in values.get_legend().get_texts()] == ["g1", "g2", "g0", "pruned"]


def test_the_viz_extra_brings_what_optunas_plots_need():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]  # fmt: skip
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip() for r in extras["viz"]}
    assert {"plotly", "scipy"} <= names
    assert "viz" in (ROOT / "Makefile").read_text().split("EXTRAS :=")[1].splitlines()[0]


def test_optunas_own_contour_plots_read_a_sweep_study(tmp_path):
    # plotly and scipy: the viz extra's, which the dev extra brings too (never skipped)
    import plotly  # noqa: F401
    import scipy  # noqa: F401

    study = optuna.load_study(study_name="g", storage=open_storage(_tagged(tmp_path)))
    figure = optuna.visualization.plot_contour(study, params=["hidden_1", "learning_rate"])
    assert figure.data
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        ax = optuna.visualization.matplotlib.plot_contour(
            study, params=["hidden_1", "learning_rate"])  # fmt: skip
    assert ax.get_xlabel() == "hidden_1"


def test_slice_panels_tick_round_values_not_one_per_value(tmp_path, monkeypatch):
    """Learning rates and widths in panels a quarter of the figure wide: a tick per value, or
    matplotlib's own of a narrow log span (0.01585, 0.02512, ...), overlapped."""
    closed = []
    monkeypatch.setattr(standard_figures.plt, "close", closed.append)
    rates = standard_figures.Axis.of("learning_rate", [0.015, 0.03, 0.06, 0.1, 0.2, 0.32],
                                     log=True)  # fmt: skip
    widths = standard_figures.Axis.of("hidden_1", [24, 30, 36, 42, 50, 64])
    # no round value between 0.011 and 0.019: the ends, rounded inward
    narrow = standard_figures.Axis.of("lr", [0.0110034, 0.012, 0.013, 0.015, 0.016, 0.0189917],
                                      log=True)  # fmt: skip
    standard_figures.slices([rates, widths, narrow], list(range(6)), list(range(6)),
                            tmp_path / "slice.png", metric="m", title="t")  # fmt: skip
    lr, h1, lr_narrow = closed[0].axes[:3]
    assert [round(10**t, 6) for t in lr.get_xticks()] == [0.02, 0.05, 0.1, 0.2]
    assert [t.get_text() for t in lr_narrow.get_xticklabels()] == ["0.012", "0.018"]
    one = standard_figures._round_log_ticks(np.log10(0.018), np.log10(0.022))  # one round
    assert [round(10**t, 6) for t in one] == [0.018, 0.02, 0.022]
    assert len(h1.get_xticks()) <= 5  # not one per width
    assert standard_figures.Axis.of("n", [20_000, 54_375]).text(54_375) == "54,375"


def test_a_timeline_of_thousands_of_workers_draws_the_busiest(tmp_path, monkeypatch):
    # a worker per trial, as SLURM array tasks are: 3,000 rows made a figure 840 in high
    closed = []
    monkeypatch.setattr(standard_figures.plt, "close", closed.append)
    t0 = datetime(2026, 1, 1)
    spans = [standard_figures.Span(f"h:{i}", t0 + timedelta(seconds=i), t0 + timedelta(
        seconds=i + 5), "COMPLETE") for i in range(3_000)]  # fmt: skip
    spans += [standard_figures.Span("h:7", t0, t0 + timedelta(seconds=1), "PRUNED")]  # 2 trials
    standard_figures.timeline(spans, tmp_path / "timeline.png", title="Timeline (3,001 trials)")
    [fig] = closed
    ax = fig.axes[0]
    assert ax.get_title() == (
        "Timeline (3,001 trials)\nthe 40 of its 3,000 workers with the most trials"
    )
    assert ax.get_ylim() == (39.6, -0.6)  # 40 rows, inverted
    assert fig.get_size_inches()[1] < 20
    assert "h:7" in [t.get_text() for t in ax.get_yticklabels()]  # the busiest is among them

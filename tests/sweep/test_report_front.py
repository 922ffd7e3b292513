"""Studies of several objectives, reported (#26): the front (optuna's ``best_trials``) in the
report's tables, figures and CSV, in ``sweep status`` and in the table ``sweep run`` ends with;
their values shown as their objectives say; the hypervolume against an independent sweep; the
single-objective figure's non-dominated points; and nothing stored crashing any of it. Tiny
SQLite studies built with ``add_trial``: no training."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sweep.queue.storage import open_storage
from sweep.report import figures, front, standard_figures, summary, writer
from sweep.study.joining import open_study
from sweep.study.objectives import EPOCH_TIME, labels
from sweep.study.spec import load_spec
from tests.sweep.helpers import main_in_process, run_cli, run_sql

MIN_PARAMS, MAX_PARAMS = 20_000, 60_000
STUDY = """[study]
name = "{name}"
sampler = "nsga2"
population = 4
trials = 20
objectives = {objectives}

[budget]
min_params = 20_000
max_params = 60_000

[data]
train_size = 2_000

[train]
epochs = 2
depth = 1

[space]
hidden_1 = {{ low = 26, high = 75 }}
learning_rate = {{ low = 0.02, high = 0.2, log = true }}
"""
TWO, THREE = ("accuracy", "params"), ("accuracy", "params", "epoch_time")
SPACE = {"hidden_1": IntDistribution(26, 75), "learning_rate": FloatDistribution(0.02, 0.2)}


def _size(hidden: int) -> int:
    return 784 * hidden + hidden + 10 * hidden + 10  # a 784-h-10 network


def sweep_study(tmp_path: Path, objectives: tuple[str, ...], url: str | None = None,
                name: str = "p") -> optuna.Study:  # fmt: skip
    """Sweep's own study of these objectives, as ``sweep run`` creates it, with 15 finished
    trials of varied values (two equal ones on the front, one failed, one running)."""
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDY.format(name=name, objectives=list(objectives)).replace("'", '"'))
    url = url or f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = open_study(load_spec(path), open_storage(url))
    rng = np.random.default_rng(7)
    varied = [(h := int(rng.integers(26, 76)), round(80 + h / 10 + float(rng.normal(0, 0.5)), 2),
              round(float(rng.uniform(0.01, 0.04)), 4)) for _ in range(12)]  # fmt: skip
    # an equal pair on the front, and the fastest trial, behind it in accuracy and size alone
    for h, accuracy, seconds in [*varied, (40, 84.5, 0.02), (40, 84.5, 0.02), (70, 80.0, 0.005)]:
        known = {"accuracy": accuracy, "params": float(_size(h)), "epoch_time": seconds}
        study.add_trial(create_trial(
            params={"hidden_1": h, "learning_rate": 0.05}, distributions=SPACE,
            values=[known[o] for o in objectives],
            user_attrs={"n_params": _size(h), "config": {"hidden_1": h, "depth": 1}},
        ))  # fmt: skip
    study.add_trial(create_trial(state=TrialState.FAIL, params={"hidden_1": 30},
                                 distributions={"hidden_1": SPACE["hidden_1"]},
                                 user_attrs={"fail_reason": "diverged"}))  # fmt: skip
    study.ask()  # running
    return study


def _along(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """optuna's front, along it: the most accurate first, then the smaller, then by number."""
    return sorted(study.best_trials, key=lambda t: (-t.values[0], *t.values[1:], t.number))


def _md_rows(md: str, section: str) -> list[list[str]]:
    text = md.split(f"## {section}\n")[1].split("\n## ")[0]
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row] for row in rows[1:]]


@pytest.fixture
def drawn(monkeypatch) -> dict[str, matplotlib.figure.Figure]:
    """Every figure a report saves, by file name, as drawn (its axes' data)."""
    seen = {}
    real = figures._save

    def save(fig, path):
        seen[Path(path).name] = fig
        return real(fig, path)

    monkeypatch.setattr(figures, "_save", save)
    return seen


def _points(ax, label: str) -> set[tuple[float, float]]:
    for c in ax.collections:
        if c.get_label() == label:
            return {(float(x), float(y)) for x, y in c.get_offsets()}
    return set()


def _line(ax, label: str) -> list[tuple[float, float]]:
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return list(zip(map(float, line.get_xdata()), map(float, line.get_ydata()), strict=True))


@pytest.mark.parametrize("objectives", [TWO, THREE], ids=["two", "three"])
def test_the_front_in_the_report_is_optunas_best_trials(tmp_path, objectives, drawn,
                                                        storage_url):  # fmt: skip
    study = sweep_study(tmp_path, objectives, storage_url)
    along = _along(study)
    assert len({tuple(t.values) for t in along}) < len(along)  # the equal pair is on it
    written = writer.write_report(open_storage(storage_url), "p", out_dir=tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    rows = _md_rows(md, "The Pareto front")
    assert [int(r[0]) for r in rows] == [t.number for t in along]  # the same trials, in order
    assert [r[2] for r in rows] == [f"{t.values[0]:.2f}" for t in along]
    assert [r[3] for r in rows] == [f"{int(t.values[1]):,}" for t in along]
    marked = {int(r[0]) for r in _md_rows(md, "Trials") if r[-1] == "Pareto front"}
    assert marked == {t.number for t in along}
    table = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert {int(r["number"]) for r in table if r["pareto_front"] == "1"} == marked
    assert {r["parameters"] for r in table if r["state"] == "COMPLETE"} <= {
        str(_size(h)) for h in range(26, 76)}  # fmt: skip
    assert set(labels(objectives)) <= set(table[0])
    # the figure: the front in full colour, every other complete trial faded, the budget marked
    ax = drawn["pareto.png"].axes[0]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert _points(ax, "on the front") == {(t.values[1], t.values[0]) for t in along}
    assert _points(ax, "dominated trial") == {
        (t.values[1], t.values[0]) for t in complete if t not in along}  # fmt: skip
    assert [line.get_xdata()[0] for line in ax.get_lines()[-2:]] == [MIN_PARAMS, MAX_PARAMS]
    if objectives == TWO:  # the step line is the front itself
        assert sorted(set(_line(ax, "non-dominated in these two"))) == sorted(
            {(t.values[1], t.values[0]) for t in along})  # fmt: skip
        assert "pareto_time.png" not in written.files
    else:  # the front of three objectives holds trials dominated in accuracy and size alone
        steps = set(_line(ax, "non-dominated in these two"))
        assert steps < {(t.values[1], t.values[0]) for t in along}
        assert drawn["pareto_time.png"].axes[0].get_xlabel() == EPOCH_TIME.label
    assert {"pareto.png", "hypervolume.png"} <= set(written.files)
    low, high = along[-1], along[0]
    assert written.best_text.startswith(f"front {len(along)} trials: {low.values[0]:.2f}% at "
                                        f"{int(low.values[1]):,} parameters")  # fmt: skip
    assert f"… {high.values[0]:.2f}% at {int(high.values[1]):,} parameters" in written.best_text


def test_status_shows_the_fronts_size_and_its_ends(tmp_path, storage_url):
    study = sweep_study(tmp_path, THREE, storage_url)
    along = _along(study)
    out = main_in_process("status", "--storage", storage_url)
    assert out.returncode == 0, out.stderr
    low, high = along[-1], along[0]

    def point(t):
        return (f"{t.values[0]:.2f}% at {int(t.values[1]):,} parameters, {t.values[2]:.3g} s "
                f"(trial {t.number})")  # fmt: skip

    assert out.stdout.splitlines() == [
        "p: 1 running, 15 complete, 1 fail",
        f"  front {len(along)} trials: {point(low)} … {point(high)}; s: {EPOCH_TIME.label}",
    ]


@pytest.mark.parametrize("objectives", [TWO, THREE], ids=["two", "three"])
def test_the_trial_table_has_a_column_per_objective_and_the_front_first(tmp_path, objectives):
    study = sweep_study(tmp_path, objectives)
    along = _along(study)
    table, left_out = summary.trial_table(study)
    header, *lines = table.splitlines()
    assert left_out == 0 and re.split(r"\s{2,}", header) == [
        "#", "state", "hidden_1", "learning_rate", *labels(objectives), "note"]  # fmt: skip
    numbers = [int(line.split()[0]) for line in lines]
    assert numbers[: len(along)] == [t.number for t in along]
    assert all(line.endswith("Pareto front") == (n in numbers[: len(along)])
               for n, line in zip(numbers, lines, strict=True))  # fmt: skip
    by_number = {t.number: t for t in study.trials}
    for n, line in zip(numbers, lines, strict=True):
        t = by_number[n]
        if t.state == TrialState.COMPLETE:
            cells = line.split()
            assert cells[4:6] == [f"{t.values[0]:.2f}", f"{int(t.values[1]):,}"], line
            if objectives == THREE:
                assert cells[6] == f"{t.values[2]:.3g}"
    assert "e+" not in table
    for limit in (1, len(along), len(along) + 3):  # SQL picks the same first rows
        top, more = summary.trial_table(study, limit=limit)  # (its own column widths)
        assert [row.split() for row in top.splitlines()] == [
            row.split() for row in [header, *lines[:limit]]]  # fmt: skip
        assert more == len(lines) - limit


def test_another_clients_study_of_several_objectives_gets_the_same_plain_table(
    tmp_path, storage_url
):
    url = storage_url
    study = optuna.create_study(study_name="theirs", storage=url,
                                directions=["minimize", "maximize"])  # fmt: skip
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["size", "score"])
    x = {"x": FloatDistribution(0, 1)}
    for size, score in [(937_500.0, 0.5), (1_250_000.0, 0.75), (2_000_000.0, 0.5), (512.0, 0.1),
                        (600.0, 0.05)]:  # fmt: skip
        study.add_trial(create_trial(values=[size, score], params={"x": 0.5}, distributions=x))
    table, _ = summary.trial_table(study)
    header, *lines = table.splitlines()
    assert re.split(r"\s{2,}", header) == ["#", "state", "x", "params", "size", "score", "note"]
    assert [line.split()[3:] for line in lines] == [
        ["512", "0.1", "Pareto", "front"], ["937,500", "0.5", "Pareto", "front"],
        ["1,250,000", "0.75", "Pareto", "front"], ["600", "0.05"],
        ["2,000,000", "0.5"]]  # fmt: skip
    writer.write_report(open_storage(url), "theirs", out_dir=tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert [r[1:3] for r in _md_rows(md, "The Pareto front")] == [
        ["512", "0.1"], ["937,500", "0.5"], ["1,250,000", "0.75"]]  # fmt: skip
    assert "e+" not in md and "- directions: minimize, maximize; metrics: size, score" in md
    assert (
        "## Empirical distribution: score" in md
        and "![empirical distribution](edf_objective2.png)" in md
    )
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert [r["size"] for r in rows] == ["512", "937500", "1250000", "600", "2000000"]
    status = main_in_process("status", "--storage", url)
    assert status.stdout.splitlines()[1] == (
        "  front 3 trials: size 1,250,000, score 0.75 (trial 1) … size 512, score 0.1 (trial 3)"
    )


def _captured(monkeypatch) -> list[tuple[str, str, list[float], dict]]:
    """Every standard plot drawn, as (function, file name, values, keywords), still drawn."""
    calls = []
    for name in ("parallel_coordinates", "slices", "edf"):
        real = getattr(standard_figures, name)

        def spy(*args, _real=real, _name=name, **kw):
            path = next(a for a in args if isinstance(a, Path))
            values = args[0] if _name == "edf" else args[1]  # (axes, values, ...) otherwise
            calls.append((_name, path.name, [float(v) for v in values], kw))
            return _real(*args, **kw)

        monkeypatch.setattr(standard_figures, name, spy)
    return calls


def test_several_objectives_get_the_standard_plots_per_objective(tmp_path, storage_url,
                                                                  monkeypatch):  # fmt: skip
    calls = _captured(monkeypatch)
    study = sweep_study(tmp_path, TWO, storage_url)
    written = writer.write_report(open_storage(storage_url), "p", out_dir=tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    done = sorted((t for t in study.trials if t.state == TrialState.COMPLETE),
                  key=lambda t: t.number)  # fmt: skip
    for i, key in enumerate(TWO):
        names = [f"parallel_coordinates_{key}.png", f"slice_{key}.png", f"edf_{key}.png"]
        assert set(names) <= set(written.files)
        assert all((tmp_path / "out" / n).stat().st_size > 0 for n in names)
        assert f"![slice](slice_{key}.png)" in md
        # each plot of the values of its own objective, the colours in its own direction
        for call in (c for c in calls if c[1] in names):
            assert call[2] == [t.values[i] for t in done], call[:2]
        [coords] = [c for c in calls if c[1] == names[0]]
        assert coords[3]["scale"].maximize is (key == "accuracy")
        assert coords[3]["metric"] == labels(TWO)[i]
    assert "timeline.png" in written.files and "![timeline](timeline.png)" in md
    assert "contour.png" not in written.files  # which two parameters matter differs


def test_the_hypervolume_is_an_exact_sweep_of_the_front(tmp_path):
    study = sweep_study(tmp_path, TWO)
    writer.write_report(open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}"), "p",
                        out_dir=tmp_path / "out")  # fmt: skip
    md = (tmp_path / "out" / "report.md").read_text()
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]

    def swept(trials) -> float:  # area under the staircase of best accuracy by parameter count
        points = sorted((t.values[1], t.values[0]) for t in trials)
        area, best = 0.0, 0.0
        for (x, y), (next_x, _) in zip(points, [*points[1:], (MAX_PARAMS, 0)], strict=True):
            best = max(best, y)
            area += (next_x - x) * best
        return area

    assert f"**{swept(done):.4g}** %·parameters after {len(done)} trials" in md
    assert f"reference point 0.00%, {MAX_PARAMS:,} parameters (the budget's max_params)" in md
    numbers, volumes = front.hypervolumes(done, study_kind_of(study).objectives,
                                          [0.0, MAX_PARAMS])  # fmt: skip
    assert numbers == [t.number for t in done]
    assert volumes == pytest.approx([swept(done[: i + 1]) for i in range(len(done))])


def study_kind_of(study: optuna.Study):
    from sweep.report.stored import study_kind

    return study_kind(study.user_attrs, study.directions, study.metric_names)


def test_optunas_own_pareto_plot_names_the_axes_by_our_labels(tmp_path):
    import optuna.visualization.matplotlib as plots

    study = sweep_study(tmp_path, TWO)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        ax = plots.plot_pareto_front(study)
    assert (ax.get_xlabel(), ax.get_ylabel()) == tuple(labels(TWO))
    matplotlib.pyplot.close("all")


def test_the_single_objective_figure_marks_its_non_dominated_points(tmp_path, drawn):
    from sweep.report import drawn as draw

    spec = load_spec(_single(tmp_path))
    study = optuna.create_study(direction="maximize")
    sizes = [30_000, 30_000, 25_000, 40_000, 50_000, 45_000, 22_000, 50_000]
    values = [90.0, 91.0, 89.5, 91.0, 93.0, 92.0, 85.0, 93.0]
    for n, v in zip(sizes, values, strict=True):
        study.add_trial(create_trial(value=v, user_attrs={"n_params": n}))
    files: list[str] = []
    draw.draw_sweep(study.trials, spec, tmp_path, files, None)
    ax = drawn["accuracy_vs_params.png"].axes[0]
    # by hand: the most accurate for its size, and nothing smaller as accurate
    assert _line(ax, "non-dominated (max accuracy, min parameters)") == [
        (22_000, 85.0),
        (25_000, 89.5),
        (30_000, 91.0),
        (45_000, 92.0),
        (50_000, 93.0),
        (50_000, 93.0),
    ]


def _single(tmp_path: Path) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(STUDY.format(name="s", objectives='["accuracy"]').replace(
        'sampler = "nsga2"\npopulation = 4', 'sampler = "random"'))  # fmt: skip
    return path


def test_nothing_stored_breaks_the_report_status_or_table(tmp_path):
    sweep_study(tmp_path, THREE)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    trial = "(SELECT trial_id FROM trials WHERE number = {})"
    run_sql(
        url,  # infinite values as optuna stores them, a missing objective, text, a huge number
        f"UPDATE trial_values SET value = NULL, value_type = 'INF_POS' WHERE objective = 2 "
        f"AND trial_id = {trial.format(1)}",
        f"UPDATE trial_values SET value = NULL, value_type = 'INF_NEG' WHERE objective = 0 "
        f"AND trial_id = {trial.format(2)}",
        f"DELETE FROM trial_values WHERE objective = 2 AND trial_id = {trial.format(3)}",
        f"UPDATE trial_values SET value = 'high' WHERE objective = 1 AND trial_id = "
        f"{trial.format(4)}",
        f"UPDATE trial_values SET value = 1e308 WHERE objective = 1 AND trial_id = "
        f"{trial.format(5)}",
    )
    out = main_in_process("status", "--storage", url)
    assert out.returncode == 0 and out.stderr == "" and "front" in out.stdout, out
    for limit in (None, 3):
        summary.trial_table(optuna.load_study(study_name="p", storage=url), limit=limit)
    written = writer.write_report(open_storage(url), "p", out_dir=tmp_path / "out")
    assert "hypervolume.png" in written.files and written.best_text.startswith("front ")
    # another client's study of odd directions and no metric names
    odd = optuna.create_study(study_name="odd", storage=url, directions=["maximize"] * 3)
    odd.add_trial(create_trial(values=[math.inf, -math.inf, 1e308]))
    odd.add_trial(create_trial(values=[1, 2, 3]))
    run_sql(url, "UPDATE study_directions SET direction = 'NOT_SET' WHERE study_id = 2 AND "
                 "objective = 1")  # fmt: skip
    out = main_in_process("status", "--storage", url)
    assert out.returncode == 0 and out.stderr == "", out
    written = writer.write_report(open_storage(url), "odd", out_dir=tmp_path / "odd")
    md = (tmp_path / "odd" / "report.md").read_text()
    assert "- directions: maximize, not_set, maximize; metrics: value 0, value 1, value 2" in md


def test_a_value_optuna_cannot_read_is_one_line(tmp_path):
    # SQLite keeps a NaN as NULL, which optuna's own reading of trials asserts on: the report
    # (which reads a study of several objectives through optuna) says so in one line
    sweep_study(tmp_path, TWO)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_sql(
        url,
        "UPDATE trial_values SET value = NULL WHERE trial_id = 1 AND objective = 0",
        "DELETE FROM trial_values WHERE trial_id = 2 AND objective = 0",
    )  # a gap: 1 alone
    out = run_cli("report", "p", "--storage", url, "--out", str(tmp_path / "out"))
    assert out.returncode == 1 and out.stderr == (
        "sweep: error: study 'p' has 2 trial(s) whose stored values optuna cannot read; a "
        "trial's values are one per objective from 0, each a number stored as FINITE, or "
        "INF_POS or INF_NEG stored as NULL (SQLite keeps a NaN as NULL)\n"), out.stderr  # fmt: skip
    assert not (tmp_path / "out").exists()
    status = main_in_process("status", "--storage", url)  # status reads values itself
    assert status.returncode == 0 and "front" in status.stdout, status


def test_a_direction_optuna_does_not_name_is_minimised_everywhere(tmp_path):
    """Another client's study of a maximised and a NOT_SET objective: optuna's ``best_trials``
    and sweep's stored front minimise the second, while status and the report maximised it
    and showed another front."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="odd", storage=url,
                                directions=["maximize", "minimize"])  # fmt: skip
    for values in ([1.0, 1.0], [1.0, 2.0]):
        study.add_trial(create_trial(values=values))
    run_sql(url, "UPDATE study_directions SET direction = 'NOT_SET' WHERE objective = 1")
    study = optuna.load_study(study_name="odd", storage=url)
    assert [t.number for t in study.best_trials] == [0]
    status = main_in_process("status", "--storage", url)
    assert status.stdout.splitlines()[1].endswith("(trial 0)"), status.stdout
    table, _ = summary.trial_table(study)
    assert table.splitlines()[1].split()[0] == "0" and "Pareto" in table.splitlines()[1]

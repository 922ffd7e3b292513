"""Reports from real (small) studies: files, figures, and tables read back from the database."""

import csv
import json
import re
import sqlite3
import struct
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep import runner
from sweep.errors import SweepError
from sweep.queue.storage import open_storage
from sweep.report import figures, writer
from sweep.study.spec import load_spec
from tests.sweep.helpers import grid_study, load, run_cli, sweep_cmd


def png_size(path: Path) -> tuple[int, int]:
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", blob[16:24])


@pytest.fixture(scope="module")
def grid_db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    spec = load_spec(grid_study(tmp))
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    runner.run(spec, storage=url, jobs=2)
    return url, spec


@pytest.mark.slow
def test_grid_report_writes_every_file(grid_db, tmp_path):
    url, _ = grid_db
    written = writer.write_report(open_storage(url), "g", out_dir=tmp_path)
    names = set(written.files)
    assert {"report.md", "trials.csv", "history.png", "learning_curves.png",
            "accuracy_over_time.png",
            "accuracy_vs_params.png", "importances.png"} <= names  # fmt: skip
    # one heatmap per learning rate
    assert sorted(n for n in names if n.startswith("grid_lr_")) == ["grid_lr_0.05.png",
                                                                   "grid_lr_0.1.png"]  # fmt: skip
    for name in names:
        assert (tmp_path / name).exists()
        if name.endswith(".png"):
            width, height = png_size(tmp_path / name)
            assert (width, height) in {(900, 552), (768, 600), (900, 912)}, name
    study = load(url, "g")
    assert written.best_value == study.best_value
    assert written.best_number == study.best_trial.number


def test_csv_and_markdown_hold_one_row_per_trial_with_the_stored_values(grid_db, tmp_path):
    url, _ = grid_db
    writer.write_report(open_storage(url), "g", out_dir=tmp_path)
    study = load(url, "g")
    by_number = {t.number: t for t in study.trials}
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert len(rows) == len(study.trials) == 8
    for row in rows:
        t = by_number[int(row["number"])]
        assert row["state"] == "COMPLETE"
        assert float(row["value"]) == t.value
        assert int(row["hidden_1"]) == t.params["hidden_1"]
        assert float(row["learning_rate"]) == t.params["learning_rate"]
        assert int(row["n_params"]) == t.user_attrs["n_params"]
        assert float(row["valid_accuracy"]) == t.user_attrs["valid_accuracy"][-1]
        assert float(row["train_loss"]) == t.user_attrs["train_loss"][-1]
    values = [float(r["value"]) for r in rows]
    assert values == sorted(values, reverse=True)
    md = (tmp_path / "report.md").read_text()
    trial_rows = [ln for ln in md.split("## Trials")[1].splitlines() if ln.startswith("| ") and
                  ln.split("|")[1].strip().isdigit()]  # fmt: skip
    assert len(trial_rows) == 8
    grid_rows = [ln for ln in md.split("## The grid")[1].split("##")[0].splitlines()
                 if ln.startswith("| ") and ln[2].isdigit()]  # fmt: skip
    assert len(grid_rows) == 8
    best = study.best_trial
    assert f"best: trial {best.number}, validation accuracy **{best.value:.2f}%**" in md
    assert "![optimisation history](history.png)" in md


def test_pruned_and_failed_trials_are_marked_with_why(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="m", storage=url, direction="maximize")
    attrs = {"n_params": 600_000, "config": {"hidden_1": 512, "hidden_2": 256}}
    dist = {"learning_rate": optuna.distributions.FloatDistribution(0.01, 1.0)}
    study.add_trial(optuna.trial.create_trial(
        params={"learning_rate": 0.1}, distributions=dist, value=97.0,
        intermediate_values={1: 95.0, 2: 97.0}, user_attrs=attrs))  # fmt: skip
    study.add_trial(optuna.trial.create_trial(
        params={"learning_rate": 0.5}, distributions=dist, state=TrialState.PRUNED,
        intermediate_values={1: 50.0}, user_attrs=attrs | {"pruned_at": 1}))  # fmt: skip
    study.add_trial(optuna.trial.create_trial(
        params={"learning_rate": 1.0}, distributions=dist, state=TrialState.FAIL,
        user_attrs=attrs | {"fail_reason": "training diverged: loss nan at epoch 1, batch 3"},
    ))  # fmt: skip
    writer.write_report(open_storage(url), "m", out_dir=tmp_path / "out")
    rows = {r["number"]: r for r in csv.DictReader((tmp_path / "out" / "trials.csv").open())}
    assert rows["1"]["reason"] == "pruned at epoch 1"
    assert rows["2"]["reason"] == "training diverged: loss nan at epoch 1, batch 3"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| pruned at epoch 1 |" in md and "diverged: loss nan" in md


def test_init_report_draws_one_line_per_initialisation(tmp_path, monkeypatch):
    path = tmp_path / "init.toml"
    path.write_text(
        '[study]\nname = "init"\nsampler = "grid"\n'
        "[budget]\nmin_params = 1_000\nmax_params = 100_000\n"
        "[data]\ntrain_size = 1000\n"
        '[train]\nhidden_1 = 32\nhidden_2 = 16\nepochs = 3\ndtype = "float64"\nshuffle = false\n'
        "full_train_eval = true\n"
        '[space]\ninit = ["zeros", "normal", "glorot"]\n'
    )
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    runner.run(load_spec(path), storage=url, jobs=1)
    drawn = []
    real = figures.init_loss
    monkeypatch.setattr(figures, "init_loss", lambda *a, **k: drawn.append(real(*a, **k)))
    written = writer.write_report(
        open_storage(url), "init", out_dir=tmp_path / "out", log_loss=True
    )
    assert "init_loss.png" in written.files and drawn == [3]
    md = (tmp_path / "out" / "report.md").read_text()
    init_rows = [ln for ln in md.split("## Initialisation")[1].split("##")[0].splitlines()
                 if ln.startswith(("| zeros", "| normal", "| glorot"))]  # fmt: skip
    assert len(init_rows) == 3
    zeros = next(r for r in init_rows if r.startswith("| zeros"))
    assert float(zeros.split("|")[2]) == pytest.approx(2.30, abs=0.01)  # Zeros stays near ln 10


def test_unknown_and_empty_studies_are_one_line_errors(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.create_study(study_name="empty", storage=url)
    with pytest.raises(
        SweepError, match=r"study 'nope' not found in sqlite:///.*; studies there: empty"
    ):
        writer.write_report(open_storage(url), "nope", out_dir=tmp_path / "out")
    with pytest.raises(SweepError, match=r"study 'empty' has no trials yet"):
        writer.write_report(open_storage(url), "empty", out_dir=tmp_path / "out")
    out = run_cli("report", "nope", "--storage", url)
    assert out.returncode == 1 and out.stderr.startswith("sweep: error: study 'nope' not found")


def test_gradcheck_command_writes_table_plot_and_reading(tmp_path):
    out = run_cli("gradcheck", "--hidden-1", "32", "--hidden-2", "16", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "gradcheck.csv").open()))
    assert [int(r["N"]) for r in rows] == [1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 50000,
                                           100000, 500000]  # fmt: skip
    diffs = {int(r["N"]): float(r["max_abs_diff"]) for r in rows}
    assert diffs[1] > diffs[10] > diffs[100] > diffs[1000]
    assert png_size(tmp_path / "gradcheck.png") == (900, 552)
    assert "The largest difference falls from" in out.stdout
    assert "round-off" in (tmp_path / "gradcheck.md").read_text()


def test_describe_gradcheck_reads_the_curve():
    from sweep.gradcheck import describe

    text = describe((1, 10, 100, 1000), (1e-2, 1e-4, 1e-6, 1e-5))
    assert text.startswith(
        "The largest difference falls from 1.00e-02 at N = 1 to 1.00e-06 at N = 100"
    )
    assert "rises again to 1.00e-05 at N = 1000" in text


@pytest.mark.slow
def test_evaluate_touches_the_test_set_once_and_stores_it(grid_db, tmp_path):
    url, _ = grid_db
    study_file = grid_study(tmp_path)
    out = run_cli("evaluate", str(study_file), "--storage", url)
    assert out.returncode == 0, out.stderr
    study = load(url, "g")
    assert study.user_attrs["test_trial"] == study.best_trial.number
    # Same configuration, same seed: the retrained model reproduces the trial's validation, up
    # to float32 summation order (the trial's worker had 1 BLAS thread, this run may have more).
    retrained = float(out.stdout.split("validation ")[1].split("%")[0])
    assert retrained == pytest.approx(study.best_value, abs=0.15)
    assert 50 < study.user_attrs["test_accuracy"] <= 100
    written = writer.write_report(open_storage(url), "g", out_dir=tmp_path / "out")
    md = (written.out_dir / "report.md").read_text()
    assert f"**{study.user_attrs['test_accuracy']:.2f}%**" in md


@pytest.mark.slow
def test_study_names_never_become_paths(grid_db, tmp_path):
    # Names any client of the shared database may give a study (or rename it to through the
    # dashboard): each report lands in a slug folder under runs/, never where the name points.
    url, _ = grid_db
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    db = f"sqlite:///{tmp_path / 'odd.db'}"
    odd = ["../../x", str(tmp_path / "abs" / "x"), "y" * 300, "g"]
    for name in odd:
        optuna.copy_study(from_study_name="g", from_storage=url, to_storage=db,
                          to_study_name=name)  # fmt: skip
    out = subprocess.run(sweep_cmd("report", "all", "--storage", db), cwd=work,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("report.md")]
    assert len(written) == 4 and all(p.parts[:3] == ("a", "b", "runs") for p in written)
    folders = {p.parts[3] for p in written}
    assert "g" in folders  # a plain name is its own folder
    assert all(re.fullmatch(r"[A-Za-z0-9._-]{1,70}", f) for f in folders), folders
    assert not (tmp_path / "x").exists() and not (tmp_path / "abs").exists()
    texts = [(tmp_path / p).read_text() for p in written]
    assert any(f"# Study `{'y' * 300}`" in text for text in texts)  # the real name, inside


@pytest.mark.slow
def test_report_all_reports_every_study_it_can_and_lists_the_others(grid_db, tmp_path):
    url, _ = grid_db
    db = f"sqlite:///{tmp_path / 'two.db'}"
    optuna.create_study(study_name="empty", storage=db)  # first, and nothing to report
    optuna.copy_study(from_study_name="g", from_storage=url, to_storage=db, to_study_name="g")
    out = subprocess.run(sweep_cmd("report", "all", "--storage", db), cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 1
    assert (tmp_path / "runs" / "g" / "report.md").exists()
    assert out.stderr.strip().splitlines() == [
        "sweep: study 'empty' not reported: study 'empty' has no trials yet; run it with "
        "`sweep run`"
    ]


@pytest.mark.slow
def test_a_study_another_client_made_is_reported_in_its_own_direction_and_metric(tmp_path):
    # A minimize study in the same file, not made by sweep: its best is its *lowest* value,
    # labelled with its own metric name, and none of sweep's sections or units appear.
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="loss", storage=url, direction="minimize")
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["test loss"])
    for x in (0.9, 0.2, 0.5):
        study.enqueue_trial({"x": x})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    out = run_cli("report", "loss", "--storage", url, "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("; best trial 1: test loss 0.2")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "- best: trial 1, test loss **0.2** (x=0.2)" in md
    assert "- direction: minimize, metric: test loss" in md
    assert "%" not in md and "budget" not in md and "validation accuracy" not in md
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert [float(r["value"]) for r in rows] == [0.2, 0.5, 0.9]  # best first
    status = run_cli("status", "--storage", url)
    assert status.stdout.splitlines()[1] == "  best: trial 1, test loss 0.2 (x=0.2)", status.stdout


@pytest.mark.slow
def test_a_multi_objective_study_gets_a_plain_report(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="two", storage=url, directions=["minimize", "maximize"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=4)
    out = run_cli("report", "two", "--storage", url, "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "out" / "report.md").read_text()
    assert "- directions: minimize, maximize" in md and "Pareto front" in md
    assert len(list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))) == 4


def test_sweep_names_its_metric_for_the_dashboard(grid_db):
    url, _ = grid_db
    assert load(url, "g").metric_names == ["validation accuracy [%]"]


@pytest.mark.slow
def test_hostile_attributes_in_a_sweep_study_do_not_break_its_report(grid_db, tmp_path):
    # Any client may write a trial's user attributes; the report believes none of them blindly.
    url, _ = grid_db
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.copy_study(from_study_name="g", from_storage=url, to_storage=db, to_study_name="g")
    hostile = {
        "n_params": "many",
        "config": [1, 2],
        "train_loss": [1.0, "a"],
        "seconds": "x",
        "valid_accuracy": {"x": 1},
        "pruned_at": [],
        "fail_reason": "line\nbreak`",
    }
    conn = sqlite3.connect(tmp_path / "db.sqlite")  # optuna refuses to change finished trials
    for key, value in hostile.items():
        conn.execute("DELETE FROM trial_user_attributes WHERE key = ?", (key,))
        conn.executemany(
            "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, ?, ?)",
            [(trial_id, key, json.dumps(value)) for (trial_id,) in
             conn.execute("SELECT trial_id FROM trials").fetchall()],
        )  # fmt: skip
    conn.commit()
    conn.close()
    out = run_cli("report", "g", "--storage", db, "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert "best trial" in out.stdout
    for row in csv.DictReader((tmp_path / "out" / "trials.csv").open()):
        assert row["n_params"] == row["train_loss"] == row["seconds"] == "", row


@pytest.mark.slow
def test_a_study_with_a_forged_spec_is_reported_plainly(grid_db, tmp_path):
    url, _ = grid_db
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.copy_study(from_study_name="g", from_storage=url, to_storage=db, to_study_name="g")
    study = optuna.load_study(study_name="g", storage=db)
    study.set_user_attr("spec", {"study": {"sampler": 7}, "budget": "all of it"})
    out = run_cli("report", "g", "--storage", db, "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "out" / "report.md").read_text()
    assert "not made by sweep (no valid stored spec)" in md and "## The grid" not in md


def test_curves_and_sizes_are_coloured_by_one_searched_parameter(grid_db, tmp_path, monkeypatch):
    # 8 unlabelled lines tell a reader nothing: the curves carry one legend entry per value of
    # one searched parameter, and accuracy-vs-parameters uses the same groups.
    url, _ = grid_db
    seen = {}
    for name in ("learning_curves", "accuracy_vs_params"):
        real = getattr(figures, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen[_name] = (args, kwargs)
            return _real(*args, **kwargs)

        monkeypatch.setattr(figures, name, spy)
    writer.write_report(open_storage(url), "g", out_dir=tmp_path)
    curves, kwargs = seen["learning_curves"]
    labels = [label for label, *_ in curves[0]]
    assert kwargs["legend_title"] == "coloured by"
    params = {label.split(" = ")[0] for label in labels}
    assert len(params) == 1 and params <= {"hidden_1", "hidden_2", "learning_rate"}, labels
    assert 2 <= len(set(labels)) <= 10
    assert set(seen["accuracy_vs_params"][1]["groups"]) == set(labels)


@pytest.mark.slow
def test_infinite_values_from_another_client_are_reported_not_drawn(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="inf", storage=url)
    for v in (float("inf"), float("-inf"), 1e308, 0.5):
        study.add_trial(optuna.trial.create_trial(
            params={"x": 0.1}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            value=v, intermediate_values={1: v}))  # fmt: skip
    out = run_cli("report", "inf", "--storage", url, "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "history.png").exists()


@pytest.mark.slow
def test_an_output_folder_that_is_a_file_is_one_line(grid_db, tmp_path):
    url, _ = grid_db
    (tmp_path / "afile").write_text("mine\n")
    for which in ("g", "all"):
        out = run_cli("report", which, "--out", str(tmp_path / "afile"), "--storage", url)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert "cannot write the report of study 'g'" in out.stderr
    assert (tmp_path / "afile").read_text() == "mine\n"


@pytest.mark.slow
def test_two_names_never_share_a_report_folder(grid_db, tmp_path):
    url, _ = grid_db
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    for name in ("a b", "a-b-1"):  # the first's slug and id is the second's name
        optuna.copy_study(from_study_name="g", from_storage=url, to_storage=db,
                          to_study_name=name)  # fmt: skip
    out = run_cli("report", "all", "--storage", db, "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    heads = sorted(p.read_text().splitlines()[0] for p in (tmp_path / "out").glob("*/report.md"))
    assert heads == ["# Study `a b`", "# Study `a-b-1`"]

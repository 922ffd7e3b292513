"""What a report shows of #25's studies: the distortions of the training digits, the gap
between training and validation loss, and networks of any depth; and that a forged depth or
strength in a stored configuration is one line, never a traceback."""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest

from mlp.model import parameter_count
from sweep.queue.attrs import SPEC
from sweep.queue.storage import open_storage
from sweep.report import distortions, figures, writer
from sweep.study.settings import TrainSettings
from sweep.study.spec import load_spec
from tests.sweep.helpers import grid_study, main_in_process

_PARAMS = {
    "hidden_1": optuna.distributions.CategoricalDistribution([64, 128]),
    "hidden_2": optuna.distributions.CategoricalDistribution([32, 64]),
    "learning_rate": optuna.distributions.CategoricalDistribution([0.1, 0.05]),
}
#: The four grid points of the stored study, best first (values 94, 93, 92, 91).
_POINTS = [(128, 64, 0.1), (128, 32, 0.05), (64, 64, 0.1), (64, 32, 0.05)]


def sweep_study(tmp_path, configs: list[dict], *, losses: bool = True) -> str:
    """A grid study as sweep stores one (its spec, each trial's whole configuration, curves),
    with the four points of ``_POINTS``, the i-th configuration changed by ``configs[i]``:
    anything any client could have written."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="g", storage=url, direction="maximize")
    study.set_user_attr(SPEC, load_spec(grid_study(tmp_path)).to_dict())
    for i, ((h1, h2, lr), changed) in enumerate(zip(_POINTS, configs, strict=True)):
        config = dataclasses.asdict(TrainSettings(hidden_1=h1, hidden_2=h2, learning_rate=lr))
        value = 94.0 - i
        curves = {"train_loss": [0.5 - i / 100, 0.2, 0.1], "valid_loss": [0.4, 0.3, 0.25]}
        study.add_trial(optuna.trial.create_trial(
            params={"hidden_1": h1, "hidden_2": h2, "learning_rate": lr}, distributions=_PARAMS,
            value=value, intermediate_values={1: value - 2, 2: value - 1, 3: value},
            user_attrs={"config": config | changed, "n_params": parameter_count(h1, h2),
                        **(curves if losses else {})},
        ))  # fmt: skip
    return url


def _report(url: str, out) -> tuple[writer.Report, str]:
    written = writer.write_report(open_storage(url), "g", out_dir=out)
    return written, (out / "report.md").read_text()


def _spy(monkeypatch, name: str) -> list[tuple[tuple, dict]]:
    calls: list[tuple[tuple, dict]] = []
    real = getattr(figures, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(figures, name, spy)
    return calls


AFFINE = {"shift": 2, "rotation": 10.0}


@pytest.mark.slow
def test_the_best_trials_distortions_are_drawn_beside_the_digits(tmp_path, monkeypatch):
    # trial 0 (the best) and trial 2 share a setting; trial 3 has another; trial 1 none
    url = sweep_study(tmp_path, [AFFINE, {}, AFFINE, {"shift": 1, "elastic_alpha": 34.0}])
    calls = _spy(monkeypatch, "distortions")
    written, md = _report(url, tmp_path / "out")
    assert [n for n in written.files if n.startswith("distortions")] == [
        "distortions_0.png", "distortions_3.png"]  # fmt: skip
    section = md.split("## Distortions of the training digits")[1].split("\n## ")[0]
    assert "![distortions of trial 0](distortions_0.png)" in section
    assert "of trials 0 and 3" in section
    (originals, draws, _), kwargs = calls[0]
    assert kwargs["title"] == "trial 0: shift ±2 px, rotation ±10°"
    assert calls[1][1]["title"] == "trial 3: shift ±1 px, elastic α 34 σ 4"
    assert originals.shape == (distortions.DIGITS, 784) and len(draws) == distortions.DRAWS
    # the first training digits, and each column a fresh draw of them
    from mlp import load_mnist

    assert np.array_equal(originals, load_mnist().train.x[: distortions.DIGITS])
    assert all(not np.array_equal(d, originals) for d in draws)
    assert not np.array_equal(draws[0], draws[1])
    # the same seed: the same figure every time the report is written
    calls.clear()
    _report(url, tmp_path / "again")
    assert all(np.array_equal(a, b) for a, b in zip(draws, calls[0][0][1], strict=True))


def test_a_study_whose_trials_do_not_distort_gets_no_such_figure(tmp_path):
    url = sweep_study(tmp_path, [{}, {"elastic_sigma": 8.0}, {}, {}])  # σ alone distorts nothing
    written, md = _report(url, tmp_path / "out")
    assert not [n for n in written.files if n.startswith("distortions")]
    assert "Distortions" not in md


@pytest.mark.parametrize(("forged", "line"), [
    ({"shift": -1}, "[train.shift] must be an integer in [0, 8]; got -1"),
    ({"rotation": "lots"}, "[train.rotation] must be a float in [0, 90]; got 'lots'"),
    ({"elastic_alpha": 1e300}, "[train.elastic_alpha] must be a float in [0, 100]; got 1e+300"),
])  # fmt: skip
@pytest.mark.slow
def test_a_forged_strength_is_one_line_and_the_others_are_drawn(tmp_path, forged, line):
    url = sweep_study(tmp_path, [forged, AFFINE, {}, forged])
    out = main_in_process("report", "g", "--storage", url, "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    note = f"Distortions not drawn: trial 0's stored config: {line} (and 1 more trial)."
    assert out.stderr == f"WARNING sweep.report.distortions: {note}\n"
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"\n{note}\n" in md and "![distortions of trial 1](distortions_1.png)" in md


@pytest.mark.slow
def test_without_the_dataset_the_figure_is_one_line(tmp_path, monkeypatch):
    url = sweep_study(tmp_path, [AFFINE, {}, {}, {}])
    monkeypatch.setenv("MLP_SWEEP_CACHE", str(tmp_path / "empty"))
    written, md = _report(url, tmp_path / "out")
    assert not [n for n in written.files if n.startswith("distortions")]
    assert (f"\nNo figure of the distortions: MNIST is not in this host's cache "
            f"({tmp_path / 'empty'}); `sweep data` fetches it.\n") in md  # fmt: skip
    assert not (tmp_path / "empty").exists()  # nothing fetched, nothing made
    written = writer.write_report(open_storage(url), "g", out_dir=tmp_path / "out",
                                  data_path=str(tmp_path / "none.npz"))  # fmt: skip
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"No figure of the distortions: {tmp_path / 'none.npz'}: no such file" in md


def _loss_axes(monkeypatch) -> list:
    """The loss panel of every learning-curve figure the report draws (None if it has none)."""
    from sweep.report import digest_figures

    panels = []
    real = figures._save

    def keep(fig, path):
        if path.name == "learning_curves.png":
            panels.append(fig.axes[1] if len(fig.axes) > 1 else None)
        return real(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    monkeypatch.setattr(digest_figures, "_save", keep)
    return panels


def test_learning_curves_show_each_trials_training_and_validation_loss(tmp_path, monkeypatch):
    panels = _loss_axes(monkeypatch)
    _report(sweep_study(tmp_path, [{}, {}, {}, {}]), tmp_path / "out")
    (loss,) = panels
    drawn = {(tuple(line.get_ydata()), line.get_linestyle(), line.get_color())
             for line in loss.get_lines() if line.get_label() == "_loss"}  # fmt: skip
    for i in range(4):
        train = (0.5 - i / 100, 0.2, 0.1)
        [colour] = [c for y, style, c in drawn if y == train and style == "--"]
        assert ((0.4, 0.3, 0.25), "-", colour) in drawn  # its validation loss, in its colour
    assert loss.get_yscale() == "log"
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["training loss",
                                                                    "validation loss"]  # fmt: skip


def test_curves_without_losses_keep_one_panel(tmp_path, monkeypatch):
    panels = _loss_axes(monkeypatch)
    _report(sweep_study(tmp_path, [{}, {}, {}, {}], losses=False), tmp_path / "out")
    assert panels == [None]


def test_every_depth_is_named_by_its_network(tmp_path):
    url = sweep_study(tmp_path, [{}, {"depth": 1}, {"depth": 3, "hidden_3": 16},
                                 {"depth": 4, "hidden_3": 16, "hidden_4": 8}])  # fmt: skip
    written, md = _report(url, tmp_path / "out")
    rows = {ln.split("|")[1].strip(): ln for ln in md.split("## Trials")[1].splitlines()
            if ln.startswith("| ") and ln.split("|")[1].strip().isdigit()}  # fmt: skip
    assert "| 784-128-64-10 |" in rows["0"] and "| 784-128-10 |" in rows["1"]
    assert "| 784-64-64-16-10 |" in rows["2"] and "| 784-64-32-16-8-10 |" in rows["3"]
    best = md.split("- best: ")[1].splitlines()[0]
    assert "validation accuracy **94.00%** (784-128-64-10; depth=2, hidden_1=128, " in best
    assert "hidden_2=64, " in best and "hidden_3" not in best  # no width it does not have
    # several depths in one grid: no hidden_1 × hidden_2 heatmap, a table of the networks
    assert not [n for n in written.files if n.startswith("grid_lr_")]
    grid = md.split("## The grid")[1].split("\n## ")[0]
    assert "| network | parameters | learning_rate | validation accuracy [%] |" in grid
    assert ("\nTrials of 1, 2, 3 and 4 hidden layers: no hidden_1 × hidden_2 heatmaps; the "
            "accuracy against parameter count compares them.\n") in grid  # fmt: skip
    assert "accuracy_vs_params.png" in written.files


def test_a_grid_of_two_hidden_layers_keeps_its_heatmaps(tmp_path):
    written, md = _report(sweep_study(tmp_path, [{}, {"depth": 2}, {}, {}]), tmp_path / "out")
    assert sorted(n for n in written.files if n.startswith("grid_lr_")) == [
        "grid_lr_0.05.png", "grid_lr_0.1.png"]  # fmt: skip
    assert "| hidden_1 | hidden_2 | parameters | learning_rate | validation accuracy [%] |" in md


@pytest.mark.parametrize(("forged", "line"), [
    ({"depth": 7}, "[train.depth] must be an integer in [1, 4]; got 7"),
    ({"depth": "2"}, "[train.depth] must be an integer in [1, 4]; got '2'"),
    ({"hidden_2": -5}, "[train.hidden_2] must be a 64-bit integer >= 1; got -5"),
])  # fmt: skip
@pytest.mark.slow
def test_a_forged_depth_or_width_is_one_line(tmp_path, forged, line):
    url = sweep_study(tmp_path, [{}, forged, {}, {}])
    out = main_in_process("report", "g", "--storage", url, "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    note = f"No hidden_1 × hidden_2 heatmaps: trial 1's stored config: {line}."
    assert out.stderr == f"WARNING sweep.report.drawn: {note}\n"
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"\n{note}\n" in md and "grid_lr_" not in md
    row = next(ln for ln in md.split("## Trials")[1].splitlines() if ln.startswith("| 1 |"))
    assert "| ? |" in row  # its network: unreadable, not guessed


def test_the_distortion_figure_is_a_grid_of_digits(tmp_path):
    x = np.zeros((3, 784))
    x[:, 0] = 0.9
    path = figures.distortions(x, [x, x], tmp_path / "d.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_large_studys_best_curves_show_their_losses(tmp_path, monkeypatch):
    from sweep.report import digest_figures

    panels = _loss_axes(monkeypatch)
    sampled = [([1, 2, 3], [90.0 + i / 10, 91.0, 92.0]) for i in range(10)]
    best = [figures.Curve("#7 (best 1)", [1, 2, 3], [93.0, 94.0, 95.0], False, [0.6, 0.3, 0.2],
                          [0.4, 0.2, 0.1])]  # fmt: skip
    digest_figures.curve_bands(sampled, best, tmp_path / "learning_curves.png", of=10)
    (loss,) = panels
    styles = {tuple(line.get_ydata()): line.get_linestyle() for line in loss.get_lines()
              if line.get_label() == "_loss"}  # fmt: skip
    assert styles == {(0.6, 0.3, 0.2): "--", (0.4, 0.2, 0.1): "-"}


def test_the_importances_of_a_study_of_several_depths_print_no_warning():
    # PED-ANOVA warns of every width some trials lack (those past a trial's depth); the report
    # draws the scores and keeps the warnings off the user's terminal.
    import warnings

    from optuna.distributions import CategoricalDistribution, IntDistribution

    from sweep.report import drawn
    from sweep.report.stored import Kind
    from sweep.study.objectives import ACCURACY

    study = optuna.create_study(direction="maximize")
    rng = np.random.default_rng(0)
    for number in range(11):
        depth = 1 + number % 3
        low = int(rng.integers(64, 600))  # the budget moves a width's bounds from trial to trial
        params = {"depth": depth, "hidden_1": int(rng.integers(low, 1200))}
        distributions = {"depth": CategoricalDistribution([1, 2, 3]),
                         "hidden_1": IntDistribution(low, 1200)}  # fmt: skip
        for k in range(2, depth + 1):
            params[f"hidden_{k}"] = int(rng.integers(64, 800))
            distributions[f"hidden_{k}"] = IntDistribution(64, 800)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, value=float(rng.uniform(98, 99.5))
        ))  # fmt: skip
    done = study.get_trials()
    kind = Kind(sweep=True, objectives=(ACCURACY,), spec=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = drawn.importances(study, done, kind, large=False)
    assert "hidden_1" in scores

"""The queue's guarantees for trials of several values: workers, resume and joining work as they
do for one value; each trial is told every value once; a study of other objectives is refused.

The runs go through ``sweep.run`` and ``sweep.join`` (the functions ``sweep run`` and ``sweep
worker`` are made of): the table ``sweep run`` prints at its end belongs to the reports.
"""

import dataclasses
import hashlib
import math
import signal
import sqlite3
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from mlp import MLP, load_state
from mlp.model import parameter_count
from sweep import api, runner
from sweep.queue import tables as tb
from sweep.queue.attrs import FAIL_REASON, FRONT_MODELS, RESUME_FROM, SPEC
from sweep.queue.storage import open_storage
from sweep.study import objectives
from sweep.study.budget import widths_of
from sweep.study.joining import open_study, top_up
from sweep.study.spec import StudySpec, load_spec
from sweep.worker import serve
from tests.sweep import test_checkpoint as checkpoint
from tests.sweep.helpers import load, main_in_process

PARETO = """
[study]
name = "{name}"
sampler = "nsga2"
trials = {trials}
population = 4
seed = 0
objectives = {objectives}

[budget]
min_params = 20_000
max_params = 60_000

[data]
train_size = 1000

[train]
epochs = 2
batch_size = 64
depth = 1

[space]
hidden_1 = {{ low = 26, high = 75 }}
learning_rate = {{ low = 0.02, high = 0.2, log = true }}
"""
TWO = ("accuracy", "params")
THREE = ("accuracy", "params", "epoch_time")


def _study_file(tmp_path: Path, *, name: str = "pareto", trials: int = 6, names=TWO) -> Path:
    path = tmp_path / f"{name}-{len(names)}.toml"
    listed = "[" + ", ".join(f'"{n}"' for n in names) + "]"
    path.write_text(PARETO.format(name=name, trials=trials, objectives=listed))
    return path


def _values_rows(url: str, study_id: int) -> dict[int, list[int]]:
    """Each trial's stored objective numbers, by trial number, counted in SQL: optuna's reads
    would hide a value told twice."""
    t, v = tb.trials, tb.values
    query = (sqlalchemy.select(t.c.number, v.c.objective).join(v, v.c.trial_id == t.c.trial_id)
             .where(t.c.study_id == study_id).order_by(t.c.number, v.c.objective))  # fmt: skip
    rows: dict[int, list[int]] = {}
    with open_storage(url).engine.connect() as conn:
        for number, objective in conn.execute(query):
            rows.setdefault(number, []).append(objective)
    return rows


def _assert_told_each_value_once(url: str, spec: StudySpec) -> optuna.Study:
    """Every trial COMPLETE with one finite value per objective, stored once each: the
    accuracy in %, its parameter count (as its user attribute and its widths say), the
    seconds per epoch its worker measured; the study names its metrics by their labels."""
    study = load(url, spec.name)
    assert study.directions == objectives.directions(spec.objectives)
    assert study.metric_names == objectives.labels(spec.objectives)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == spec.trials
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    want = list(range(len(spec.objectives)))
    assert _values_rows(url, study._study_id) == {t.number: want for t in trials}
    for t in trials:
        named = dict(zip(spec.objectives, t.values, strict=True))
        assert all(math.isfinite(v) for v in t.values), t.values
        assert named["accuracy"] == t.user_attrs["valid_accuracy"][-1]
        assert 0 < named["accuracy"] <= 100  # in %, not a fraction
        settings = dataclasses.replace(spec.train, **t.params)
        assert named["params"] == t.user_attrs["n_params"] == parameter_count(*widths_of(settings))
        assert t.intermediate_values == {}  # optuna cannot prune a trial of several values
        if "epoch_time" in named:
            seconds = named["epoch_time"]
            assert 0 < seconds and seconds * spec.train.epochs <= t.user_attrs["seconds"]
    return study


@pytest.mark.slow
def test_two_workers_run_a_study_of_two_objectives_and_a_rerun_adds_nothing(tmp_path, storage_url):
    spec = load_spec(_study_file(tmp_path))
    store = str(tmp_path / "artifacts")  # PostgreSQL's default is runs/artifacts, here
    runner.run(spec, storage=storage_url, jobs=2, artifacts=store)
    first = _assert_told_each_value_once(storage_url, spec)
    before = {t.number: t.values for t in first.trials}
    assert len({tuple(v) for v in before.values()}) > 1  # per trial, not one constant
    runner.run(spec, storage=storage_url, jobs=2, artifacts=store)  # resume: nothing to run
    again = _assert_told_each_value_once(storage_url, spec)
    assert {t.number: t.values for t in again.trials} == before


def test_three_objectives_tell_the_measured_seconds_per_epoch(tmp_path):
    url = f"sqlite:///{tmp_path / 'three.db'}"
    spec = load_spec(_study_file(tmp_path, trials=2, names=THREE))
    runner.run(spec, storage=url, jobs=1)
    _assert_told_each_value_once(url, spec)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _queued(url: str, spec: StudySpec) -> None:
    """The study as a launcher leaves it for its workers: created, its queue topped up."""
    study = open_study(spec, open_storage(url))
    top_up(study, spec)


def _copied(made: Path, tmp_path: Path) -> Path:
    """A copy of the SQLite database ``made``: the connections this process still holds to it
    may checkpoint its write-ahead log into it at any time, changing its bytes under a test
    that checks nothing was written (as tests/sweep/test_bad_input.py's database is made)."""
    copy = tmp_path / f"copy-{made.name}"
    with sqlite3.connect(made) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    source.close()
    target.close()
    return copy


def test_a_worker_joins_a_study_of_two_objectives(tmp_path):
    url = f"sqlite:///{tmp_path / 'join.db'}"
    spec = load_spec(_study_file(tmp_path, trials=2))
    _queued(url, spec)
    out = main_in_process("worker", "--study", spec.name, "--storage", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"worker ran 2 trial(s); study {spec.name!r} has nothing left to claim\n"
    _assert_told_each_value_once(url, spec)
    # With its study file (which must agree with the stored spec): one more trial.
    _queued(url, dataclasses.replace(spec, trials=3))
    assert api.join(spec.name, storage=url, spec=spec) == 1
    _assert_told_each_value_once(url, dataclasses.replace(spec, trials=3))


@pytest.mark.parametrize(
    ("stored", "given"),
    [(TWO, THREE), (TWO, ("accuracy", "epoch_time")), (TWO, ("accuracy",)), (("accuracy",), TWO)],
    ids=["a third", "another second", "one of two", "two of one"],
)
def test_a_study_file_of_other_objectives_is_refused_naming_them(tmp_path, stored, given):
    """Whether the directions differ or not (params and epoch_time are both minimised), the
    line names [study.objectives] with both lists, and nothing is stored."""
    made = tmp_path / "other.db"
    _queued(f"sqlite:///{made}", load_spec(_study_file(tmp_path, trials=2, names=stored)))
    db = _copied(made, tmp_path)
    url = f"sqlite:///{db}"
    (tmp_path / "given").mkdir()
    other = _study_file(tmp_path / "given", trials=2, names=given)
    shown = lambda names: "[" + ", ".join(f'"{n}"' for n in names) + "]"  # noqa: E731
    line = (f"[study.objectives] differs from the stored study 'pareto': stored {shown(stored)}, "
            f"given {shown(given)}; use the stored study's file, or rename [study.name] for a "
            "new study")  # fmt: skip
    before = _digest(db)
    for args, source in (
        (["run", str(other), "--storage", url], str(other)),
        (["worker", str(other), "--storage", url], str(other)),
    ):
        out = main_in_process(*args)
        assert (out.returncode, out.stdout) == (2, ""), out.stderr
        assert out.stderr == f"sweep: error: {source}: {line}\n"
        assert _digest(db) == before


def test_a_study_of_several_objectives_made_by_another_client_is_refused(tmp_path):
    """optuna's own study with the file's directions and a trial, but no spec: not sweep's.
    Neither a launcher nor a worker touches it."""
    made = tmp_path / "foreign.db"
    foreign = optuna.create_study(study_name="pareto", storage=open_storage(f"sqlite:///{made}"),
                                  directions=objectives.directions(TWO))  # fmt: skip
    foreign.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=1)
    db = _copied(made, tmp_path)
    url = f"sqlite:///{db}"
    path = _study_file(tmp_path, trials=2)
    before = _digest(db)
    run = main_in_process("run", str(path), "--storage", url)
    assert (run.returncode, run.stdout) == (2, ""), run.stderr
    assert run.stderr == (
        f"sweep: error: {path}: study 'pareto' was not made by sweep (it has trials and no "
        "stored spec); rename [study.name] for a new study\n"
    )
    worker = main_in_process("worker", "--study", "pareto", "--storage", url)
    assert (worker.returncode, worker.stdout) == (2, ""), worker.stderr
    assert worker.stderr == (
        "sweep: error: study 'pareto' was not made by sweep (it has no stored spec)\n"
    )
    # A single-objective file against it: the directions differ, and it has no spec to name.
    single = _study_file(tmp_path, trials=2, names=("accuracy",))
    out = main_in_process("run", str(single), "--storage", url)
    assert out.stderr == (
        f"sweep: error: {single}: study 'pareto' was not made by sweep (its directions are not "
        "the study file's objectives); rename [study.name] for a new study\n"
    )
    assert _digest(db) == before


@pytest.mark.slow
@pytest.mark.parametrize("names", [TWO, THREE], ids=["two", "three"])
def test_a_killed_trial_of_several_objectives_resumes_and_is_told_its_values_once(
    tmp_path, monkeypatch, names
):
    """tests/sweep/test_checkpoint.py's kill in the middle of epoch 6 (SIGKILL of the worker),
    for a study of several objectives: the resumed trial's accuracy and size are the
    uninterrupted run's, the accuracy to the bit; its measured seconds per epoch are the mean
    over every epoch, those the killed worker ran included; its values are stored once."""
    path = tmp_path / "c.toml"
    path.write_text(
        checkpoint.STUDY.format(name="c", epochs=checkpoint.EPOCHS, hidden_1="[16]").replace(
            "seed = 0\n", f"seed = 0\nobjectives = {list(names)!r}\n".replace("'", '"')
        )
    )
    spec = load_spec(path)
    assert spec.objectives == names
    reference = checkpoint._reference(tmp_path, path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    proc = checkpoint._kill_mid_epoch(tmp_path, path, url, signal.SIGKILL)
    assert proc.returncode == 1, proc.stderr.read()
    [waiting] = [t for t in load(url, "c").trials if t.state == TrialState.WAITING]
    given = waiting.system_attrs[RESUME_FROM]
    assert given["epoch"] == checkpoint.STALL_AT - 1
    for name, value in checkpoint._env(tmp_path, stall=False).items():
        monkeypatch.setenv(name, value)
    runner.run(spec, storage=url, jobs=1)  # in this process: `sweep run`'s table is the reports'
    study = load(url, "c")
    [done] = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done.user_attrs["resumed_from_epoch"] == checkpoint.STALL_AT - 1
    assert done.user_attrs["resumed_from_trial"] == given["trial"]
    assert done.user_attrs["epochs_run"] == checkpoint.EPOCHS - checkpoint.STALL_AT + 1
    ref = reference[checkpoint._key(done)]
    assert done.values[:2] == ref.values[:2]  # the accuracy to the bit, and the parameter count
    assert done.values[1] == done.user_attrs["n_params"] == parameter_count(16, 8)
    for curve in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
        assert done.user_attrs[curve] == ref.user_attrs[curve], curve
    if names == THREE:  # the kept final state's history holds every epoch's measured seconds
        [kept] = study._storage.get_study_system_attrs(study._study_id)[FRONT_MODELS]
        state = load_state(tmp_path / "artifacts" / kept["artifact_id"],
                           like=MLP(16, 8, dtype="float64"))  # fmt: skip
        seconds = [m.seconds for m in state.history]
        assert len(seconds) == checkpoint.EPOCHS and min(seconds) > 0
        assert done.values[2] == sum(seconds) / len(seconds)
    told = {done.number: list(range(len(names)))}
    assert _values_rows(url, study._study_id) == told  # once, every objective


@pytest.mark.parametrize(
    ("directions", "spec_of"),
    [(["maximize"], TWO), (list(objectives.directions(TWO)), ("accuracy",))],
)
def test_a_study_whose_directions_are_not_its_stored_specs_objectives_is_not_joined(
    tmp_path, directions, spec_of
):
    """Another client's study with a sweep spec copied onto it: its workers would tell values
    it cannot take. A worker refuses it before anything is stored."""
    made = tmp_path / "copied.db"
    copied = optuna.create_study(study_name="pareto", storage=open_storage(f"sqlite:///{made}"),
                                 directions=directions)  # fmt: skip
    copied.set_user_attr(SPEC, load_spec(_study_file(tmp_path, trials=2, names=spec_of)).to_dict())
    db = _copied(made, tmp_path)
    before = _digest(db)
    out = main_in_process("worker", "--study", "pareto", "--storage", f"sqlite:///{db}")
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert out.stderr == (
        "sweep: error: study 'pareto' was not made by sweep (its directions are not its stored "
        "spec's objectives)\n"
    )
    assert _digest(db) == before


@pytest.mark.parametrize("told", [1.0, (50.0,), (50.0, 1e4, 1.0)], ids=["a float", "1", "3"])
def test_a_trial_told_other_than_one_value_per_objective_fails_for_good_with_its_reason(
    tmp_path, told
):
    """Whatever its cause, optuna would record it FAIL without a reason, which the queue takes
    for a trial to run again: for ever, one trial after another."""
    url = f"sqlite:///{tmp_path / 'count.db'}"
    spec = load_spec(_study_file(tmp_path, trials=2))
    _queued(url, spec)
    assert serve(load(url, spec.name), lambda trial: told, run_id="r") == 2
    trials = load(url, spec.name).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    n = len(told) if isinstance(told, tuple) else 1
    assert {t.user_attrs[FAIL_REASON] for t in trials} == {
        f"the objective returned {n} value(s) for a study of 2 objective(s)"
    }

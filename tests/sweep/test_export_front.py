"""The models of a front, end to end: a study of two objectives keeps exactly the final weights
of the trials on its front (``study.best_trials``), run by one worker or by two worker processes
at once; `sweep export --trial N` writes any of them bit for bit and refuses any other trial in
one line; `sweep evaluate` retrains the front's most accurate trial or the one asked for; the
progress line counts the front.

The oracles are optuna's ``best_trials`` and the trials' own checkpoints in the store: the
weights written must be the very arrays the trial's worker saved, and reproduce its value.
"""

import contextlib
import dataclasses
import io
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import unittest.mock
from pathlib import Path

import numpy as np
import optuna
import pytest
from threadpoolctl import threadpool_limits

from mlp import MLP, load_state
from sweep.queue.attrs import FRONT_MODELS
from sweep.study.spec import load_spec
from sweep.trial.objective import build_model_and_config, load_data, settings_of, trial_seed
from tests.sweep.helpers import load, main_in_process, run_sql

STUDY = """
[study]
name = "f"
sampler = "grid"
seed = 0
objectives = ["accuracy", "params"]

[budget]
min_params = 20_000
max_params = 60_000

[data]
train_size = 2_000

[train]
epochs = 2
batch_size = 64
depth = 1

[space]
hidden_1 = [26, 40, 60, 75]
learning_rate = [0.02, 0.2]
"""

# `sweep run` without its final table (sweep.report's part, drawn after the run): the run and
# its progress line as the command draws them, with what sweep logs on stderr.
RUN = """
import logging, sys
import sweep
from sweep.progress import ProgressLine
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
line = ProgressLine("run")
sweep.run(sweep.load_spec(sys.argv[1]), storage=sys.argv[2], jobs=int(sys.argv[4]),
          artifacts=sys.argv[3], on_progress=line)
"""


def _run(tmp: Path, jobs: int) -> tuple[str, Path, str]:
    """The study run with ``jobs`` workers (in this process if one, a process each if more);
    (its URL, its store, what it wrote on stderr)."""
    (tmp / "f.toml").write_text(STUDY)
    url, store = f"sqlite:///{tmp / 'db.sqlite'}", tmp / "store"
    args = [str(tmp / "f.toml"), url, str(store), str(jobs)]
    if jobs > 1:  # its workers' own stderr is the process's
        out = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True,
                             timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return url, store, out.stderr
    err = io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    logging.getLogger("sweep").addHandler(handler)
    try:
        with unittest.mock.patch.object(sys, "argv", ["-c", *args]), \
                contextlib.redirect_stderr(err):  # fmt: skip
            exec(RUN.replace("logging.basicConfig", "(lambda **_: None)"), {})
    finally:
        logging.getLogger("sweep").removeHandler(handler)
    return url, store, err.getvalue()


@dataclasses.dataclass(frozen=True)
class Ran:
    tmp: Path
    url: str
    store: Path
    study: optuna.Study
    front: list  # the front's trials, the most accurate first
    others: list  # the trials off it
    stderr: str  # what the run and its workers wrote


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A finished 8-point grid of two objectives, run by one worker in this process (2-3 s, where
    worker processes take 10), and its store."""
    tmp = tmp_path_factory.mktemp("front")
    url, store, stderr = _run(tmp, jobs=1)
    study = load(url, "f")
    front = sorted(study.best_trials, key=lambda t: (-t.values[0], t.number))
    others = [t for t in study.trials if t.number not in {f.number for f in front}]
    # What the tests below need of the grid: a front of two or more, and a trial off it.
    assert len(front) >= 2 and others, [t.values for t in study.trials]
    return Ran(tmp, url, store, study, front, others, stderr)


def _kept(study) -> dict[int, str]:
    stored = study._storage.get_study_system_attrs(study._study_id)[FRONT_MODELS]
    return {m["trial"]: m["artifact_id"] for m in stored}


def _holds_exactly_the_fronts_weights(url: str, store: Path, stderr: str) -> None:
    assert "WARNING" not in stderr and "failed" not in stderr, stderr  # no clean-up failed
    study = load(url, "f")
    kept = _kept(study)
    assert set(kept) == {t.number for t in study.best_trials}
    assert {p.name for p in store.iterdir()} == set(kept.values())
    for t in study.trials:
        named = {k.removeprefix("artifacts:") for k in t.system_attrs if k.startswith("artifacts:")}
        assert named == ({kept[t.number]} if t.number in kept else set()), t.number


def test_a_run_of_two_objectives_keeps_exactly_the_fronts_weights(ran):
    _holds_exactly_the_fronts_weights(ran.url, ran.store, ran.stderr)


@pytest.mark.slow
def test_two_workers_at_once_keep_exactly_the_fronts_weights(tmp_path):
    # Their trials end at once: each end reads the front under the study lock.
    _holds_exactly_the_fronts_weights(*_run(tmp_path, jobs=2))


def test_the_progress_line_counts_the_front(ran):
    last = ran.stderr.strip().splitlines()[-1]
    assert last.startswith("8/8 trials  0 running  ") and f"  front {len(ran.front)}  " in last
    assert "best" not in ran.stderr


def test_the_progress_reads_the_front_again_only_once_more_trials_are_done(ran, monkeypatch):
    from sweep import runner

    reads = []
    real = runner.read_front
    monkeypatch.setattr(runner, "read_front", lambda *a: reads.append(a) or real(*a))
    spec, study = load_spec(ran.tmp / "f.toml"), load(ran.url, "f")
    fronts: dict[int, int] = {}
    for _ in range(3):  # polled every second: the front is read once per count of trials done
        shown = runner._progress(study, spec, 8, 0.0, "r", fronts=fronts)
        assert (shown.front, shown.best, shown.done) == (len(ran.front), None, 8)
    assert len(reads) == 1
    # One kept for an earlier count (7 trials done) is not believed: read again.
    assert runner._progress(study, spec, 8, 0.0, "r", fronts={7: 99}).front == len(ran.front)
    assert len(reads) == 2


def test_export_of_a_front_trial_writes_its_own_weights_bit_for_bit(ran, tmp_path):
    url, store, front = ran.url, ran.store, ran.front
    spec = load_spec(ran.tmp / "f.toml")
    trial = front[-1]  # not the default pick: the front's least accurate
    out = main_in_process("export", "f", "--trial", str(trial.number), "--out",
                          str(tmp_path / "t.npz"), "--storage", url, "--artifacts",
                          str(store))  # fmt: skip
    assert out.returncode == 0, out.stderr
    model = MLP.load(tmp_path / "t.npz")
    shape, _ = build_model_and_config(settings_of(trial, spec), trial_seed(spec.seed, trial.params))
    saved = load_state(store / _kept(ran.study)[trial.number], like=shape)
    assert len(model.params) == len(saved.params)
    for written, own in zip(model.params, saved.params, strict=True):
        assert written.dtype == own.dtype and np.array_equal(written, own)
    with threadpool_limits(limits=spec.threads, user_api="blas"):
        valid = load_data(spec).valid
        _, accuracy = model.evaluate(valid.x.astype(model.dtype, copy=False), valid.y)
    assert 100 * accuracy == trial.values[0]
    meta = json.loads((tmp_path / "t.json").read_text())["meta"]
    assert (meta["trial"], meta["valid_accuracy_percent"]) == (trial.number, trial.values[0])

    # Without --trial: the front's most accurate, and the line says so.
    out = main_in_process("export", "f", "--out", str(tmp_path / "a.npz"), "--storage", url,
                          "--artifacts", str(store))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"trial {front[0].number} (the front's most accurate): ")
    assert json.loads((tmp_path / "a.json").read_text())["meta"]["trial"] == front[0].number


def test_export_of_a_trial_off_the_front_is_one_line_and_writes_nothing(ran, tmp_path):
    listed = ", ".join(str(n) for n in sorted(t.number for t in ran.front))
    args = ["--out", str(tmp_path / "m.npz"), "--storage", ran.url, "--artifacts", str(ran.store)]
    n = ran.others[0].number
    out = main_in_process("export", "f", "--trial", str(n), *args)
    assert out.returncode == 1 and out.stdout == "", out.stderr
    assert out.stderr == (
        f"sweep: error: study 'f': trial {n}'s weights were not kept: only the front's (trials "
        f"{listed}) are; retrain and upload it with: sweep evaluate STUDY.toml --trial {n}\n"
    )
    out = main_in_process("export", "f", "--trial", "8", *args)
    assert out.returncode == 1 and out.stderr == (
        "sweep: error: study 'f' has no trial 8 (its trials are numbered 0 to 7)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_evaluate_retrains_the_fronts_most_accurate_or_the_trial_asked(ran, tmp_path):
    import sweep

    tmp, store, front = ran.tmp, ran.store, ran.front
    # A copy, so that the other tests see it unevaluated; by SQLite's backup, as this process
    # still holds the run's connections and its write-ahead log.
    source, to = sqlite3.connect(tmp / "db.sqlite"), sqlite3.connect(tmp_path / "db.sqlite")
    source.backup(to)
    source.close()
    to.close()
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec = load_spec(tmp / "f.toml")
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    out = main_in_process(
        "evaluate", str(tmp / "f.toml"), "--storage", url, "--artifacts", str(copy)
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"trial {front[0].number} (the front's most accurate): "
                                 f"validation {front[0].values[0]:.2f}%, test ")  # fmt: skip
    assert load(url, "f").user_attrs["test_trial"] == front[0].number

    asked = ran.others[0]
    result = sweep.evaluate(spec, storage=url, artifacts=str(copy), trial=asked.number)
    assert (result.trial, result.valid_accuracy) == (asked.number, asked.values[0])
    attrs = load(url, "f").user_attrs
    assert (attrs["test_trial"], attrs["test_accuracy"]) == (asked.number, result.test_accuracy)

    out = main_in_process("evaluate", str(tmp / "f.toml"), "--trial", "8", "--storage", url,
                          "--artifacts", str(copy))  # fmt: skip
    assert out.returncode == 1 and out.stderr == (
        "sweep: error: study 'f' has no trial 8 (its trials are numbered 0 to 7)\n"
    )


def test_the_pick_is_the_front_status_shows_whatever_other_clients_stored(ran, tmp_path):
    """`sweep export` and `evaluate` picked through optuna's ``best_trials``, which raises on a
    COMPLETE trial with one value of two and weighs ``constraints`` sweep never writes: a
    traceback, or a pick of a trial whose weights were never kept. The pick now reads the same
    front as ``sweep status`` and the kept models."""
    source, to = sqlite3.connect(ran.tmp / "db.sqlite"), sqlite3.connect(tmp_path / "db.sqlite")
    source.backup(to)
    source.close()
    to.close()
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = load(url, "f")
    storage = study._storage
    short = storage.create_new_trial(study._study_id)  # another client's row: one value of two
    storage.set_trial_state_values(short, optuna.trial.TrialState.COMPLETE, [100.0])
    best = ran.front[0]  # an infeasible mark on the front's most accurate trial
    run_sql(url, "INSERT INTO trial_system_attributes (trial_id, key, value_json) "
                 f"VALUES ({best._trial_id}, 'constraints', '[1.0]')")  # fmt: skip
    out = main_in_process("export", "f", "--out", str(tmp_path / "m.npz"), "--storage", url,
                          "--artifacts", str(ran.store))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"trial {best.number} (the front's most accurate): "), out.stdout

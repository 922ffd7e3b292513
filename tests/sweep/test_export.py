"""The best model, usable: `sweep export` writes the best trial's own final weights with a JSON
sidecar, and `sweep evaluate` uploads the model it retrained; both load with `mlp.MLP.load` and
reproduce the accuracy the study recorded for them, exactly.

The oracle is the study itself: a trial's value is 100 × the validation accuracy its weights
had, computed by `fit` in the study's BLAS thread count, so the exported weights must give the
same number to the last bit, and the evaluated model the printed test accuracy.
"""

import dataclasses
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from optuna.trial import TrialState
from threadpoolctl import threadpool_limits

from mlp import MLP, load_state, save_state
from sweep.queue.attrs import BEST_MODEL, EVALUATED_MODEL
from sweep.study.spec import load_spec
from sweep.trial import best
from sweep.trial.kept import stored_spec_of
from sweep.trial.objective import build_model_and_config, load_data, settings_of
from tests.sweep.helpers import grid_study, load, run_cli


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A finished 4-trial grid study (2 architectures × 2 learning rates) and its store."""
    tmp = tmp_path_factory.mktemp("export")
    study = grid_study(tmp, train_size=2000, epochs=3)
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    store = tmp / "store"
    out = run_cli("run", str(study), "--storage", url, "--jobs", "1", "--trials", "4",
                  "--artifacts", str(store))  # fmt: skip
    assert out.returncode == 0, out.stderr
    return tmp, study, url, store


def _accuracy(model: MLP, split, spec) -> float:
    """100 × accuracy as the trial's `fit` computed it (same threads, same batches)."""
    with threadpool_limits(limits=spec.threads, user_api="blas"):
        _, acc = model.evaluate(split.x.astype(model.dtype, copy=False), split.y)
    return 100 * acc


def _system_attrs(url: str) -> dict:
    study = load(url, "g")
    return study._storage.get_study_system_attrs(study._study_id)  # optuna 5: not on Study


def _kept(url: str) -> dict:
    return _system_attrs(url)[BEST_MODEL]


def test_export_writes_the_best_trials_own_weights_and_a_sidecar(ran, tmp_path):
    _, study_file, url, store = ran
    spec = load_spec(study_file)
    study = load(url, "g")
    kept = _kept(url)
    best = study.trials[kept["trial"]]
    assert best.value == study.best_value == kept["value"]
    out = run_cli("export", "g", "--out", str(tmp_path / "model.npz"), "--storage", url,
                  "--artifacts", str(store))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / "model.json") in out.stdout

    model = MLP.load(tmp_path / "model.npz")
    # The trial's own weights: not a retraining (which float32 summation may move by a hair).
    assert _accuracy(model, load_data(spec).valid, spec) == best.value
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar["sizes"] == [784, best.params["hidden_1"], best.params["hidden_2"], 10]
    assert (sidecar["activation"], sidecar["dtype"]) == (spec.train.activation, spec.train.dtype)
    meta = sidecar["meta"]
    assert meta["config"] == dataclasses.asdict(settings_of(best, spec))
    assert meta["config"]["learning_rate"] == best.params["learning_rate"]
    assert (meta["study"], meta["trial"], meta["valid_accuracy_percent"]) == (
        "g", best.number, best.value,
    )  # fmt: skip
    assert meta["test_accuracy_percent"] is None  # not evaluated yet


def test_export_from_the_python_api_returns_the_sidecar(ran, tmp_path):
    import sweep

    _, _, url, store = ran
    done = sweep.export("g", out=tmp_path / "m.npz", storage=url, artifacts=str(store))
    assert done.sidecar == tmp_path / "m.json" and (tmp_path / "m.npz").is_file()
    assert done.weights == tmp_path / "m.npz"  # what mlp.MLP.load is given
    assert (done.trial, done.chosen) == (_kept(url)["trial"], None)  # the best: no need to say


@pytest.mark.slow
def test_evaluate_uploads_the_retrained_model_which_reproduces_its_test_accuracy(ran, tmp_path):
    tmp, study_file, url, store = ran
    db = tmp_path / "db.sqlite"  # a copy: the other tests see the study unevaluated
    shutil.copy(tmp / "db.sqlite", db)
    url = f"sqlite:///{db}"
    spec = load_spec(study_file)
    out = run_cli("evaluate", str(study_file), "--storage", url, "--artifacts", str(store))
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    printed = first.split("test ")[1].split("%")[0]
    prefix = "retrained model uploaded: weights "
    assert second.startswith(prefix), second
    paths = second.removeprefix(prefix).split(", sidecar ")
    assert all(Path(p).is_file() and Path(p).parent == Path(store) for p in paths), paths
    weights, sidecar = (Path(p).name for p in paths)  # where they are: the store's files
    assert {f"artifacts:{weights}", f"artifacts:{sidecar}"} <= _system_attrs(url).keys()
    study = load(url, "g")

    files = FileSystemArtifactStore(str(store))
    download_artifact(artifact_store=files, artifact_id=weights, file_path=str(tmp_path / "e.npz"))
    download_artifact(artifact_store=files, artifact_id=sidecar, file_path=str(tmp_path / "e.json"))
    model = MLP.load(tmp_path / "e.npz")
    test = _accuracy(model, load_data(spec).test, spec)
    assert test == study.user_attrs["test_accuracy"] and f"{test:.2f}" == printed
    meta = json.loads((tmp_path / "e.json").read_text())["meta"]
    assert (meta["trial"], meta["test_accuracy_percent"]) == (study.best_trial.number, test)

    # An export now carries the test accuracy, when it was measured on the kept trial.
    out = run_cli("export", "g", "--out", str(tmp_path / "x.npz"), "--storage", url,
                  "--artifacts", str(store))  # fmt: skip
    assert out.returncode == 0, out.stderr
    meta = json.loads((tmp_path / "x.json").read_text())["meta"]
    measured = study.user_attrs["test_trial"] == meta["trial"]
    assert meta["test_accuracy_percent"] == (test if measured else None)

    # A test accuracy measured on another trial is not this model's.
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE study_user_attributes SET value_json = ? WHERE key = 'test_trial'",
                     (str(meta["trial"] + 1),))  # fmt: skip
    conn.close()
    out = run_cli("export", "g", "--out", str(tmp_path / "y.npz"), "--storage", url,
                  "--artifacts", str(store))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "y.json").read_text())["meta"]["test_accuracy_percent"] is None


def _own_copy(ran, tmp_path) -> tuple[str, Path]:
    """A copy of the study's database, and a store that holds only its best model."""
    tmp, _, _, store = ran
    shutil.copy(tmp / "db.sqlite", tmp_path / "db.sqlite")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    (tmp_path / "store").mkdir()
    kept = _kept(url)["artifact_id"]
    shutil.copy(store / kept, tmp_path / "store" / kept)
    return url, tmp_path / "store"


def _study_artifacts(url: str) -> set[str]:
    """The ids of the artifacts uploaded to the study itself (optuna's ``artifacts:<id>``)."""
    return {k.removeprefix("artifacts:") for k in _system_attrs(url) if k.startswith("artifacts:")}


def test_a_new_evaluate_replaces_the_previous_evaluates_model(ran, tmp_path):
    import sweep

    spec = load_spec(ran[1])
    url, store = _own_copy(ran, tmp_path)
    kept = _kept(url)["artifact_id"]
    first = sweep.evaluate(spec, storage=url, artifacts=str(store))
    assert set(os.listdir(store)) == {kept, *first.artifacts}
    second = sweep.evaluate(spec, storage=url, artifacts=str(store))
    weights, sidecar = second.artifacts
    assert set(os.listdir(store)) == {kept, weights, sidecar}  # the first's two files are gone
    assert _study_artifacts(url) == {weights, sidecar}  # and their attributes
    assert _system_attrs(url)[EVALUATED_MODEL] == {
        "artifact_id": weights, "sidecar_id": sidecar, "trial": second.trial,
    }  # fmt: skip
    # The best trial's own weights are untouched: export still writes them.
    sidecar_file = sweep.export("g", out=tmp_path / "m.npz", storage=url,
                                artifacts=str(store)).sidecar  # fmt: skip
    assert json.loads(sidecar_file.read_text())["meta"]["test_accuracy_percent"] == (
        second.test_accuracy if second.trial == _kept(url)["trial"] else None
    )


# What another client may have left in `evaluated_model`: nothing of it may be deleted unless
# it names an artifact of sweep's form uploaded to the study ("{up}": one planted with its
# attribute), and never the best model (even one that another client also named as a study
# artifact). A name of another form, even named on the study, stays (test_checkpoint_forged).
PLANTED = "6f1c1a52-8a4e-4d2b-9a55-2f0c6b9e7d10"  # an older evaluate's artifact
BAD_RECORDS = {
    "not an object": "[1, 2]",
    "not JSON": "{",
    "an id that is a path": '{"artifact_id": "../db.sqlite", "sidecar_id": "../db.sqlite"}',
    "an id that is a number": '{"artifact_id": 7, "sidecar_id": 8}',
    "the best model": '{"artifact_id": "{kept}", "sidecar_id": "{kept}"}',
    "a file that is not a study artifact": '{"artifact_id": "stray", "sidecar_id": "stray"}',
    "a sidecar id that is a path, beside a good one": '{"artifact_id": "{up}", "sidecar_id": "/"}',
}


@pytest.mark.parametrize("case", BAD_RECORDS, ids=list(BAD_RECORDS))
def test_an_untrusted_evaluated_model_deletes_only_a_study_artifact(ran, tmp_path, case):
    from sweep.trial.artifacts import open_store

    url, store = _own_copy(ran, tmp_path)
    kept = _kept(url)["artifact_id"]
    study = load(url, "g")
    (store / "stray").write_bytes(b"another client's")
    (store / PLANTED).write_bytes(b"an older evaluate's")
    for planted in (PLANTED, kept):
        study._storage.set_study_system_attr(study._study_id, f"artifacts:{planted}", "{}")
    text = BAD_RECORDS[case].replace("{kept}", kept).replace("{up}", PLANTED)
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        conn.execute("INSERT INTO study_system_attributes (study_id, key, value_json) "
                     "VALUES (?, ?, ?)", (study._study_id, EVALUATED_MODEL, text))  # fmt: skip
    conn.close()
    before = set(os.listdir(store))
    new = best.upload(study, open_store(str(store)), MLP(4, 4), {"trial": 0})  # no retraining
    replaced = {PLANTED} if "{up}" in BAD_RECORDS[case] else set()
    assert set(os.listdir(store)) == (before | set(new)) - replaced
    assert _study_artifacts(url) == {PLANTED, kept, *new} - replaced
    assert (tmp_path / "db.sqlite").is_file() and (store / kept).is_file()


def _same_architecture_other_trial(url: str) -> int:
    study = load(url, "g")
    kept = study.trials[_kept(url)["trial"]]
    shape = (kept.params["hidden_1"], kept.params["hidden_2"])
    return next(
        t.number for t in study.trials
        if t.state == TrialState.COMPLETE and t.number != kept.number
        and (t.params["hidden_1"], t.params["hidden_2"]) == shape and t.value != kept.value
    )  # fmt: skip


# What another client may have left in the `best_model` attribute (None: no attribute).
BAD_POINTERS = {
    "absent": None,
    "not an object": "[1, 2]",
    "an artifact id that is a number": '{"artifact_id": 7, "trial": 0, "value": 1.0}',
    "an artifact id that is a path": '{"artifact_id": "../../etc/passwd", "trial": 0}',
    "no trial": '{"artifact_id": "{id}", "value": 1.0}',
    "a trial that is text": '{"artifact_id": "{id}", "trial": "0"}',
    "a trial that does not exist": '{"artifact_id": "{id}", "trial": 999}',
    "a trial number beyond the database's integers": '{"artifact_id": "{id}", "trial": 2e31}',
    "a trial number of 2**64": '{"artifact_id": "{id}", "trial": 18446744073709551616}',
    "an artifact that is not in the store": '{"artifact_id": "nosuch", "trial": {trial}}',
    "another trial of the same architecture": '{"artifact_id": "{id}", "trial": {other}}',
    # A name not of sweep's form is never read, even of a file that holds the right model.
    "a copy of the model under another name": '{"artifact_id": "copy.npz", "trial": {trial}}',
}


@pytest.mark.parametrize("case", BAD_POINTERS, ids=list(BAD_POINTERS))
def test_a_missing_or_untrusted_best_model_is_one_line(ran, tmp_path, case):
    tmp, _, _, store = ran
    db = tmp_path / "db.sqlite"
    shutil.copy(tmp / "db.sqlite", db)
    url = f"sqlite:///{db}"
    kept = _kept(url)
    value = BAD_POINTERS[case]
    with sqlite3.connect(db) as conn:
        where = "WHERE key = ?", (BEST_MODEL,)
        if value is None:
            conn.execute("DELETE FROM study_system_attributes " + where[0], where[1])
        else:
            value = value.replace("{id}", kept["artifact_id"])
            value = value.replace("{trial}", str(kept["trial"]))
            if "{other}" in value:
                value = value.replace("{other}", str(_same_architecture_other_trial(url)))
            conn.execute("UPDATE study_system_attributes SET value_json = ? " + where[0],
                         (value, *where[1]))  # fmt: skip
    conn.close()
    if "copy.npz" in (value or ""):
        shutil.copytree(store, tmp_path / "store")
        store = tmp_path / "store"
        shutil.copy(store / kept["artifact_id"], store / "copy.npz")
    out = run_cli("export", "g", "--out", str(tmp_path / "m.npz"), "--storage", url,
                  "--artifacts", str(store))  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("sweep: error: study 'g' has no best model to export ("), (
        out.stderr
    )
    assert out.stderr.endswith("; retrain and upload it with: sweep evaluate STUDY.toml\n")
    if case == "another trial of the same architecture":
        assert "does not reproduce trial" in out.stderr
    if "copy.npz" in (value or ""):
        assert "best_model names 'copy.npz', not an artifact id sweep writes" in out.stderr
    assert not list(tmp_path.glob("m.*"))


def test_a_corrupt_best_model_artifact_is_one_line(ran, tmp_path):
    _, _, url, store = ran
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (copy / _kept(url)["artifact_id"]).write_bytes(b"PK\x03\x04 not really a zip")
    out = run_cli("export", "g", "--out", str(tmp_path / "m.npz"), "--storage", url,
                  "--artifacts", str(copy))  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert out.stderr.count("\n") == 1 and "has no best model to export" in out.stderr
    assert not list(tmp_path.glob("m.*"))


@pytest.mark.parametrize(
    ("out", "code", "message"),
    [
        ("m.json", 2, "--out must be a .npz file (the sidecar goes beside it as .json); got "),
        ("folder.npz", 1, "is a folder; give a file name"),
        ("none/m.npz", 1, "no such folder"),
    ],
)
def test_a_bad_out_is_one_line_before_the_database_is_read(tmp_path, out, code, message):
    (tmp_path / "folder.npz").mkdir()
    out = run_cli("export", "g", "--out", str(tmp_path / out), "--storage",
                  f"sqlite:///{tmp_path / 'no.db'}")  # fmt: skip
    assert out.returncode == code and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr
    assert not Path(tmp_path / "no.db").exists()


@pytest.mark.slow
def test_export_replaces_no_file_it_did_not_write_unless_forced(ran, tmp_path):
    # An unrelated config.json beside --out config.npz was replaced without a word (#22).
    _, _, url, store = ran
    theirs = b'{"learning_rate": "someone else\'s"}\n'
    (tmp_path / "config.json").write_bytes(theirs)
    args = ["export", "g", "--out", str(tmp_path / "config.npz"), "--storage", url,
            "--artifacts", str(store)]  # fmt: skip
    out = run_cli(*args)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr == (
        f"sweep: error: --out {tmp_path / 'config.npz'}: {tmp_path / 'config.json'} already "
        "exists; export replaces no file unless --force\n"
    )
    assert (tmp_path / "config.json").read_bytes() == theirs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    # the weights' file alone, or both, are refused the same way
    (tmp_path / "config.json").rename(tmp_path / "config.npz")
    assert run_cli(*args).returncode == 2
    (tmp_path / "config.json").write_bytes(theirs)
    out = run_cli(*args)
    assert (
        out.returncode == 2 and "config.npz and " in out.stderr and "already exist;" in (out.stderr)
    )
    assert (tmp_path / "config.npz").read_bytes() == theirs
    # --force replaces both with the model
    out = run_cli(*args, "--force")
    assert out.returncode == 0, out.stderr
    MLP.load(tmp_path / "config.npz")
    assert json.loads((tmp_path / "config.json").read_text())["meta"]["study"] == "g"


def test_a_best_model_whose_weights_are_not_finite_is_one_line(ran, tmp_path):
    # A state whose history claims the trial's value exactly, but whose weights are NaN.
    _, _, url, store = ran
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    kept = _kept(url)
    study = load(url, "g")
    spec = stored_spec_of(study)
    trial = study.trials[kept["trial"]]
    model, _ = build_model_and_config(settings_of(trial, spec), 0)
    state = load_state(copy / kept["artifact_id"], like=model)
    state.params[0][3, 4] = np.nan
    save_state(state, copy / kept["artifact_id"])
    out = run_cli("export", "g", "--out", str(tmp_path / "m.npz"), "--storage", url,
                  "--artifacts", str(copy))  # fmt: skip
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert f"(artifact {kept['artifact_id']} holds W1 weights that are not finite)" in out.stderr
    assert not list(tmp_path.glob("m.*"))

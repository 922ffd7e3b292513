"""Checkpoints case by case, without worker processes: what a resume refuses, which weights may
become the best model, where a handed-on trial resumes from, and the write policy's settings."""

import json
import logging

import numpy as np
import optuna
import pytest
from optuna.artifacts import upload_artifact

from mlp import MLP, TrainConfig, fit, save_state
from mlp.data import Dataset, Split
from sweep.errors import SpecError
from sweep.queue import attrs, handover, recovery
from sweep.queue.attrs import BEST_MODEL, Checkpoint
from sweep.queue.storage import open_storage
from sweep.trial.artifacts import open_store
from sweep.trial.checkpoint import Checkpoints, policy
from sweep.trial.cleanup import trial_ended


def _data() -> Dataset:
    rng = np.random.default_rng(0)
    split = lambda n: Split(rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n))  # noqa: E731
    return Dataset(split(256), split(64), split(64))


def _state(tmp_path, *, momentum: float, epochs: int = 2):
    """A model, its config, and the file of its state after the first epoch."""
    model = MLP(16, 8, seed=0)
    config = TrainConfig(epochs=epochs, batch_size=64, learning_rate=0.1, momentum=momentum)
    states = []
    fit(model, _data(), config, on_state=states.append)
    path = tmp_path / "state.npz"
    save_state(states[0], path)
    return MLP(16, 8, seed=1), config, path


def _trial_with(tmp_path, store, attrs: dict):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    for key, value in attrs.items():
        storage.set_trial_system_attr(trial._trial_id, key, value)
    return study, trial


def test_a_checkpoint_of_another_momentum_is_one_warning_and_epoch_1(tmp_path, caplog):
    store = open_store(str(tmp_path / "artifacts"))
    _, _, path = _state(tmp_path, momentum=0.0)  # no momentum buffers in the file
    model = MLP(16, 8, seed=1)
    config = TrainConfig(epochs=2, batch_size=64, learning_rate=0.1, momentum=0.9)
    study, trial = _trial_with(tmp_path, store, {})
    artifact = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    study._storage.set_trial_system_attr(
        trial._trial_id, attrs.RESUMED_FROM, {"artifact_id": artifact, "epoch": 1, "trial": 0}
    )
    saved = Checkpoints(store, trial, fits="")
    with caplog.at_level(logging.WARNING, logger="sweep.trial.checkpoint"):
        assert saved.resume(model, config, _data()) is None
    warned = [r.getMessage() for r in caplog.records if r.name == "sweep.trial.checkpoint"]
    assert len(warned) == 1 and "momentum buffers do not fit" in warned[0]
    fit(model, _data(), config)  # and the trial trains from epoch 1, as it would have
    assert saved.stale == [artifact]  # a file of no use: deleted once the trial records its own


def test_a_store_that_fails_leaves_the_checkpoint_for_the_next_try(tmp_path, caplog):
    store = open_store(str(tmp_path / "artifacts"))
    model, config, path = _state(tmp_path, momentum=0.9)
    study, trial = _trial_with(tmp_path, store, {})
    artifact = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    study._storage.set_trial_system_attr(
        trial._trial_id, attrs.RESUMED_FROM, {"artifact_id": artifact, "epoch": 1, "trial": 0}
    )

    class Down:
        def open_reader(self, artifact_id):
            raise OSError("connection refused")

    saved = Checkpoints(Down(), trial, fits="")
    with caplog.at_level(logging.WARNING, logger="sweep.trial.checkpoint"):
        assert saved.resume(model, config, _data()) is None
    assert saved.stale == []  # the store may hold it yet: never deleted for being unreachable
    assert Checkpoints(store, trial, fits="").resume(model, config, _data()).epoch == 1


def test_only_a_trials_final_weights_become_the_best_model(tmp_path):
    store = open_store(str(tmp_path / "artifacts"))
    _, _, path = _state(tmp_path, momentum=0.9)
    study, trial = _trial_with(tmp_path, store, {})
    artifact = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    study._storage.set_trial_system_attr(
        trial._trial_id, attrs.CHECKPOINT, {"artifact_id": artifact, "epoch": 1}
    )
    trial.report(50.0, 1)
    trial.report(60.0, 2)  # its final upload (epoch 2) failed: the checkpoint is epoch 1's
    study.tell(trial, 60.0)
    trial_ended(store, study, study._storage.get_trial(trial._trial_id))
    assert BEST_MODEL not in study._storage.get_study_system_attrs(study._study_id)

    second = study.ask()
    artifact = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=second)
    study._storage.set_trial_system_attr(
        second._trial_id, attrs.CHECKPOINT, {"artifact_id": artifact, "epoch": 2}
    )
    second.report(55.0, 1)
    second.report(58.0, 2)
    study.tell(second, 58.0)
    trial_ended(store, study, study._storage.get_trial(second._trial_id))
    best = study._storage.get_study_system_attrs(study._study_id)[BEST_MODEL]
    assert best["artifact_id"] == artifact and best["trial"] == 1


def test_a_trial_requeued_before_its_own_checkpoint_hands_on_what_it_was_given():
    given = json.dumps({"artifact_id": "a1", "epoch": 5, "trial": 3})
    own_is_given = json.dumps({"artifact_id": "a1", "epoch": 5})
    own = json.dumps({"artifact_id": "b2", "epoch": 7})
    assert handover._resume_point(9, own_is_given, given) == Checkpoint("a1", 5, 3)
    assert handover._resume_point(9, own, given) == Checkpoint("b2", 7, 9)
    assert handover._resume_point(9, None, given).trial == 3
    assert handover._resume_point(9, own, None).trial == 9


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SWEEP_CHECKPOINT_EPOCHS", "0x"), ("SWEEP_CHECKPOINT_EPOCHS", "0"),
     ("SWEEP_CHECKPOINT_EPOCHS", "-2"), ("SWEEP_CHECKPOINT_OVERHEAD", "nan"),
     ("SWEEP_CHECKPOINT_OVERHEAD", "0"), ("SWEEP_CHECKPOINT_OVERHEAD", "lots")],
)  # fmt: skip
def test_the_write_policy_settings_are_checked(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SpecError, match=f"^{variable} must be .*; got {value!r}$"):
        policy()


def test_the_write_policy_defaults_and_settings(monkeypatch):
    assert policy() == (1, 0.05)
    monkeypatch.setenv("SWEEP_CHECKPOINT_EPOCHS", "3")
    monkeypatch.setenv("SWEEP_CHECKPOINT_OVERHEAD", "inf")
    assert policy() == (3, float("inf"))


def test_a_clean_up_that_fails_never_stops_the_worker(tmp_path, caplog):
    from sweep.worker import serve

    storage = open_storage(f"sqlite:///{tmp_path / 'w.db'}")
    study = optuna.create_study(study_name="w", storage=storage, direction="maximize")
    for _ in range(3):
        study.enqueue_trial({})

    def broken(study, trial):
        raise OSError("the store is gone")

    with caplog.at_level(logging.WARNING, logger="sweep.worker"):
        assert serve(study, lambda trial: 1.0, run_id="r", on_end=broken) == 3
    assert sum("clean-up after it ended failed" in r.getMessage() for r in caplog.records) == 3


def _claimed(tmp_path):
    """A study with one trial, claimed by a worker process's storage (which holds its writes):
    (the artifact folder, its store, the storage, the study, the worker's study, the trial id)."""
    from sweep.worker import as_worker_study
    from tests.sweep.helpers import WORKER_TAGS

    folder = tmp_path / "artifacts"
    store = open_store(str(folder))
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.enqueue_trial({})
    worker = as_worker_study(study)
    return (
        folder,
        store,
        storage,
        study,
        worker,
        worker._storage.claim(study._study_id, WORKER_TAGS),
    )


@pytest.mark.parametrize("when", ["start", "end"])
def test_a_checkpoint_is_named_in_the_database_before_its_bytes_are_written(tmp_path, when):
    # A worker killed right after writing a checkpoint leaves a file its trial names; the
    # trial that takes its work over deletes it, and its name, when it starts (and, had that
    # failed, when it ends).
    folder, store, storage, study, worker, trial_id = _claimed(tmp_path)
    trial = optuna.Trial(worker, trial_id)

    class Killed(BaseException):
        pass

    class DiesAfterWriting:
        def write(self, artifact_id, body):
            store.write(artifact_id, body)
            raise Killed  # the process is gone: nothing after this runs

    saved = Checkpoints(DiesAfterWriting(), trial, fits="")
    model, config, _ = _state(tmp_path, momentum=0.0)
    states = []
    fit(model, _data(), config, on_state=states.append)
    with pytest.raises(Killed):
        saved.write(states[0])
    [stray] = [p.name for p in folder.iterdir()]
    named = storage.get_trial(trial_id).system_attrs  # read from the database, not the worker
    assert f"artifacts:{stray}" in named
    # Its work is handed on; the successor ends (here: fails) and deletes it.
    assert recovery.abandon_run(storage, study._study_id, "r", max_retries=3) == [0]
    successor = study.ask()
    if when == "start":
        resumed = Checkpoints(store, successor, fits="")
        assert resumed.resume(MLP(16, 8, seed=1), config, _data()) is None
    else:
        study.tell(successor, state=optuna.trial.TrialState.FAIL)
        trial_ended(store, study, study.trials[successor.number])
    assert not list(folder.iterdir())
    assert not any(k.startswith("artifacts:") for k in storage.get_trial(trial_id).system_attrs)


@pytest.mark.parametrize("retries", [1, 3])
def test_what_a_trial_that_died_for_good_left_is_deleted_and_a_requeued_ones_kept(
    tmp_path, retries
):
    from sweep.trial.cleanup import clear_ended

    folder, store, storage, study, worker, trial_id = _claimed(tmp_path)
    model, config, _ = _state(tmp_path, momentum=0.0)
    states = []
    fit(model, _data(), config, on_state=states.append)
    Checkpoints(store, optuna.Trial(worker, trial_id), fits="").write(states[0])
    [saved] = [p.name for p in folder.iterdir()]
    # Its worker dies: with max_retries 1 for good, else it is handed on with its checkpoint.
    assert recovery.abandon_run(storage, study._study_id, "r", max_retries=retries) == [0]
    clear_ended(store, storage, study._study_id)
    names = [k for k in storage.get_trial(trial_id).system_attrs if k.startswith("artifacts:")]
    if retries == 1:
        assert not list(folder.iterdir()) and names == []
    else:
        assert [p.name for p in folder.iterdir()] == [saved] and names == [f"artifacts:{saved}"]


def test_an_end_a_kill_cut_short_is_finished_later_and_an_end_run_twice_keeps_the_best(tmp_path):
    from sweep.trial.cleanup import clear_ended

    folder, store, storage, study, worker, trial_id = _claimed(tmp_path)
    trial = optuna.Trial(worker, trial_id)
    model, config, _ = _state(tmp_path, momentum=0.0)
    states = []
    fit(model, _data(), config, on_state=states.append)
    saved = Checkpoints(store, trial, fits="")
    for state in states:  # epochs 1 and 2: the first replaced (deleted), still named
        saved.write(state)
        trial.report(50.0 + state.epoch, state.epoch)
    saved.close()
    worker.tell(trial, 52.0)  # and the worker is killed here, before its trial's end
    [final] = [p.name for p in folder.iterdir()]

    def names() -> list[str]:
        return sorted(k for k in storage.get_trial(trial_id).system_attrs
                      if k.startswith("artifacts:"))  # fmt: skip

    assert len(names()) == 2
    clear_ended(store, storage, study._study_id)  # the next launcher, or a worker at its end
    assert [p.name for p in folder.iterdir()] == [final] and names() == [f"artifacts:{final}"]
    assert storage.get_study_system_attrs(study._study_id)[BEST_MODEL]["artifact_id"] == final
    # Its end again (two clean-ups at once, or its own worker late): the model stays kept.
    trial_ended(store, study, storage.get_trial(trial_id))
    clear_ended(store, storage, study._study_id)
    assert [p.name for p in folder.iterdir()] == [final] and names() == [f"artifacts:{final}"]
    assert storage.get_study_system_attrs(study._study_id)[BEST_MODEL]["artifact_id"] == final

"""Checkpoints and artifacts under forged pointers: the study database is shared, and another
client can write any attribute (``resume_from``, ``checkpoint``, ``artifacts:<id>``,
``best_model``, ``evaluated_model``) or put any file in the artifact folder.

Sweep deletes only what sweep wrote (an id of its form, named on the trial it cleans up or the
trials that one took over), never through a symbolic link, and a checkpoint resumes a trial only
when it carries the trial's digest and its weights measure what it claims. Each refusal is one
warning line and leaves the victim's bytes as they were. The trials run in this process through
the worker's own loop (``sweep.worker.serve`` with the MLP objective and ``trial_ended``).
"""

import contextlib
import dataclasses
import functools
import logging
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.artifacts import upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState

from mlp import MLP, TrainState, save_state
from mlp.train import EpochMetrics
from sweep.queue import attrs
from sweep.queue.attrs import BEST_MODEL, EVALUATED_MODEL
from sweep.queue.storage import open_storage
from sweep.study.space import suggest
from sweep.study.spec import load_spec
from sweep.trial.artifacts import open_store
from sweep.trial.checkpoint import fits_of
from sweep.trial.cleanup import clear_ended, trial_ended
from sweep.trial.objective import (
    Objective,
    build_model_and_config,
    load_data,
    settings_of,
    trial_seed,
)
from sweep.worker import serve

STUDY = """
[study]
name = "{name}"
sampler = "grid"
seed = 0

[budget]
min_params = 0
max_params = 100_000

[data]
train_size = 1000

[train]
epochs = 3
batch_size = 64
dtype = "float64"
momentum = 0.9
init = "normal"

[space]
hidden_1 = [16]
hidden_2 = [8]
learning_rate = [0.05]
init_std = [0.1, 1e200]
"""
GOOD = {"hidden_1": 16, "hidden_2": 8, "learning_rate": 0.05, "init_std": 0.1}
DIVERGES = GOOD | {"init_std": 1e200}  # a NaN loss in epoch 1: the trial fails
VICTIM = b"a file sweep never wrote\n"


class Env:
    """One study (its spec, database, artifact folder and store) and a victim file."""

    def __init__(self, tmp_path, name: str = "f") -> None:
        path = tmp_path / f"{name}.toml"
        path.write_text(STUDY.format(name=name))
        self.spec = load_spec(path)
        self.folder = tmp_path / "artifacts"
        self.store = open_store(str(self.folder))
        self.storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
        self.study = optuna.create_study(
            study_name=name, storage=self.storage, direction="maximize"
        )
        self.victim = self.folder / "victim.txt"
        self.victim.write_bytes(VICTIM)

    def enqueue(self, params=GOOD) -> int:
        """A WAITING trial's id."""
        self.study.enqueue_trial(params)
        return self.study.trials[-1]._trial_id

    def serve(self) -> optuna.trial.FrozenTrial:
        """Run the queue as a worker does; the last trial."""
        objective = Objective(self.spec, self.store)
        serve(self.study, objective, run_id="r", on_end=functools.partial(trial_ended, self.store))
        return self.study.trials[-1]

    def reference(self, params=GOOD) -> float:
        """The value of an untouched trial of ``params`` (in a study of its own)."""
        other = optuna.create_study(study_name="reference", storage=self.storage,
                                    direction="maximize")  # fmt: skip
        other.enqueue_trial(params)
        serve(other, Objective(self.spec, None), run_id="ref")
        return other.trials[-1].value


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("sweep")]  # fmt: skip


# -- sweep deletes only what sweep wrote --------------------------------------------------------


@pytest.mark.parametrize("params", [GOOD, DIVERGES], ids=["complete", "fail"])
def test_a_forged_resume_from_leaves_the_file_it_names(tmp_path, caplog, params):
    env = Env(tmp_path)
    trial_id = env.enqueue(params)
    env.storage.set_trial_system_attr(
        trial_id, attrs.RESUME_FROM, {"artifact_id": "victim.txt", "epoch": 2, "trial": 0}
    )
    with caplog.at_level(logging.WARNING):
        done = env.serve()
    assert done.state == (TrialState.COMPLETE if params is GOOD else TrialState.FAIL)
    assert env.victim.read_bytes() == VICTIM
    [warning] = _warnings(caplog)
    assert "cannot resume from checkpoint 'victim.txt': not an artifact sweep wrote" in warning
    assert "left as it is, training from epoch 1" in warning
    if params is GOOD:
        assert "resumed_from_epoch" not in done.user_attrs
        assert done.value == env.reference()


def test_a_forged_resume_from_of_sweeps_form_but_not_the_trials_is_not_read(tmp_path, caplog):
    # A uuid4 of another trial's (or client's) artifact: never this trial's to read or delete.
    env = Env(tmp_path)
    foreign = str(uuid.uuid4())
    (env.folder / foreign).write_bytes(VICTIM)
    trial_id = env.enqueue()
    env.storage.set_trial_system_attr(
        trial_id, attrs.RESUME_FROM, {"artifact_id": foreign, "epoch": 2, "trial": 0}
    )
    with caplog.at_level(logging.WARNING):
        done = env.serve()
    assert done.state == TrialState.COMPLETE
    assert (env.folder / foreign).read_bytes() == VICTIM
    [warning] = _warnings(caplog)
    assert f"cannot resume from checkpoint '{foreign}': not an artifact sweep wrote" in warning


def test_a_forged_artifact_name_leaves_the_file_it_names(tmp_path, caplog):
    env = Env(tmp_path)
    trial_id = env.enqueue()
    meta = {"artifact_id": "victim.txt", "filename": "victim.txt",
            "mimetype": "text/plain", "encoding": None}  # fmt: skip
    env.storage.set_trial_system_attr(trial_id, "artifacts:victim.txt", meta)
    with caplog.at_level(logging.WARNING):
        done = env.serve()
        clear_ended(env.store, env.storage, env.study._study_id)  # (once said; not again)
    assert done.state == TrialState.COMPLETE
    assert env.victim.read_bytes() == VICTIM
    [warning] = _warnings(caplog)
    assert "trial 0: artifacts named ['victim.txt']: not artifact ids sweep writes" in warning
    # The trial's own checkpoint is the best model: the only other file.
    best = env.storage.get_study_system_attrs(env.study._study_id)[BEST_MODEL]
    assert sorted(p.name for p in env.folder.iterdir()) == sorted(
        [best["artifact_id"], "victim.txt"]
    )


@pytest.mark.parametrize("guards", ["both", "the trial's end's alone"])
def test_names_of_another_form_keep_their_files_at_the_trials_end(
    tmp_path, caplog, monkeypatch, guards
):
    # Two guards stand between a name on a trial and a deletion: the trial's end takes only
    # names of sweep's form (cleanup._named), and ``remove`` refuses any other id. The second
    # taken away, what is left is the folder store's own check, which refuses only ids that
    # leave the folder: ``.keep-me`` and ``sub/other`` do not.
    from sweep.trial import cleanup

    env = Env(tmp_path)
    (env.folder / "sub").mkdir()
    victims = [env.folder / ".keep-me", env.folder / "sub" / "other"]
    for victim in victims:
        victim.write_bytes(VICTIM)
    trial_id = env.enqueue()
    for name in (".keep-me", "sub/other"):
        env.storage.set_trial_system_attr(trial_id, f"artifacts:{name}", {})
    if guards != "both":

        def unguarded(store, artifact_id):  # sweep.trial.artifacts.remove without its check
            with contextlib.suppress(ArtifactNotFound):
                store.remove(artifact_id)
            return True

        monkeypatch.setattr(cleanup, "remove", unguarded)
    with caplog.at_level(logging.WARNING):
        done = env.serve()
    assert done.state == TrialState.COMPLETE
    assert [v.read_bytes() for v in victims] == [VICTIM, VICTIM]
    best = env.storage.get_study_system_attrs(env.study._study_id)[BEST_MODEL]["artifact_id"]
    names = sorted(k for k in env.storage.get_trial(trial_id).system_attrs if ":" in k)
    assert names == sorted([f"artifacts:{best}", "artifacts:.keep-me", "artifacts:sub/other"])
    [warning] = _warnings(caplog)
    assert "trial 0: artifacts named ['.keep-me', 'sub/other']: not artifact ids sweep" in warning


def _finished(env: Env, forged: dict | None = None) -> tuple[optuna.trial.FrozenTrial, str]:
    """A trial that completed with its own final checkpoint (named on it), its ``checkpoint``
    pointer replaced by ``forged`` if given; (the trial, its own checkpoint's id)."""
    model = MLP(16, 8, seed=0)
    state = TrainState(1, model.params, None, np.random.default_rng(0).bit_generator.state,
                       0.5, 0, [EpochMetrics(1, 1.0, 0.5, 1.0, 0.5, 0.1)])  # fmt: skip
    path = env.folder.parent / "own.npz"
    save_state(state, path)
    trial = env.study.ask()
    own = upload_artifact(artifact_store=env.store, file_path=str(path), study_or_trial=trial)
    pointer = forged if forged is not None else {"artifact_id": own, "epoch": 1}
    env.storage.set_trial_system_attr(trial._trial_id, attrs.CHECKPOINT, pointer)
    trial.report(50.0, 1)
    env.study.tell(trial, 50.0)
    return env.storage.get_trial(trial._trial_id), own


def test_a_forged_checkpoint_is_neither_kept_nor_deleted(tmp_path, caplog):
    env = Env(tmp_path)
    trial, _ = _finished(env, {"artifact_id": "victim.txt", "epoch": 1})  # its final epoch's
    with caplog.at_level(logging.WARNING):
        trial_ended(env.store, env.study, trial)
    assert env.victim.read_bytes() == VICTIM
    assert BEST_MODEL not in env.storage.get_study_system_attrs(env.study._study_id)
    [warning] = _warnings(caplog)
    assert "trial 0: its checkpoint {'artifact_id': 'victim.txt', 'epoch': 1}" in warning
    assert "not an artifact sweep wrote for this trial" in warning
    assert [p.name for p in env.folder.iterdir()] == ["victim.txt"]  # its own one is deleted


@pytest.mark.parametrize("form", ["other form", "not named"])
def test_a_forged_best_model_is_not_deleted_when_a_better_one_replaces_it(tmp_path, caplog, form):
    env = Env(tmp_path)
    owner = env.study.ask()  # the trial the forged record names
    if form == "other form":
        artifact, victim = "victim.txt", env.victim
        env.storage.set_trial_system_attr(owner._trial_id, "artifacts:victim.txt", {})
    else:  # sweep's form, but the trial does not name it: another client's upload
        artifact = str(uuid.uuid4())
        victim = env.folder / artifact
        victim.write_bytes(VICTIM)
    env.study.tell(owner, state=TrialState.FAIL)
    forged = {"artifact_id": artifact, "trial": 0, "value": -1.0, "trial_id": owner._trial_id}
    env.storage.set_study_system_attr(env.study._study_id, BEST_MODEL, forged)
    trial, own = _finished(env)
    with caplog.at_level(logging.WARNING):
        trial_ended(env.store, env.study, trial)
    best = env.storage.get_study_system_attrs(env.study._study_id)[BEST_MODEL]
    assert best["artifact_id"] == own  # the better model replaced the forged record ...
    assert victim.read_bytes() == VICTIM  # ... and left its file
    [warning] = _warnings(caplog)
    assert f"the replaced best_model '{artifact}': not an artifact sweep wrote" in warning


def test_a_best_model_sweep_kept_is_deleted_when_a_better_one_replaces_it(tmp_path, caplog):
    # The control of the test above: the same path deletes a real replaced model.
    env = Env(tmp_path)
    first, old = _finished(env)
    trial_ended(env.store, env.study, first)
    assert (env.folder / old).exists()
    env.storage.set_study_system_attr(  # (as if it had been worse)
        env.study._study_id, BEST_MODEL,
        {**env.storage.get_study_system_attrs(env.study._study_id)[BEST_MODEL], "value": 1.0},
    )  # fmt: skip
    second, own = _finished(env)
    with caplog.at_level(logging.WARNING):
        trial_ended(env.store, env.study, second)
    assert sorted(p.name for p in env.folder.iterdir()) == sorted([own, "victim.txt"])
    assert _warnings(caplog) == []
    assert not any(k.startswith("artifacts:") for k in env.storage.get_trial(first._trial_id)
                   .system_attrs)  # fmt: skip


def test_a_forged_evaluated_model_leaves_the_file_it_names(tmp_path, caplog):
    from sweep.trial.best import _replace_evaluated

    env = Env(tmp_path)
    sid = env.study._study_id
    env.storage.set_study_system_attr(sid, "artifacts:victim.txt", {})  # named on the study too
    record = {"artifact_id": "victim.txt", "sidecar_id": "victim.json", "trial": 0}
    env.storage.set_study_system_attr(sid, EVALUATED_MODEL, record)  # (victim.json: not named)
    new = (str(uuid.uuid4()), str(uuid.uuid4()))
    with caplog.at_level(logging.WARNING):
        _replace_evaluated(env.study, env.store, new, 0)
    assert env.victim.read_bytes() == VICTIM
    assert env.storage.get_study_system_attrs(sid)[EVALUATED_MODEL]["artifact_id"] == new[0]
    [warning] = _warnings(caplog)
    assert "previous evaluated model's artifact 'victim.txt': not an artifact id sweep" in warning


@pytest.mark.parametrize("resumed", [False, True])
def test_a_symbolic_link_under_a_named_id_is_neither_followed_nor_deleted(
    tmp_path, caplog, resumed
):
    env = Env(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(VICTIM)
    link = str(uuid.uuid4())
    (env.folder / link).symlink_to(outside)
    trial_id = env.enqueue()
    env.storage.set_trial_system_attr(trial_id, f"artifacts:{link}", {})  # sweep's form, named
    if resumed:  # and read: a resume opens no link either
        env.storage.set_trial_system_attr(
            trial_id, attrs.RESUME_FROM, {"artifact_id": link, "epoch": 2, "trial": 0}
        )
    with caplog.at_level(logging.WARNING):
        done = env.serve()
    assert done.state == TrialState.COMPLETE and done.value == env.reference()
    assert (env.folder / link).is_symlink() and outside.read_bytes() == VICTIM
    *resume, delete = _warnings(caplog)
    assert f"could not delete checkpoint {link}" in delete and "a symbolic link" in delete
    if resumed:  # (a resume that fails says so; the trial's end says what it left)
        [resume] = resume
        assert f"cannot resume from checkpoint {link}" in resume and "symbolic link" in resume
    else:
        assert resume == []


# -- a checkpoint proves it fits --------------------------------------------------------------


def _forged_finished(env: Env, trial_id: int, *, fits: str, claimed: float | None) -> float:
    """Give the WAITING trial a "finished" state of its own form (named on it, its
    ``resume_from``): all its epochs run, zero weights, every epoch claiming ``claimed``
    validation accuracy (None: what zero weights truly measure); what they measure."""
    from sweep.trial.artifacts import upload

    settings = suggest(optuna.trial.FixedTrial(GOOD), env.spec)
    seed = trial_seed(env.spec.seed, GOOD)
    model, config = build_model_and_config(settings, seed)
    for p in model.params:
        p[...] = 0
    data = load_data(env.spec)
    _, measured = model.evaluate(np.asarray(data.valid.x, model.dtype), data.valid.y,
                                 batch_size=config.eval_batch_size)  # fmt: skip
    claimed = measured if claimed is None else claimed
    history = [EpochMetrics(e, 0.0, 1.0, 0.0, claimed, 0.1) for e in range(1, config.epochs + 1)]
    state = TrainState(config.epochs, model.params, [np.zeros_like(p) for p in model.params],
                       np.random.default_rng(seed).bit_generator.state, claimed,
                       config.epochs - 1, history, fits=fits)  # fmt: skip
    path = env.folder.parent / "finished.npz"
    save_state(state, path)
    artifact = upload(env.store, env.storage, path, trial_id=trial_id)
    env.storage.set_trial_system_attr(
        trial_id,
        attrs.RESUME_FROM,
        {"artifact_id": artifact, "epoch": config.epochs, "trial": 0},
    )
    return measured


def _fits(env: Env) -> str:
    """The digest the objective gives a trial of GOOD."""
    settings = suggest(optuna.trial.FixedTrial(GOOD), env.spec)
    return fits_of(env.spec, settings, trial_seed(env.spec.seed, GOOD), GOOD)


@pytest.mark.parametrize("lie", ["digest", "accuracy"])
def test_a_forged_finished_checkpoint_is_refused_and_the_trial_trains(tmp_path, caplog, lie):
    env = Env(tmp_path)
    trial_id = env.enqueue()
    # Each lie alone: a wrong digest with numbers its weights do give, or the right digest
    # with "100% validation".
    if lie == "digest":
        _forged_finished(env, trial_id, fits="sweep-fits/1:" + "0" * 64, claimed=None)
    else:
        _forged_finished(env, trial_id, fits=_fits(env), claimed=1.0)
    with caplog.at_level(logging.WARNING):
        done = env.serve()
    [warning] = _warnings(caplog)
    assert "trial 0: cannot resume from checkpoint" in warning
    assert "training from epoch 1" in warning
    if lie == "digest":
        assert "it was saved for other training settings or parameters" in warning
    else:
        assert "validation accuracy, not the 100.0000% its epoch 3 claims" in warning
    assert done.state == TrialState.COMPLETE
    assert "resumed_from_epoch" not in done.user_attrs and "epochs_run" not in done.user_attrs
    assert done.value == env.reference() != 100.0
    assert len(done.user_attrs["valid_accuracy"]) == 3


def test_a_finished_checkpoint_that_fits_and_measures_true_completes_the_trial(tmp_path, caplog):
    # The control: the same state, its claim true, is resumed and ends the trial without an
    # epoch run, with the value its weights measure.
    env = Env(tmp_path)
    trial_id = env.enqueue()
    measured = _forged_finished(env, trial_id, fits=_fits(env), claimed=None)
    with caplog.at_level(logging.WARNING):
        done = env.serve()
    assert _warnings(caplog) == []
    assert done.state == TrialState.COMPLETE
    assert done.user_attrs["resumed_from_epoch"] == 3 and done.user_attrs["epochs_run"] == 0
    assert done.value == 100 * measured != env.reference()


def test_a_checkpoint_written_by_a_trial_carries_its_digest(tmp_path):
    from mlp import load_state

    env = Env(tmp_path)
    env.enqueue()
    done = env.serve()
    best = env.storage.get_study_system_attrs(env.study._study_id)[BEST_MODEL]
    assert best["trial"] == done.number
    like, _ = build_model_and_config(settings_of(done, env.spec), 0)
    state = load_state(env.folder / best["artifact_id"], like=like)
    assert state.fits == _fits(env) and state.fits.startswith("sweep-fits/1:")
    assert 100 * state.history[-1].valid_accuracy == done.value


def test_a_checkpoint_of_the_version_before_depth_and_distortions_still_fits():
    # The digest 35d64bf (before #25) wrote for this trial: its checkpoints must resume after
    # an upgrade, so the settings declared since leave it unchanged at their defaults.
    spec = load_spec(Path(__file__).parents[2] / "studies" / "tpe-best.toml")
    params = {"hidden_1": 500, "hidden_2": 670, "learning_rate": 0.0634}
    settings = dataclasses.replace(spec.train, **params)
    assert fits_of(spec, settings, 12345, params) == (
        "sweep-fits/1:924717d21301d11c1e212ab9f169469edd028a73eb7f625f3a18c003c7c57a98"
    )
    distorted = dataclasses.replace(settings, shift=1)
    assert fits_of(spec, distorted, 12345, params) != fits_of(spec, settings, 12345, params)

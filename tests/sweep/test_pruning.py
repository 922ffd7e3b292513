"""The pruner a study file asks for: no trial is stopped in its first ``prune_after`` epochs."""

import copy

import optuna
import pytest

from sweep.study.joining import make_pruner
from sweep.study.spec import parse_spec, stored_spec

RAW = {
    "study": {"name": "p", "sampler": "random", "seed": 0, "trials": 20},
    "budget": {"min_params": 0, "max_params": 10_000_000},
    "train": {"epochs": 12},
    "space": {"learning_rate": {"low": 0.01, "high": 0.1}},
}
EPOCHS = 12


def _first_pruned_epoch(pruner_name: str, prune_after: int | None) -> int | None:
    """The epoch at which a trial far below six finished ones is first told to stop."""
    raw = copy.deepcopy(RAW)
    raw["study"]["pruner"] = pruner_name
    if prune_after is not None:
        raw["study"]["prune_after"] = prune_after
    spec = parse_spec(raw, source="p.toml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Hyperband puts a trial in a bracket by a hash of the study's name and the trial's number:
    # a fixed name, so that the same trials meet the same brackets on every run.
    study = optuna.create_study(study_name="p", direction="maximize", pruner=make_pruner(spec))
    for _ in range(6):  # past the median pruner's five start-up trials
        trial = study.ask()
        for epoch in range(1, EPOCHS + 1):
            trial.report(90.0 + epoch * 0.1, epoch)
            trial.should_prune()  # successive halving records its rungs here
        study.tell(trial, 91.2)
    trial = study.ask()
    for epoch in range(1, EPOCHS + 1):
        trial.report(10.0, epoch)
        if trial.should_prune():
            return epoch
    return None


@pytest.mark.parametrize("pruner", ["median", "successive-halving"])
def test_no_trial_is_pruned_before_prune_after_epochs(pruner):
    assert _first_pruned_epoch(pruner, None) == 1  # the default: as before prune_after existed
    assert _first_pruned_epoch(pruner, 0) == 1
    assert _first_pruned_epoch(pruner, 5) == 6
    assert _first_pruned_epoch(pruner, EPOCHS) is None


def test_hyperband_brackets_start_after_prune_after_epochs():
    # Which bracket a trial joins depends on its number, so the epoch it is pruned at varies;
    # it is never before prune_after + 1.
    for prune_after in (0, 3, 5):
        first = _first_pruned_epoch("hyperband", prune_after)
        assert first is None or first > prune_after
    assert _first_pruned_epoch("hyperband", 0) is not None


def test_prune_after_is_stored_with_the_study():
    raw = copy.deepcopy(RAW)
    raw["study"]["prune_after"] = 7
    spec = parse_spec(raw, source="p.toml")
    assert spec.to_dict()["study"]["prune_after"] == 7
    assert stored_spec(spec.to_dict(), source="stored").prune_after == 7

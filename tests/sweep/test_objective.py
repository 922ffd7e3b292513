"""The objective's mapping: a trial's settings and seed → the model and its training run."""

import dataclasses

import numpy as np

from mlp import MLP, TrainConfig
from mlp.config import ModelConfig, declared_fields
from sweep.study.settings import TrainSettings
from sweep.trial.objective import build_model_and_config, trial_seed
from tests.mlp.test_config import other_value


def test_every_setting_and_the_seed_reach_the_model_or_the_training_run():
    changed = {h.name: other_value(h) for h in declared_fields() if h.name in
               {f.name for f in dataclasses.fields(TrainSettings)}}  # fmt: skip
    changed |= {"hidden_1": 9, "hidden_2": 7, "init": "normal", "momentum": 0.5}
    settings = TrainSettings(**changed)
    model, config = build_model_and_config(settings, seed=7)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert config == TrainConfig(**{k: v for k, v in changed.items() if k in train_fields}, seed=7)
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    given = {k: v for k, v in changed.items() if k in model_fields}
    widths = [given.pop(f"hidden_{k}") for k in range(1, given["depth"] + 1)]
    options = {k: v for k, v in given.items() if k != "depth" and not k.startswith("hidden_")}
    by_hand = MLP(*widths, **options, seed=7)
    assert len(widths) == given["depth"] != 2  # a depth other than the default reaches it
    assert (model.sizes, model.activation, model.dtype) == (
        by_hand.sizes, by_hand.activation, by_hand.dtype
    )  # fmt: skip
    for p, q in zip(model.params, by_hand.params, strict=True):
        np.testing.assert_array_equal(p, q)
    assert model_fields | train_fields >= set(changed)


def test_a_trials_seed_depends_on_the_study_seed_and_its_parameters_only():
    # Pinned: a changed seed would change every stored study's results.
    params = {"hidden_1": 32, "hidden_2": 16, "learning_rate": 0.1}
    assert trial_seed(0, params) == 4277509008
    assert trial_seed(0, dict(reversed(params.items()))) == 4277509008
    assert trial_seed(1, params) != 4277509008

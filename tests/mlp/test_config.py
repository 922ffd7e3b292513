"""The declaration of every model and training field (mlp.config): complete, consistent with
itself, and with the notebook's protocol as its defaults."""

import dataclasses
import math

import pytest

from mlp import config as declaration
from mlp.config import ModelConfig, TrainConfig, declared_fields, hyperparameters, split


def other_value(h):
    """A legal value of a declared field that is not its default."""
    if h.type is bool:
        return not h.default
    if h.type is str:
        return next(c for c in h.param.choices if c != h.default)
    if h.type is int:
        return h.default + 1
    return h.default / 2 if h.default else 0.5


def test_every_field_of_both_configs_is_declared_once_with_a_line_of_help():
    both = [f.name for c in (ModelConfig, TrainConfig) for f in dataclasses.fields(c)]
    names = [h.name for h in declared_fields()]
    assert sorted(names) == sorted(both) and len(set(names)) == len(names)
    for h in declared_fields():
        assert h.param.help and "\n" not in h.param.help, h.name
        assert h.type in (bool, int, float, str) and type(h.default) is h.type, h.name
        assert bool(h.param.choices) == (h.type is str), h.name
        assert (h.param.low is None) == (h.type in (bool, str)), h.name


def allowed(h, value) -> bool:
    p = h.param
    if p.choices:
        return value in p.choices
    if h.type is bool:
        return isinstance(value, bool)
    low = p.low < value if p.low_open else p.low <= value
    high = p.high is None or (value < p.high if p.high_open else value <= p.high)
    return math.isfinite(value) and low and high


def test_every_default_and_the_test_values_are_allowed_by_their_declaration():
    for h in declared_fields():
        assert allowed(h, h.default), h.name
        assert allowed(h, other_value(h)) and other_value(h) != h.default, h.name


def test_a_field_missing_from_the_table_is_refused(monkeypatch):
    without = {k: v for k, v in declaration.PARAMETERS.items() if k != "gamma"}
    monkeypatch.setattr(declaration, "PARAMETERS", without)
    with pytest.raises(TypeError, match=r"PARAMETERS must declare exactly the fields"):
        declared_fields()


def test_the_defaults_are_the_notebooks_protocol():
    # 784-512-768-10, Glorot, ReLU, lr 0.1, batch 128, 10 epochs, in the data's order, with the
    # training loss measured over the whole training set after every epoch.
    assert ModelConfig() == ModelConfig(512, 768, "glorot", 1.0, "relu", "float32")
    train = TrainConfig()
    assert (train.epochs, train.batch_size, train.learning_rate) == (10, 128, 0.1)
    assert (train.shuffle, train.full_train_eval) == (False, True)
    assert (train.momentum, train.weight_decay, train.dropout, train.patience) == (0, 0, 0, 0)


def test_the_seed_and_the_evaluation_batch_are_no_hyperparameters():
    names = [h.name for h in hyperparameters()]
    assert "seed" not in names and "eval_batch_size" not in names
    assert names[:7] == "depth hidden_1 hidden_2 hidden_3 hidden_4 epochs batch_size".split()


def test_split_routes_every_field_to_its_config():
    values = {h.name: other_value(h) for h in declared_fields()}
    model, train = split(values)
    for h in declared_fields():
        assert getattr(model if h.config is ModelConfig else train, h.name) == values[h.name]
    assert split({}) == (ModelConfig(), TrainConfig())
    with pytest.raises(TypeError, match=r"not a field of ModelConfig or TrainConfig: \['epochz'\]"):
        split({"epochz": 3})

"""One test per rule: the legal edge passes, just past it raises naming the field."""

import copy
from pathlib import Path

import pytest

from sweep.errors import SpecError
from sweep.spec import Budget, TrainSettings, load_spec, parse_spec

STUDIES = Path(__file__).parents[2] / "studies"

BASE = {
    "study": {"name": "t", "sampler": "grid", "seed": 0, "trials": 5},
    "budget": {"min_params": 500_000, "max_params": 1_000_000},
    "train": {"epochs": 1},
    "space": {"hidden_1": [512], "hidden_2": [768], "learning_rate": [0.1]},
}


def spec_with(section: str, key: str, value, base=BASE):
    raw = copy.deepcopy(base)
    raw.setdefault(section, {})[key] = value
    return parse_spec(raw, source="x.toml")


RULES = [
    # (section, key, legal edge, just outside)
    ("study", "name", "a", ""),
    ("study", "name", "seed-grid_2.v1", "bad name"),
    ("study", "sampler", "random", "bayes"),
    ("study", "trials", 1, 0),
    ("study", "seed", 0, -1),
    ("study", "seed", 2**32 - 1, 2**32),  # numpy's seed range
    ("study", "threads", 1, 0),
    ("study", "max_retries", 1, 0),
    ("study", "pruner", "hyperband", "asha"),
    ("budget", "min_params", 0, -1),
    ("data", "train_size", 50_000, 50_001),
    ("data", "train_size", 1, 0),
    ("train", "epochs", 1, 0),
    ("train", "batch_size", 1, 0),
    ("train", "learning_rate", 1e-12, 0.0),
    ("train", "learning_rate", 5, -0.1),
    ("train", "init", "zeros", "he"),
    ("train", "activation", "sigmoid", "gelu"),
    ("train", "dtype", "float64", "float16"),
    ("train", "shuffle", False, "yes"),
    ("train", "init_std", 100.0, 0),
    ("train", "epochs", 3, 3.5),
    ("train", "epochs", 2, True),
    ("train", "momentum", 0.0, 1.0),
    ("train", "momentum", 0.99, -0.1),
    ("train", "nesterov", False, 1),
    ("train", "weight_decay", 0.0, -1e-4),
    ("train", "schedule", "cosine", "exponential"),
    ("train", "warmup_epochs", 0, -1),
    ("train", "step_size", 1, 0),
    ("train", "gamma", 1.0, 1.5),
    ("train", "gamma", 1e-3, 0.0),
    ("train", "dropout", 0.0, 1.0),
    ("train", "dropout", 0.5, -0.1),
    ("train", "patience", 0, -1),
]


@pytest.mark.parametrize(("section", "key", "legal", "illegal"), RULES)
def test_rule(section, key, legal, illegal):
    spec_with(section, key, legal)
    with pytest.raises(SpecError, match=rf"^x\.toml: \[{section}\.{key}\] must be .*; got "):
        spec_with(section, key, illegal)


def test_nesterov_needs_momentum():
    with_momentum = copy.deepcopy(BASE)
    with_momentum["train"] = {"epochs": 1, "momentum": 0.9}
    assert spec_with("train", "nesterov", True, with_momentum).train.nesterov
    searched = copy.deepcopy(BASE)
    searched["space"] = {**BASE["space"], "momentum": [0.0, 0.9]}
    assert spec_with("train", "nesterov", True, searched).train.nesterov
    message = r"^x\.toml: \[train\.nesterov\] must be false unless momentum > 0; got True$"
    with pytest.raises(SpecError, match=message):
        spec_with("train", "nesterov", True)
    with pytest.raises(SpecError, match=message):
        spec_with("space", "nesterov", [True, False])


def test_a_log_scale_must_start_above_zero():
    tpe = copy.deepcopy(BASE)
    tpe["study"] = {**BASE["study"], "sampler": "tpe"}
    assert spec_with("space", "weight_decay", {"low": 1e-6, "high": 0.1, "log": True}, tpe)
    with pytest.raises(SpecError, match=r"\[space\.weight_decay\.low\] must be greater than 0"):
        spec_with("space", "weight_decay", {"low": 0.0, "high": 0.1, "log": True}, tpe)


def test_message_names_file_field_allowed_and_got():
    with pytest.raises(SpecError) as info:
        spec_with("space", "learning_rate", [0.1, -0.1])
    assert str(info.value) == "x.toml: [space.learning_rate] must be a float in (0, inf); got -0.1"


def test_budget_max_must_exceed_min():
    raw = copy.deepcopy(BASE)
    raw["budget"] = {"min_params": 10, "max_params": 11}
    raw["budget"] = {"min_params": 10, "max_params": 10}
    with pytest.raises(SpecError, match=r"\[budget\.max_params\] must be greater than min_params"):
        parse_spec(raw, source="x.toml")


@pytest.mark.parametrize(
    ("section", "key"),
    [("train", "epochz"), ("study", "samplr"), ("budget", "max"), ("data", "size")],
)
def test_unknown_keys_are_errors(section, key):
    with pytest.raises(SpecError, match=rf"\[{section}\.{key}\] must be one of the known keys"):
        spec_with(section, key, 1)


def test_unknown_section_is_an_error():
    with pytest.raises(SpecError, match=r"\[trian\] must be one of the sections"):
        parse_spec({**BASE, "trian": {}}, source="x.toml")


def test_space_rules():
    with pytest.raises(SpecError, match=r"\[space\.learning_rate\] must be a non-empty list"):
        spec_with("space", "learning_rate", [])
    with pytest.raises(
        SpecError, match=r"\[space\.learning_rate\] must be a list without repeated"
    ):
        spec_with("space", "learning_rate", [0.1, 0.1])
    with pytest.raises(SpecError, match=r"\[space\.beta1\] must be a \[train\] setting"):
        spec_with("space", "beta1", [0.9])
    with pytest.raises(
        SpecError, match=r"\[space\.learning_rate\] must be a list of values with sampler 'grid'"
    ):
        spec_with("space", "learning_rate", {"low": 0.01, "high": 1.0})
    tpe = copy.deepcopy(BASE)
    tpe["study"] |= {"sampler": "tpe", "trials": 5}
    spec = spec_with("space", "learning_rate", {"low": 0.01, "high": 1.0, "log": True}, tpe)
    assert spec.dimension("learning_rate").log
    with pytest.raises(SpecError, match=r"\[space\.learning_rate\.high\] must be greater than low"):
        spec_with("space", "learning_rate", {"low": 0.1, "high": 0.1}, tpe)
    with pytest.raises(
        SpecError, match=r"\[space\.learning_rate\] must be a table with keys low, high"
    ):
        spec_with("space", "learning_rate", {"low": 0.1, "hi": 1.0}, tpe)
    with pytest.raises(
        SpecError, match=r"\[space\.init\] must be a list of values \(init is not numeric\)"
    ):
        spec_with("space", "init", {"low": 0, "high": 1}, tpe)


def test_tpe_needs_a_trial_cap():
    raw = copy.deepcopy(BASE)
    raw["study"]["sampler"] = "tpe"
    del raw["study"]["trials"]
    with pytest.raises(
        SpecError, match=r"\[study\.trials\] must be given for sampler 'tpe'; got nothing"
    ):
        parse_spec(raw, source="x.toml")


def test_impossible_budget_is_an_error_naming_the_range():
    raw = copy.deepcopy(BASE)
    raw["budget"] = {"min_params": 2_000_000, "max_params": 3_000_000}
    raw["space"] = {"hidden_1": [392, 512], "hidden_2": [256, 512]}
    with pytest.raises(
        SpecError, match=r"^x\.toml: \[budget\] no architecture .* has 2,000,000 < parameters"
    ):
        parse_spec(raw, source="x.toml")
    raw["study"] |= {"sampler": "tpe", "trials": 3}
    raw["space"] = {"hidden_1": {"low": 10, "high": 100}, "hidden_2": {"low": 10, "high": 100}}
    with pytest.raises(SpecError, match=r"\[budget\] no architecture"):
        parse_spec(raw, source="x.toml")


def test_fixed_architecture_outside_the_budget_is_an_error():
    raw = copy.deepcopy(BASE)
    raw["space"] = {"learning_rate": [0.1]}
    raw["train"] = {"hidden_1": 1024, "hidden_2": 1024}  # 1,863,690 parameters
    with pytest.raises(SpecError, match=r"\[budget\] no architecture"):
        parse_spec(raw, source="x.toml")


def test_malformed_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[study\nname = 1")
    with pytest.raises(SpecError, match=r"bad\.toml: not valid TOML"):
        load_spec(path)
    with pytest.raises(SpecError, match=r"missing\.toml: cannot read study file"):
        load_spec(tmp_path / "missing.toml")


def test_defaults_and_roundtrip():
    spec = parse_spec(BASE, source="x.toml")
    assert spec.budget == Budget(500_000, 1_000_000)
    assert spec.train == TrainSettings(epochs=1)
    d = spec.to_dict()
    assert d["space"]["learning_rate"] == [0.1]
    assert "learning_rate" not in d["train"]  # searched settings are not listed as fixed


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    assert load_spec(path).name == path.stem


def test_the_largest_seed_still_seeds_every_worker():
    import optuna

    from sweep.study import make_sampler

    spec = spec_with("study", "seed", 2**32 - 1)
    for salt in (0, 1, 2**20 + 7):  # a sweep run's workers, and a sweep worker's salt
        study = optuna.create_study(sampler=make_sampler(spec, salt))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)

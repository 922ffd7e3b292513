"""One test per rule: the legal edge passes, just past it raises naming the field."""

import copy
import math
import os
import re
import threading
from pathlib import Path

import pytest

from sweep.errors import SpecError
from sweep.study.rules import MAX_POPULATION, float_in
from sweep.study.spec import (
    Budget,
    TrainSettings,
    first_difference,
    load_spec,
    parse_spec,
    stored_spec,
)

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
    ("study", "name", "x" * 128, "x" * 129),
    ("study", "name", "seed grid ✓ 名前", "seed\ngrid"),  # no line breaks in messages and logs
    ("study", "name", "a b", "a\tb"),
    ("study", "name", "a", "a\x00"),
    ("study", "name", "a", "a\u2028b"),  # a Unicode line separator
    ("study", "sampler", "random", "bayes"),
    ("study", "prune_after", 0, -1),
    ("study", "prune_after", 10_000, 10_001),
    ("study", "trials", 1, 0),
    ("study", "trials", 10_000_000, 10_000_001),
    ("study", "trials", 1_000_001, 0),  # a study of 10^6 trials can take one more (#27)
    ("study", "seed", 0, -1),
    ("study", "seed", 2**32 - 1, 2**32),  # numpy's seed range
    ("study", "threads", 1, 0),
    ("study", "max_retries", 1, 0),
    ("study", "threads", 1024, 1025),
    ("study", "max_retries", 1000, 1001),
    ("budget", "max_params", 100_000_000, 100_000_001),
    ("budget", "min_params", 0, 100_000_001),
    ("study", "pruner", "hyperband", "asha"),
    ("budget", "min_params", 0, -1),
    ("data", "train_size", 50_000, 50_001),
    ("data", "train_size", 1, 0),
    ("data", "path", "~/mnist.pkl.gz", ""),
    ("data", "path", "~/mnist.pkl.gz", "mnist\x00.pkl.gz"),
    ("train", "epochs", 1, 0),
    ("train", "epochs", 10_000, 10_001),
    ("train", "batch_size", 1, 0),
    ("train", "batch_size", 50_000, 50_001),  # the whole training set
    ("train", "learning_rate", 1e-12, 0.0),
    ("train", "learning_rate", 5, -0.1),
    ("train", "learning_rate", 1e308, math.inf),  # TOML allows inf and nan
    ("train", "learning_rate", 1e308, math.nan),
    ("train", "learning_rate", 10**308, 10**309),  # an int past the largest float
    ("train", "init", "zeros", "he"),
    ("train", "activation", "sigmoid", "gelu"),
    ("train", "dtype", "float64", "float16"),
    ("train", "shuffle", False, "yes"),
    ("train", "init_std", 100.0, 0),
    ("train", "init_std", 1e308, math.inf),
    ("train", "epochs", 3, 3.5),
    ("train", "epochs", 2, True),
    ("train", "momentum", 0.0, 1.0),
    ("train", "momentum", 0.99, -0.1),
    ("train", "momentum", 0.0, math.nan),
    ("train", "nesterov", False, 1),
    ("train", "weight_decay", 0.0, -1e-4),
    ("train", "weight_decay", 1e308, math.inf),
    ("train", "schedule", "cosine", "exponential"),
    ("train", "warmup_epochs", 0, -1),
    ("train", "warmup_epochs", 10_000, 10_001),  # longer than the run is allowed: all warm-up
    ("train", "step_size", 1, 0),
    ("train", "step_size", 10_000, 10_001),
    ("train", "gamma", 1.0, 1.5),
    ("train", "gamma", 1e-3, 0.0),
    ("train", "gamma", 1.0, math.nan),
    ("train", "dropout", 0.0, 1.0),
    ("train", "dropout", 0.5, -0.1),
    ("train", "dropout", 0.0, -math.inf),
    ("train", "patience", 0, -1),
    ("train", "patience", 10_000, 10_001),
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
    searched["space"] = {**BASE["space"], "momentum": [0.5, 0.9]}
    assert spec_with("train", "nesterov", True, searched).train.nesterov
    searched["space"]["momentum"] = [0.0, 0.9]  # a trial with momentum 0 could only fail
    with pytest.raises(SpecError, match=r"\[space\.momentum\] must be greater than 0 where"):
        spec_with("train", "nesterov", True, searched)
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
    with pytest.raises(SpecError, match=r"missing\.toml: no such study file"):
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


#: (shuffle, full_train_eval) of each shipped study. Its stored spec records them, so a study
#: file that left one to a default that changed would be refused by its own database.
PROTOCOLS = {"quick": (True, False), "seed-grid": (True, False),
             "seed-grid-pruned": (True, False), "seed-init": (False, True),
             "tpe-best": (True, False), "tpe-budget": (True, False),
             "best-mlp": (True, False), "pareto": (True, False)}  # fmt: skip


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_studies_keep_their_protocol(path):
    train = load_spec(path).train
    assert (train.shuffle, train.full_train_eval) == PROTOCOLS[path.stem]


def test_an_unknown_key_is_named_with_every_known_key_in_order():
    with pytest.raises(SpecError) as info:
        spec_with("train", "epochz", 3)
    assert str(info.value) == (
        "x.toml: [train.epochz] must be one of the known keys depth, hidden_1, hidden_2, "
        "hidden_3, hidden_4, epochs, batch_size, learning_rate, init, init_std, activation, "
        "dtype, shuffle, full_train_eval, momentum, nesterov, weight_decay, schedule, "
        "warmup_epochs, step_size, gamma, dropout, shift, rotation, zoom, shear, elastic_alpha, "
        "elastic_sigma, patience; got 'epochz'"
    )


def test_the_largest_seed_still_seeds_every_worker():
    import optuna

    from sweep.study.joining import make_sampler

    spec = spec_with("study", "seed", 2**32 - 1)
    for salt in (0, 1, 2**20 + 7):  # a sweep run's workers, and a sweep worker's salt
        study = optuna.create_study(sampler=make_sampler(spec, salt))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)


def tpe_with(space):
    raw = copy.deepcopy(BASE)
    raw["study"]["sampler"] = "tpe"
    raw["space"] = space
    return parse_spec(raw, source="x.toml")


def test_a_batch_is_at_most_the_training_set_in_use():
    small = copy.deepcopy(BASE)
    small["data"] = {"train_size": 2000}
    assert spec_with("train", "batch_size", 2000, small).train.batch_size == 2000
    assert spec_with("space", "batch_size", [64, 2000], small).dimension("batch_size")
    at_most = r"must be an integer in \[1, 2000\] \(at most the training set in use\); got 2001$"
    with pytest.raises(SpecError, match=r"^x\.toml: \[train\.batch_size\] " + at_most):
        spec_with("train", "batch_size", 2001, small)
    with pytest.raises(SpecError, match=r"^x\.toml: \[space\.batch_size\] " + at_most):
        spec_with("space", "batch_size", [64, 2001], small)


@pytest.mark.parametrize(
    ("name", "legal", "illegal", "field"),
    [
        ("batch_size", [1, 50_000], [0, 100_000], "space.batch_size"),
        ("batch_size", {"low": 1, "high": 50_000}, {"low": 1, "high": 50_001},
         "space.batch_size.high"),
        ("epochs", {"low": 1, "high": 10_000}, {"low": 1, "high": 1e9}, "space.epochs.high"),
        ("epochs", {"low": 1, "high": 10_000}, {"low": 1, "high": 10**9}, "space.epochs.high"),
        ("learning_rate", [0.1], [math.nan], "space.learning_rate"),
        ("learning_rate", {"low": 1e-3, "high": 1e308}, {"low": 1e-3, "high": math.inf},
         "space.learning_rate.high"),
        ("momentum", {"low": 0.0, "high": 0.99}, {"low": math.nan, "high": 0.99},
         "space.momentum.low"),
        ("dropout", [0.0, 0.5], [0.5, 1.0], "space.dropout"),
        ("patience", [0, 10_000], [0, 10_001], "space.patience"),
    ],
)  # fmt: skip
def test_searched_values_obey_the_rules_of_their_train_field(name, legal, illegal, field):
    tpe_with({**BASE["space"], name: legal})
    with pytest.raises(SpecError, match=rf"^x\.toml: \[{re.escape(field)}\] must be "):
        tpe_with({**BASE["space"], name: illegal})


def test_a_grid_has_at_most_100000_points_counted_before_the_budget():
    # 1000 × 100 points, every one of them in the budget
    rates = [round(0.001 * (i + 1), 6) for i in range(1000)]
    space = {**BASE["space"], "learning_rate": rates, "init_std": list(range(1, 101))}
    assert spec_with("space", "init_std", list(range(1, 101)), {**BASE, "space": space})
    space["init_std"] = list(range(1, 102))  # 101,000 points
    with pytest.raises(
        SpecError, match=r"^x\.toml: \[space\] must be at most 100,000 grid points .*; got 101,000$"
    ):
        parse_spec({**BASE, "space": space}, source="x.toml")
    # The budget filter comes later: a grid whose points are all out of budget still counts.
    space = {"hidden_1": list(range(1, 401)), "hidden_2": list(range(1, 401))}  # 160,000
    with pytest.raises(SpecError, match=r"^x\.toml: \[space\] must be at most 100,000 grid"):
        parse_spec({**BASE, "space": space}, source="x.toml")


def test_a_huge_grid_is_counted_not_enumerated(monkeypatch):
    import sweep.study.space

    def enumerate_the_grid(spec):
        raise AssertionError("the grid was enumerated")

    monkeypatch.setattr(sweep.study.space, "grid_points", enumerate_the_grid)
    ints = list(range(1, 1001))
    floats = [(i + 1) / 1001 for i in range(1000)]
    space = {name: ints for name in ("hidden_1", "hidden_2", "epochs", "batch_size", "step_size")}
    space |= {name: floats for name in ("momentum", "dropout", "weight_decay", "init_std")}
    space["learning_rate"] = [1 + f for f in floats]
    with pytest.raises(SpecError, match=r"\[space\] must be .*; got 1,000,000,000,000,000,000,"):
        parse_spec({**BASE, "space": space}, source="x.toml")  # 1000**10 = 10**30 points


def test_a_list_has_at_most_100000_values():
    rates = [1 + i / 100_000 for i in range(100_000)]
    assert len(tpe_with({**BASE["space"], "learning_rate": rates}).space[2].choices) == 100_000
    with pytest.raises(
        SpecError,
        match=r"^x\.toml: \[space\.learning_rate\] must be a list of at most 100,000 values; "
        r"got 100,001 values$",
    ):
        tpe_with({**BASE["space"], "learning_rate": [*rates, 3.0]})


def test_two_lists_of_hidden_sizes_give_at_most_100000_pairs():
    # Under TPE they become one categorical parameter, one choice per in-budget pair.
    space = {"hidden_1": list(range(512, 522)), "hidden_2": list(range(1, 10_001))}
    assert tpe_with(space).dimension("hidden_2")
    space["hidden_1"] = list(range(512, 523))  # 110,011 pairs
    with pytest.raises(
        SpecError, match=r"^x\.toml: \[space\] must be at most 100,000 pairs of hidden sizes"
    ):
        tpe_with(space)


def write(tmp_path, text: str | bytes, name="x.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


GOOD = (STUDIES / "quick.toml").read_text()


def test_a_study_file_is_at_most_1_mib(tmp_path):
    padding = 1024 * 1024 - len(GOOD.encode()) - 1
    assert load_spec(write(tmp_path, GOOD + "#" * padding + "\n")).name == "quick"  # 1 MiB
    with pytest.raises(
        SpecError, match=r"x\.toml: cannot read study file: 1,048,577 bytes; at most 1,048,576$"
    ):
        load_spec(write(tmp_path, GOOD + "#" * (padding + 1) + "\n"))


def error_within(seconds: float, f, *args) -> str | None:
    """The SpecError message of f(*args), failing the test if f is still blocked after
    ``seconds`` (not a speed test: a blocked open of a FIFO never returns)."""
    out = []
    caller = threading.Thread(target=lambda: out.append(_error_of(f, *args)), daemon=True)
    caller.start()
    caller.join(seconds)
    if caller.is_alive():
        for fifo in [a for a in args if Path(a).is_fifo()]:  # let a blocked open through
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        caller.join()
        pytest.fail(f"{f.__name__}{args} blocked")
    return out[0]


def _error_of(f, *args) -> str | None:
    try:
        f(*args)
    except SpecError as e:
        return str(e)
    return None


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "x.toml"
    os.mkfifo(fifo)
    message = f"{fifo}: cannot read study file: a FIFO, not a regular file"
    assert error_within(10, load_spec, fifo) == message


def test_a_file_swapped_for_a_fifo_after_the_check_does_not_block(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)
    real_stat, swapped = os.stat, []

    def stat_then_swap(p, *args, **kwargs):  # the race, forced: checked, then replaced
        result = real_stat(p, *args, **kwargs)
        if Path(p) == path and not swapped:
            swapped.append(path)
            path.unlink()
            os.mkfifo(path)
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    message = error_within(10, load_spec, path)  # an empty document, read without waiting
    assert message == f"{path}: [study.name] must be given; got nothing"


def test_a_file_that_grows_after_the_check_is_still_capped(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)
    real_stat, grown = os.stat, []

    def stat_then_grow(p, *args, **kwargs):
        result = real_stat(p, *args, **kwargs)
        if Path(p) == path and not grown:
            grown.append(path)
            with path.open("a") as f:
                f.write("#" * 1024 * 1024 + "\n")
        return result

    monkeypatch.setattr(os, "stat", stat_then_grow)
    with pytest.raises(SpecError, match=r"x\.toml: cannot read study file: more than 1,048,576"):
        load_spec(path)


def test_a_folder_and_a_device_are_refused(tmp_path):
    with pytest.raises(SpecError, match=r"cannot read study file: a folder, not a regular file$"):
        load_spec(tmp_path)
    with pytest.raises(SpecError, match=r"cannot read study file: a device, not a regular file$"):
        load_spec("/dev/null")
    with pytest.raises(SpecError, match="^" + re.escape("x\0.toml: cannot read study file")):
        load_spec("x\0.toml")


def test_a_study_file_must_be_utf8(tmp_path):
    path = write(tmp_path, GOOD.encode() + b"# caf\xe9\n")
    line = GOOD.count("\n") + 1
    with pytest.raises(
        SpecError, match=rf"x\.toml: not valid UTF-8: byte 0xe9 at line {line}, column 6$"
    ):
        load_spec(path)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a = " + "[" * 5000 + "]" * 5000, "arrays or tables nested too deeply"),
        ("a = " + "{b = " * 5000 + "1" + "}" * 5000, "arrays or tables nested too deeply"),
        ("a = " + "9" * 5000, "an integer of more than 4300 digits"),
    ],
    ids=["arrays", "tables", "digits"],
)
def test_toml_that_python_cannot_read_is_one_line(tmp_path, text, why):
    with pytest.raises(SpecError, match=rf"x\.toml: not valid TOML: {why}$"):
        load_spec(write(tmp_path, text))


@pytest.mark.parametrize(
    ("low", "high", "low_open", "high_open"),
    [(0, math.inf, False, False), (-math.inf, 0, False, False), (-math.inf, math.inf, True, True)],
)
def test_float_rules_refuse_nan_and_inf_whatever_their_bounds(low, high, low_open, high_open):
    rule = float_in(low, high, low_open=low_open, high_open=high_open)
    assert rule.check(0.0)
    assert not any(rule.check(v) for v in (math.nan, math.inf, -math.inf))


def test_unknown_keys_are_quoted_in_the_field_so_the_message_stays_one_line():
    with pytest.raises(SpecError) as info:
        spec_with("train", "a\nb", 1)
    assert str(info.value).startswith('x.toml: [train."a\\nb"] must be one of the known keys')
    with pytest.raises(SpecError, match=r'^x\.toml: \["tr\\u2028ain"\] must be one of the sec'):
        parse_spec({**BASE, "tr\u2028ain": {}}, source="x.toml")
    with pytest.raises(SpecError) as info:
        spec_with("space", "x" * 1000, [1])
    assert len(str(info.value)) < 800 and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "stored",
    [
        None,
        [],
        "spec",
        {"study": 5},
        {"study": {"name": "g", "sampler": "grid"}, "space": []},
        {"study": {"name": "g", "sampler": "grid"}, "space": {"hidden_1": [[512]]}},
        {"study": {"name": "g", "sampler": "grid"}, "space": {"hidden_1": [10**5000]}},
        {"study": {"name": "g", "sampler": "grid"}, "space": {"hidden_1": [[10**5000]]}},
        {"study": {"name": "g", "sampler": "grid"}, "space": {"learning_rate": [10**400]}},
        {"study": {"name": "g", "sampler": "tpe", "trials": 1}, "space": {"dropout": {"low": {}}}},
        {1: {}},
    ],
)
def test_a_malformed_stored_spec_is_a_spec_error(stored):
    with pytest.raises(SpecError, match=r"^study 'g': \[") as info:
        stored_spec(stored, source="study 'g'")
    assert len(str(info.value).splitlines()) == 1


def test_a_data_path_starting_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    text = GOOD.replace("[data]\n", '[data]\npath = "~/mnist.pkl.gz"\n')
    assert load_spec(write(tmp_path, text)).data_path == str(tmp_path / "mnist.pkl.gz")


#: A study of two objectives (sweep.study.objectives), as the study file says it.
PARETO = {**BASE, "study": {**BASE["study"], "sampler": "nsga2", "trials": 8, "population": 4,
                            "objectives": ["accuracy", "params"]},
          "space": {"hidden_1": {"low": 512, "high": 600}, "hidden_2": [768]}}  # fmt: skip


@pytest.mark.parametrize(
    "objectives",
    [["params", "accuracy"], ["accuracy", "accuracy"], [], ["accuracy", "loss"], "accuracy",
     ["accuracy", 1], ["accuracy", ["params"]], ["accuracy", "params", "epoch_time", "params"]],
)  # fmt: skip
def test_objectives_are_distinct_known_names_accuracy_first(objectives):
    allowed = ("a list of distinct objectives, 'accuracy' first, of 'accuracy', 'params', "
               "'epoch_time'")  # fmt: skip
    assert spec_with("study", "objectives", ["accuracy", "params", "epoch_time"], PARETO).multi
    assert not spec_with("study", "objectives", ["accuracy"], PARETO).multi
    with pytest.raises(SpecError) as info:
        spec_with("study", "objectives", objectives, PARETO)
    assert str(info.value) == f"x.toml: [study.objectives] must be {allowed}; got {objectives!r}"


@pytest.mark.parametrize("pruner", ["median", "successive-halving", "hyperband"])
def test_a_pruner_with_several_objectives_is_refused_in_one_line(pruner):
    assert spec_with("study", "pruner", "none", PARETO).pruner == "none"
    single = {**PARETO, "study": {**PARETO["study"], "objectives": ["accuracy"]}}
    assert spec_with("study", "pruner", pruner, single).pruner == pruner
    with pytest.raises(SpecError) as info:
        spec_with("study", "pruner", pruner, PARETO)
    assert str(info.value) == (
        "x.toml: [study.pruner] must be 'none' with several objectives (optuna cannot prune a "
        f"multi-objective trial); got {pruner!r}"
    )


@pytest.mark.parametrize("sampler", ["grid", "tpe", "random"])
def test_a_population_is_nsga2s_only(sampler):
    assert spec_with("study", "population", 2, PARETO).population == 2
    top = MAX_POPULATION
    assert spec_with("study", "population", top, PARETO).population == top
    for outside in (1, top + 1, 4.0, True):
        with pytest.raises(SpecError, match=r"^x\.toml: \[study\.population\] must be an integer "
                                            rf"in \[2, {top}\]; got "):  # fmt: skip
            spec_with("study", "population", outside, PARETO)
    other = copy.deepcopy(PARETO)
    other["study"]["sampler"] = sampler
    other["space"] = {"hidden_1": [512, 600], "hidden_2": [768]}
    with pytest.raises(SpecError) as info:
        parse_spec(other, source="x.toml")
    assert str(info.value) == (
        "x.toml: [study.population] must be given only with sampler 'nsga2'; got 4"
    )


def test_the_stored_spec_names_objectives_and_population_only_where_they_say_something():
    single = parse_spec(BASE, source="x.toml")
    assert "objectives" not in single.to_dict()["study"]  # as before: its stored spec unchanged
    assert "population" not in single.to_dict()["study"]
    assert single.objectives == ("accuracy",) and single.population == 50
    pareto = parse_spec(PARETO, source="x.toml")
    study = pareto.to_dict()["study"]
    assert study["objectives"] == ["accuracy", "params"] and study["population"] == 4
    for spec in (single, pareto):
        again = stored_spec(spec.to_dict(), source="x.toml")
        assert (again.objectives, again.population, again.to_dict()) == (
            spec.objectives,
            spec.population,
            spec.to_dict(),
        )
    # nsga2 with its default population stores it too: a later default cannot change it.
    default = copy.deepcopy(PARETO)
    del default["study"]["population"]
    assert parse_spec(default).to_dict()["study"]["population"] == 50


def _objectives(*names: str):
    return parse_spec({**BASE, "study": {**BASE["study"], "objectives": list(names)}})


def test_a_change_of_objectives_is_a_difference_naming_them():
    single = parse_spec(BASE, source="x.toml")
    two, three = _objectives("accuracy", "params"), _objectives("accuracy", "params", "epoch_time")
    assert first_difference(single, single) is None and first_difference(two, two) is None
    assert first_difference(single, two) == ("study.objectives", ["accuracy"],
                                             ["accuracy", "params"])  # fmt: skip
    assert first_difference(two, single) == ("study.objectives", ["accuracy", "params"],
                                             ["accuracy"])  # fmt: skip
    assert first_difference(two, three)[0] == "study.objectives"
    # The directions alone would not tell these apart (both maximise then minimise).
    time = _objectives("accuracy", "epoch_time")
    assert first_difference(two, time) == ("study.objectives", ["accuracy", "params"],
                                           ["accuracy", "epoch_time"])  # fmt: skip


@pytest.mark.parametrize(
    ("space", "train", "shown"),
    [  # one list, fixed widths beside it; two lists whose every combination fits at depth 2
        ({"hidden_1": [62, 128]}, {"hidden_2": 32}, "depth 1: [128]; depth 2: [62, 128]"),
        ({"hidden_1": [16, 128], "hidden_2": [1024, 2048]}, {},
         "depth 1: [128]; depth 2: [16, 128]"),
    ],
)  # fmt: skip
def test_a_list_of_widths_whose_choices_change_with_the_depth_is_refused(space, train, shown):
    """optuna's categorical distributions cannot change their choices: such a study failed
    every trial of one of its depths ("CategoricalDistribution does not support dynamic value
    space")."""
    raw = {"study": {"name": "x", "sampler": "random", "trials": 20},
           "budget": {"min_params": 50_000 if train else 20_000,
                      "max_params": 200_000 if train else 500_000},
           "train": train, "space": {"depth": [1, 2], **space}}  # fmt: skip
    with pytest.raises(SpecError) as info:
        parse_spec(raw, source="x.toml")
    assert str(info.value) == (
        "x.toml: [space.hidden_1] must be the same in-budget values at every depth (optuna's "
        f"categorical choices cannot change between trials); got {shown}"
    )
    raw["space"]["depth"] = [2]  # one depth: nothing to change between
    assert parse_spec(raw, source="x.toml").dimension("hidden_1").choices == tuple(
        space["hidden_1"]
    )


def test_a_missing_study_file_from_python_gets_a_guess(tmp_path, monkeypatch):
    # a notebook in a folder of its own asks for the repository's relative path
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "quick.toml").write_text('[study]\nname = "q"\n')
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    guess = (
        r"^studies/quick\.toml: no such study file; did you mean \.\./studies/quick\.toml\? "
        r"\(a relative path is read from .*notebooks\)$"
    )
    with pytest.raises(SpecError, match=guess):
        load_spec("studies/quick.toml")
    monkeypatch.chdir(tmp_path)  # a near name among the shipped studies
    with pytest.raises(SpecError, match=r"^quik\.toml: no such study file; did you mean "
                       r"studies/quick\.toml\?$"):  # fmt: skip
        load_spec("quik.toml")
    with pytest.raises(SpecError, match=r"^nothing\.toml: no such study file$"):
        load_spec("nothing.toml")
    # 4,092 characters: it can be looked for, ../../ before it cannot (past PATH_MAX)
    long = "a/" * 2_043 + "x.toml"
    with pytest.raises(SpecError, match=r"no such study file$"):
        load_spec(long)

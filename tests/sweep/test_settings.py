"""What sweep derives from the declaration in mlp.config: the study-file rules, the `sweep train`
flags and the README's study-file reference. A field added to the declaration shows up in all
of them with no other edit."""

import argparse
import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from mlp import config as declaration
from mlp.config import ModelConfig, TrainConfig
from sweep.errors import SpecError
from sweep.study.rules import train_rules
from sweep.study.settings import (
    TrainSettings,
    add_train_arguments,
    configs,
    configs_from_args,
    train_reference,
)
from sweep.study.spec import parse_spec
from tests.sweep.test_spec import BASE, RULES

README = Path(__file__).parents[2] / "README.md"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sweep train")
    add_train_arguments(p)
    return p


def flags(*argv: str, train_size: int | None = None) -> tuple[ModelConfig, TrainConfig]:
    return configs_from_args(parser().parse_args(argv), seed=0, train_size=train_size)


@pytest.fixture
def label_smoothing(monkeypatch):
    """The declaration with one more training field, added the way a contributor would: a
    field of TrainConfig and its row in PARAMETERS."""
    extended = dataclasses.make_dataclass(
        "TrainConfig",
        [("label_smoothing", float, dataclasses.field(default=0.0))],
        bases=(declaration.TrainConfig,),
        frozen=True,
    )
    monkeypatch.setattr(declaration, "TrainConfig", extended)
    row = declaration.Param("mix the targets with the uniform distribution", low=0.0, high=1.0,
                            high_open=True)  # fmt: skip
    monkeypatch.setattr(
        declaration, "PARAMETERS", declaration.PARAMETERS | {"label_smoothing": row}
    )
    return extended


def with_train(**train):
    raw = copy.deepcopy(BASE)
    raw["train"] |= train
    return parse_spec(raw, source="x.toml")


def test_a_new_field_becomes_a_study_file_key_with_its_rule(label_smoothing):
    assert list(train_rules())[-1] == "label_smoothing"
    spec = with_train(label_smoothing=0.1)
    assert spec.train.label_smoothing == 0.1
    assert isinstance(configs(spec.train, seed=3)[1], label_smoothing)
    assert configs(spec.train, seed=3)[1].label_smoothing == 0.1
    with pytest.raises(SpecError) as info:
        with_train(label_smoothing=1.0)
    assert str(info.value) == "x.toml: [train.label_smoothing] must be a float in [0, 1); got 1.0"
    with pytest.raises(SpecError, match=r", patience, label_smoothing; got 'smoothing'$"):
        with_train(smoothing=0.1)
    searched = copy.deepcopy(BASE)
    searched["space"] |= {"label_smoothing": [0.0, 0.1]}
    assert parse_spec(searched, source="x.toml").dimension("label_smoothing")


def test_a_new_field_becomes_a_flag(label_smoothing):
    assert "--label-smoothing FLOAT" in parser().format_help()
    assert flags("--label-smoothing", "0.2")[1].label_smoothing == 0.2
    assert flags()[1].label_smoothing == 0.0
    with pytest.raises(
        SpecError, match=r"^--label-smoothing must be a float in \[0, 1\); got 1\.0$"
    ):
        flags("--label-smoothing", "1")


def test_a_new_field_appears_in_the_reference(label_smoothing):
    assert train_reference().splitlines()[-1] == (
        "label_smoothing = 0.0     # mix the targets with the uniform distribution; "
        "a float in [0, 1)"
    )


def test_the_readme_shows_the_reference_as_generated():
    lines = README.read_text().splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith("[train]")))
    end = lines.index("", start)
    assert "\n".join(lines[start:end]) + "\n" == train_reference()


def test_flags_keep_their_names_and_default_to_the_declaration():
    options = {s for a in parser()._actions for s in a.option_strings}
    today = ("--hidden-1 --hidden-2 --epochs --batch-size --learning-rate --lr --init "
             "--init-std --activation --dtype --shuffle --no-shuffle")  # fmt: skip
    derived = ("--full-train-eval --no-full-train-eval --momentum --nesterov --weight-decay "
               "--schedule --warmup-epochs --dropout --patience")  # fmt: skip
    assert set(today.split() + derived.split()) <= options
    assert not {"--seed", "--eval-batch-size", "--train-size", "--data"} & options
    assert flags() == (ModelConfig(), TrainConfig())
    assert configs(TrainSettings(), seed=0) == (ModelConfig(), TrainConfig())
    model, train = flags("--lr", "0.5", "--shuffle", "--no-full-train-eval", "--hidden-1", "32",
                         "--init", "zeros", "--dtype", "float64")  # fmt: skip
    assert (train.learning_rate, train.shuffle, train.full_train_eval) == (0.5, True, False)
    assert (model.hidden_1, model.init, model.dtype) == (32, "zeros", "float64")
    assert configs_from_args(parser().parse_args([]), seed=9)[1].seed == 9


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "-0.1"], "--learning-rate must be a float in (0, inf); got -0.1"),
        (["--learning-rate", "fast"], "--learning-rate must be a float in (0, inf); got 'fast'"),
        (["--epochs", "0"], "--epochs must be an integer in [1, 10000]; got 0"),
        (["--epochs", "1e3"], "--epochs must be an integer in [1, 10000]; got '1e3'"),
        (["--init", "he"], "--init must be one of 'glorot', 'normal', 'zeros'; got 'he'"),
        (["--dropout", "nan"], "--dropout must be a float in [0, 1); got nan"),
        (["--nesterov"], "--nesterov must be off unless --momentum > 0; got 0.0"),
    ],
)
def test_a_bad_flag_is_a_one_line_error_naming_it(argv, message):
    with pytest.raises(SpecError) as info:
        flags(*argv)
    assert str(info.value) == message


def test_the_seed_is_checked_as_declared():
    args = parser().parse_args([])
    assert configs_from_args(args, seed="12")[1].seed == 12
    for bad, shown in [("-1", "-1"), ("x", "'x'"), (-1, "-1")]:
        with pytest.raises(SpecError) as info:
            configs_from_args(args, seed=bad)
        assert str(info.value) == f"--seed must be a 64-bit integer >= 0; got {shown}"


def test_a_batch_is_at_most_the_training_set_in_use():
    assert flags("--batch-size", "2000", train_size=2000)[1].batch_size == 2000
    assert flags("--batch-size", "50000")[1].batch_size == 50_000
    assert flags("--momentum", "0.9", "--nesterov")[1].nesterov
    at_most = "must be an integer in [1, 2000] (at most the training set in use); got 2001"
    with pytest.raises(SpecError) as info:
        flags("--batch-size", "2001", train_size=2000)
    assert str(info.value) == "--batch-size " + at_most
    with pytest.raises(SpecError, match=r"\[1, 50000\]"):
        flags("--batch-size", "50001", train_size=10**6)


@pytest.mark.parametrize(
    ("key", "legal", "illegal"),
    [(k, legal, bad) for s, k, legal, bad in RULES if s == "train" and not isinstance(legal, bool)],
)
def test_flags_obey_the_rules_of_study_files(key, legal, illegal):
    flag = "--" + key.replace("_", "-")
    flags(f"{flag}={legal}")  # with "=", argparse takes "-0.1" for a value, not an option
    with pytest.raises(SpecError, match=rf"^{flag} must be "):
        flags(f"{flag}={illegal}")


def test_the_space_does_not_import_the_spec():
    # The spec checks its budget with the space; the space needs nothing of the spec module.
    code = "import sys, sweep.study.space; print('sweep.study.spec' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

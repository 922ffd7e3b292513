"""A trial's training settings as sweep sees them, derived from the declaration in
``mlp.config``: one flat record of every hyperparameter (``TrainSettings``), the ``sweep train``
flags, and the study-file reference that the README shows.

Nothing here names a hyperparameter but the alias ``--lr`` and the one rule between two
fields (Nesterov needs momentum): a field added to ``mlp.config`` appears in study files,
flags and the reference by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from typing import Any, ClassVar

from mlp.config import (
    Hyperparameter,
    ModelConfig,
    TrainConfig,
    declared_fields,
    hyperparameters,
    split,
)
from sweep.errors import SpecError
from sweep.study.overrides import parse_override
from sweep.study.rules import DATA_RULES, Rule, conform, rule_of, show, train_rules

#: Spellings a flag had before it was derived, kept so that commands keep working.
_ALIASES = {"learning_rate": ("--lr",)}


def settings_class() -> type:
    """The frozen dataclass of every hyperparameter, flat, with its declared default (the
    fields of ModelConfig and TrainConfig but the seed and the evaluation batch size)."""
    return _settings_class(hyperparameters())


@functools.cache
def _settings_class(declared: tuple[Hyperparameter, ...]) -> type:
    cls = dataclasses.make_dataclass(
        "TrainSettings",
        [(h.name, h.type, dataclasses.field(default=h.default)) for h in declared],
        frozen=True,
        namespace={"__doc__": "One trial's full training configuration ([train] plus the "
                   "trial's [space] values); fields and defaults from mlp.config."},
    )  # fmt: skip
    cls.__module__ = __name__  # so that a pickled spec finds it (workers get one)
    return cls


TrainSettings = settings_class()


def configs(settings: Any, seed: int) -> tuple[ModelConfig, TrainConfig]:
    """The model's and the training run's configurations for ``settings`` (a TrainSettings),
    with ``seed`` for the training run's shuffling and dropout."""
    return split({**dataclasses.asdict(settings), "seed": seed})


# -- sweep train's flags ------------------------------------------------------------------


def flag(name: str) -> str:
    """A field's flag: ``learning_rate`` → ``--learning-rate``."""
    return "--" + name.replace("_", "-")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per hyperparameter, with its declared default and help (booleans as
    ``--shuffle``/``--no-shuffle``). Values are checked by ``configs_from_args`` with the
    study files' rules, so that a bad one is a one-line error like theirs."""
    rules = train_rules()
    group = parser.add_argument_group("training (as in a study file's [train])")
    for h in hyperparameters():
        names = [flag(h.name), *_ALIASES.get(h.name, ())]
        if h.type is bool:
            how: dict[str, Any] = {"action": argparse.BooleanOptionalAction}
            shown, allowed = flag(h.name) if h.default else _no(h.name), ""
        elif h.param.choices:
            how = {"metavar": "{" + ",".join(h.param.choices) + "}"}
            shown, allowed = h.default, ""
        else:
            how = {"type": _lenient(h.type), "metavar": h.type.__name__.upper()}
            shown, allowed = h.default, f"; {rules[h.name].allowed}"
        help_line = f"{h.param.help}{allowed} (default: {shown})".replace("%", "%%")
        group.add_argument(*names, dest=h.name, default=h.default, help=help_line, **how)


class SetTrainSetting(argparse.Action):
    """``sweep train --set KEY=VALUE``: a study file's ``train.KEY``, ``data.train_size`` or
    ``data.path``, checked by its rule (``sweep.study.overrides``), set as its own flag would
    set it; of the two, the later on the command line wins, as of any repeated flag."""

    #: The [data] keys sweep train reads, and the flags that hold them.
    DATA: ClassVar[dict[str, str]] = {"train_size": "train_size", "path": "data"}

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        o = parse_override(values)
        if o.section == "train":
            setattr(namespace, o.key, o.value)
        elif o.section == "data" and o.key in self.DATA:
            setattr(namespace, self.DATA[o.key], o.value)
        else:
            raise SpecError(f"{o.given}: [{o.field}] is not a setting of sweep train; "
                            "use train.KEY, data.train_size or data.path")  # fmt: skip


def _no(name: str) -> str:
    return "--no-" + flag(name)[2:]


def _lenient(kind: type):
    """Convert a flag's text to ``kind`` if it can; otherwise keep the text, which its rule
    then refuses in one line (argparse's own error would print the usage too)."""

    def convert(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            return text

    convert.__name__ = kind.__name__
    return convert


def configs_from_args(
    args: argparse.Namespace, *, seed: int | str, train_size: int | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """The model's and the training run's configurations from flags added by
    ``add_train_arguments``, checked with the study files' rules; a batch is at most
    ``train_size`` (the training set in use, itself at most MNIST's). ``seed`` (a ``--seed``
    flag's value, its text or a number) is checked as declared. Raises SpecError naming the
    flag."""
    if train_size is not None:
        checked("train_size", DATA_RULES["train_size"], train_size)
    rules = train_rules(train_size) | {"seed": seed_rule()}
    given = {h.name: getattr(args, h.name) for h in hyperparameters()}
    given["seed"] = _lenient(int)(seed) if isinstance(seed, str) else seed
    values = {name: checked(name, rules[name], got) for name, got in given.items()}
    # The optimiser refuses Nesterov without momentum; say so before the data is loaded.
    if values["nesterov"] and not values["momentum"] > 0:
        raise SpecError(f"--nesterov must be off unless --momentum > 0; got {values['momentum']}")
    return split(values)


def checked(name: str, rule: Rule, got: Any) -> Any:
    """A flag's value as ``rule`` has it; SpecError naming the flag (``name``'s) if it breaks
    the rule: ``--seed must be a 64-bit integer >= 0; got -1``."""
    ok, value = conform(rule, got)
    if not ok:
        raise SpecError(f"{flag(name)} must be {rule.allowed}; got {show(got)}")
    return value


def seed_rule() -> Rule:
    """What a seed accepts, as declared (``mlp.config.PARAMETERS``)."""
    return rule_of(_declared("seed"))


def _declared(name: str) -> Hyperparameter:
    return next(h for h in declared_fields() if h.name == name)


# -- the study-file reference -------------------------------------------------------------

_COMMENT_COLUMN = 26


def train_reference() -> str:
    """The ``[train]`` table of a study file with every hyperparameter at its default and one
    comment each: its help and what it accepts. The README shows exactly this."""
    rules = train_rules()
    lines = [
        _commented("[train]", "fixed for every trial; any of these may be searched in [space]")
    ]
    for h in hyperparameters():
        if h.type is bool:
            accepts = ""
        elif h.param.choices:
            accepts = ": " + " | ".join(h.param.choices)
        else:
            accepts = "; " + rules[h.name].allowed
        lines.append(_commented(f"{h.name} = {_toml(h.default)}", h.param.help + accepts))
    return "\n".join(lines) + "\n"


def _commented(text: str, comment: str) -> str:
    return f"{text.ljust(_COMMENT_COLUMN - 1)} # {comment}"


def _toml(value: Any) -> str:
    """A default as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)

"""Study files: TOML → validated, frozen specs.

Every rule lives in one table (``_TRAIN_RULES`` and the section tables below) and every
violation is one line naming the file, the field, what is allowed and what came::

    studies/x.toml: [space.learning_rate] must be a float in (0, inf); got -0.1
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlp.functions import ACTIVATIONS, INITIALISERS
from mlp.model import parameter_count
from mlp.optim import SCHEDULES
from sweep.errors import SpecError

SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("none", "median", "successive-halving", "hyperband")
TRAIN_SET_SIZE = 50_000


@dataclass(frozen=True)
class TrainSettings:
    """One trial's full training configuration ([train] plus the trial's [space] values)."""

    hidden_1: int = 512  # units in the first hidden layer
    hidden_2: int = 768  # units in the second hidden layer
    epochs: int = 10  # passes over the training set
    batch_size: int = 128  # examples per SGD step
    learning_rate: float = 0.1  # SGD step size
    init: str = "glorot"  # weight initialiser: zeros | normal | glorot
    init_std: float = 1.0  # standard deviation of the 'normal' initialiser
    activation: str = "relu"  # hidden activation: relu | tanh | sigmoid
    dtype: str = "float32"  # float32 (fast) | float64 (exact reproduction)
    shuffle: bool = True  # reshuffle the training set every epoch
    # The notebook's end-of-epoch pass over the whole training set for its loss curve; off, the
    # training loss is the running mean over the epoch's minibatches (no extra pass).
    full_train_eval: bool = False
    momentum: float = 0.0  # SGD momentum in [0, 1); 0 is the notebook's plain SGD
    nesterov: bool = False  # Nesterov momentum (needs momentum > 0)
    weight_decay: float = 0.0  # L2 penalty on the weight matrices
    schedule: str = "constant"  # learning rate per epoch: constant | step | cosine
    warmup_epochs: int = 0  # linear warm-up epochs before the schedule
    step_size: int = 10  # 'step' schedule: epochs between decays
    gamma: float = 0.1  # 'step' schedule: decay factor
    dropout: float = 0.0  # inverted dropout on the hidden layers while training
    patience: int = 0  # early stopping: epochs without a better validation accuracy (0: off)


@dataclass(frozen=True)
class _Rule:
    kind: type  # int, float, str or bool
    check: Callable[[Any], bool]
    allowed: str  # what the message says is allowed


def _choice(names: list[str] | tuple[str, ...]) -> _Rule:
    return _Rule(str, lambda v: v in names, "one of " + ", ".join(repr(n) for n in names))


def _int_at_least(low: int) -> _Rule:
    return _Rule(int, lambda v: v >= low, f"an integer >= {low}")


_POSITIVE_FLOAT = _Rule(float, lambda v: 0 < v < math.inf, "a float in (0, inf)")
_BOOL = _Rule(bool, lambda v: True, "true or false")

_TRAIN_RULES: dict[str, _Rule] = {
    "hidden_1": _int_at_least(1),
    "hidden_2": _int_at_least(1),
    "epochs": _int_at_least(1),
    "batch_size": _int_at_least(1),
    "learning_rate": _POSITIVE_FLOAT,
    "init": _choice(sorted(INITIALISERS)),
    "init_std": _POSITIVE_FLOAT,
    "activation": _choice(sorted(ACTIVATIONS)),
    "dtype": _choice(("float32", "float64")),
    "shuffle": _BOOL,
    "full_train_eval": _BOOL,
    "momentum": _Rule(float, lambda v: 0 <= v < 1, "a float in [0, 1)"),
    "nesterov": _BOOL,
    "weight_decay": _Rule(float, lambda v: 0 <= v < math.inf, "a float in [0, inf)"),
    "schedule": _choice(SCHEDULES),
    "warmup_epochs": _int_at_least(0),
    "step_size": _int_at_least(1),
    "gamma": _Rule(float, lambda v: 0 < v <= 1, "a float in (0, 1]"),
    "dropout": _Rule(float, lambda v: 0 <= v < 1, "a float in [0, 1)"),
    "patience": _int_at_least(0),
}
assert set(_TRAIN_RULES) == {f.name for f in dataclasses.fields(TrainSettings)}

_NAME = _Rule(
    str, lambda v: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v) is not None,
    "a name of letters, digits, '.', '_' and '-'",
)  # fmt: skip
_STUDY_RULES: dict[str, _Rule] = {
    "name": _NAME,
    "sampler": _choice(SAMPLERS),
    "trials": _int_at_least(1),
    # optuna's samplers seed numpy with it (after adding each worker's salt, modulo 2**32)
    "seed": _Rule(int, lambda v: 0 <= v < 2**32, "an integer in [0, 4294967295]"),
    "pruner": _choice(PRUNERS),
    "threads": _int_at_least(1),
    "max_retries": _int_at_least(1),
}
_BUDGET_RULES: dict[str, _Rule] = {"min_params": _int_at_least(0), "max_params": _int_at_least(1)}
_DATA_RULES: dict[str, _Rule] = {
    "train_size": _Rule(int, lambda v: 1 <= v <= TRAIN_SET_SIZE, "an integer in [1, 50000]"),
    "path": _Rule(str, lambda v: bool(v), "a path to your own copy of MNIST"),
}
_SECTIONS = ("study", "budget", "data", "train", "space")


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a list of choices, or a numeric range (TPE and random only)."""

    name: str
    choices: tuple[Any, ...] | None = None  # categorical / grid values
    low: float | None = None  # numeric range, inclusive
    high: float | None = None
    log: bool = False  # sample the range on a log scale

    @property
    def is_range(self) -> bool:
        return self.choices is None


@dataclass(frozen=True)
class Budget:
    """Exclusive bounds on the parameter count: min_params < count < max_params."""

    min_params: int = 500_000
    max_params: int = 1_000_000

    def admits(self, hidden_1: int, hidden_2: int) -> bool:
        return self.min_params < parameter_count(hidden_1, hidden_2) < self.max_params


@dataclass(frozen=True)
class StudySpec:
    """A validated study file."""

    name: str  # optuna study name
    sampler: str  # grid | tpe | random
    trials: int | None  # cap for all workers together; None: the whole grid
    seed: int  # study seed: the sampler's seed and the root of every trial's seed
    pruner: str  # none | median | successive-halving | hyperband
    budget: Budget
    train: TrainSettings  # fixed settings; searched ones are overridden per trial
    space: tuple[Dimension, ...]
    threads: int = 1  # BLAS threads per trial: float32 sums depend on it, so it is the study's
    max_retries: int = 3  # a trial whose workers die this often is FAIL, not requeued again
    train_size: int | None = None  # use only a prefix of the training split
    data_path: str | None = None  # a user's own copy of MNIST
    source: str = "<spec>"  # where it came from, for messages

    def dimension(self, name: str) -> Dimension | None:
        return next((d for d in self.space if d.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data, as stored on the study (``study.user_attrs['spec']``)."""
        space = {
            d.name: list(d.choices) if d.choices is not None else
            {"low": d.low, "high": d.high, "log": d.log}
            for d in self.space
        }  # fmt: skip
        searched = {d.name for d in self.space}
        train = {k: v for k, v in dataclasses.asdict(self.train).items() if k not in searched}
        return {
            "study": {
                "name": self.name, "sampler": self.sampler, "trials": self.trials,
                "seed": self.seed, "pruner": self.pruner, "threads": self.threads,
                "max_retries": self.max_retries,
            },
            "budget": dataclasses.asdict(self.budget),
            "data": {"train_size": self.train_size, "path": self.data_path},
            "train": train,
            "space": space,
        }  # fmt: skip


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file; raise SpecError (one line) on the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read study file: {e.strerror or e}") from e
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from e
    return parse_spec(raw, source=str(path))


_MISSING = object()


def _fail(source: str, field: str, allowed: str, got: Any) -> SpecError:
    shown = "nothing" if got is _MISSING else repr(got)
    return SpecError(f"{source}: [{field}] must be {allowed}; got {shown}")


def _value(source: str, field: str, rule: _Rule, value: Any) -> Any:
    """Check one value against its rule; ints are accepted where floats are expected."""
    kind_ok = (
        isinstance(value, bool) if rule.kind is bool else
        isinstance(value, int | float) and not isinstance(value, bool) if rule.kind is float else
        isinstance(value, rule.kind) and not isinstance(value, bool)
    )  # fmt: skip
    if not kind_ok or not rule.check(value):
        raise _fail(source, field, rule.allowed, value)
    return float(value) if rule.kind is float else value


def _section(
    source: str, raw: dict[str, Any], name: str, rules: dict[str, _Rule]
) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise _fail(source, name, "a table", table)
    for key in table:
        if key not in rules:
            raise _fail(source, f"{name}.{key}", "one of the known keys " + ", ".join(rules), key)
    return {k: _value(source, f"{name}.{k}", rules[k], v) for k, v in table.items()}


def _dimension(source: str, name: str, value: Any, sampler: str) -> Dimension:
    field = f"space.{name}"
    if name not in _TRAIN_RULES:
        raise _fail(source, field, "a [train] setting: " + ", ".join(_TRAIN_RULES), name)
    rule = _TRAIN_RULES[name]
    if isinstance(value, list):
        if not value:
            raise _fail(source, field, "a non-empty list", value)
        choices = tuple(_value(source, field, rule, v) for v in value)
        if len(set(choices)) != len(choices):
            raise _fail(source, field, "a list without repeated values", value)
        return Dimension(name, choices=choices)
    if not isinstance(value, dict):
        raise _fail(source, field, "a list of values or a table {low, high, log}", value)
    if sampler == "grid":
        raise _fail(source, field, "a list of values with sampler 'grid'", value)
    if rule.kind not in (int, float):
        raise _fail(source, field, f"a list of values ({name} is not numeric)", value)
    unknown = set(value) - {"low", "high", "log"}
    if unknown or not {"low", "high"} <= set(value):
        raise _fail(source, field, "a table with keys low, high and optionally log", value)
    low = _value(source, f"{field}.low", rule, value["low"])
    high = _value(source, f"{field}.high", rule, value["high"])
    log = _value(source, f"{field}.log", _BOOL, value.get("log", False))
    if not low < high:
        raise _fail(source, f"{field}.high", f"greater than low = {low}", high)
    if log and not low > 0:
        raise _fail(source, f"{field}.low", "greater than 0 with log = true", low)
    return Dimension(name, low=low, high=high, log=log)


def _hidden_values(spec_train: TrainSettings, dim: Dimension | None, name: str) -> tuple[int, int]:
    """The (smallest, largest) value a hidden size can take."""
    if dim is None:
        v = getattr(spec_train, name)
        return v, v
    if dim.choices is not None:
        return min(dim.choices), max(dim.choices)
    return int(dim.low), int(dim.high)


def parse_spec(raw: dict[str, Any], *, source: str = "<spec>") -> StudySpec:
    """Validate a parsed TOML document (see ``load_spec``)."""
    for key in raw:
        if key not in _SECTIONS:
            raise _fail(source, key, "one of the sections " + ", ".join(_SECTIONS), key)
    study = _section(source, raw, "study", _STUDY_RULES)
    for required in ("name", "sampler"):
        if required not in study:
            raise _fail(source, f"study.{required}", "given", _MISSING)
    sampler = study["sampler"]
    if sampler != "grid" and "trials" not in study:
        raise _fail(source, "study.trials", f"given for sampler {sampler!r}", _MISSING)
    budget = Budget(**_section(source, raw, "budget", _BUDGET_RULES))
    if not budget.min_params < budget.max_params:
        raise _fail(
            source, "budget.max_params", f"greater than min_params = {budget.min_params}",
            budget.max_params,
        )  # fmt: skip
    data = _section(source, raw, "data", _DATA_RULES)
    train = TrainSettings(**_section(source, raw, "train", _TRAIN_RULES))
    space_raw = raw.get("space", {})
    if not isinstance(space_raw, dict):
        raise _fail(source, "space", "a table", space_raw)
    space = tuple(_dimension(source, k, v, sampler) for k, v in space_raw.items())
    if sampler == "grid" and not space:
        raise _fail(source, "space", "at least one list of values with sampler 'grid'", {})
    # Nesterov momentum with no momentum would fail every trial (the optimiser refuses it).
    searched = {d.name: d.choices or () for d in space}
    nesterov = train.nesterov or True in searched.get("nesterov", ())
    if nesterov and "momentum" not in searched and not train.momentum > 0:
        raise _fail(source, "train.nesterov", "false unless momentum > 0", True)
    spec = StudySpec(
        name=study["name"],
        sampler=sampler,
        trials=study.get("trials"),
        seed=study.get("seed", 0),
        pruner=study.get("pruner", "none"),
        threads=study.get("threads", 1),
        max_retries=study.get("max_retries", 3),
        budget=budget,
        train=train,
        space=space,
        train_size=data.get("train_size"),
        data_path=os.path.expanduser(data["path"]) if "path" in data else None,
        source=source,
    )
    _check_budget_feasible(spec)
    return spec


#: Fields that do not change a study's results: its name, its cap (launchers steer it), and
#: where this host keeps the dataset.
_LOCAL = {"study.name", "study.trials", "data.path"}


def stored_spec(stored: Any, *, source: str) -> StudySpec:
    """The spec stored on a study (``StudySpec.to_dict``), validated like a study file: the
    database is shared, so what it holds is someone else's input."""
    if not isinstance(stored, dict):
        raise _fail(source, "spec", "a table of sections", stored)
    raw = {
        name: {k: v for k, v in table.items() if v is not None}
        if isinstance(table, dict) else table
        for name, table in stored.items()
    }  # fmt: skip
    return parse_spec(raw, source=source)


def first_difference(stored: StudySpec, given: StudySpec) -> tuple[str, Any, Any] | None:
    """The first field (``section.key``) in which ``given`` would change ``stored``'s results,
    with both values; None if they agree."""
    old, new = stored.to_dict(), given.to_dict()
    for section in _SECTIONS:
        a, b = old.get(section, {}), new.get(section, {})
        for key in [*a, *(k for k in b if k not in a)]:
            field = f"{section}.{key}"
            if field not in _LOCAL and a.get(key) != b.get(key):
                return field, a.get(key), b.get(key)
    return None


def _check_budget_feasible(spec: StudySpec) -> None:
    """A budget no architecture in the space can meet is an error before anything runs."""
    from sweep.space import feasible_architectures_exist  # the space knows the geometry

    if not feasible_architectures_exist(spec):
        lo1, hi1 = _hidden_values(spec.train, spec.dimension("hidden_1"), "hidden_1")
        lo2, hi2 = _hidden_values(spec.train, spec.dimension("hidden_2"), "hidden_2")
        raise SpecError(
            f"{spec.source}: [budget] no architecture with hidden_1 in [{lo1}, {hi1}] and "
            f"hidden_2 in [{lo2}, {hi2}] has {spec.budget.min_params:,} < parameters < "
            f"{spec.budget.max_params:,} (these sizes give {parameter_count(lo1, lo2):,} to "
            f"{parameter_count(hi1, hi2):,})"
        )

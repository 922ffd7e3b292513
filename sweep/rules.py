"""The rules a study file's values obey, one table per section, and the one message shape
every violation takes: the file, the field, what is allowed and what came::

    studies/x.toml: [space.learning_rate] must be a float in (0, inf); got -0.1

Every value is bounded, so a study that passes cannot overflow a 64-bit column, hang its
launcher or allocate without limit before its first trial (the caps below say why each is
where it is).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlp.functions import ACTIVATIONS, INITIALISERS
from mlp.optim import SCHEDULES
from sweep.errors import SpecError

SAMPLERS = ("grid", "tpe", "random")
PRUNERS = ("none", "median", "successive-halving", "hyperband")
SECTIONS = ("study", "budget", "data", "train", "space")
TRAIN_SET_SIZE = 50_000  # MNIST's training split

#: A study file is a page of TOML (the shipped ones are under 1.5 KB); anything larger is
#: not one, and is refused before it is read.
MAX_STUDY_FILE_BYTES = 1 << 20
#: Study names are shown in every progress line and message; 128 characters is room for any
#: descriptive name and a quarter of optuna's 512-character study_name column.
MAX_NAME_LENGTH = 128
#: Grid points (the product of the list lengths, before the budget keeps its points), the
#: values of one list, and the (hidden_1, hidden_2) pairs of two lists under TPE or random
#: sampling (one categorical parameter, ``architecture``): each is enqueued, enumerated or
#: stored as one choice, so each is capped. The notebook's grid has 48 points.
MAX_CHOICES = 100_000
#: A TPE/random launcher enqueues a WAITING row for every trial up to the cap at once
#: (sweep.queue.top_up), so the cap is bounded like the grid.
MAX_TRIALS = 1_000_000
MAX_EPOCHS = 10_000  # for every count of epochs (the notebook trains 10)
#: A budget's bound on the parameter count: 10**8 float64 weights with their gradients and
#: momentum are 2.4 GB, the most a worker of a shared machine should take; the notebook's
#: budget is 10**6. (The hidden sizes a budget admits are bounded by it.)
MAX_PARAMS = 100_000_000
MAX_THREADS = 1024  # BLAS threads per trial
MAX_RETRIES = 1000
MAX_INT = 2**63 - 1  # TOML integers, and SQLite's, are 64-bit


@dataclass(frozen=True)
class Rule:
    kind: type  # int, float, str or bool
    check: Callable[[Any], bool]
    allowed: str  # what the message says is allowed


def choice(names: list[str] | tuple[str, ...]) -> Rule:
    return Rule(str, lambda v: v in names, "one of " + ", ".join(repr(n) for n in names))


def int_in(low: int, high: int | None = None, why: str = "") -> Rule:
    if high is None:
        return Rule(int, lambda v: low <= v <= MAX_INT, f"a 64-bit integer >= {low}")
    return Rule(int, lambda v: low <= v <= high, f"an integer in [{low}, {high}]{why}")


def float_in(low: float, high: float, *, low_open: bool, high_open: bool) -> Rule:
    """A finite float in an interval: NaN and ±inf (which TOML allows) never pass."""

    def check(v: float) -> bool:
        above = low < v if low_open else low <= v
        below = v < high if high_open else v <= high
        return math.isfinite(v) and above and below

    shown = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Rule(float, check, f"a float in {shown}")


def _is_name(v: str) -> bool:
    # Control characters and line breaks would split the one-line messages and logs that
    # quote the name; any other Unicode is fine (a name never becomes a path: see report.py).
    breaks = ("Cc", "Cs", "Zl", "Zp")
    return 0 < len(v) <= MAX_NAME_LENGTH and all(unicodedata.category(c) not in breaks for c in v)


def _batch_size(train_set: int) -> Rule:
    return int_in(1, train_set, " (at most the training set in use)")


BOOL = Rule(bool, lambda v: True, "true or false")
_POSITIVE = float_in(0, math.inf, low_open=True, high_open=True)
_UNIT = float_in(0, 1, low_open=False, high_open=True)  # [0, 1)

TRAIN_RULES: dict[str, Rule] = {
    "hidden_1": int_in(1),  # the budget bounds the hidden sizes from above
    "hidden_2": int_in(1),
    "epochs": int_in(1, MAX_EPOCHS),
    "batch_size": _batch_size(TRAIN_SET_SIZE),  # see train_rules() for a [data] train_size
    "learning_rate": _POSITIVE,
    "init": choice(sorted(INITIALISERS)),
    "init_std": _POSITIVE,
    "activation": choice(sorted(ACTIVATIONS)),
    "dtype": choice(("float32", "float64")),
    "shuffle": BOOL,
    "full_train_eval": BOOL,
    "momentum": _UNIT,
    "nesterov": BOOL,
    "weight_decay": float_in(0, math.inf, low_open=False, high_open=True),
    "schedule": choice(SCHEDULES),
    # A warm-up as long as the run or longer is allowed: the whole run then warms up
    # (mlp.optim.learning_rate_at), which a search over epochs may well produce.
    "warmup_epochs": int_in(0, MAX_EPOCHS),
    "step_size": int_in(1, MAX_EPOCHS),
    "gamma": float_in(0, 1, low_open=True, high_open=False),
    "dropout": _UNIT,
    "patience": int_in(0, MAX_EPOCHS),
}


def train_rules(train_size: int | None) -> dict[str, Rule]:
    """The [train] rules for a [data] train_size: a batch is at most the whole training set."""
    if train_size is None:
        return TRAIN_RULES
    return TRAIN_RULES | {"batch_size": _batch_size(train_size)}


STUDY_RULES: dict[str, Rule] = {
    "name": Rule(str, _is_name, f"1 to {MAX_NAME_LENGTH} characters, no control characters"),
    "sampler": choice(SAMPLERS),
    "trials": int_in(1, MAX_TRIALS),
    # optuna's samplers seed numpy with it (after adding each worker's salt, modulo 2**32)
    "seed": int_in(0, 2**32 - 1),
    "pruner": choice(PRUNERS),
    "threads": int_in(1, MAX_THREADS),
    "max_retries": int_in(1, MAX_RETRIES),
}
BUDGET_RULES: dict[str, Rule] = {
    "min_params": int_in(0, MAX_PARAMS),
    "max_params": int_in(1, MAX_PARAMS),
}
DATA_RULES: dict[str, Rule] = {
    "train_size": int_in(1, TRAIN_SET_SIZE),
    "path": Rule(
        str, lambda v: v != "" and "\0" not in v,
        "a path to your own copy of MNIST (not empty, no NUL character)",
    ),
}  # fmt: skip

MISSING = object()
_SHOWN = 200  # characters of a value quoted in a message


def show(got: Any) -> str:
    """A value as a message quotes it: its repr (one line: repr escapes every line break),
    cut at 200 characters."""
    if got is MISSING:
        return "nothing"
    try:
        return _cut(repr(got))
    except (ValueError, RecursionError):  # an int past Python's 4300 digits; deep nesting
        if isinstance(got, int):
            return f"an integer of {got.bit_length():,} bits"
        return f"a {type(got).__name__} too large to show"


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def field_key(k: Any) -> str:
    """A key from the file as part of a field name: bare if TOML would write it bare, else
    quoted as TOML quotes it, with every unprintable character (line breaks) escaped."""
    if not isinstance(k, str):
        return show(k)
    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", k):
        return k
    quoted = json.dumps(k, ensure_ascii=False)
    return _cut("".join(c if c.isprintable() else _escape(c) for c in quoted))


def _escape(c: str) -> str:
    return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"


def fail(source: str, field: str, allowed: str, got: Any, *, shown: str | None = None) -> SpecError:
    return SpecError(f"{source}: [{field}] must be {allowed}; got {shown or show(got)}")


def check_value(source: str, field: str, rule: Rule, got: Any) -> Any:
    """Check one value against its rule; ints are accepted where floats are expected."""
    v, ok = got, isinstance(got, rule.kind) and isinstance(got, bool) == (rule.kind is bool)
    if rule.kind is float and isinstance(got, int) and not isinstance(got, bool):
        try:
            v, ok = float(got), True
        except OverflowError:  # an int past the largest float
            ok = False
    if not ok or not rule.check(v):
        raise fail(source, field, rule.allowed, got)
    return v

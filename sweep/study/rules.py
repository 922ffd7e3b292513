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

from mlp.config import MAX_EPOCHS, Hyperparameter, hyperparameters
from sweep.errors import SpecError
from sweep.study.objectives import ACCURACY, OBJECTIVES

SAMPLERS = ("grid", "tpe", "random", "nsga2")
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
#: values of one list, and the combinations of the lists of widths of one depth under TPE or
#: random sampling (one categorical parameter, ``architecture``): each is enqueued, enumerated
#: or stored as one choice, so each is capped. The notebook's grid has 48 points.
MAX_CHOICES = 100_000
#: A TPE/random launcher enqueues a WAITING row for every trial up to the cap at once
#: (sweep.queue.topup.top_up), so the cap is bounded like the grid: 10^7 lets a study of a
#: million trials go on (10^6 was the cap until #27) while one launch still enqueues what a
#: disk holds (about 2 GB of rows on SQLite); 10^9 would be hundreds of GB in one transaction.
MAX_TRIALS = 10_000_000
# Counts of epochs are bounded where they are declared: mlp.config.MAX_EPOCHS.
#: A budget's bound on the parameter count: 10**8 float64 weights with their gradients and
#: momentum are 2.4 GB, the most a worker of a shared machine should take; the notebook's
#: budget is 10**6. (The hidden sizes a budget admits are bounded by it.)
MAX_PARAMS = 100_000_000
MAX_THREADS = 1024  # BLAS threads per trial
MAX_RETRIES = 1000
MAX_POPULATION = 10_000  # NSGA-II keeps a generation of trials in memory per ask
POPULATION = 50  # NSGA-II's generation when a study file gives none (optuna's default)
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


def _is_objectives(v: list) -> bool:
    names = [n for n in v if isinstance(n, str) and n in OBJECTIVES]
    return len(names) == len(v) == len(set(names)) and names[:1] == [ACCURACY.name]


OBJECTIVES_RULE = Rule(
    list, _is_objectives,
    f"a list of distinct objectives, {ACCURACY.name!r} first, of "
    + ", ".join(repr(n) for n in OBJECTIVES),
)  # fmt: skip


def rule_of(h: Hyperparameter) -> Rule:
    """The study-file rule of a declared field (``mlp.config.PARAMETERS``): its type and
    what it accepts; an integer without an upper bound is one that fits 64 bits."""
    p = h.param
    if h.type is bool:
        return BOOL
    if h.type is str:
        return choice(p.choices)
    if h.type is int:
        return int_in(int(p.low), None if p.high is None else int(p.high))
    high = math.inf if p.high is None else p.high
    return float_in(p.low, high, low_open=p.low_open, high_open=p.high is None or p.high_open)


def train_rules(train_size: int | None = None) -> dict[str, Rule]:
    """The [train] (and [space]) rules, one per hyperparameter in ``mlp.config``, in its order.

    Sweep refines one: a batch is at most the training set in use (a [data] train_size, or
    MNIST's whole training split)."""
    rules = {h.name: rule_of(h) for h in hyperparameters()}
    return rules | {"batch_size": _batch_size(min(train_size or TRAIN_SET_SIZE, TRAIN_SET_SIZE))}


#: The [train] rules with the whole training split (``train_rules`` is read when called).
TRAIN_RULES: dict[str, Rule] = train_rules()


STUDY_RULES: dict[str, Rule] = {
    "name": Rule(str, _is_name, f"1 to {MAX_NAME_LENGTH} characters, no control characters"),
    "sampler": choice(SAMPLERS),
    "trials": int_in(1, MAX_TRIALS),
    # optuna's samplers seed numpy with it (after adding each worker's salt, modulo 2**32)
    "seed": int_in(0, 2**32 - 1),
    "pruner": choice(PRUNERS),
    "objectives": OBJECTIVES_RULE,
    # Curves of distorted or strongly regularised trials start slow and end high: a pruner that
    # may stop a trial after its first epoch prunes exactly them (#25).
    "prune_after": int_in(0, MAX_EPOCHS),
    "threads": int_in(1, MAX_THREADS),
    "max_retries": int_in(1, MAX_RETRIES),
    # NSGA-II's generation size (optuna's default, 50); read by sampler 'nsga2' only.
    "population": int_in(2, MAX_POPULATION),
}
BUDGET_RULES: dict[str, Rule] = {
    "min_params": int_in(0, MAX_PARAMS),
    "max_params": int_in(1, MAX_PARAMS),
}
DATA_RULES: dict[str, Rule] = {
    "train_size": int_in(1, TRAIN_SET_SIZE, " (the examples in MNIST's training split)"),
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


def conform(rule: Rule, got: Any) -> tuple[bool, Any]:
    """Whether ``got`` obeys ``rule``, and the value it stands for (ints are accepted where
    floats are expected, as floats)."""
    v, ok = got, isinstance(got, rule.kind) and isinstance(got, bool) == (rule.kind is bool)
    if rule.kind is float and isinstance(got, int) and not isinstance(got, bool):
        try:
            v, ok = float(got), True
        except OverflowError:  # an int past the largest float
            ok = False
    return ok and rule.check(v), v


def check_value(source: str, field: str, rule: Rule, got: Any) -> Any:
    """Check one value against its rule; ints are accepted where floats are expected."""
    ok, v = conform(rule, got)
    if not ok:
        raise fail(source, field, rule.allowed, got)
    return v

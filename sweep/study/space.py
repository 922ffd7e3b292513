"""Search spaces under the parameter budget: grid points, and a suggest function whose every
sample is an in-budget architecture.

The parameter count is linear in each hidden size when the other is fixed,

    count = (785 + h2)·h1 + 11·h2 + 10 = (h1 + 11)·h2 + 785·h1 + 10,

so the sizes that meet min < count < max given the other one form an exact integer interval.
TPE and random sampling draw hidden_1 from the sizes that have at least one in-budget partner,
then hidden_2 from the interval that hidden_1 leaves: no trial is ever spent outside the
budget, and every feasible architecture can be drawn (not just a corner of the region).

The space needs nothing of a study spec but the few attributes of ``SearchSpec``, so that the
spec (``sweep.study.spec``), which checks its budget here, is the one that imports.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mlp.model import parameter_count
from sweep.errors import SpecError
from sweep.study.rules import show

if TYPE_CHECKING:
    import optuna

_HIDDEN = ("hidden_1", "hidden_2")
ARCHITECTURE = "architecture"  # the joint parameter used when both sizes are lists (see below)


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class Budget:
    """Exclusive bounds on the parameter count: min_params < count < max_params."""

    min_params: int = 500_000
    max_params: int = 1_000_000

    def admits(self, hidden_1: int, hidden_2: int) -> bool:
        return self.min_params < parameter_count(hidden_1, hidden_2) < self.max_params


#: A trial's flat settings: a frozen dataclass of every [train] field (sweep.study.settings).
Settings = TypeVar("Settings", covariant=True)


class SearchSpec(Protocol[Settings]):
    """What the space reads of a study spec (``sweep.study.spec.StudySpec``)."""

    @property
    def sampler(self) -> str: ...
    @property
    def budget(self) -> Budget: ...
    @property
    def train(self) -> Settings: ...  # the fixed settings; searched ones replaced per trial
    @property
    def space(self) -> tuple[Dimension, ...]: ...
    def dimension(self, name: str) -> Dimension | None: ...


def _open_interval(budget: Budget, slope: int, offset: int) -> tuple[int, int]:
    """Integers x with min < slope·x + offset < max, as (lo, hi) (empty when lo > hi)."""
    lo = (budget.min_params - offset) // slope + 1
    hi = -((offset - budget.max_params) // slope) - 1
    return lo, hi


def hidden_2_interval(budget: Budget, hidden_1: int) -> tuple[int, int]:
    """The hidden_2 sizes that put (hidden_1, hidden_2) inside the budget."""
    return _open_interval(budget, hidden_1 + 11, 785 * hidden_1 + 10)


def hidden_1_interval(budget: Budget, hidden_2: int) -> tuple[int, int]:
    """The hidden_1 sizes that put (hidden_1, hidden_2) inside the budget."""
    return _open_interval(budget, 785 + hidden_2, 11 * hidden_2 + 10)


def grid_points(spec: SearchSpec) -> list[dict[str, Any]]:
    """Every in-budget point of a grid space, in file order (the notebook's grid → 24 points)."""
    names = [d.name for d in spec.space]
    points = []
    for values in itertools.product(*(d.choices for d in spec.space)):
        point = dict(zip(names, values, strict=True))
        settings = dataclasses.replace(spec.train, **point)
        if spec.budget.admits(settings.hidden_1, settings.hidden_2):
            points.append(point)
    return points


def _range_bounds(dim: Dimension | None, fixed: int) -> tuple[int, int]:
    if dim is None:
        return fixed, fixed
    return int(dim.low), int(dim.high)


def _feasible_range(budget: Budget, own: tuple[int, int], other: tuple[int, int], first: bool):
    """The sub-range of one hidden size (own) that has a partner in the other's range."""
    interval = hidden_1_interval if first else hidden_2_interval
    lo = max(own[0], interval(budget, other[1])[0])  # needs the largest partner to reach min
    hi = min(own[1], interval(budget, other[0])[1])  # needs the smallest partner to stay < max
    return lo, hi


def _pairs(spec: SearchSpec) -> list[tuple[int, int]] | None:
    """The in-budget (h1, h2) pairs when both sizes are lists or fixed; None for a range."""
    dims = [spec.dimension(n) for n in _HIDDEN]
    if any(d is not None and d.is_range for d in dims):
        return None
    values = [
        d.choices if d is not None else (getattr(spec.train, n),)
        for d, n in zip(dims, _HIDDEN, strict=True)
    ]
    return [(a, b) for a in values[0] for b in values[1] if spec.budget.admits(a, b)]


def feasible_architectures_exist(spec: SearchSpec) -> bool:
    """Whether any architecture the space allows meets the budget."""
    if spec.sampler == "grid":
        return bool(grid_points(spec))
    pairs = _pairs(spec)
    if pairs is not None:
        return bool(pairs)
    plan = _Plan.of(spec)
    return bool(plan.first_values) if plan.first.choices else _nonempty(plan.first_values)


def _nonempty(bounds: tuple[int, int]) -> bool:
    return bounds[0] <= bounds[1]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How to draw the sizes when at least one is a range: ``first`` (the list, or hidden_1
    when both are ranges) from ``first_values``, then ``second`` given it."""

    first: Dimension
    second: Dimension | None
    first_is_h1: bool
    other_bounds: tuple[int, int]  # the second size's range, or its fixed value twice
    first_values: Any  # the in-budget choices (list), or (lo, hi) for a range

    @classmethod
    def of(cls, spec: SearchSpec) -> _Plan:
        d1, d2 = (spec.dimension(n) for n in _HIDDEN)
        if d1 is not None and (d1.choices is not None or d2 is None or d2.is_range):
            first, second, first_is_h1 = d1, d2, True
        else:
            first, second, first_is_h1 = d2, d1, False
        fixed = spec.train.hidden_2 if first_is_h1 else spec.train.hidden_1
        other = _range_bounds(second, fixed)
        if first.choices is not None:
            values = [
                v
                for v in first.choices
                if _nonempty(_feasible_range(spec.budget, other, (v, v), not first_is_h1))
            ]
        else:
            values = _feasible_range(spec.budget, _range_bounds(first, 0), other, first_is_h1)
        return cls(first, second, first_is_h1, other, values)

    def suggest(self, trial: optuna.Trial, budget: Budget) -> dict[str, int]:
        first = self.first
        if first.choices is not None:
            a = trial.suggest_categorical(first.name, self.first_values)
        else:
            a = trial.suggest_int(first.name, *self.first_values, log=first.log)
        out = {first.name: a}
        if self.second is not None:
            lo, hi = _feasible_range(budget, self.other_bounds, (a, a), not self.first_is_h1)
            out[self.second.name] = trial.suggest_int(self.second.name, lo, hi, log=self.second.log)
        return out


def _suggest_one(trial: optuna.Trial, dim: Dimension) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(dim.name, list(dim.choices))
    if isinstance(dim.low, int) and isinstance(dim.high, int):
        return trial.suggest_int(dim.name, dim.low, dim.high, log=dim.log)
    return trial.suggest_float(dim.name, dim.low, dim.high, log=dim.log)


def _suggest_hidden(trial: optuna.Trial, spec: SearchSpec) -> dict[str, int]:
    """hidden_1 and hidden_2 for a TPE/random trial, always inside the budget."""
    d1, d2 = (spec.dimension(n) for n in _HIDDEN)
    if d1 is None and d2 is None:
        return {}
    budget = spec.budget
    pairs = _pairs(spec)
    if pairs is not None:
        if d1 is None or d2 is None:  # one list against a fixed size: filter the list
            dim = d1 or d2
            index = 0 if dim is d1 else 1
            choices = sorted({p[index] for p in pairs})
            return {dim.name: trial.suggest_categorical(dim.name, choices)}
        if len(pairs) == len(d1.choices) * len(d2.choices):  # every combination fits
            return {d.name: trial.suggest_categorical(d.name, list(d.choices)) for d in (d1, d2)}
        # optuna's categorical distributions cannot change their choices from trial to trial,
        # so the in-budget pairs become one categorical parameter "h1xh2".
        arch = trial.suggest_categorical(ARCHITECTURE, [f"{a}x{b}" for a, b in pairs])
        h1, h2 = (int(v) for v in arch.split("x"))
        return {"hidden_1": h1, "hidden_2": h2}
    # At least one range. Draw the list (or hidden_1 when both are ranges) from its values that
    # have an in-budget partner, then the other size from the interval it leaves (optuna's
    # integer distributions may change their bounds from trial to trial).
    return _Plan.of(spec).suggest(trial, budget)


class OutsideSpace(SpecError):
    """A claimed trial's fixed parameters (any client may enqueue a trial) that the study's
    space would never suggest; the message names the parameter, its value and the space."""


#: Choices a message lists before it says how many there are (an ``architecture`` parameter
#: may have 100,000).
_LISTED = 8


class _Checked:
    """A trial as ``suggest`` sees it, whose fixed parameters are checked against each
    distribution asked for before optuna records them: optuna only warns of a fixed value
    out of range, then trains it (``hidden_1 = 10**7`` under a range of [16, 200], #22)."""

    def __init__(self, trial: optuna.Trial, fixed: dict[str, Any]) -> None:
        self.trial, self.fixed, self.asked = trial, fixed, set()

    def _check(self, name: str, fits: bool, allowed: str) -> None:
        self.asked.add(name)
        if name in self.fixed and not fits:
            raise OutsideSpace(
                f"parameter {show(name)} = {show(self.fixed[name])} is outside the study's space "
                f"({name}: {allowed})"
            )

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        v = self.fixed.get(name)
        listed = ", ".join(show(c) for c in choices[:_LISTED])
        more = f", … ({len(choices):,} values)" if len(choices) > _LISTED else ""
        self._check(name, any(_same(v, c) for c in choices), f"one of {listed}{more}")
        return self.trial.suggest_categorical(name, choices)

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        v = self.fixed.get(name)
        fits = type(v) is int and low <= v <= high
        self._check(name, fits, f"an integer in [{low}, {high}]")
        return self.trial.suggest_int(name, low, high, log=log)

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        v = self.fixed.get(name)
        fits = type(v) in (int, float) and low <= v <= high  # NaN compares false
        self._check(name, fits, f"a float in [{low:g}, {high:g}]")
        return self.trial.suggest_float(name, low, high, log=log)


def _same(v: Any, choice: Any) -> bool:
    """Whether a fixed value is ``choice`` as optuna finds it (by ==, so 64.0 is 64), but
    never a boolean for a number or the other way round (True == 1)."""
    return (type(v) is bool) == (type(choice) is bool) and v == choice


def suggest_checked(trial: optuna.Trial, spec: SearchSpec[Settings], fixed: Any) -> Settings:
    """``suggest`` for a claimed trial, whose ``fixed`` parameters (as enqueued, by sweep or by
    any client) must each be a value the space would suggest, for a parameter it asks for, and
    give an architecture inside the budget. Raises OutsideSpace naming the first that is not,
    before optuna records it."""
    if not isinstance(fixed, dict):
        raise OutsideSpace(f"its fixed parameters are {show(fixed)}, not a table of them")
    checked = _Checked(trial, fixed)
    settings = suggest(checked, spec)  # type: ignore[arg-type]
    unknown = [name for name in fixed if name not in checked.asked]
    if unknown:
        searched = ", ".join(sorted(checked.asked)) or "nothing"
        raise OutsideSpace(
            f"parameter {show(unknown[0])} = {show(fixed[unknown[0]])} is not in the study's "
            f"space (it searches {searched})"
        )
    if not spec.budget.admits(settings.hidden_1, settings.hidden_2):
        b = spec.budget
        raise OutsideSpace(
            f"architecture {settings.hidden_1}x{settings.hidden_2} has "
            f"{parameter_count(settings.hidden_1, settings.hidden_2):,} parameters, outside "
            f"the study's budget ({b.min_params:,} < parameters < {b.max_params:,})"
        )
    return settings


def suggest(trial: optuna.Trial, spec: SearchSpec[Settings]) -> Settings:
    """The trial's full training settings: [train] with the trial's [space] values.

    Grid trials arrive with their point fixed (enqueued), so every suggest call returns it.
    """
    values: dict[str, Any] = {}
    if spec.sampler == "grid":
        values = {d.name: _suggest_one(trial, d) for d in spec.space}
    else:
        values.update(_suggest_hidden(trial, spec))
        for dim in spec.space:
            if dim.name not in _HIDDEN:
                values[dim.name] = _suggest_one(trial, dim)
    return dataclasses.replace(spec.train, **values)

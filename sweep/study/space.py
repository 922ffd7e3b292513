"""Search spaces under the parameter budget: grid points, and a suggest function whose every
sample is an in-budget network of one of the study's depths.

A trial's depth is drawn first (a [space] list of depths, or the [train] one), from the depths
that have at least one in-budget network within the widths' ranges; then the widths that
depth uses, and only those (optuna's conditional space: hidden_3 only when depth >= 3, so a
trial records the widths it uses). Under TPE and random sampling a list of widths is drawn
first, from its values that have an in-budget completion, then each range in layer order from
the exact interval of values that leaves one (``sweep.study.budget.reachable``): no trial is
ever spent outside the budget, and every feasible network can be drawn. Widths that are all
lists are drawn together from their in-budget combinations (see ``DepthSpace.suggest``).

The space needs nothing of a study spec but the few attributes of ``SearchSpec``, so that the
spec (``sweep.study.spec``), which checks its budget here, is the one that imports.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from mlp.config import WIDTHS
from mlp.sizes import parameter_count
from sweep.errors import SpecError
from sweep.study.budget import Budget, feasible, reachable, used, widths_of
from sweep.study.rules import show

if TYPE_CHECKING:
    import optuna

#: The joint parameter of widths that are all lists but not all of whose combinations fit
#: (see ``DepthSpace.suggest``); ``architecture_<depth>`` when the study searches the depth.
ARCHITECTURE = "architecture"
DEPTH = "depth"


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


def depths(spec: SearchSpec) -> tuple[int, ...]:
    """The depths a study's trials may have: its [space] list, or its [train] depth."""
    dim = spec.dimension(DEPTH)
    return tuple(dim.choices) if dim is not None and dim.choices else (spec.train.depth,)  # type: ignore[attr-defined]


def grid_points(spec: SearchSpec) -> list[dict[str, Any]]:
    """Every in-budget point of a grid space, in file order (the notebook's grid → 24 points).

    A point holds the widths its depth uses only, so that points differing in unused widths
    alone are one point, trained once."""
    names = [d.name for d in spec.space]
    points, seen = [], set()
    for values in itertools.product(*(d.choices for d in spec.space)):
        point = dict(zip(names, values, strict=True))
        depth = point.get(DEPTH, spec.train.depth)  # type: ignore[attr-defined]
        point = {k: v for k, v in point.items() if used(k, depth)}
        key = tuple(point.items())
        if key in seen:
            continue
        seen.add(key)
        if spec.budget.admits(*widths_of(dataclasses.replace(spec.train, **point))):
            points.append(point)
    return points


@dataclasses.dataclass(frozen=True)
class DepthSpace:
    """The widths of one depth as a TPE or random study draws them: each fixed ([train]), a
    list or a range."""

    depth: int
    dims: tuple[Dimension | None, ...]  # per width, input side first; None: fixed
    fixed: tuple[int, ...]  # the [train] widths
    joint_name: str  # the joint parameter's name (see ``suggest``)

    @classmethod
    def of(cls, spec: SearchSpec, depth: int) -> DepthSpace:
        names = WIDTHS[:depth]
        joint = ARCHITECTURE if spec.dimension(DEPTH) is None else f"{ARCHITECTURE}_{depth}"
        return cls(depth, tuple(spec.dimension(n) for n in names),
                   tuple(getattr(spec.train, n) for n in names), joint)  # fmt: skip

    def indices(self, kind: str) -> list[int]:
        """The searched widths' indices: ``kind`` "searched", "list" or "range"."""
        dims = self.dims
        return [
            k for k, d in enumerate(dims)
            if d is not None and kind in ("searched", "range" if d.is_range else "list")
        ]  # fmt: skip

    def box(self) -> list[tuple[int, int]]:
        """(smallest, largest) value of each width."""
        out = []
        for d, v in zip(self.dims, self.fixed, strict=True):
            if d is None:
                out.append((v, v))
            elif d.choices is not None:
                out.append((min(d.choices), max(d.choices)))
            else:
                out.append((int(d.low), int(d.high)))  # type: ignore[arg-type]
        return out

    def combinations(self) -> int:
        """How many networks the lists and fixed widths give (ranges not counted)."""
        return math.prod(len(d.choices) for d in self.dims if d is not None and d.choices)

    def networks(self, budget: Budget) -> list[tuple[int, ...]]:
        """The in-budget widths when none is a range, in file order (enumerated: capped by
        the spec at MAX_CHOICES combinations)."""
        values = [d.choices if d is not None else (v,) for d, v in zip(self.dims, self.fixed,
                                                                      strict=True)]  # fmt: skip
        return [h for h in itertools.product(*values) if budget.admits(*h)]

    def list_values(self, budget: Budget, k: int) -> list[int]:
        """The values of list ``k`` (in file order) that the ranges can complete in budget."""
        box = self.box()
        return [v for v in self.dims[k].choices if feasible(budget, _with(box, k, v))]  # type: ignore[union-attr]

    def feasible(self, budget: Budget) -> bool:
        """Whether any network of this depth within the widths' values is inside the budget."""
        if not self.indices("range"):
            return bool(self.networks(budget))
        lists = self.indices("list")
        if lists:
            return bool(self.list_values(budget, lists[0]))
        return feasible(budget, self.box())

    def categoricals(self, budget: Budget) -> dict[str, list[int]]:
        """The choices ``suggest`` gives each width it draws as its own categorical."""
        searched, lists = self.indices("searched"), self.indices("list")
        if not self.indices("range"):
            networks = self.networks(budget)
            if len(searched) == 1:
                (k,) = searched
                return {WIDTHS[k]: sorted({h[k] for h in networks})}
            if len(networks) == self.combinations():  # each list whole, as the file gives it
                return {WIDTHS[k]: list(self.dims[k].choices) for k in searched}  # type: ignore[union-attr]
            return {}  # the joint parameter, of a name of its own at each depth
        return {WIDTHS[k]: self.list_values(budget, k) for k in lists}

    def suggest(self, trial: optuna.Trial, budget: Budget) -> dict[str, int]:
        """The trial's widths of this depth, always an in-budget network.

        Lists first, then ranges in layer order, each from the interval the widths drawn
        leave (optuna's integer distributions may change their bounds from trial to trial;
        its categorical ones cannot change their choices). Widths that are all lists: one of
        them alone is a categorical of its in-budget values; several are independent
        categoricals if every combination fits, else one categorical ``joint_name`` over the
        in-budget networks, "h1xh2…" (the spec refuses several lists beside a range).
        """
        searched, ranges = self.indices("searched"), self.indices("range")
        names = WIDTHS[: self.depth]
        if not searched:
            return {}
        if not ranges:
            networks = self.networks(budget)
            if len(searched) == 1:
                (k,) = searched
                choices = sorted({h[k] for h in networks})
                return {names[k]: trial.suggest_categorical(names[k], choices)}
            lists = {k: list(self.dims[k].choices) for k in searched}  # type: ignore[union-attr]
            if len(networks) == self.combinations():
                return {names[k]: trial.suggest_categorical(names[k], lists[k]) for k in lists}
            joint = ["x".join(map(str, h)) for h in networks]
            arch = trial.suggest_categorical(self.joint_name, joint)
            return {names[k]: int(v) for k, v in enumerate(arch.split("x")) if k in lists}
        box, out = self.box(), {}
        for k in self.indices("list"):
            v = trial.suggest_categorical(names[k], self.list_values(budget, k))
            box, out[names[k]] = _with(box, k, v), v
        for k in ranges:
            lo, hi = reachable(budget, box, k)
            v = trial.suggest_int(names[k], lo, hi, log=self.dims[k].log)  # type: ignore[union-attr]
            box, out[names[k]] = _with(box, k, v), v
        return out


def _with(box: list[tuple[int, int]], k: int, v: int) -> list[tuple[int, int]]:
    return [*box[:k], (v, v), *box[k + 1 :]]


def categoricals_that_change(spec: SearchSpec) -> tuple[str, dict[int, list[int]]] | None:
    """A width drawn as a categorical whose in-budget choices differ between the study's
    depths (optuna's categorical distributions cannot change their choices from trial to
    trial: every trial of the other depths would fail), with its choices by depth; None if
    there is none."""
    seen: dict[str, dict[int, list[int]]] = {}
    for depth in feasible_depths(spec):
        for name, choices in DepthSpace.of(spec, depth).categoricals(spec.budget).items():
            seen.setdefault(name, {})[depth] = choices
    for name, by_depth in seen.items():
        if len({tuple(c) for c in by_depth.values()}) > 1:
            return name, by_depth
    return None


def feasible_depths(spec: SearchSpec) -> list[int]:
    """The study's depths (file order) with at least one in-budget network (TPE, random)."""
    return [d for d in depths(spec) if DepthSpace.of(spec, d).feasible(spec.budget)]


def feasible_architectures_exist(spec: SearchSpec) -> bool:
    """Whether any architecture the space allows meets the budget."""
    if spec.sampler == "grid":
        return bool(grid_points(spec))
    return bool(feasible_depths(spec))


def _suggest_one(trial: optuna.Trial, dim: Dimension) -> Any:
    if dim.choices is not None:
        return trial.suggest_categorical(dim.name, list(dim.choices))
    if isinstance(dim.low, int) and isinstance(dim.high, int):
        return trial.suggest_int(dim.name, dim.low, dim.high, log=dim.log)
    return trial.suggest_float(dim.name, dim.low, dim.high, log=dim.log)


def suggest(trial: optuna.Trial, spec: SearchSpec[Settings]) -> Settings:
    """The trial's full training settings: [train] with the trial's [space] values.

    The depth first, then the widths it uses (none other), then the rest in file order.
    Grid trials arrive with their point fixed (enqueued), so every suggest call returns it.
    """
    values: dict[str, Any] = {}
    dim = spec.dimension(DEPTH)
    if dim is not None:
        choices = list(dim.choices) if spec.sampler == "grid" else feasible_depths(spec)  # type: ignore[arg-type]
        values[DEPTH] = trial.suggest_categorical(DEPTH, choices)
    depth = values.get(DEPTH, spec.train.depth)  # type: ignore[attr-defined]
    if spec.sampler != "grid":
        values.update(DepthSpace.of(spec, depth).suggest(trial, spec.budget))
    for dim in spec.space:
        if dim.name not in values and used(dim.name, depth):
            if spec.sampler == "grid" or dim.name not in WIDTHS:
                values[dim.name] = _suggest_one(trial, dim)
    return dataclasses.replace(spec.train, **values)


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
    any client) must each be a value the space would suggest, for a parameter it asks for at
    the trial's depth, and give a network inside the budget. Raises OutsideSpace naming the
    first that is not, before optuna records it."""
    if not isinstance(fixed, dict):
        raise OutsideSpace(f"its fixed parameters are {show(fixed)}, not a table of them")
    checked = _Checked(trial, fixed)
    settings = suggest(checked, spec)  # type: ignore[arg-type]
    unknown = [name for name in fixed if name not in checked.asked]
    if unknown:
        name, depth = unknown[0], settings.depth  # type: ignore[attr-defined]
        if spec.dimension(name) is not None and not used(name, depth):
            raise OutsideSpace(f"parameter {show(name)} = {show(fixed[name])} is not used by a "
                               f"trial of depth {depth}")  # fmt: skip
        searched = ", ".join(sorted(checked.asked)) or "nothing"
        raise OutsideSpace(
            f"parameter {show(name)} = {show(fixed[name])} is not in the study's "
            f"space (it searches {searched})"
        )
    hidden = widths_of(settings)
    if not spec.budget.admits(*hidden):
        b = spec.budget
        raise OutsideSpace(
            f"architecture {'x'.join(map(str, hidden))} has {parameter_count(*hidden):,} "
            f"parameters, outside the study's budget ({b.min_params:,} < parameters < "
            f"{b.max_params:,})"
        )
    return settings

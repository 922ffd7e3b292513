"""Study files: TOML → validated, frozen specs.

Every rule lives in a table in ``sweep.study.rules`` (those of [train] and [space] derived from the
declaration in ``mlp.config``), and every violation is one line naming the file, the field,
what is allowed and what came::

    studies/x.toml: [space.learning_rate] must be a float in (0, inf); got -0.1
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlp.config import WIDTHS
from mlp.sizes import parameter_count
from sweep.errors import SpecError
from sweep.study.budget import Budget, widest_slope
from sweep.study.objectives import DEFAULT as ONE_OBJECTIVE
from sweep.study.overrides import overridden
from sweep.study.rules import (
    BOOL,
    BUDGET_RULES,
    DATA_RULES,
    MAX_CHOICES,
    MISSING,
    POPULATION,
    SECTIONS,
    STUDY_RULES,
    Rule,
    check_value,
    fail,
    field_key,
    train_rules,
)
from sweep.study.settings import TrainSettings, settings_class
from sweep.study.space import (
    DEPTH,
    DepthSpace,
    Dimension,
    categoricals_that_change,
    depths,
    feasible_architectures_exist,
)
from sweep.study.study_file import read_study


@dataclass(frozen=True)
class StudySpec:
    """A validated study file."""

    name: str  # optuna study name
    sampler: str  # grid | tpe | random | nsga2
    trials: int | None  # cap for all workers together; None: the whole grid
    seed: int  # study seed: the sampler's seed and the root of every trial's seed
    pruner: str  # none | median | successive-halving | hyperband
    budget: Budget
    train: TrainSettings  # fixed settings; searched ones are overridden per trial
    space: tuple[Dimension, ...]
    threads: int = 1  # BLAS threads per trial: float32 sums depend on it, so it is the study's
    max_retries: int = 3  # a trial whose workers die this often is FAIL, not requeued again
    prune_after: int = 0  # epochs every trial trains before the pruner may stop it
    train_size: int | None = None  # use only a prefix of the training split
    data_path: str | None = None  # a user's own copy of MNIST
    source: str = "<spec>"  # where it came from, for messages
    objectives: tuple[str, ...] = ONE_OBJECTIVE  # sweep.study.objectives; accuracy first
    population: int = POPULATION  # NSGA-II's generation size (sampler 'nsga2' only)

    @property
    def multi(self) -> bool:
        """Whether the study has several objectives (a Pareto front, no single best)."""
        return len(self.objectives) > 1

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
        study = {
            "name": self.name, "sampler": self.sampler, "trials": self.trials,
            "seed": self.seed, "pruner": self.pruner, "threads": self.threads,
            "max_retries": self.max_retries, "prune_after": self.prune_after,
        }  # fmt: skip
        # Only where they say something: a single-objective study's stored spec is unchanged.
        if self.multi:
            study["objectives"] = list(self.objectives)
        if self.sampler == "nsga2":
            study["population"] = self.population
        return {
            "study": study,
            "budget": dataclasses.asdict(self.budget),
            "data": {"train_size": self.train_size, "path": self.data_path},
            "train": train,
            "space": space,
        }  # fmt: skip


def load_spec(path: str | Path, *, overrides: Sequence[str] | Mapping[str, Any] = ()) -> StudySpec:
    """Read and validate a study file; raise SpecError (one line) on the first problem.

    ``overrides`` change the file's values before it is checked, as ``--set`` does:
    ``["train.epochs=5"]`` or ``{"train.epochs": 5}`` (``sweep.study.overrides``); each is
    checked by the field's rule, and the whole by every rule of a study file."""
    path = Path(path)
    raw = read_study(path)
    if not overrides:
        return parse_spec(raw, source=str(path))
    changed, source = overridden(raw, overrides, source=str(path))
    return parse_spec(changed, source=source)


def _section(source: str, raw: dict[str, Any], name: str, rules: dict[str, Rule]) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise fail(source, name, "a table", table)
    for k in table:
        if k not in rules:
            known = "one of the known keys " + ", ".join(rules)
            raise fail(source, f"{name}.{field_key(k)}", known, k)
    return {k: check_value(source, f"{name}.{k}", rules[k], v) for k, v in table.items()}


def _dimension(source: str, name: Any, raw: Any, sampler: str, rules: dict[str, Rule]) -> Dimension:
    field = f"space.{field_key(name)}"
    if name not in rules:
        raise fail(source, field, "a [train] setting: " + ", ".join(rules), name)
    rule = rules[name]
    if isinstance(raw, list):
        if not raw:
            raise fail(source, field, "a non-empty list", raw)
        if len(raw) > MAX_CHOICES:
            raise fail(source, field, f"a list of at most {MAX_CHOICES:,} values", raw,
                       shown=f"{len(raw):,} values")  # fmt: skip
        choices = tuple(check_value(source, field, rule, v) for v in raw)
        if len(set(choices)) != len(choices):
            raise fail(source, field, "a list without repeated values", raw)
        return Dimension(name, choices=choices)
    if not isinstance(raw, dict):
        raise fail(source, field, "a list of values or a table {low, high, log}", raw)
    if sampler == "grid":
        raise fail(source, field, "a list of values with sampler 'grid'", raw)
    if rule.kind not in (int, float):
        raise fail(source, field, f"a list of values ({name} is not numeric)", raw)
    unknown = set(raw) - {"low", "high", "log"}
    if unknown or not {"low", "high"} <= set(raw):
        raise fail(source, field, "a table with keys low, high and optionally log", raw)
    low = check_value(source, f"{field}.low", rule, raw["low"])
    high = check_value(source, f"{field}.high", rule, raw["high"])
    log = check_value(source, f"{field}.log", BOOL, raw.get("log", False))
    if not low < high:
        raise fail(source, f"{field}.high", f"greater than low = {low}", high)
    if log and not low > 0:
        raise fail(source, f"{field}.low", "greater than 0 with log = true", low)
    return Dimension(name, low=low, high=high, log=log)


def _check_space_size(source: str, sampler: str, space: tuple[Dimension, ...], depth: int) -> None:
    """Grid points, and the combinations of the lists of widths of one depth under TPE or
    random sampling, counted from the list lengths (never enumerated) and capped."""
    if sampler == "grid":
        count, what = math.prod(len(d.choices or ()) for d in space), "grid points"
    else:
        dims = {d.name: d for d in space}
        reached = dims[DEPTH].choices or () if DEPTH in dims else (depth,)
        count, what = 0, "pairs of hidden sizes"
        for n in sorted(reached):
            sizes = [len(dims[w].choices) for w in WIDTHS[:n] if w in dims and dims[w].choices]
            if len(sizes) >= 2 and math.prod(sizes) > count:
                count = math.prod(sizes)
                what = "pairs of hidden sizes" if len(sizes) == 2 else "combinations of widths"
    if count > MAX_CHOICES:
        allowed = f"at most {MAX_CHOICES:,} {what} (the product of the list lengths)"
        raise fail(source, "space", allowed, count, shown=f"{count:,}")


def parse_spec(raw: dict[str, Any], *, source: str = "<spec>") -> StudySpec:
    """Validate a parsed TOML document (see ``load_spec``)."""
    for k in raw:
        if k not in SECTIONS:
            raise fail(source, field_key(k), "one of the sections " + ", ".join(SECTIONS), k)
    study = _section(source, raw, "study", STUDY_RULES)
    for required in ("name", "sampler"):
        if required not in study:
            raise fail(source, f"study.{required}", "given", MISSING)
    sampler = study["sampler"]
    if sampler != "grid" and "trials" not in study:
        raise fail(source, "study.trials", f"given for sampler {sampler!r}", MISSING)
    objectives = tuple(study.get("objectives", ONE_OBJECTIVE))
    pruner = study.get("pruner", "none")
    if len(objectives) > 1 and pruner != "none":
        allowed = "'none' with several objectives (optuna cannot prune a multi-objective trial)"
        raise fail(source, "study.pruner", allowed, pruner)
    if "population" in study and sampler != "nsga2":
        raise fail(source, "study.population", "given only with sampler 'nsga2'",
                   study["population"])  # fmt: skip
    budget = Budget(**_section(source, raw, "budget", BUDGET_RULES))
    if not budget.min_params < budget.max_params:
        raise fail(
            source, "budget.max_params", f"greater than min_params = {budget.min_params}",
            budget.max_params,
        )  # fmt: skip
    data = _section(source, raw, "data", DATA_RULES)
    rules = train_rules(data.get("train_size"))
    train = settings_class()(**_section(source, raw, "train", rules))
    space_raw = raw.get("space", {})
    if not isinstance(space_raw, dict):
        raise fail(source, "space", "a table", space_raw)
    space = tuple(_dimension(source, k, v, sampler, rules) for k, v in space_raw.items())
    if sampler == "grid" and not space:
        raise fail(source, "space", "at least one list of values with sampler 'grid'", {})
    if DEPTH in space_raw and isinstance(space_raw[DEPTH], dict):
        allowed = "a list of depths (the widths a trial uses depend on its depth)"
        raise fail(source, f"space.{DEPTH}", allowed, space_raw[DEPTH])
    _check_space_size(source, sampler, space, train.depth)
    # Nesterov momentum with no momentum would fail every trial (the optimiser refuses it).
    searched = {d.name: d.choices or () for d in space}
    nesterov = train.nesterov or True in searched.get("nesterov", ())
    if nesterov and "momentum" not in searched and not train.momentum > 0:
        raise fail(source, "train.nesterov", "false unless momentum > 0", True)
    momentum = next((d for d in space if d.name == "momentum"), None)
    if nesterov and momentum is not None and (
        any(not m > 0 for m in momentum.choices or ()) or (momentum.is_range and
                                                            not momentum.low > 0)
    ):  # fmt: skip
        shown = list(momentum.choices) if momentum.choices else {"low": momentum.low}
        raise fail(source, "space.momentum", "greater than 0 where nesterov may be true", shown)
    spec = StudySpec(
        name=study["name"],
        sampler=sampler,
        trials=study.get("trials"),
        seed=study.get("seed", 0),
        pruner=pruner,
        objectives=objectives,
        population=study.get("population", POPULATION),
        threads=study.get("threads", 1),
        max_retries=study.get("max_retries", 3),
        prune_after=study.get("prune_after", 0),
        budget=budget,
        train=train,
        space=space,
        train_size=data.get("train_size"),
        data_path=os.path.expanduser(data["path"]) if "path" in data else None,
        source=source,
    )
    _check_widths(spec, space_raw)
    _check_budget_feasible(spec)
    if sampler != "grid" and (changing := categoricals_that_change(spec)) is not None:
        name, by_depth = changing
        shown = "; ".join(f"depth {d}: {c}" for d, c in sorted(by_depth.items()))
        allowed = ("the same in-budget values at every depth (optuna's categorical choices "
                   "cannot change between trials)")  # fmt: skip
        raise fail(source, f"space.{name}", allowed, None, shown=shown)
    return spec


#: Fields that do not change a study's results: its name, its cap (launchers steer it), and
#: where this host keeps the dataset.
_LOCAL = {"study.name", "study.trials", "data.path"}


def stored_spec(stored: Any, *, source: str) -> StudySpec:
    """The spec stored on a study (``StudySpec.to_dict``), validated like a study file: the
    database is shared, so what it holds is someone else's input."""
    if not isinstance(stored, dict):
        raise fail(source, "spec", "a table of sections", stored)
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
    for spec, d in ((stored, old), (given, new)):  # stored only when several; say which
        d["study"].setdefault("objectives", list(spec.objectives))
    for section in SECTIONS:
        a, b = old.get(section, {}), new.get(section, {})
        for key in [*a, *(k for k in b if k not in a)]:
            field = f"{section}.{key}"
            if field not in _LOCAL and a.get(key) != b.get(key):
                return field, a.get(key), b.get(key)
    return None


def _check_widths(spec: StudySpec, space_raw: dict[str, Any]) -> None:
    """Widths searched where no depth of the study uses them, and the widths of a depth that
    TPE and random sampling could not draw inside the budget every time, are refused."""
    source, reached = spec.source, depths(spec)
    for k, name in enumerate(WIDTHS, start=1):
        if name in space_raw and k > max(reached):
            where = (f"[space] depth = {list(reached)}" if spec.dimension(DEPTH)
                     else f"[train] depth = {spec.train.depth}")  # fmt: skip
            allowed = f"a width of a depth the study has ({name} needs depth >= {k}; {where})"
            raise fail(source, f"space.{name}", allowed, space_raw[name])
    if spec.sampler == "grid":
        return
    window = spec.budget.max_params - spec.budget.min_params
    for depth in sorted(set(reached)):
        widths = DepthSpace.of(spec, depth)
        lists, ranges = widths.indices("list"), widths.indices("range")
        if len(lists) >= 2 and ranges:
            # A list drawn after another could not change its choices with the draw before it
            # (optuna's categorical distributions are fixed), and a joint one would need the
            # ranges' values.
            shown = (f"lists {', '.join(WIDTHS[k] for k in lists)} and ranges "
                     + ", ".join(WIDTHS[k] for k in ranges))  # fmt: skip
            allowed = f"the widths of depth {depth} as lists, or as ranges with one list at most"
            raise fail(source, "space", allowed, None, shown=shown)
        if len(ranges) >= 2:
            slope, k = widest_slope(widths.box(), ranges)
            if not slope < window:  # the draw in budget is exact only then (sweep.study.budget)
                allowed = (f"more than min_params + {slope:,} when widths are searched as ranges "
                           f"(a unit of {WIDTHS[k]} adds up to {slope:,} parameters)")  # fmt: skip
                raise fail(source, "budget.max_params", allowed, spec.budget.max_params)


def _check_budget_feasible(spec: StudySpec) -> None:
    """A budget no architecture in the space can meet is an error before anything runs."""
    if feasible_architectures_exist(spec):
        return
    b = spec.budget
    reached = sorted(set(depths(spec)))
    parts = []
    for depth in reached:
        box = DepthSpace.of(spec, depth).box()
        ranges = [f"{WIDTHS[k]} in [{lo}, {hi}]" for k, (lo, hi) in enumerate(box)]
        widths = ", ".join(ranges[:-1]) + " and " + ranges[-1] if len(ranges) > 1 else ranges[0]
        counts = (f"{parameter_count(*(lo for lo, _ in box)):,} to "
                  f"{parameter_count(*(hi for _, hi in box)):,}")  # fmt: skip
        parts.append((depth, widths, counts))
    bounds = f"has {b.min_params:,} < parameters < {b.max_params:,}"
    if len(parts) == 1:
        _, widths, counts = parts[0]
        message = f"no architecture with {widths} {bounds} (these sizes give {counts})"
    else:
        each = "; ".join(f"depth {d}: {w} give {c}" for d, w, c in parts)
        listed = ", ".join(map(str, reached[:-1])) + f" or {reached[-1]}"
        message = f"no architecture of depth {listed} {bounds} ({each})"
    raise SpecError(f"{spec.source}: [budget] {message}")

"""What any client stored on a study, read as untrusted input.

The study database is shared: optuna-dashboard, the ``optuna`` CLI and any script can write a
study's attributes and name. What sweep shows from it is judged here: whether a study is
sweep's own (its stored spec validates and the study's directions are its objectives'), numbers
that are finite numbers, text that stays on one line (``sweep.text.printable``, re-exported
here). A stored parameter is judged where it is read
(``sweep.queue.attrs.stored_param``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from sweep.errors import SpecError
from sweep.queue.attrs import SPEC
from sweep.queue.front import maximized
from sweep.study import objectives
from sweep.study.objectives import Objective
from sweep.study.spec import StudySpec, stored_spec
from sweep.text import printable


@dataclasses.dataclass(frozen=True)
class Kind:
    """How to read a study: sweep's own (validated spec, its declared objectives: accuracy in
    percent first), or one another optuna client made, reported plainly in its own directions
    and metric names."""

    sweep: bool
    #: sweep's declared objectives (``sweep.study.objectives``); for another client's study one
    #: plain objective per direction, named by its printable metric name, without a unit
    objectives: tuple[Objective, ...]
    spec: StudySpec | None

    @property
    def maximize(self) -> bool:
        """The (first) objective's direction."""
        return self.objectives[0].maximize

    @property
    def metrics(self) -> tuple[str, ...]:
        """One printable name per objective: sweep's labels, or the stored metric names."""
        return tuple(o.label for o in self.objectives)

    @property
    def metric(self) -> str:
        return ", ".join(self.metrics)

    @property
    def multi(self) -> bool:
        """Several objectives: a Pareto front, no single best trial."""
        return len(self.objectives) > 1


def study_kind(user_attrs: dict[str, Any], directions: list[StudyDirection],
               metric_names: list[Any] | None) -> Kind:  # fmt: skip
    """Sweep's own study when its stored spec is valid and the study's directions are those of
    the spec's objectives; the stored spec is anyone's JSON, so it is validated before any of
    it is believed. Another client's study gets its stored metric names where they are one per
    direction, else "value" (one objective) or "value 0", "value 1", …"""
    spec = None
    if SPEC in user_attrs:
        try:
            spec = stored_spec(user_attrs[SPEC], source="stored spec")
        except SpecError:
            spec = None
    if spec is not None and directions == objectives.directions(spec.objectives):
        return Kind(True, objectives.objectives_of(spec.objectives), spec)
    names: list[Any] = (
        ["value"] if len(directions) == 1 else [f"value {i}" for i in range(len(directions))]
    )
    if isinstance(metric_names, list) and len(metric_names) == len(directions):
        names = metric_names
    # A direction optuna does not name: of several, minimised as optuna's front minimises it
    # (sweep.queue.front); of one, maximised as sweep has always shown such a study's best.
    maximize = (maximized(directions) if len(directions) > 1
                else [d != StudyDirection.MINIMIZE for d in directions])  # fmt: skip
    plain = tuple(
        Objective(shown, m, "", shown)
        for shown, m in zip((printable(str(n), 40) for n in names), maximize, strict=True)
    )
    return Kind(False, plain, None)


def number(value: Any) -> float | None:
    """A finite number stored by anyone, else None (attributes are JSON any client may write;
    an integer past a float's range, as JSON's 400 digits, is none: ``float`` overflows)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value) if math.isfinite(value) else None
    except OverflowError:
        return None


#: The integers a stored count may be (a 64-bit integer's, as SQL's BIGINT and numpy keep them);
#: another client's beyond them (JSON has no limit: a 400-digit n_params overflowed the report's
#: figures) reads as no count, as a value stored badly does elsewhere (``attrs.stored_param``).
_COUNTS = range(-(2**63), 2**63)


def count(t: FrozenTrial, key: str) -> int | None:
    """A stored integer (``n_params``, ``pruned_at``) in ``_COUNTS``, else None."""
    value = t.user_attrs.get(key)
    ok = isinstance(value, int) and not isinstance(value, bool) and value in _COUNTS
    return value if ok else None


def series(t: FrozenTrial, key: str) -> list[float]:
    """A stored per-epoch list of finite numbers; anything else reads as no series."""
    return series_of(t.user_attrs.get(key))


_FLOAT = {float}


def series_of(values: Any) -> list[float]:
    """``series`` of a stored value: a non-empty list of finite numbers, else empty."""
    if not isinstance(values, list) or not values:
        return []
    # the common case, without a call per epoch (issue 27: 10⁶ trials): floats only, whose
    # sum is finite only if each is (an infinity or NaN makes it infinite or NaN; a finite sum
    # that overflows falls to the check below, which decides the same)
    if set(map(type, values)) == _FLOAT and -math.inf < sum(values) < math.inf:
        return list(values)
    numbers = [number(v) for v in values]
    return [] if None in numbers else numbers  # type: ignore[return-value]

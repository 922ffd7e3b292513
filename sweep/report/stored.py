"""What any client stored on a study, read as untrusted input.

The study database is shared: optuna-dashboard, the ``optuna`` CLI and any script can write a
study's attributes and name. What sweep shows from it is judged here: whether a study is
sweep's own (its stored spec validates), numbers that are finite numbers, text that stays on one
line (``sweep.text.printable``, re-exported here). A stored parameter is judged where it is read
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
from sweep.study.objectives import METRIC
from sweep.study.spec import StudySpec, stored_spec
from sweep.text import printable


@dataclasses.dataclass(frozen=True)
class Kind:
    """How to read a study: sweep's own (validated spec, maximised accuracy in percent), or one
    another optuna client made, reported plainly in its own direction and metric name."""

    sweep: bool
    maximize: bool  # the (first) objective's direction
    metrics: tuple[str, ...]  # one printable name per objective
    spec: StudySpec | None

    @property
    def metric(self) -> str:
        return ", ".join(self.metrics)


def study_kind(user_attrs: dict[str, Any], directions: list[StudyDirection],
               metric_names: list[str] | None) -> Kind:  # fmt: skip
    """Sweep's own study when its stored spec is valid and it maximises one value; the stored
    spec is anyone's JSON, so it is validated before any of it is believed."""
    spec = None
    if SPEC in user_attrs and directions == [StudyDirection.MAXIMIZE]:
        try:
            spec = stored_spec(user_attrs[SPEC], source="stored spec")
        except SpecError:
            spec = None
    names = metric_names or [METRIC if spec else "value"] * len(directions)
    shown = tuple(printable(n, 40) for n in names)
    return Kind(spec is not None, directions[0] != StudyDirection.MINIMIZE, shown, spec)


def number(value: Any) -> float | None:
    """A finite number stored by anyone, else None (attributes are JSON any client may write)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def count(t: FrozenTrial, key: str) -> int | None:
    value = t.user_attrs.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def series(t: FrozenTrial, key: str) -> list[float]:
    """A stored per-epoch list of finite numbers; anything else reads as no series."""
    values = t.user_attrs.get(key)
    if not isinstance(values, list) or not values:
        return []
    numbers = [number(v) for v in values]
    return [] if None in numbers else numbers  # type: ignore[return-value]

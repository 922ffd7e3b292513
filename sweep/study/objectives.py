"""What a study optimises: its objectives, each declared once here with its direction, unit and
label. The label is optuna's metric name, so the dashboard, ``plot_pareto_front``, the CSV and
the figures all show the same words.

A study file names them in ``[study] objectives`` (default ``["accuracy"]``: sweep's single
objective, unchanged); validation accuracy always comes first, so a trial's first value is
its accuracy whatever else the study asks. ``epoch_time`` is measured on the worker that ran
the trial (its CPU, its load, its BLAS), the one value that is not a function of the trial's
parameters alone: its label says so, and so does every table and figure that shows it.

Which trials are best under several objectives is answered once, in ``sweep.queue.front``.
"""

from __future__ import annotations

import dataclasses

from optuna.study import StudyDirection


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str  # in the study file
    maximize: bool
    unit: str  # as an axis or column shows it
    label: str  # optuna's metric name: what the dashboard, CSV and figures show
    measured: bool = False  # depends on the worker that ran the trial, not only on its params

    @property
    def direction(self) -> StudyDirection:
        return StudyDirection.MAXIMIZE if self.maximize else StudyDirection.MINIMIZE


ACCURACY = Objective("accuracy", True, "%", "validation accuracy [%]")
PARAMS = Objective("params", False, "parameters", "parameters")
EPOCH_TIME = Objective(
    "epoch_time", False, "s", "seconds per epoch (measured on its worker)", measured=True
)
OBJECTIVES = {o.name: o for o in (ACCURACY, PARAMS, EPOCH_TIME)}
DEFAULT = (ACCURACY.name,)


def objectives_of(names: tuple[str, ...]) -> tuple[Objective, ...]:
    """The declared objectives of a validated ``[study] objectives`` list."""
    return tuple(OBJECTIVES[n] for n in names)


def directions(names: tuple[str, ...]) -> list[StudyDirection]:
    return [o.direction for o in objectives_of(names)]


def labels(names: tuple[str, ...]) -> list[str]:
    return [o.label for o in objectives_of(names)]


def values_of(
    names: tuple[str, ...], *, accuracy: float, params: int, epoch_seconds: list[float]
) -> float | tuple[float, ...]:
    """A finished trial's value (one objective, as before: the accuracy) or values, in the
    study's order. ``epoch_seconds`` is every epoch's wall time, those of a checkpoint it
    resumed from included (as the worker that ran each measured it)."""
    if names == DEFAULT:
        return accuracy
    per_epoch = sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else float("nan")
    known = {ACCURACY.name: accuracy, PARAMS.name: float(params), EPOCH_TIME.name: per_epoch}
    return tuple(known[n] for n in names)

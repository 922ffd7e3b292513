"""One name and one number format for each quantity a report shows, in every table and figure.

A report once headed one table ``r_valid [%]`` and ``lr`` and the next ``validation accuracy
[%]`` and ``learning_rate``, and printed the same network's size as ``802314`` in one and
``802,314`` in the other (#28). The names here are the study's own words: the accuracy is its
objective's label (``sweep.study.objectives``, optuna's metric name, so the dashboard says it
too), a parameter is named as the study file and ``trials.csv`` name it. ``trials.csv`` keeps
plain numbers for machines (``sweep.report.shown``); what a person reads goes through
``quantity``.
"""

from __future__ import annotations

from collections.abc import Callable

from sweep.study.objectives import ACCURACY as _ACCURACY

ACCURACY = _ACCURACY.label  # "validation accuracy [%]": every accuracy column and axis
PARAMETERS = "parameters"  # a network's weights and biases: every size column and axis
LEARNING_RATE = "learning_rate"  # the parameter as the study file and trials.csv name it
SECONDS = "seconds"  # a trial's wall time


def _seconds(v: float) -> str:
    """Whole thousands with separators, small values to 4 digits (as a large report's
    quantiles print them, ``sweep.report.digest``)."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


#: How each quantity's numbers print: accuracy to 2 decimals, sizes with thousands separators.
FORMATS: dict[str, Callable[[float], str]] = {
    ACCURACY: lambda v: f"{v:.2f}",
    PARAMETERS: lambda v: f"{v:,.0f}",
    LEARNING_RATE: lambda v: f"{v:.4g}",
    SECONDS: _seconds,
}


def quantity(name: str, value: float | None) -> str:
    """``value`` as every table and figure prints the quantity ``name`` (another client's
    metric to 6 digits); empty for None."""
    if value is None:
        return ""
    return FORMATS[name](value) if name in FORMATS else f"{value:.6g}"

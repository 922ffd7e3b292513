"""The attributes sweep writes on a study and its trials: their names, and how one is read back.

The names are shared with whoever else reads the study (the dashboard, scripts); any client may
also write them, so a value is read back as untrusted JSON (``attr``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

from optuna.distributions import BaseDistribution, json_to_distribution

from sweep.queue.tables import decoded

#: The user attributes of a claim; recovery touches only trials that carry them, and a grid
#: point is taken as trained by a finished trial that carries them (a sweep worker ran it).
RUN_TAG, WORKER_TAG = "run", "worker"
#: System attributes an enqueued trial starts with; a release keeps these and drops the rest.
FIXED, FAILED_TRIAL, RETRY_HISTORY = "fixed_params", "failed_trial", "retry_history"
#: System attributes of a trial's work in progress: its latest checkpoint, ``{"artifact_id":
#: str, "epoch": int}`` (written by the objective), and the checkpoint a requeued trial starts
#: from, the same with the ``trial`` (number) that wrote it (written by ``sweep.queue.operations``):
#: ``resume_from`` while it waits, ``resumed_from`` once claimed
#: (``sweep.queue.tables.RESUME_INDEX``).
CHECKPOINT = "checkpoint"
#: User attribute of a trial that did not run because the cap was lowered (state FAIL, and
#: it does not count toward the cap or cover its grid point: raising the cap queues it again).
SKIPPED = "skipped"
#: The study's user attribute holding its spec (``StudySpec.to_dict``), its source of truth.
SPEC = "spec"
#: User attribute of a FAIL that is the trial's own result (it counts; it is not rerun).
FAIL_REASON = "fail_reason"


def attr(text: str | None, kind: type, default: Any) -> Any:
    """A JSON attribute another client may have written: ``default`` unless it is a ``kind``."""
    value = decoded(text)
    return value if isinstance(value, kind) else default


def stored_param(value: Any, distribution: Any) -> tuple[Any, BaseDistribution] | None:
    """A trial parameter as any client stored it (a ``trial_params`` row's number and its
    distribution's JSON), as optuna shows it: ``(value, distribution)``, the value in the
    distribution's terms (a categorical's choice, not its index). None where optuna would not
    have stored it so (SQL wrote it): a number that is not finite (NULL, NaN, text), a
    distribution optuna cannot parse, or a number it has no value for (an index past a
    categorical's choices).

    One policy for every reader (a grid's coverage, the report, ``sweep status``): such a
    parameter is left out, as if it had never been set. A guess misleads each of them: a
    grid point taken as trained because a broken row held its number, a categorical's index
    shown as if it were its choice. The errors caught are those optuna's parser raises on
    bad input, found by tests/sweep/test_stored_param.py (an integer bound of ``1e999``
    overflows, a float step past ``Decimal``'s range is an ``InvalidOperation``).
    """
    try:
        if not math.isfinite(value):
            return None
        parsed = _distribution(distribution)
        return parsed.to_external_repr(value), parsed
    except (ValueError, TypeError, LookupError, ArithmeticError, RecursionError):
        return None


@functools.lru_cache(maxsize=256)
def _distribution(text: str) -> BaseDistribution:
    """A stored distribution, parsed once per text: a study's parameters share a few texts,
    and a report of 10⁵ trials would otherwise parse one per row. Distributions are never
    changed once made, so readers may share them."""
    return json_to_distribution(text)

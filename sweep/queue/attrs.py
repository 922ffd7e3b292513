"""The attributes sweep writes on a study and its trials: their names, and how one is read back.

The names are shared with whoever else reads the study (the dashboard, scripts); any client may
also write them, so a value is read back as untrusted JSON (``attr``).
"""

from __future__ import annotations

from typing import Any

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

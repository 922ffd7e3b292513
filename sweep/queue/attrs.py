"""The attributes sweep writes on a study and its trials: their names, and how one is read back.

The names are shared with whoever else reads the study (the dashboard, scripts); any client may
also write them, so a value is read back as untrusted JSON (``decoded``, ``attr``, ``pointer``).
"""

from __future__ import annotations

import json
import re
from typing import Any

#: The user attributes of a claim; recovery touches only trials that carry them, and a grid
#: point is taken as trained by a finished trial that carries them (a sweep worker ran it).
RUN_TAG, WORKER_TAG = "run", "worker"
#: System attributes an enqueued trial starts with; a release keeps these and drops the rest.
FIXED, FAILED_TRIAL, RETRY_HISTORY = "fixed_params", "failed_trial", "retry_history"
#: System attributes of a trial's work in progress: its latest checkpoint, ``{"artifact_id":
#: str, "epoch": int}`` (written by the objective), and the checkpoint a requeued trial starts
#: from, the same with the ``trial`` (number) that wrote it (written by ``sweep.queue.handover``):
#: ``resume_from`` while it waits, ``resumed_from`` once claimed
#: (``sweep.queue.tables.RESUME_INDEX``).
CHECKPOINT, RESUME_FROM, RESUMED_FROM = "checkpoint", "resume_from", "resumed_from"
#: The key prefix of the attribute by which optuna's ``upload_artifact`` names an artifact on
#: its trial or study (``artifacts:<id>``, its meta data as JSON; optuna-dashboard lists them).
ARTIFACT_PREFIX = "artifacts:"
#: User attribute of a trial that did not run because the cap was lowered (state FAIL, and
#: it does not count toward the cap or cover its grid point: raising the cap queues it again).
SKIPPED = "skipped"
#: The study's user attribute holding its spec (``StudySpec.to_dict``), its source of truth.
SPEC = "spec"
#: User attribute of a FAIL that is the trial's own result (it counts; it is not rerun).
FAIL_REASON = "fail_reason"
#: User attribute of a trial failed because its worker died: which worker, and how.
LOST = "lost"

#: What an artifact id read from the database may look like (optuna's are uuid4 strings): a
#: name, never a path (a checkpoint named ``../../x`` must never be read or deleted).
ARTIFACT_ID = re.compile(r"[0-9A-Za-z_-][0-9A-Za-z_.-]{0,127}")


def decoded(text: Any) -> Any:
    """An attribute's JSON text as anyone may have stored it; None if it is not JSON (raw SQL
    text, NULL, or nesting deep enough to exhaust the parser)."""
    try:
        return json.loads(text) if isinstance(text, str | bytes) else None
    except (ValueError, RecursionError):
        return None


def attr(text: str | None, kind: type, default: Any) -> Any:
    """A JSON attribute another client may have written: ``default`` unless it is a ``kind``."""
    value = decoded(text)
    return value if isinstance(value, kind) else default


def pointer(value: Any) -> dict[str, Any] | None:
    """An attribute that names an artifact (``checkpoint``, ``resume_from``,
    ``resumed_from``, the study's ``best_model``), decoded, as far as it is well formed
    (another client may have written anything): a dict whose ``artifact_id`` is a plain
    name; None if not."""
    if not isinstance(value, dict):
        return None
    artifact = value.get("artifact_id")
    return value if isinstance(artifact, str) and ARTIFACT_ID.fullmatch(artifact) else None


def why_failed(user_attrs: dict[str, Any]) -> str:
    """Why a FAIL trial failed, in a few words, from attributes any client may have written."""
    if FAIL_REASON in user_attrs:
        return str(user_attrs[FAIL_REASON])
    if SKIPPED in user_attrs:
        return f"skipped: {user_attrs[SKIPPED]}"
    return "worker lost (rerun as another trial)"

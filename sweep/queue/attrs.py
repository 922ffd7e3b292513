"""The attributes sweep writes on a study and its trials: their names, and how one is read back.

The names and values are a stored format, shared with whoever else reads the study (the
dashboard, scripts, an older sweep): keys are kept as they are. Any client may also write them,
so a value is read back as untrusted JSON (``decoded``, ``attr``, ``pointer``, ``Checkpoint``).

A checkpoint hand-over is one concept under three keys: one value, ``{"artifact_id": str,
"epoch": int >= 1, "trial": int >= 0}``, read and written in code as a ``Checkpoint``:

  - ``checkpoint``, on a RUNNING trial: its latest checkpoint (no ``trial``: its own), written
    by its worker after an epoch (``sweep.trial.checkpoint``);
  - ``resume_from``, on a WAITING trial that takes a dead or released trial's work over, written
    by the release or recovery that ended the claim (``sweep.queue.handover`` says which);
  - ``resumed_from``: the same, once the trial is claimed (the claim renames the key).

The partial index ``ix_sweep_resumable`` (``sweep.queue.tables.RESUME_INDEX``) holds exactly the
``resume_from`` rows, which is why a claim renames the key rather than reading a flag.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from typing import Any

from optuna.distributions import BaseDistribution, json_to_distribution

#: The user attributes of a claim; recovery touches only trials that carry them, and a grid
#: point is taken as trained by a finished trial that carries them (a sweep worker ran it).
RUN_TAG, WORKER_TAG = "run", "worker"
#: System attributes an enqueued trial starts with; a release keeps these and drops the rest.
FIXED, FAILED_TRIAL, RETRY_HISTORY = "fixed_params", "failed_trial", "retry_history"
#: The system attributes of a checkpoint hand-over (see the module's table).
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
#: The study's system attributes naming the best COMPLETE trial's final weights
#: (``{"artifact_id", "trial", "value", "trial_id"}``, ``sweep.trial.cleanup``) and the model
#: ``sweep evaluate`` retrained and uploaded (``{"artifact_id", "sidecar_id", "trial"}``,
#: ``sweep.trial.best``).
BEST_MODEL, EVALUATED_MODEL = "best_model", "evaluated_model"
#: The study's system attribute naming the final weights of the trials on the front of a study
#: of several objectives: a list of ``{"artifact_id", "trial", "trial_id"}`` (``best_model``'s
#: twin, ``sweep.trial.cleanup``).
FRONT_MODELS = "front_models"
#: The study's system attribute by which a launcher asks its run's workers to stop
#: (``stop:<run id>``; dask cannot kill a running task).
STOP_PREFIX = "stop:"


#: The longest host a ``worker`` tag is read with: a DNS name has at most 253 characters, and
#: the tag is anyone's text (a 5 MB one must not reach a terminal or a JSON record whole).
MAX_HOST = 255


def worker_tag(host: str, pid: int) -> str:
    """The ``worker`` tag of a claim: ``host:pid`` (``tag_host`` reads its host back)."""
    return f"{host}:{pid}"


def tag_host(value: Any) -> str:
    """The host of a ``worker`` tag as any client stored it (decoded JSON): the text before
    its last ':' if a pid of ASCII digits follows, else the whole text, at most ``MAX_HOST``
    characters; '?' if it is not text. (Not made printable: each face does that.)"""
    if not isinstance(value, str):
        return "?"
    host, colon, pid = value.rpartition(":")
    return (host if colon and pid.isascii() and pid.isdigit() else value)[:MAX_HOST]


def stop_key(run_id: str) -> str:
    """The study's system attribute that stops the workers of run ``run_id``."""
    return STOP_PREFIX + run_id


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


def pointer(value: Any) -> dict[str, Any] | None:
    """An attribute that names an artifact (``checkpoint``, ``resume_from``,
    ``resumed_from``, the study's ``best_model``, each of its ``front_models``), decoded, as
    far as it is well formed (another client may have written anything): a dict whose
    ``artifact_id`` is a plain name; None if not."""
    if not isinstance(value, dict):
        return None
    artifact = value.get("artifact_id")
    return value if isinstance(artifact, str) and ARTIFACT_ID.fullmatch(artifact) else None


def kept_models(value: Any) -> list[dict[str, Any]]:
    """A ``front_models`` value (decoded JSON, anyone's) as far as it is well formed: its
    entries that are an artifact ``pointer`` with an integer ``trial_id``, each artifact once,
    as ``{"artifact_id", "trial", "trial_id"}`` (``trial`` as stored: the number it claims)."""
    entries, seen = [], set()
    for item in value if isinstance(value, list) else []:
        item = pointer(item)
        if item is None or type(item.get("trial_id")) is not int or item["artifact_id"] in seen:
            continue
        seen.add(item["artifact_id"])
        entries.append({"artifact_id": item["artifact_id"], "trial": item.get("trial"),
                        "trial_id": item["trial_id"]})  # fmt: skip
    return entries


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as trials hand it on (the module's table): the artifact holding a training
    state, the last epoch in it, and the number of the trial whose work it is (None in a
    running trial's own ``checkpoint``)."""

    artifact_id: str
    epoch: int
    trial: int | None = None

    @classmethod
    def read(cls, value: Any) -> Checkpoint | None:
        """An attribute's value (decoded JSON, as optuna returns it; ``decoded`` for stored
        text) as far as it is well formed: an artifact ``pointer`` with an integer ``epoch`` >=
        1; a ``trial`` that is not an integer >= 0 reads as None. None if not well formed."""
        value = pointer(value)
        if value is None or type(value.get("epoch")) is not int or value["epoch"] < 1:
            return None
        trial = value.get("trial")
        trial = trial if type(trial) is int and trial >= 0 else None
        return cls(value["artifact_id"], value["epoch"], trial)

    def stored(self) -> dict[str, Any]:
        """The value to store (JSON-encodable), ``trial`` only where there is one."""
        value: dict[str, Any] = {"artifact_id": self.artifact_id, "epoch": self.epoch}
        return value if self.trial is None else {**value, "trial": self.trial}


def why_failed(user_attrs: dict[str, Any]) -> str:
    """Why a FAIL trial failed, in a few words, from attributes any client may have written."""
    if FAIL_REASON in user_attrs:
        return str(user_attrs[FAIL_REASON])
    if SKIPPED in user_attrs:
        return f"skipped: {user_attrs[SKIPPED]}"
    return "worker lost (rerun as another trial)"

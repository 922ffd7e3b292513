"""What a trial's successor takes over when its claim ends: its parameters, its retry history
and the checkpoint its work resumes from.

A claim ends without a result in two ways: a release (the worker gave the trial back,
``sweep.queue.claims``) puts the trial itself back in the queue, and a recovery (its worker
died, ``sweep.queue.recovery``) fails it and enqueues a replacement. Either way the trial that
runs next gets the same parameters (a TPE or random trial's sampled ones too, fixed) and, as
``resume_from``, the checkpoint its work had reached: ``handover`` reads it, ``Work.kept`` and
``Work.successor`` are what the release and the recovery write (the keys:
``sweep.queue.attrs``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy

from sweep.queue import tables as tb
from sweep.queue.attrs import (
    CHECKPOINT,
    FAILED_TRIAL,
    FIXED,
    RESUME_FROM,
    RESUMED_FROM,
    RETRY_HISTORY,
    Checkpoint,
    attr,
    decoded,
)
from sweep.queue.coverage import stored_params


@dataclasses.dataclass(frozen=True)
class Work:
    """What a trial's successor takes over: its parameters and where its training stands."""

    fixed: dict[str, Any]  # the fixed parameters, with those it ran with where none were fixed
    had_fixed: bool  # it was enqueued with fixed parameters (a grid point, or a user's)
    history: list[int]  # optuna's ``retry_history``: its failed predecessors' numbers
    resume_from: Checkpoint | None  # see ``_resume_point``

    def kept(self) -> dict[str, Any]:
        """The system attributes a released trial keeps, besides its retry history and the
        names of its artifacts: its parameters, as fixed ones, and its ``resume_from``."""
        kept: dict[str, Any] = {}
        if self.fixed or self.had_fixed:
            kept[FIXED] = self.fixed
        if self.resume_from is not None:
            kept[RESUME_FROM] = self.resume_from.stored()
        return kept

    def successor(self, number: int) -> dict[str, Any]:
        """The system attributes of the trial that replaces trial ``number`` besides its fixed
        parameters: optuna's ``failed_trial`` and ``retry_history``, and its ``resume_from``."""
        past = self.history
        extra: dict[str, Any] = {FAILED_TRIAL: past[0] if past else number,
                                 RETRY_HISTORY: [*past, number]}  # fmt: skip
        if self.resume_from is not None:
            extra[RESUME_FROM] = self.resume_from.stored()
        return extra


def handover(conn: Any, trial_id: int, number: int) -> Work:
    """The work of trial ``number``, read in the transaction that just took it from its claim.

    Read after that fenced update, never before: on PostgreSQL (READ COMMITTED) a statement
    that waited for the trial's row sees the rows committed meanwhile only if it starts after
    the wait, so a checkpoint pointer read together with the row lock could be the one the
    worker replaced (and deleted) while we waited, and the successor would retrain from
    epoch 1. Once the update holds the row, the worker's write-backs fail on the fence: the
    pointer read here is its last one.
    """
    system = tb.system_attrs
    keys = [FIXED, CHECKPOINT, RESUMED_FROM, RETRY_HISTORY]
    work = dict(
        conn.execute(
            sqlalchemy.select(system.c.key, system.c.value_json).where(
                system.c.trial_id == trial_id, system.c.key.in_(keys)
            )
        ).all()
    )
    ran = stored_params(conn, [trial_id]).get(trial_id, {})
    return Work(
        fixed=_fixed(work.get(FIXED), ran),
        had_fixed=FIXED in work,
        history=_history(work.get(RETRY_HISTORY)),
        resume_from=_resume_point(number, work.get(CHECKPOINT), work.get(RESUMED_FROM)),
    )


def _fixed(fixed_json: str | None, ran: dict[str, Any]) -> dict[str, Any]:
    """The parameters a trial's successor runs: its fixed ones, over those it ran with (a
    TPE/random slot has none fixed: its sampler chose them), so that every ``suggest_*`` of
    the successor returns what the trial's did and its checkpoint fits the same network."""
    return {**ran, **attr(fixed_json, dict, {})}


def _history(text: str | None) -> list[int]:
    """A trial's ``retry_history`` (optuna's: the numbers of its failed predecessors)."""
    past = attr(text, list, [])
    return past if all(type(n) is int for n in past) else []


def _resume_point(
    number: int, checkpoint_json: str | None, resume_json: str | None
) -> Checkpoint | None:
    """Where the work of trial ``number`` resumes: its own ``checkpoint``, else the
    ``resume_from`` it was given and had not yet replaced by a checkpoint (its artifact is
    still there); None if neither is well formed. Another client may have written either."""
    own, given = Checkpoint.read(decoded(checkpoint_json)), Checkpoint.read(decoded(resume_json))
    if given is not None and given.trial is None:
        given = None  # a hand-over always names the trial whose work it is
    if own is not None and given is not None and own.artifact_id == given.artifact_id:
        return given  # it resumed and names what it was given: that trial's work, not its own
    if own is not None:
        return dataclasses.replace(own, trial=number)
    return given

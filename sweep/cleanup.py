"""A trial's end: its artifacts deleted, the best model kept.

After a trial ends (``sweep.worker`` calls ``trial_ended`` after ``study.tell``), every artifact
named on it (``artifacts:<id>``, see ``sweep.checkpoint``) and on the dead trials whose work it
took over (its ``retry_history``) is deleted with its name, except its final weights when it is
the best COMPLETE trial so far: those become the study's ``best_model`` (``keep_best``, a
compare-and-set under the study lock), and the model they replace is deleted.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy

from sweep import tables as tb
from sweep.checkpoint import remove
from sweep.queue import (
    ARTIFACT_ID,
    CHECKPOINT,
    FAIL_REASON,
    RESUMED_FROM,
    RETRY_HISTORY,
    lock_study,
    pointer,
)  # fmt: skip
from sweep.storage import root_message

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.storages import RDBStorage

logger = logging.getLogger(__name__)

#: The study's system attribute naming the best COMPLETE trial's final weights.
BEST_MODEL = "best_model"


def trial_ended(store: ArtifactStore, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """After ``study.tell``: delete the artifacts named on the trial and on the dead trials
    whose work it took over (its ``retry_history``), and their names, except its final weights
    when it is the best COMPLETE trial so far (``keep_best``). Never raises."""
    try:
        from sweep.study import rdb_of  # sweep.study imports the objective, which imports us

        backend = rdb_of(study._storage)
        mine = pointer(trial.system_attrs.get(CHECKPOINT))
        keep = None
        value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None
        final = mine is not None and mine.get("epoch") == trial.last_step
        if final and value is not None and math.isfinite(value):  # (else its final upload failed)
            keep = mine["artifact_id"]
            maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
            best = {"artifact_id": keep, "trial": trial.number, "value": value,
                    "trial_id": trial._trial_id}  # fmt: skip
            kept, old = keep_best(backend, study._study_id, best, maximize=maximize)
            if old is not None:
                owner = old.get("trial_id")
                _forget(
                    store, backend, [(owner if type(owner) is int else None, old["artifact_id"])]
                )
            if not kept:
                keep = None
        named = _named(backend, study._study_id, trial._trial_id, predecessors(trial.system_attrs))
        # Pointers a name does not cover (written by a sweep before names were kept, or by
        # another client) still lose their files.
        listed = {artifact for _, artifact in named}
        given = pointer(trial.system_attrs.get(RESUMED_FROM))
        loose = [(None, p["artifact_id"]) for p in (mine, given)
                 if p is not None and p["artifact_id"] not in listed]  # fmt: skip
        _forget(store, backend, [(t, a) for t, a in named + loose if a != keep])
    except Exception as e:  # a leftover file is not worth stopping the worker
        logger.warning("trial %d: checkpoint clean-up failed: %s", trial.number, root_message(e))


def clear_dead(store: ArtifactStore, storage: RDBStorage, study_id: int) -> None:
    """Delete what the study's trials that died for good left: those whose workers died
    ``max_retries`` times (FAIL with a ``fail_reason``, and no successor, whose end would
    have deleted it) keep the artifacts named on them and on the trials they took over. Reads
    the study's FAIL trials that still name an artifact (through the queue's index). Never
    raises."""
    trials, system, user = tb.trials, tb.system_attrs, tb.user_attrs
    named = sqlalchemy.exists().where(
        system.c.trial_id == trials.c.trial_id,
        system.c.key.startswith(tb.ARTIFACT_PREFIX, autoescape=True),
    )
    ended = sqlalchemy.exists().where(
        user.c.trial_id == trials.c.trial_id, user.c.key == FAIL_REASON
    )
    history = system.alias("history")
    try:
        with storage.engine.connect() as conn:
            dead = conn.execute(
                sqlalchemy.select(trials.c.trial_id, history.c.value_json)
                .outerjoin(history, sqlalchemy.and_(
                    history.c.trial_id == trials.c.trial_id, history.c.key == RETRY_HISTORY))
                .where(trials.c.study_id == study_id,
                       trials.c.state == optuna.trial.TrialState.FAIL, ended, named)
            ).all()  # fmt: skip
        for trial_id, past in dead:
            named_here = _named(storage, study_id, trial_id,
                                predecessors({RETRY_HISTORY: tb.decoded(past)}))  # fmt: skip
            _forget(store, storage, named_here)
    except Exception as e:
        logger.warning("clean-up of the trials that died for good failed: %s", root_message(e))


def predecessors(system_attrs: dict[str, Any]) -> list[int]:
    """The numbers of the dead trials whose work a trial took over: optuna's
    ``retry_history``, as far as it is a list of numbers."""
    history = system_attrs.get(RETRY_HISTORY)
    return [n for n in history if type(n) is int] if isinstance(history, list) else []


def clear_predecessors(
    store: ArtifactStore, trial: optuna.Trial, system_attrs: dict[str, Any], keep: str | None
) -> None:
    """When a trial that took over dead trials' work starts: delete what they left (a
    checkpoint a kill cut short, one written and never recorded) but ``keep``, the checkpoint
    it resumes from, rather than leave them on disk until it ends; ``system_attrs`` are the
    trial's, as its resume read them. Never raises."""
    try:
        from sweep.study import rdb_of  # sweep.study imports the objective, which imports us

        dead = predecessors(system_attrs)
        if not dead:
            return
        backend = rdb_of(trial.study._storage)
        named = _named(backend, trial.study._study_id, None, dead)
        _forget(store, backend, [(t, a) for t, a in named if a != keep])
    except Exception as e:
        logger.warning("trial %d: clean-up of the trials it took over failed: %s", trial.number,
                       root_message(e))  # fmt: skip


def _named(
    storage: RDBStorage, study_id: int, trial_id: int | None, numbers: list[int]
) -> list[tuple[int, str]]:
    """(trial id, artifact id) of every artifact named on trial ``trial_id`` (if not None) and
    on the study's trials ``numbers``; a name that is not a plain artifact id is left alone."""
    attrs, trials = tb.system_attrs, tb.trials
    owners = attrs.c.trial_id == trial_id if trial_id is not None else sqlalchemy.false()
    if numbers:
        dead = sqlalchemy.select(trials.c.trial_id).where(
            trials.c.study_id == study_id, trials.c.number.in_(numbers[:1000])
        )
        owners = sqlalchemy.or_(owners, attrs.c.trial_id.in_(dead))
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sqlalchemy.select(attrs.c.trial_id, attrs.c.key).where(
                owners, attrs.c.key.startswith(tb.ARTIFACT_PREFIX, autoescape=True)
            )
        ).all()
    named = [(owner, key[len(tb.ARTIFACT_PREFIX) :]) for owner, key in rows]
    return [(owner, artifact) for owner, artifact in named if ARTIFACT_ID.fullmatch(artifact)]


def _forget(
    store: ArtifactStore, storage: RDBStorage, artifacts: list[tuple[int | None, str]]
) -> None:
    """Delete these artifacts and then the names of those deleted, on their trials (None: a
    name unknown); a file that cannot be deleted keeps its name."""
    gone = []
    for owner, artifact in artifacts:
        if remove(store, artifact) and owner is not None:
            gone.append((owner, tb.ARTIFACT_PREFIX + artifact))
    if not gone:
        return
    attrs = tb.system_attrs
    with storage.engine.begin() as conn:
        for owner, key in gone:
            conn.execute(attrs.delete().where(attrs.c.trial_id == owner, attrs.c.key == key))


def keep_best(
    storage: RDBStorage, study_id: int, best: dict[str, Any], *, maximize: bool = True
) -> tuple[bool, dict[str, Any] | None]:
    """Make ``best`` (``{"artifact_id", "trial", "value", "trial_id"}``) the study's
    ``best_model`` if its value beats the stored one's; (whether it did, the ``best_model`` it
    replaced, if well formed and of another artifact).

    A compare-and-set under the study lock (``swap_study_attr``), so two workers finishing at
    once cannot lose the better model. A stored value that is not a finite number (another
    client's) loses.
    """
    encoded = json.dumps(best)

    def beaten(text: str | None) -> str | None:
        stored = _stored_best(text)
        if stored is not None and stored["value"] is not None:
            old = stored["value"]
            if (best["value"] <= old) if maximize else (best["value"] >= old):
                return None
        return encoded

    text = swap_study_attr(storage, study_id, BEST_MODEL, beaten)
    if beaten(text) is None:
        return False, None
    stored = _stored_best(text)
    if stored is None or stored["artifact_id"] == best["artifact_id"]:
        return True, None
    return True, stored


def swap_study_attr(
    storage: RDBStorage, study_id: int, key: str, new: Callable[[str | None], str | None]
) -> str | None:
    """Read the study's system attribute ``key`` (its JSON text, None if unset) and set it to
    ``new(text)`` unless that is None, in one transaction under the study lock (its
    ``studies`` row on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite); the text read."""
    attrs = tb.study_system_attrs
    with storage.engine.begin() as conn:
        lock_study(conn, study_id)
        where = (attrs.c.study_id == study_id, attrs.c.key == key)
        text = conn.execute(sqlalchemy.select(attrs.c.value_json).where(*where)).scalar()
        encoded = new(text)
        if encoded is None:
            pass
        elif text is None:
            conn.execute(attrs.insert(), {"study_id": study_id, "key": key, "value_json": encoded})
        else:
            conn.execute(attrs.update().where(*where).values(value_json=encoded))
    return text


def _stored_best(text: str | None) -> dict[str, Any] | None:
    value = pointer(tb.decoded(text))
    if value is None:
        return None
    v = value.get("value")
    if type(v) not in (int, float) or not math.isfinite(v):
        return {**value, "value": None}  # beaten by anything; its file still deleted
    return value

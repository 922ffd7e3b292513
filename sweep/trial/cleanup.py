"""A trial's end: its artifacts deleted, the best model kept.

After a trial ends (``sweep.worker`` calls ``trial_ended`` after ``study.tell``), every artifact
named on it (``artifacts:<id>``, see ``sweep.trial.checkpoint``) and on the dead trials whose work
it took over (its ``retry_history``) is deleted with its name, except its final weights when it is
the best COMPLETE trial so far: those become the study's ``best_model`` (``keep_best``, a
compare-and-set under the study lock), and the model they replace is deleted.

Sweep deletes only what sweep wrote: an artifact whose id has sweep's form
(``sweep.trial.artifacts.is_sweep_id``) and is named ``artifacts:<id>`` on the trial it cleans up or
on the dead trials whose work that trial took over (``owned``). A pointer (``checkpoint``,
``resumed_from``, ``best_model``) only chooses among those; one that names anything else (another
client may write any attribute) is left on disk with one warning line, as is a name of another
form.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy

from sweep.queue import tables as tb
from sweep.queue.attrs import (
    ARTIFACT_PREFIX,
    BEST_MODEL,
    CHECKPOINT,
    FAIL_REASON,
    RETRY_HISTORY,
    Checkpoint,
    decoded,
    pointer,
)
from sweep.queue.storage import rdb_of, root_message
from sweep.queue.transactions import lock_study
from sweep.trial.artifacts import SWEEP_FORM, is_sweep_id, remove, shown

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.storages import RDBStorage

logger = logging.getLogger(__name__)

#: Why a pointer that names no artifact of its trial's is left alone (for log lines).
NOT_OURS = (f"not an artifact sweep wrote for this trial or the trials it took over "
            f"({SWEEP_FORM} named artifacts:<id> on them)")  # fmt: skip


def trial_ended(store: ArtifactStore, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """After ``study.tell``: delete the artifacts named on the trial and on the dead trials
    whose work it took over (its ``retry_history``), and their names, except its final weights
    when it is the best COMPLETE trial so far (``keep_best``). Never raises."""
    try:
        backend = rdb_of(study._storage)
        where = f"trial {trial.number}"
        named = _named(backend, study._study_id, trial._trial_id, predecessors(trial.system_attrs),
                       where=where)  # fmt: skip
        mine = Checkpoint.read(trial.system_attrs.get(CHECKPOINT))
        if CHECKPOINT in trial.system_attrs and (
            mine is None or mine.artifact_id not in {a for _, a in named}
        ):  # another client's: never kept, never deleted (its resumed_from was the resume's)
            logger.warning("%s: its checkpoint %s: %s; left as it is", where,
                           shown(trial.system_attrs[CHECKPOINT]), NOT_OURS)  # fmt: skip
            mine = None
        keep = None
        value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None
        final = mine is not None and mine.epoch == trial.last_step
        if final and value is not None and math.isfinite(value):  # (else its final upload failed)
            keep = mine.artifact_id
            maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
            best = {"artifact_id": keep, "trial": trial.number, "value": value,
                    "trial_id": trial._trial_id}  # fmt: skip
            kept, old = keep_best(backend, study._study_id, best, maximize=maximize)
            if old is not None:
                _forget_best(store, backend, study._study_id, old)
            if not kept:
                keep = None
        _forget(store, backend, [(t, a) for t, a in named if a != keep])
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
        system.c.key.startswith(ARTIFACT_PREFIX, autoescape=True),
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
                                predecessors({RETRY_HISTORY: decoded(past)}),
                                where=f"a trial that died for good (id {trial_id})")  # fmt: skip
            _forget(store, storage, named_here)
    except Exception as e:
        logger.warning("clean-up of the trials that died for good failed: %s", root_message(e))


def predecessors(system_attrs: dict[str, Any]) -> list[int]:
    """The numbers of the dead trials whose work a trial took over: optuna's
    ``retry_history``, as far as it is a list of numbers."""
    history = system_attrs.get(RETRY_HISTORY)
    return [n for n in history if type(n) is int] if isinstance(history, list) else []


def owned(trial: optuna.Trial, system_attrs: dict[str, Any]) -> set[str]:
    """The ids of sweep's artifacts that a running trial may read and delete: named on it and
    on the dead trials whose work it took over; ``system_attrs`` are the trial's."""
    backend = rdb_of(trial.study._storage)
    dead = predecessors(system_attrs)
    return {a for _, a in _named(backend, trial.study._study_id, trial._trial_id, dead)}


def clear_predecessors(
    store: ArtifactStore, trial: optuna.Trial, system_attrs: dict[str, Any], keep: str | None
) -> None:
    """When a trial that took over dead trials' work starts: delete what they left (a
    checkpoint a kill cut short, one written and never recorded) but ``keep``, the checkpoint
    it resumes from, rather than leave them on disk until it ends; ``system_attrs`` are the
    trial's, as its resume read them. Never raises."""
    try:
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
    storage: RDBStorage,
    study_id: int,
    trial_id: int | None,
    numbers: list[int],
    *,
    where: str | None = None,
) -> list[tuple[int, str]]:
    """(trial id, artifact id) of every artifact of sweep's form named on trial ``trial_id``
    (if not None: the caller knows it is the study's) and on the study's trials ``numbers``.
    A name of another form is left alone, with one warning line if ``where`` names whose
    clean-up it is."""  # fmt: skip
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
                owners, attrs.c.key.startswith(ARTIFACT_PREFIX, autoescape=True)
            )
        ).all()
    named = [(owner, key[len(ARTIFACT_PREFIX) :]) for owner, key in rows]
    odd = sorted({artifact for _, artifact in named if not is_sweep_id(artifact)})
    if odd and where is not None:
        logger.warning("%s: artifacts named %s: not artifact ids sweep writes (%s); left as "
                       "they are", where, shown(odd), SWEEP_FORM)  # fmt: skip
    return [(owner, artifact) for owner, artifact in named if is_sweep_id(artifact)]


def _forget_best(
    store: ArtifactStore, storage: RDBStorage, study_id: int, old: dict[str, Any]
) -> None:
    """Delete the model a new ``best_model`` replaced, if it is sweep's: named on the study's
    trial that ``old`` names (``trial_id``) or on the dead trials whose work that one took
    over, as every trial's kept final weights are."""
    owner, artifact = old.get("trial_id"), old["artifact_id"]
    holders: list[tuple[int, str]] = []
    if type(owner) is int:
        trials, attrs = tb.trials, tb.system_attrs
        history = attrs.alias("history")
        with storage.engine.connect() as conn:
            found = conn.execute(
                sqlalchemy.select(trials.c.trial_id, history.c.value_json)
                .outerjoin(history, sqlalchemy.and_(
                    history.c.trial_id == trials.c.trial_id, history.c.key == RETRY_HISTORY))
                .where(trials.c.trial_id == owner, trials.c.study_id == study_id)
            ).first()  # fmt: skip
        if found is not None:
            past = predecessors({RETRY_HISTORY: decoded(found[1])})
            holders = [(t, a) for t, a in _named(storage, study_id, owner, past) if a == artifact]
    if not holders:
        logger.warning("the replaced best_model %s: not an artifact sweep wrote for the trial "
                       "it names or the trials that one took over (%s named artifacts:<id> on "
                       "them); left as it is", shown(artifact), SWEEP_FORM)  # fmt: skip
        return
    _forget(store, storage, holders[:1])


def _forget(store: ArtifactStore, storage: RDBStorage, artifacts: list[tuple[int, str]]) -> None:
    """Delete these artifacts (each named on the trial given with it: ``_named``) and then the
    names of those deleted; a file that cannot be deleted keeps its name."""
    gone = []
    for owner, artifact in artifacts:
        if remove(store, artifact):
            gone.append((owner, ARTIFACT_PREFIX + artifact))
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
    value = pointer(decoded(text))
    if value is None:
        return None
    v = value.get("value")
    if type(v) not in (int, float) or not math.isfinite(v):
        return {**value, "value": None}  # beaten by anything; its file still deleted
    return value

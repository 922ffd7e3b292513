"""A trial's end: its artifacts deleted, the best model kept.

After a trial ends (``sweep.worker`` calls ``trial_ended`` after ``study.tell``), every artifact
named on it (``artifacts:<id>``, see ``sweep.trial.checkpoint``) and on the dead trials whose work
it took over (its ``retry_history``) is deleted with its name, except its final weights when it is
the best COMPLETE trial so far: those become the study's ``best_model`` (``keep_best``, a
compare-and-set under the study lock), and the model they replace is deleted.

A worker killed during a trial's end, or between ``study.tell`` and it, leaves that end
unfinished: files and names of a trial that ended. ``clear_ended`` finishes the ends of every
such trial (and of those whose workers died for good, which no successor ends); a launcher runs
it as it starts, and every worker once the queue is empty. An end may thus run twice, even at
once: every step of it is one a second run finds done (a file already gone counts as deleted;
a ``best_model`` that already names the trial's weights keeps them).

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
from typing import TYPE_CHECKING, Any

import optuna

from sweep.queue import artifact_names
from sweep.queue.attrs import BEST_MODEL, CHECKPOINT, RETRY_HISTORY, Checkpoint, decoded, pointer
from sweep.queue.storage import rdb_of, root_message
from sweep.queue.study_attr import study_attrs, swap_study_attr
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
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        _end(store, rdb_of(study._storage), study._study_id, trial, maximize=maximize)
    except Exception as e:  # a leftover file is not worth stopping the worker
        logger.warning("trial %d: checkpoint clean-up failed: %s", trial.number, root_message(e))


def _end(
    store: ArtifactStore,
    storage: RDBStorage,
    study_id: int,
    trial: optuna.trial.FrozenTrial,
    *,
    maximize: bool,
) -> None:
    """``trial_ended``'s work, which raises."""
    where = f"trial {trial.number}"
    named = _named(storage, study_id, trial._trial_id, predecessors(trial.system_attrs),
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
        best = {"artifact_id": keep, "trial": trial.number, "value": value,
                "trial_id": trial._trial_id}  # fmt: skip
        kept, old = keep_best(storage, study_id, best, maximize=maximize)
        if old is not None:
            _forget_best(store, storage, study_id, old)
        if not kept:
            keep = None
    _forget(store, storage, [(t, a) for t, a in named if a != keep])


def clear_ended(store: ArtifactStore, storage: RDBStorage, study_id: int) -> None:
    """Finish the ends of the study's trials that ended and still name an artifact of sweep's
    form other than the ``best_model`` (``artifact_names.ended_naming``): a worker killed
    during a trial's end, or between ``study.tell`` and it, left them unfinished; the workers of
    a FAIL with a ``fail_reason`` died ``max_retries`` times, and no successor ends it. Each is
    ended as ``trial_ended`` ends a trial. (A name of another form was warned of at the trial's
    end and stays.) Never raises."""
    try:
        named = artifact_names.ended_naming(storage.engine, study_id)
        kept = pointer(decoded(study_attrs(storage.engine, study_id, [BEST_MODEL]).get(BEST_MODEL)))
        best = kept["artifact_id"] if kept is not None else None
        left = sorted(
            {owner for owner, artifact in named if is_sweep_id(artifact) and artifact != best}
        )
        if not left:
            return
        directions = storage.get_study_directions(study_id)
        maximize = directions == [optuna.study.StudyDirection.MAXIMIZE]
        for trial_id in left:
            _end(store, storage, study_id, storage.get_trial(trial_id), maximize=maximize)
    except Exception as e:
        logger.warning("clean-up of the trials that ended failed: %s", root_message(e))


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
    named = artifact_names.named(storage.engine, study_id, trial_id, numbers)
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
        found, history = artifact_names.retry_history(storage.engine, study_id, owner)
        if found:
            past = predecessors({RETRY_HISTORY: history})
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
    gone = [(owner, artifact) for owner, artifact in artifacts if remove(store, artifact)]
    artifact_names.forget(storage.engine, gone)


def keep_best(
    storage: RDBStorage, study_id: int, best: dict[str, Any], *, maximize: bool = True
) -> tuple[bool, dict[str, Any] | None]:
    """Make ``best`` (``{"artifact_id", "trial", "value", "trial_id"}``) the study's
    ``best_model`` if its value beats the stored one's; (whether it did, the ``best_model`` it
    replaced, if well formed and of another artifact).

    A compare-and-set under the study lock (``swap_study_attr``), so two workers finishing at
    once cannot lose the better model. A stored value that is not a finite number (another
    client's) loses. A ``best_model`` that already names ``best``'s artifact keeps it (an end
    run again: ``clear_ended``).
    """
    encoded = json.dumps(best)

    def beaten(text: str | None) -> str | None:
        stored = _stored_best(text)
        if stored is not None and stored["artifact_id"] == best["artifact_id"]:
            return encoded if text != encoded else None
        if stored is not None and stored["value"] is not None:
            old = stored["value"]
            if (best["value"] <= old) if maximize else (best["value"] >= old):
                return None
        return encoded

    text = swap_study_attr(storage.engine, study_id, BEST_MODEL, beaten)
    stored = _stored_best(text)
    if stored is not None and stored["artifact_id"] == best["artifact_id"]:
        return True, None
    if beaten(text) is None:
        return False, None
    return True, stored


def _stored_best(text: str | None) -> dict[str, Any] | None:
    value = pointer(decoded(text))
    if value is None:
        return None
    v = value.get("value")
    if type(v) not in (int, float) or not math.isfinite(v):
        return {**value, "value": None}  # beaten by anything; its file still deleted
    return value

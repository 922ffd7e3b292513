"""A trial's end: its artifacts deleted, the best model (or the models of the front) kept.

After a trial ends (``sweep.worker`` calls ``trial_ended`` after ``study.tell``), every artifact
named on it (``artifacts:<id>``, see ``sweep.trial.checkpoint``) and on the dead trials whose work
it took over (its ``retry_history``) is deleted with its name, except its final weights when it is
the best COMPLETE trial so far: those become the study's ``best_model`` (``keep_best``, a
compare-and-set under the study lock), and the model they replace is deleted. A study of
several objectives keeps the final weights of every trial on its front instead (optuna's
``best_trials``: the COMPLETE trials no other dominates), named by its ``front_models``
(``keep_front``, the same compare-and-set, the front read under the lock); the models of the
trials that a new one dominates are deleted.

A worker killed during a trial's end, or between ``study.tell`` and it, leaves that end
unfinished: files and names of a trial that ended. ``clear_ended`` finishes the ends of every
such trial (and of those whose workers died for good, which no successor ends); a launcher runs
it as it starts, and every worker once the queue is empty. An end may thus run twice, even at
once: every step of it is one a second run finds done (a file already gone counts as deleted;
a ``best_model`` or ``front_models`` that already names the trial's weights keeps them). Of
two trials that end at once, the one whose end takes the study lock second reads the other's
values (each is told before its end) and drops a model the other dominates; a model left kept
by an end killed half-way is dropped by ``clear_ended``, which reads the front again.

Sweep deletes only what sweep wrote: an artifact whose id has sweep's form
(``sweep.trial.artifacts.is_sweep_id``) and is named ``artifacts:<id>`` on the trial it cleans up or
on the dead trials whose work that trial took over (``owned``). A pointer (``checkpoint``,
``resumed_from``, ``best_model``, ``front_models``) only chooses among those; one that names
anything else (another client may write any attribute) is left on disk with one warning line,
as is a name of another form.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any

import optuna

from sweep.queue import artifact_names
from sweep.queue.attrs import (
    BEST_MODEL,
    CHECKPOINT,
    FRONT_MODELS,
    RETRY_HISTORY,
    Checkpoint,
    decoded,
    kept_models,
    pointer,
)
from sweep.queue.front import read_front
from sweep.queue.storage import rdb_of, root_message
from sweep.queue.study_attr import study_attrs, swap_study_attr
from sweep.trial.artifacts import SWEEP_FORM, is_sweep_id, remove, shown

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.storages import RDBStorage
    from optuna.study import StudyDirection

logger = logging.getLogger(__name__)

#: Why a pointer that names no artifact of its trial's is left alone (for log lines).
NOT_OURS = (f"not an artifact sweep wrote for this trial or the trials it took over "
            f"({SWEEP_FORM} named artifacts:<id> on them)")  # fmt: skip


def trial_ended(store: ArtifactStore, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """After ``study.tell``: delete the artifacts named on the trial and on the dead trials
    whose work it took over (its ``retry_history``), and their names, except its final weights
    when it is the best COMPLETE trial so far (``keep_best``), or of several objectives, on the
    front (``keep_front``). Never raises."""
    try:
        _end(store, rdb_of(study._storage), study._study_id, trial, study.directions)
    except Exception as e:  # a leftover file is not worth stopping the worker
        logger.warning("trial %d: checkpoint clean-up failed: %s", trial.number, root_message(e))


def _end(
    store: ArtifactStore,
    storage: RDBStorage,
    study_id: int,
    trial: optuna.trial.FrozenTrial,
    directions: list[StudyDirection],
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
    values = trial.values if trial.state == optuna.trial.TrialState.COMPLETE else None
    final = mine is not None and mine.epoch == last_epoch(trial)
    if final and values and all(math.isfinite(v) for v in values):  # (else no final upload)
        keep = mine.artifact_id
        if len(directions) == 1:
            best = {"artifact_id": keep, "trial": trial.number, "value": values[0],
                    "trial_id": trial._trial_id}  # fmt: skip
            maximize = directions[0] == optuna.study.StudyDirection.MAXIMIZE
            kept, old = keep_best(storage, study_id, best, maximize=maximize)
            dropped = [] if old is None else [old]
        else:
            entry = {"artifact_id": keep, "trial": trial.number, "trial_id": trial._trial_id}
            models, dropped = keep_front(storage, study_id, entry, directions)
            kept = any(m["artifact_id"] == keep for m in models)
        for old in dropped:
            _forget_kept(store, storage, study_id, old, len(directions))
        if not kept:
            keep = None
    _forget(store, storage, [(t, a) for t, a in named if a != keep])


def last_epoch(trial: optuna.trial.FrozenTrial) -> int | None:
    """The trial's last epoch: its last reported step, or of several objectives (optuna stores
    no steps for them, ``sweep.trial.objective``) the length of its ``valid_accuracy`` curve."""
    if trial.values is None or len(trial.values) == 1:
        return trial.last_step
    curve = trial.user_attrs.get("valid_accuracy")
    return len(curve) if isinstance(curve, list) and curve else None


def clear_ended(store: ArtifactStore, storage: RDBStorage, study_id: int) -> None:
    """Finish the ends of the study's trials that ended and still name an artifact of sweep's
    form other than a kept model (``artifact_names.ended_naming``): a worker killed
    during a trial's end, or between ``study.tell`` and it, left them unfinished; the workers of
    a FAIL with a ``fail_reason`` died ``max_retries`` times, and no successor ends it. Each is
    ended as ``trial_ended`` ends a trial. (A name of another form was warned of at the trial's
    end and stays.) Of several objectives, the ``front_models`` are first checked against the
    front as it now is, and the models of dominated trials deleted. Never raises."""
    try:
        named = artifact_names.ended_naming(storage.engine, study_id)
        directions = storage.get_study_directions(study_id)
        if len(directions) == 1:
            text = study_attrs(storage.engine, study_id, [BEST_MODEL]).get(BEST_MODEL)
            models = [m for m in [pointer(decoded(text))] if m is not None]
        else:
            models, dropped = keep_front(storage, study_id, None, directions)
            for old in dropped:
                _forget_kept(store, storage, study_id, old, len(directions))
        kept = {m["artifact_id"] for m in models}
        left = sorted(
            {owner for owner, artifact in named if is_sweep_id(artifact) and artifact not in kept}
        )
        for trial_id in left:
            _end(store, storage, study_id, storage.get_trial(trial_id), directions)
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


def _forget_kept(
    store: ArtifactStore, storage: RDBStorage, study_id: int, old: dict[str, Any], objectives: int
) -> None:
    """Delete a model no longer kept (replaced as ``best_model``, dropped from the
    ``front_models``), if it is sweep's: named on the study's trial that ``old`` names
    (``trial_id``) or on the dead trials whose work that one took over, as every trial's kept
    final weights are."""
    owner, artifact = old.get("trial_id"), old["artifact_id"]
    holders: list[tuple[int, str]] = []
    if type(owner) is int:
        found, history = artifact_names.retry_history(storage.engine, study_id, owner)
        if found:
            past = predecessors({RETRY_HISTORY: history})
            holders = [(t, a) for t, a in _named(storage, study_id, owner, past) if a == artifact]
    if not holders:
        what = "the replaced best_model" if objectives == 1 else "a model dropped from front_models"
        logger.warning("%s %s: not an artifact sweep wrote for the trial "
                       "it names or the trials that one took over (%s named artifacts:<id> on "
                       "them); left as it is", what, shown(artifact), SWEEP_FORM)  # fmt: skip
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


def keep_front(
    storage: RDBStorage,
    study_id: int,
    entry: dict[str, Any] | None,
    directions: list[StudyDirection],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Make the study's ``front_models`` the models of trials on its front: ``entry``
    (``{"artifact_id", "trial", "trial_id"}``, or None) added if its trial is on it, every
    stored one dropped whose trial is not; (the models now kept, those dropped, for
    ``_forget_kept``).

    A compare-and-set under the study lock (``swap_study_attr``) with the front read once the
    lock is held (``sweep.queue.front``, from a reading connection: a study's trials are told
    outside the lock, and every end that took it before has its trial's values committed). A
    stored entry that is not well formed is dropped and its file left as it is; one that names
    ``entry``'s model under another trial (the database is anyone's) is replaced by ``entry``.
    """
    done: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []

    def new(text: str | None) -> str | None:
        front = read_front(storage.engine, study_id, directions)
        stored = _stored_front(text)
        offered = []
        if entry is not None:  # its own trial says whose it is, not what the database says
            stored = [e for e in stored if e["artifact_id"] != entry["artifact_id"]]
            offered = [entry]
        models = [e for e in stored + offered if e["trial_id"] in front.front]
        done[:] = [(models, [e for e in stored if e not in models])]
        encoded = json.dumps(models)
        return encoded if encoded != text else None

    swap_study_attr(storage.engine, study_id, FRONT_MODELS, new)
    return done[0]


def _stored_front(text: str | None) -> list[dict[str, Any]]:
    """The well-formed entries of a stored ``front_models`` (``attrs.kept_models``); one
    warning line if any other was dropped."""
    value = decoded(text)
    entries = kept_models(value)
    if text is not None and len(entries) != (len(value) if isinstance(value, list) else -1):
        logger.warning("the study's front_models %s: entries that are not {artifact_id, trial, "
                       "trial_id} dropped; their files left as they are", shown(text))  # fmt: skip
    return entries

"""A study's artifact store: the running trials' checkpoints and the best trial's weights.

A trial's training state (``mlp.save_state``: weights, momentum, random generator, metrics) is
uploaded to the study's optuna artifact store while it trains, and the latest one is named on
the running trial by the system attribute ``checkpoint`` (``sweep.queue.CHECKPOINT``). When the
queue hands the trial's work on (its worker died, or was interrupted), the successor gets it as
``resume_from`` and continues after that epoch, exactly as if nothing had happened, so a killed
trial loses what it trained since its last checkpoint, at most about one epoch.

  - Where: the study's artifact store (``sweep.artifacts``), a folder beside a SQLite
    database by default, a shared folder or S3 bucket for many hosts.
  - When: ``Checkpoints.on_state`` writes after every ``CHECKPOINT_EPOCHS`` epochs, but never
    sooner than the last write's cost divided by ``CHECKPOINT_OVERHEAD`` seconds after it, so
    that writing takes at most that share of the training time on any model and any store.
  - Clean-up: a checkpoint's artifact is deleted once the pointer to its successor is in the
    database, and a finished trial's once it has ended (``trial_ended``), except the final
    weights of the best COMPLETE trial, kept as the study's system attribute ``best_model``
    (``keep_best``, a compare-and-set under the study lock). A study's artifacts thus stay
    within about one checkpoint per running worker, plus the requeued trials' and the best.

Note: optuna's ``upload_artifact`` also records each artifact's meta data as a trial system
attribute ``artifacts:<id>``; those of deleted checkpoints stay on the trial (optuna has no
call to remove them), so optuna-dashboard lists them though their files are gone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from optuna.artifacts import download_artifact, upload_artifact

from sweep import tables as tb
from sweep.errors import SpecError
from sweep.queue import ARTIFACT_ID, CHECKPOINT, RESUME_FROM
from sweep.storage import root_message

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.storages import RDBStorage

    from mlp import MLP, TrainConfig, TrainState

logger = logging.getLogger(__name__)

#: The study's system attribute naming the best COMPLETE trial's final weights.
BEST_MODEL = "best_model"
#: Checkpoint after every this many epochs at most (1: a kill loses at most one epoch) ...
CHECKPOINT_EPOCHS = 1
#: ... and let writing take at most this share of the training time: the next write waits
#: for the last one's cost divided by it. Both can be set by environment variables (tests set
#: the share to inf: every epoch).
CHECKPOINT_OVERHEAD = 0.05


def policy() -> tuple[int, float]:
    """(epochs, share): ``CHECKPOINT_EPOCHS`` and ``CHECKPOINT_OVERHEAD``, or
    ``$SWEEP_CHECKPOINT_EPOCHS`` (an integer ≥ 1) and ``$SWEEP_CHECKPOINT_OVERHEAD`` (a number
    in (0, inf]); SpecError naming the variable if one is set to anything else."""
    epochs_text = os.environ.get("SWEEP_CHECKPOINT_EPOCHS", str(CHECKPOINT_EPOCHS))
    share_text = os.environ.get("SWEEP_CHECKPOINT_OVERHEAD", str(CHECKPOINT_OVERHEAD))
    try:
        epochs = int(epochs_text)
    except ValueError:
        epochs = 0
    if not 1 <= epochs <= 10**4:
        raise SpecError(f"SWEEP_CHECKPOINT_EPOCHS must be an integer in [1, 10000]; "
                        f"got {epochs_text!r}")  # fmt: skip
    try:
        share = float(share_text)
    except ValueError:
        share = math.nan
    if not share > 0:  # NaN too
        raise SpecError(f"SWEEP_CHECKPOINT_OVERHEAD must be a number in (0, inf]; "
                        f"got {share_text!r}")  # fmt: skip
    return epochs, share


def pointer(value: Any) -> dict[str, Any] | None:
    """A ``checkpoint``/``resume_from``/``best_model`` attribute as far as it is well formed
    (another client may have written anything): its artifact id must be a plain name."""
    if not isinstance(value, dict):
        return None
    artifact = value.get("artifact_id")
    if not (isinstance(artifact, str) and ARTIFACT_ID.fullmatch(artifact)):
        return None
    return value


def system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    """A running trial's system attributes (optuna 5's Trial no longer shows them)."""
    return trial.storage.get_trial(trial._trial_id).system_attrs


def remove(store: ArtifactStore, artifact_id: str) -> None:
    """Delete an artifact; one already gone, or a store that fails, only leaves a file."""
    try:
        store.remove(artifact_id)
    except optuna.artifacts.exceptions.ArtifactNotFound:
        pass
    except Exception as e:  # a leftover file is not worth a failed trial
        logger.warning("could not delete checkpoint %s: %s", artifact_id, root_message(e))


# -- one trial's checkpoints --------------------------------------------------------------------


class Checkpoints:
    """The checkpoints of one running trial: resume from one, write them, rotate them."""

    def __init__(self, store: ArtifactStore, trial: optuna.Trial) -> None:
        self.store, self.trial = store, trial
        self.current: str | None = None  # the artifact the trial's ``checkpoint`` names
        self.stale: list[str] = []  # replaced; deleted once the replacement is in the database
        self.epoch = 0  # the epoch of ``current``
        self.latest: TrainState | None = None  # the last state ``fit`` gave
        self.interval = 0.0  # seconds before the next write may start (cost / overhead)
        self.written_at = time.monotonic()
        self._folder = tempfile.TemporaryDirectory(prefix="sweep-checkpoint-")
        self._warned = False
        self.every, self.share = policy()

    def resume(self, model: MLP, config: TrainConfig) -> TrainState | None:
        """The training state the trial's ``resume_from`` names, checked against ``model``
        and ``config`` (the run it belongs to), or None: nothing to resume from, or it could
        not be used (one warning line; the trial then trains from its first epoch)."""
        from mlp import CheckpointError, load_state

        given = system_attrs(self.trial).get(RESUME_FROM)
        if given is None:
            return None
        found = pointer(given)
        where = f"trial {self.trial.number}: cannot resume"
        if found is None:
            logger.warning("%s: resume_from is malformed; training from epoch 1", where)
            return None
        artifact = found["artifact_id"]
        path = Path(self._folder.name, f"resume-{artifact}.npz")
        try:
            download_artifact(artifact_store=self.store, file_path=str(path), artifact_id=artifact)
            state = load_state(path, like=model)
            if not 1 <= state.epoch <= config.epochs or len(state.history) != state.epoch:
                raise ValueError(f"it holds {state.epoch} epochs of a run of {config.epochs}")
            if bool(config.momentum) != (state.velocity is not None):
                raise ValueError("its momentum buffers do not fit the run's momentum")
        except Exception as e:  # missing, corrupt, another network, the store unreachable
            logger.warning("%s from checkpoint %s (%s); training from epoch 1", where, artifact,
                           (root_message(e).splitlines() or [""])[0][:300])  # fmt: skip
            if isinstance(e, CheckpointError | ValueError):  # a bad file: of no use to anyone
                self.stale.append(artifact)  # (a store that is down may hold it yet)
            return None
        finally:
            path.unlink(missing_ok=True)
        # The trial's work now lives in that artifact: a kill before our first checkpoint
        # hands it on again, and our first checkpoint replaces (deletes) it.
        self._record(artifact, state.epoch)
        self.latest = state
        return state

    def on_state(self, state: TrainState) -> None:
        """``fit``'s ``on_state``: write a checkpoint when one is due."""
        self.latest = state
        due = state.epoch - self.epoch >= self.every
        if due and time.monotonic() - self.written_at >= self.interval:
            self.write(state)

    def write(self, state: TrainState) -> None:
        """Upload ``state`` and name it as the trial's checkpoint; a failure is one warning
        (the trial trains on: a checkpoint only saves time)."""
        from mlp import save_state

        start = time.perf_counter()
        path = Path(self._folder.name, f"trial-{self.trial.number}-epoch-{state.epoch}.npz")
        try:
            save_state(state, path)
            artifact = upload_artifact(
                artifact_store=self.store, file_path=str(path), study_or_trial=self.trial
            )
        except Exception as e:
            if not self._warned:
                logger.warning("trial %d: checkpoint of epoch %d failed: %s", self.trial.number,
                               state.epoch, root_message(e))  # fmt: skip
                self._warned = True
            return
        finally:
            path.unlink(missing_ok=True)
        self._record(artifact, state.epoch)
        cost = time.perf_counter() - start
        self.interval = cost / self.share
        self.written_at = time.monotonic()

    def finish(self) -> None:
        """The final state, if it was not written (the trial's weights for ``best_model``)."""
        if self.latest is not None and self.latest.epoch != self.epoch:
            self.write(self.latest)

    def _record(self, artifact: str, epoch: int) -> None:
        """Name ``artifact`` as the trial's checkpoint, and delete the replaced ones once the
        name is in the database (else a kill now would leave it naming a deleted file)."""
        value = {"artifact_id": artifact, "epoch": epoch}
        self.trial.storage.set_trial_system_attr(self.trial._trial_id, CHECKPOINT, value)
        if self.current is not None and self.current != artifact:
            self.stale.append(self.current)
        self.current, self.epoch = artifact, epoch
        self._drop_stale()

    def _drop_stale(self) -> None:
        """Delete the replaced checkpoints, once their replacement is in the database."""
        if self.stale and _flush(self.trial):
            for old in self.stale:
                remove(self.store, old)
            self.stale.clear()

    def close(self) -> None:
        """Delete what is replaced, if its replacement reached the database; the temporary
        folder goes. The current checkpoint stays: ``trial_ended`` or a successor decides."""
        self._drop_stale()
        self._folder.cleanup()


def _flush(trial: optuna.Trial) -> bool:
    """Write the trial's held writes to the database now; whether they are there.

    A worker's ``WriteBackStorage`` holds a running trial's attributes for up to a heartbeat;
    any other storage writes at once.
    """
    from sweep.writeback import WriteBackStorage

    storage = trial.storage
    if not isinstance(storage, WriteBackStorage):
        return True
    try:
        storage.flush(trial._trial_id)
    except Exception as e:
        logger.debug("checkpoint pointer not yet written: %s", root_message(e))
        return False
    return True


# -- a trial's end: clean up, keep the best -----------------------------------------------------


def trial_ended(store: ArtifactStore, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """After ``study.tell``: delete the trial's checkpoint artifacts, except its final weights
    when it is the best COMPLETE trial so far (``keep_best``). Never raises."""
    try:
        mine = pointer(trial.system_attrs.get(CHECKPOINT))
        given = pointer(trial.system_attrs.get(RESUME_FROM))
        keep = None
        value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None
        final = mine is not None and mine.get("epoch") == trial.last_step
        if final and value is not None and math.isfinite(value):  # (else its final upload failed)
            keep = mine["artifact_id"]
            from sweep.study import rdb_of  # sweep.study imports the objective, which imports us

            backend = rdb_of(study._storage)
            maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
            best = {"artifact_id": keep, "trial": trial.number, "value": value}
            kept, old = keep_best(backend, study._study_id, best, maximize=maximize)
            if old is not None:
                remove(store, old)
            if not kept:
                keep = None
        for p in (mine, given):
            if p is not None and p["artifact_id"] != keep:
                remove(store, p["artifact_id"])
    except Exception as e:  # a leftover file is not worth stopping the worker
        logger.warning("trial %d: checkpoint clean-up failed: %s", trial.number, root_message(e))


def keep_best(
    storage: RDBStorage, study_id: int, best: dict[str, Any], *, maximize: bool = True
) -> tuple[bool, str | None]:
    """Make ``best`` (``{"artifact_id", "trial", "value"}``) the study's ``best_model`` if its
    value beats the stored one's; (whether it did, the artifact id it replaced).

    Read and written in one transaction under the study lock (the ``studies`` row on
    PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite), so two workers finishing at once cannot lose
    the better model. A stored value that is not a finite number (another client's) loses.
    """
    attrs = tb.study_system_attrs
    with storage.engine.begin() as conn:
        conn.execute(
            sqlalchemy.select(tb.studies.c.study_id)
            .where(tb.studies.c.study_id == study_id)
            .with_for_update()
        )
        where = (attrs.c.study_id == study_id, attrs.c.key == BEST_MODEL)
        text = conn.execute(sqlalchemy.select(attrs.c.value_json).where(*where)).scalar()
        stored = _stored_best(text)
        if stored is not None and stored["value"] is not None:
            old_value = stored["value"]
            if (best["value"] <= old_value) if maximize else (best["value"] >= old_value):
                return False, None
        encoded = json.dumps(best)
        if text is None:
            conn.execute(attrs.insert(), {"study_id": study_id, "key": BEST_MODEL,
                                          "value_json": encoded})  # fmt: skip
        else:
            conn.execute(attrs.update().where(*where).values(value_json=encoded))
    old = stored["artifact_id"] if stored is not None else None
    return True, (old if old != best["artifact_id"] else None)


def _stored_best(text: str | None) -> dict[str, Any] | None:
    try:
        value = pointer(json.loads(text)) if text else None
    except ValueError:
        return None
    if value is None:
        return None
    v = value.get("value")
    if type(v) not in (int, float) or not math.isfinite(v):
        return {**value, "value": None}  # beaten by anything; its file still deleted
    return value

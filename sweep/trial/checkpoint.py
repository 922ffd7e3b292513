"""A running trial's checkpoints: written as it trains, resumed by whoever takes its work over.

A trial's training state (``mlp.save_state``: weights, momentum, random generator, metrics) is
uploaded to the study's optuna artifact store while it trains, and the latest one is named on
the running trial by the system attribute ``checkpoint`` (``sweep.queue.attrs.CHECKPOINT``).
When the queue hands the trial's work on (its worker died, or was interrupted), the successor gets
it as ``resume_from`` and continues after that epoch, exactly as if nothing had happened, so a
killed trial loses what it trained since its last checkpoint, at most about one epoch.

  - Where: the study's artifact store (``sweep.trial.artifacts``), a folder beside a SQLite
    database by default, a shared folder or S3 bucket for many hosts.
  - When: ``Checkpoints.on_state`` writes after every ``CHECKPOINT_EPOCHS`` epochs, but never
    sooner than the last write's cost divided by ``CHECKPOINT_OVERHEAD`` seconds after it, so
    that writing takes at most that share of the training time on any model and any store.
  - Clean-up: a checkpoint's artifact is deleted once the pointer to its successor is in the
    database; a finished trial's are deleted when it ends (``sweep.trial.cleanup``), except the best
    model's, or, if a kill cut that end short, when the next launcher starts. A trial that resumes
    a checkpoint is claimed before any other (``sweep.queue.claims``), so a study's artifacts
    stay within one checkpoint per running worker (two while it replaces one) plus the best model.

Each artifact is named on its trial (optuna's system attribute ``artifacts:<id>``, which
optuna-dashboard lists) and that name committed before its bytes are written
(``sweep.trial.artifacts.upload``), so that a worker killed at any moment leaves no file that the
database does not name (``sweep.trial.cleanup`` deletes them by their names).

A checkpoint proves it fits before a trial goes on from it, since the database and the store
are shared with other clients: ``resume_from`` must name an artifact of sweep's form that is
named on the trial or on the dead trials it took over (``sweep.trial.cleanup.owned``), the state
must carry the digest of the trial's training settings and parameters (``fits_of``, written
into every checkpoint), its patience bookkeeping must follow from its history, and its weights,
measured again on the validation split, must give exactly the validation accuracy its last
epoch claims (evaluation is deterministic for the same weights, dtype and BLAS thread count,
which is the study's). Anything else is one warning and training from epoch 1, so a state can
complete a trial without running an epoch only with its numbers measured again.

Note: the digest is not a secret: whoever can write the store can write a state that fits and
holds other weights; its value is then what those weights measure, not a claimed one. Only the
last epoch is measured again: the earlier epochs' reported values are the file's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.artifacts import download_artifact

from sweep.errors import SpecError
from sweep.queue.attrs import CHECKPOINT, RESUMED_FROM, Checkpoint
from sweep.queue.storage import root_message
from sweep.study.settings import TrainSettings
from sweep.trial.artifacts import ForeignArtifact, is_sweep_id, remove, shown, upload
from sweep.trial.cleanup import NOT_OURS, clear_predecessors, owned

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

    from mlp import MLP, Dataset, TrainConfig, TrainState
    from sweep.study.spec import StudySpec

logger = logging.getLogger(__name__)

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


def system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    """A running trial's system attributes (optuna 5's Trial no longer shows them)."""
    return trial.storage.get_trial(trial._trial_id).system_attrs


#: Settings declared after checkpoints were first written (#25: depth, the third and fourth
#: widths, the distortions). At their defaults they are left out of ``fits_of``, so that a
#: trial checkpointed by an earlier version resumes after an upgrade instead of starting over.
_LATER = ("depth", "hidden_3", "hidden_4", "shift", "rotation", "zoom", "shear",
          "elastic_alpha", "elastic_sigma")  # fmt: skip


def fits_of(spec: StudySpec, settings: TrainSettings, seed: int, params: dict[str, Any]) -> str:
    """What a trial's checkpoints are trained for: the SHA-256 of its training settings, seed
    and parameters and of what else shapes its numbers (the training size, the BLAS thread
    count). Written into each of its checkpoints (``TrainState.fits``) and compared on resume."""
    default = TrainSettings()
    hashed = {k: v for k, v in dataclasses.asdict(settings).items()
             if k not in _LATER or v != getattr(default, k)}  # fmt: skip
    key = {
        "settings": hashed,
        "seed": seed,
        "params": params,
        "train_size": spec.train_size,
        "threads": spec.threads,
    }
    text = json.dumps(key, sort_keys=True, allow_nan=False)
    return "sweep-fits/1:" + hashlib.sha256(text.encode()).hexdigest()


# -- one trial's checkpoints --------------------------------------------------------------------


class Checkpoints:
    """The checkpoints of one running trial: resume from one, write them, rotate them."""

    def __init__(self, store: ArtifactStore, trial: optuna.Trial, *, fits: str) -> None:
        self.store, self.trial, self.fits = store, trial, fits  # fits: ``fits_of`` the trial
        self.current: str | None = None  # the artifact the trial's ``checkpoint`` names
        self.stale: list[str] = []  # replaced; deleted once the replacement is in the database
        self.epoch = 0  # the epoch of ``current``
        self.latest: TrainState | None = None  # the last state ``fit`` gave
        self.resumed_from: Checkpoint | None = None  # what ``resume`` resumed from
        self.interval = 0.0  # seconds before the next write may start (cost / overhead)
        self.written_at = time.monotonic()
        self._folder = tempfile.TemporaryDirectory(prefix="sweep-checkpoint-")
        self._warned = False
        self.every, self.share = policy()

    def resume(self, model: MLP, config: TrainConfig, data: Dataset) -> TrainState | None:
        """The training state the trial's ``resumed_from`` names (its ``resume_from``, renamed by
        the claim), checked against ``model``, ``config`` (the run it belongs to), ``self.fits``
        and ``data``'s validation split (its weights measured again: call it with the study's
        BLAS thread count), or None: nothing to resume from, or it could not be used (one
        warning line; the trial then trains from its first epoch). ``model`` keeps its weights."""
        from mlp import CheckpointError, load_state

        attrs = system_attrs(self.trial)
        given = attrs.get(RESUMED_FROM)
        found = Checkpoint.read(given)
        clear_predecessors(self.store, self.trial, attrs, found.artifact_id if found else None)
        if given is None:
            return None
        where = f"trial {self.trial.number}: cannot resume"
        if found is None:
            logger.warning("%s: resume_from is malformed; training from epoch 1", where)
            return None
        artifact = found.artifact_id
        if not is_sweep_id(artifact) or artifact not in owned(self.trial, attrs):
            logger.warning("%s from checkpoint %s: %s; left as it is, training from epoch 1",
                           where, shown(artifact), NOT_OURS)  # fmt: skip
            return None
        path = Path(self._folder.name, f"resume-{artifact}.npz")
        try:
            download_artifact(artifact_store=self.store, file_path=str(path), artifact_id=artifact)
            state = load_state(path, like=model)
            if not 1 <= state.epoch <= config.epochs or len(state.history) != state.epoch:
                raise ValueError(f"it holds {state.epoch} epochs of a run of {config.epochs}")
            if bool(config.momentum) != (state.velocity is not None):
                raise ValueError("its momentum buffers do not fit the run's momentum")
            if state.fits != self.fits:
                raise ValueError("it was saved for other training settings or parameters "
                                 "(or by a sweep before checkpoints named them)")  # fmt: skip
            _check_measured(state, model, config, data)
        except Exception as e:  # missing, corrupt, another network, the store unreachable
            logger.warning("%s from checkpoint %s (%s); training from epoch 1", where, artifact,
                           (root_message(e).splitlines() or [""])[0][:300])  # fmt: skip
            if isinstance(e, CheckpointError | ValueError) and not isinstance(e, ForeignArtifact):
                # A bad file of sweep's: of no use to anyone.
                self.stale.append(artifact)  # (a store that is down may hold it yet)
            return None
        finally:
            path.unlink(missing_ok=True)
        # The trial's work now lives in that artifact: a kill before our first checkpoint
        # hands it on again, and our first checkpoint replaces (deletes) it.
        self._record(artifact, state.epoch)
        self.latest, self.resumed_from = state, found
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
            save_state(dataclasses.replace(state, fits=self.fits), path)
            artifact = upload(
                self.store, self.trial.storage, path, trial_id=self.trial._trial_id,
                named=lambda: _flush(self.trial),
            )  # fmt: skip
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
        value = Checkpoint(artifact, epoch).stored()
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
        folder goes. The current checkpoint stays: the trial's end (``sweep.trial.cleanup``) or a
        successor decides."""
        self._drop_stale()
        self._folder.cleanup()


def _check_measured(state: TrainState, model: MLP, config: TrainConfig, data: Dataset) -> None:
    """ValueError unless ``state``'s patience bookkeeping follows from its history as ``fit``
    keeps it, and its weights give, on ``data``'s validation split, exactly the validation
    accuracy its last epoch claims (measured as ``fit`` measures an epoch). ``model`` lends
    its arrays and gets its own weights back."""
    best, since_best = -1.0, 0
    for m in state.history:  # as mlp.train.fit
        best, since_best = (
            (m.valid_accuracy, 0) if m.valid_accuracy > best else (best, since_best + 1)
        )
    if (best, since_best) != (state.best, state.since_best):
        raise ValueError("its patience bookkeeping does not follow from its history")
    own = [p.copy() for p in model.params]
    try:
        for p, q in zip(model.params, state.params, strict=True):
            p[...] = q
        with np.errstate(all="ignore"):  # any weights: a wrong number is the answer, not a warning
            _, accuracy = model.evaluate(np.asarray(data.valid.x, dtype=model.dtype), data.valid.y,
                                         batch_size=config.eval_batch_size)  # fmt: skip
    finally:
        for p, q in zip(model.params, own, strict=True):
            p[...] = q
    claimed = state.history[-1].valid_accuracy
    if accuracy != claimed:
        raise ValueError(f"its weights measure {100 * accuracy:.4f}% validation accuracy, not the "
                         f"{100 * claimed:.4f}% its epoch {state.epoch} claims")  # fmt: skip


def _flush(trial: optuna.Trial) -> bool:
    """Write the trial's held writes to the database now; whether they are there.

    A worker's ``WriteBackStorage`` holds a running trial's attributes for up to a heartbeat;
    any other storage writes at once.
    """
    from sweep.queue.writeback import WriteBackStorage

    storage = trial.storage
    if not isinstance(storage, WriteBackStorage):
        return True
    try:
        storage.flush(trial._trial_id)
    except Exception as e:
        logger.debug("checkpoint pointer not yet written: %s", root_message(e))
        return False
    return True

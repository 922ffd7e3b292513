"""The optuna objective: a trial's parameters → one training run of the numpy MLP.

It knows nothing of processes or of the queue: it suggests, trains, reports validation accuracy
each epoch for pruning and leaves the learning curves on the trial as user attributes. Given the
study's artifact store, it checkpoints the training and resumes it (``sweep.trial.checkpoint``).
``evaluate_trial`` retrains the best trial (or one of the front) the same way, once, for its
test accuracy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import warnings
from functools import cache
from typing import TYPE_CHECKING, Any

import optuna
from threadpoolctl import threadpool_limits

from mlp import MLP, Dataset, DivergedError, EpochMetrics, TrainConfig, fit, load_mnist
from mlp.config import ModelConfig
from mlp.memory import require_training
from mlp.sizes import parameter_count
from mlp.state import percent
from sweep.errors import SpecError
from sweep.queue.attrs import FAIL_REASON
from sweep.study.objectives import values_of
from sweep.study.rules import check_value, train_rules
from sweep.study.settings import TrainSettings, configs
from sweep.study.space import OutsideSpace, suggest, suggest_checked
from sweep.study.spec import StudySpec
from sweep.trial.checkpoint import Checkpoints, fits_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from optuna.artifacts._protocol import ArtifactStore

logger = logging.getLogger(__name__)


class TrialFailed(Exception):
    """The trial cannot produce a value (it diverged); the message is its recorded reason."""


def trial_seed(study_seed: int, params: dict[str, Any]) -> int:
    """A 32-bit seed from the study seed and the trial's parameters only, so that a result
    never depends on which worker ran the trial, or when."""
    key = json.dumps({"seed": study_seed, "params": params}, sort_keys=True)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


@cache
def _dataset(path: str | None, train_size: int | None) -> Dataset:
    """Loaded once per worker process."""
    data = load_mnist(path)
    return data.head(train_size) if train_size else data


def load_data(spec: StudySpec) -> Dataset:
    return _dataset(spec.data_path, spec.train_size)


def build_model_and_config(settings: TrainSettings, seed: int) -> tuple[MLP, TrainConfig]:
    """The model (its weights drawn with ``seed``) and the training configuration (its
    shuffling and dropout seeded with ``seed``) for one trial's settings."""
    model_config, config = configs(settings, seed)
    return MLP.from_config(model_config, seed=seed), config


@dataclasses.dataclass(frozen=True)
class Objective:
    """Callable objective for one study: returns the final validation accuracy in percent,
    or with several objectives their values in the study's order (``sweep.study.objectives``).

    With an artifact store (``sweep.trial.checkpoint``), the trial checkpoints its training as it
    goes and, given a ``resume_from``, continues from that checkpoint: its earlier epochs are
    reported again from the checkpoint's history, so its value, intermediate values and curves
    are those of an uninterrupted run.
    """

    spec: StudySpec
    artifacts: ArtifactStore | None = None

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        try:
            # The fixed parameters optuna's suggest_* will return (optuna keeps them private):
            # another client may have enqueued anything.
            settings = suggest_checked(trial, self.spec, getattr(trial, "_fixed_params", {}))
        except OutsideSpace as e:
            raise _failed(trial, str(e)) from e
        seed = trial_seed(self.spec.seed, trial.params)
        model_config, config = configs(settings, seed)
        data = load_data(self.spec)
        # Before the model is allocated; a worker's failure (its trial goes back to the queue
        # for a host with the memory), as a MemoryError would be.
        _require_memory(model_config, config, data, trial.number)
        try:
            model = MLP.from_config(model_config, seed=seed)
        except ValueError as e:  # initial weights past the dtype's range: the trial's numbers
            raise _failed(trial, str(e)) from e
        curves: dict[str, list[float]] = {
            "train_loss": [], "train_accuracy": [], "valid_loss": [], "valid_accuracy": []
        }  # fmt: skip
        epoch_seconds: list[float] = []  # wall time of each epoch, as its worker measured it
        start = time.perf_counter()
        saved = resumed = None
        if self.artifacts is not None:
            saved = Checkpoints(self.artifacts, trial,
                                fits=fits_of(self.spec, settings, seed, trial.params))  # fmt: skip
            # The study's BLAS threads: the resumed weights are measured again, exactly.
            with threadpool_limits(limits=self.spec.threads, user_api="blas"):
                resumed = saved.resume(model, config, load_data(self.spec))
        resume_attrs: dict[str, Any] = {}
        ran = [0]

        def save(**extra: Any) -> None:
            attrs = {
                "config": dataclasses.asdict(settings),
                "n_params": parameter_count(*model_config.hidden),
                "seed": seed,
                "seconds": round(time.perf_counter() - start, 3),
                **curves,
                **resume_attrs,
                **extra,
            }
            if resumed is not None:
                attrs["epochs_run"] = ran[0]  # by this trial itself
            for key, value in attrs.items():
                trial.set_user_attr(key, value)

        def record(m: EpochMetrics) -> None:
            curves["train_loss"].append(m.train_loss)
            curves["train_accuracy"].append(percent(m.train_accuracy))
            curves["valid_loss"].append(m.valid_loss)
            curves["valid_accuracy"].append(percent(m.valid_accuracy))
            epoch_seconds.append(m.seconds)
            if self.spec.multi:
                return  # optuna cannot prune a trial of several values, nor store its steps
            trial.report(percent(m.valid_accuracy), m.epoch)

        def on_epoch(m: EpochMetrics) -> None:
            ran[0] += 1
            record(m)
            if m.epoch < config.epochs and not self.spec.multi and trial.should_prune():
                save(pruned_at=m.epoch)
                raise optuna.TrialPruned(f"pruned at epoch {m.epoch}")

        if resumed is not None:
            # The epochs it did not run, as they were reported (not pruned: it went on).
            for m in resumed.history:
                record(m)
            given = saved.resumed_from.trial if saved and saved.resumed_from else None
            resume_attrs = {
                "resumed_from_epoch": resumed.epoch,
                "resumed_from_trial": given if type(given) is int else None,
            }
        try:
            # The study's BLAS thread count, whatever the worker's: float32 sums depend on it.
            with threadpool_limits(limits=self.spec.threads, user_api="blas"):
                fit(model, data, config, on_epoch=on_epoch, resume=resumed,
                    on_state=saved.on_state if saved is not None else None)  # fmt: skip
            if saved is not None:
                saved.finish()  # the final weights, for the study's best model
        except DivergedError as e:
            save(fail_reason=str(e))
            raise TrialFailed(str(e)) from e
        finally:
            if saved is not None:
                saved.close()
        save()
        return values_of(self.spec.objectives, accuracy=curves["valid_accuracy"][-1],
                         params=parameter_count(*model_config.hidden),
                         epoch_seconds=epoch_seconds)  # fmt: skip


def _require_memory(model: ModelConfig, config: TrainConfig, data: Dataset, number: int) -> None:
    """InsufficientMemory (one line naming the trial and its sizes) if training it on ``data``
    would take more memory than this host has available; checked before anything of it is
    allocated."""
    require_training(model, config, train_examples=len(data.train.y),
                     valid_examples=len(data.valid.y), prefix=f"trial {number}: ")  # fmt: skip


def _failed(trial: optuna.Trial, reason: str) -> TrialFailed:
    """The trial's own failure before it trained: ``fail_reason`` recorded, one warning line."""
    trial.set_user_attr(FAIL_REASON, reason)
    logger.warning("trial %d failed: %s", trial.number, reason)
    return TrialFailed(reason)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The best configuration retrained and evaluated once on the test split."""

    trial: int
    test_accuracy: float  # percent
    valid_accuracy: float  # percent, of the retrained model (equals the trial's value)
    model: MLP | None = dataclasses.field(default=None, repr=False, compare=False)  # retrained
    config: TrainSettings | None = None  # the trial's settings, as derived from the spec
    seed: int | None = None  # the trial's seed (weights, shuffling, dropout)
    artifacts: tuple[str, ...] = ()  # the model's weights and sidecar in the artifact store
    store: str | None = None  # that store's location (``sweep.trial.artifacts.artifacts_location``)

    def paths(self) -> tuple[str, ...]:
        """Where the weights and sidecar are (``artifacts``, in that order): each id under the
        store's location, as both stores lay them out (a folder's file ``folder/<id>``, an S3
        object ``s3://bucket/prefix/<id>``)."""
        return tuple(f"{(self.store or '').rstrip('/')}/{a}" for a in self.artifacts)


def settings_of(trial: optuna.trial.FrozenTrial, spec: StudySpec) -> TrainSettings:
    """The trial's training settings, derived again from the spec and the trial's parameters as
    the objective derived them, and checked by the study-file rules: its stored ``config``
    attribute is anyone's JSON and is not believed."""
    source = f"study {spec.name!r}, trial {trial.number}"
    try:
        with warnings.catch_warnings():  # FixedTrial warns of a value outside the space
            warnings.simplefilter("error")
            settings = suggest(optuna.trial.FixedTrial(trial.params), spec)
    except Exception as e:  # a parameter missing, of another type, outside the space
        raise SpecError(f"{source}: its parameters do not fit the study's space ({e})") from e
    rules = train_rules(spec.train_size)
    for name, value in dataclasses.asdict(settings).items():
        check_value(source, f"train.{name}", rules[name], value)
    return settings


def evaluate_trial(
    study: optuna.Study, spec: StudySpec, best: optuna.trial.FrozenTrial, *,
    on_epoch: Callable[[EpochMetrics, int], None] | None = None,
) -> Evaluation:  # fmt: skip
    """Retrain a COMPLETE trial of the study, its best or one of its front
    (``sweep.trial.kept.evaluated_trial``), with the same configuration and seed, and measure
    its test accuracy, stored on the study as ``test_accuracy`` and ``test_trial``.

    Model selection used the validation split only; the test split is touched here, once.
    ``on_epoch`` gets each epoch as it ends and the epochs it trains (``sweep evaluate``'s lines).
    """
    settings = settings_of(best, spec)
    seed = trial_seed(spec.seed, best.params)
    data = load_data(spec)
    model_config, config = configs(settings, seed)
    _require_memory(model_config, config, data, best.number)
    model = MLP.from_config(model_config, seed=seed)
    with threadpool_limits(limits=spec.threads, user_api="blas"):
        shown = None if on_epoch is None else (lambda m: on_epoch(m, config.epochs))
        history = fit(model, data, config, on_epoch=shown)
        _, test_acc = model.evaluate(data.test.x.astype(model.dtype, copy=False), data.test.y,
                                     batch_size=config.eval_batch_size)  # fmt: skip
    result = Evaluation(best.number, percent(test_acc), percent(history.epochs[-1].valid_accuracy),
                        model=model, config=settings, seed=seed)  # fmt: skip
    study.set_user_attr("test_accuracy", result.test_accuracy)
    study.set_user_attr("test_trial", result.trial)
    return result

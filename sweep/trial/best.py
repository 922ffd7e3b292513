"""A study's best model as files a user can load with ``mlp.MLP.load``.

Two ways to get one, both written by ``MLP.save`` (weights .npz and a JSON sidecar holding the
architecture, activation, dtype and ``model_meta``: the configuration, trial, validation and test
accuracy):

  - ``export``: a trial's own final weights, kept by the workers in the study's artifact store:
    the best trial's, named by the study's system attribute ``best_model``
    (``sweep.trial.cleanup.keep_best``), or of several objectives, those of each trial on the
    front, named by its ``front_models`` (``keep_front``); by default the best trial, or the
    front's most accurate (``front_pick``). Nothing is retrained and no data is read.
  - ``upload``: a model retrained by ``sweep evaluate``, put into the study's artifact store
    beside the checkpoints (``sweep.trial.artifacts.upload`` on the study) and named by the study's
    system attribute ``evaluated_model``. It replaces the previous evaluate's: that one's
    artifacts and their ``artifacts:<id>`` attributes are deleted once the new one is named.

Everything read from the database is untrusted: the ``best_model`` pointer (each of the
``front_models``), the trial it names, the stored spec and the artifact itself are checked, and
anything that does not hold together is one SweepError line (the artifact must also reproduce
the trial's value: its last epoch's validation accuracy, stored in the checkpoint, is the
trial's value, its first of several, exactly). An
``evaluated_model`` that is malformed deletes nothing; one is deleted only if its ids have
sweep's form (``sweep.trial.artifacts.is_sweep_id``) and name artifacts uploaded to the study itself
(``artifacts:<id>`` on the study), never a trial's checkpoint, the ``best_model`` or one of the
``front_models``; a kept model's name of another form is never read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.artifacts import download_artifact

from mlp.state import percent
from sweep.errors import SpecError, StorageError, SweepError
from sweep.queue.artifact_names import forget_on_study
from sweep.queue.attrs import (
    ARTIFACT_PREFIX,
    BEST_MODEL,
    EVALUATED_MODEL,
    FRONT_MODELS,
    decoded,
    kept_models,
    pointer,
)
from sweep.queue.storage import rdb_of, root_message
from sweep.queue.study_attr import study_attrs, swap_study_attr
from sweep.report.stored import number, printable
from sweep.trial import artifacts, kept
from sweep.trial.objective import build_model_and_config, settings_of, trial_seed

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

    from mlp import MLP

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Exported:
    """What ``export`` wrote: the trial's weights at ``--out`` and the sidecar beside it."""

    trial: int
    sidecar: Path
    chosen: str | None = None  # why this trial, when none was asked for and none is the best
    weights: Path | None = None  # the .npz (``--out``): what ``mlp.MLP.load`` is given


def model_meta(
    study: optuna.Study, trial: int, settings: Any, seed: int, valid: float, test: float | None
) -> dict[str, Any]:
    """The sidecar's ``meta``: what the model is and how good it was (accuracies in percent)."""
    return {
        "study": study.study_name,
        "trial": trial,
        "config": dataclasses.asdict(settings),
        "seed": seed,
        "valid_accuracy_percent": valid,
        "test_accuracy_percent": test,
    }


def check_out(out: Path, *, force: bool = False) -> None:
    """The --out of an export: a .npz file name in an existing folder, and (unless ``force``)
    neither it nor its sidecar already there: an unrelated ``config.json`` beside
    ``config.npz`` was replaced without a word (#22). Checked before the database is opened,
    so a typo costs nothing.

    Note: checked, then written by ``MLP.save`` (which renames into place): a file another
    process creates in between is replaced.
    """
    if out.suffix != ".npz":
        raise SpecError(
            f"--out must be a .npz file (the sidecar goes beside it as .json); got {str(out)!r}"
        )
    if out.is_dir():
        raise SweepError(f"--out {out}: is a folder; give a file name, e.g. {out / 'model.npz'}")
    if not out.parent.is_dir():
        raise SweepError(f"--out {out}: no such folder {out.parent}")
    there = [p for p in (out, out.with_suffix(".json")) if os.path.lexists(p)]
    if there and not force:
        raise SpecError(
            f"--out {out}: {' and '.join(str(p) for p in there)} already "
            f"{'exist' if len(there) > 1 else 'exists'}; export replaces no file unless --force"
        )


def export(
    study: optuna.Study, store: ArtifactStore, out: Path, *, where: str, trial: int | None = None
) -> Exported:
    """Write the kept final weights of trial ``trial`` (default: the best trial, or of several
    objectives the front's most accurate) to ``out`` and the sidecar beside it. SweepError (one
    line) if that trial has no usable model in ``store`` (found at ``where``, for messages)."""
    chosen, artifact, missing, why = kept.exported(study, trial)
    spec = kept.stored_spec_of(study)
    settings = settings_of(chosen, spec)
    seed = trial_seed(spec.seed, chosen.params)
    model, _ = build_model_and_config(settings, seed)
    _load_weights(study, store, model, chosen, artifact, where=where, missing=missing)
    test = stored_test_accuracy(study, chosen.number)
    meta = model_meta(study, chosen.number, settings, seed, chosen.values[0], test)
    return Exported(chosen.number, _save(model, out, meta), why, weights=out)


def _load_weights(
    study: optuna.Study, store: ArtifactStore, model: MLP, trial: optuna.trial.FrozenTrial,
    artifact: str, *, where: str, missing: Callable[[str], SweepError],
) -> None:  # fmt: skip
    """Put the weights of ``artifact`` (a trial's final state) into ``model``, once they are
    checked: readable, of the model's shapes, finite, and reproducing the trial's value."""
    from mlp import CheckpointError, load_state
    from mlp.model import not_finite

    with tempfile.TemporaryDirectory(prefix="sweep-export-") as folder:
        path = Path(folder, "best.npz")
        try:
            download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact)
        except optuna.artifacts.exceptions.ArtifactNotFound:
            raise missing(f"its artifact {artifact} is not in {where}") from None
        except Exception as e:  # a store that fails: not the study's fault
            raise StorageError(
                f"study {printable(study.study_name, 200)!r}: cannot read the model {artifact} "
                f"of trial {trial.number}: {_line(e)}"
            ) from e
        try:
            state = load_state(path, like=model)
        except CheckpointError as e:
            raise missing(f"artifact {artifact}: {_line(e).split(': ', 1)[-1]}") from e
    if (bad := not_finite(state.params)) is not None:  # its history may claim any value
        raise missing(f"artifact {artifact} holds {bad} weights that are not finite")
    if not state.history or not reproduces(state.history[-1].valid_accuracy, trial.values[0]):
        raise missing(f"artifact {artifact} does not reproduce trial {trial.number}'s value")
    for p, w in zip(model.params, state.params, strict=True):
        p[...] = w


def reproduces(accuracy: float, value: float) -> bool:
    """Whether weights whose last epoch measured ``accuracy`` (a fraction) are those of a trial
    that stored ``value``: its percentage as sweep stores it (``percent``), or as it stored it
    before #28 (``100 * accuracy``, float noise and all: a study run then is still exported)."""
    return value in (percent(accuracy), 100 * accuracy)


def upload(study: optuna.Study, store: ArtifactStore, model: MLP, meta: dict) -> tuple[str, str]:
    """Put ``model`` (weights and sidecar) into the study's artifact store as its
    ``evaluated_model``, replacing the previous one; (weights' artifact id, sidecar's).
    StorageError (one line) if the store fails; a previous model that cannot be deleted is a
    warning (the new one is in place)."""
    with tempfile.TemporaryDirectory(prefix="sweep-upload-") as folder:
        weights = Path(folder, f"trial-{meta['trial']}-model.npz")
        sidecar = model.save(weights, meta=meta)
        try:
            ids: tuple[str, str] = tuple(  # type: ignore[assignment]
                artifacts.upload(store, study._storage, f, study_id=study._study_id)
                for f in (weights, sidecar)
            )
        except Exception as e:
            raise StorageError(
                f"study {printable(study.study_name, 200)!r}: trial {meta['trial']} was evaluated "
                f"(stored on the study) but its model could not be uploaded: {_line(e)}"
            ) from e
    _replace_evaluated(study, store, ids, meta["trial"])
    return ids


def _replace_evaluated(
    study: optuna.Study, store: ArtifactStore, ids: tuple[str, str], trial: int
) -> None:
    """Name ``ids`` as the study's ``evaluated_model``, then delete the model it named before:
    its files first, then the ``artifacts:<id>`` attributes of those that are gone (a file the
    store could not delete stays named, for whoever cleans up). Never raises."""
    record = {"artifact_id": ids[0], "sidecar_id": ids[1], "trial": trial}
    try:
        backend = rdb_of(study._storage)
        encoded = json.dumps(record)
        swapped = swap_study_attr(backend.engine, study._study_id, EVALUATED_MODEL,
                                  lambda _: encoded)  # fmt: skip
        old = _evaluated_ids(swapped)
        # Only the attributes needed, undecoded: another client's odd value elsewhere is not ours.
        keys = [BEST_MODEL, FRONT_MODELS, *(ARTIFACT_PREFIX + a for a in old)]
        raw = study_attrs(backend.engine, study._study_id, keys)
    except Exception as e:  # the model is uploaded; only the old one stays
        logger.warning("could not replace the previous evaluated model: %s", _line(e))
        return
    best = pointer(decoded(raw.get(BEST_MODEL)))
    front = [m["artifact_id"] for m in kept_models(decoded(raw.get(FRONT_MODELS)))]
    protected = {*ids, *front, best["artifact_id"] if best is not None else None}
    gone = []
    for artifact in old:
        if artifact in protected or ARTIFACT_PREFIX + artifact not in raw:  # not the study's
            continue
        if artifacts.remove(store, artifact, what="the previous evaluated model's artifact"):
            gone.append(artifact)
    try:
        forget_on_study(backend.engine, study._study_id, gone)
    except Exception as e:
        logger.warning("could not forget the deleted artifacts %s: %s", gone, _line(e))


def _evaluated_ids(text: str | None) -> list[str]:
    """The artifact ids of an ``evaluated_model`` value (untrusted: another client may have
    written anything), each a plain name (``sweep.queue.attrs.pointer``), else none."""
    record = pointer(decoded(text))
    if record is None:
        return []
    sidecar = pointer({"artifact_id": record.get("sidecar_id")})
    return [record["artifact_id"]] + ([sidecar["artifact_id"]] if sidecar is not None else [])


def stored_test_accuracy(study: optuna.Study, trial: int) -> float | None:
    """The study's test accuracy if it was measured for ``trial`` (``sweep evaluate``)."""
    attrs = study.user_attrs
    measured = attrs.get("test_trial")
    if type(measured) is not int or measured != trial:
        return None
    return number(attrs.get("test_accuracy"))


def _save(model: MLP, out: Path, meta: dict) -> Path:
    try:
        return model.save(out, meta=meta)
    except OSError as e:
        raise SweepError(f"cannot write the model to {out}: {e.strerror or e}") from e


def _line(e: BaseException) -> str:
    return (root_message(e).splitlines() or [""])[0][:300]

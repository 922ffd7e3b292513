"""Which trial a command means, and where its kept model is: the best trial (one objective),
the front's most accurate (several: ``front_pick``), or the trial asked for (``--trial``), and the
artifact of its own final weights, named by the study's ``best_model`` or ``front_models``
(``sweep.trial.cleanup``). ``sweep.trial.best`` writes the model; this module only chooses.

Everything read from the database is untrusted: a pointer that names another trial, a trial
that is not COMPLETE, a name that is not of sweep's form are one SweepError line each, naming
what is wrong and what is allowed (the trials whose weights were kept).
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from sweep.errors import SpecError, SweepError
from sweep.queue.attrs import BEST_MODEL, FRONT_MODELS, SPEC, kept_models, pointer
from sweep.queue.front import along, maximized
from sweep.queue.status_reads import complete_values
from sweep.queue.storage import rdb_of
from sweep.report.stored import number, printable
from sweep.study import objectives
from sweep.study.spec import StudySpec, stored_spec
from sweep.trial import artifacts

_HINT = "retrain and upload it with: sweep evaluate STUDY.toml"
#: Why ``export`` and ``evaluate`` take a trial of several objectives when none is asked for.
FRONT_PICK = "the front's most accurate"
#: What a missing or untrusted model is, as a message: ``SweepError`` of why.
Missing = Callable[[str], SweepError]


def exported(
    study: optuna.Study, asked: int | None
) -> tuple[optuna.trial.FrozenTrial, str, Missing, str | None]:
    """(the trial ``export`` writes, its kept weights' artifact id, the error of a model it
    cannot export, why that trial when none was asked for and there is no one best)."""
    if len(study.directions) == 1:
        return (*_best(study, asked), None)
    return _front(study, asked)


def _best(study: optuna.Study, asked: int | None) -> tuple[optuna.trial.FrozenTrial, str, Missing]:
    """(the trial, its kept weights' artifact id, the error of a model it cannot export) of a
    study of one objective: the ``best_model``'s, which trial ``asked`` must be if given."""
    name = printable(study.study_name, 200)

    def missing(why: str) -> SweepError:
        return SweepError(f"study {name!r} has no best model to export ({why}); {_HINT}")

    if asked is not None:
        asked_trial(study, asked, "export")
    system = study._storage.get_study_system_attrs(study._study_id)  # optuna 5: not on Study
    kept = pointer(system[BEST_MODEL]) if BEST_MODEL in system else None
    number_ = kept.get("trial") if kept is not None else None
    well_formed = type(number_) is int and 0 <= number_ < 2**31  # optuna's column
    if asked is not None and (not well_formed or number_ != asked):
        raise _not_kept(study, asked, "the best trial's", [number_] if well_formed else [])
    if BEST_MODEL not in system:
        raise missing("none was kept: it ran before checkpoints, or no trial completed")
    if kept is None or not well_formed:
        raise missing("its best_model attribute is malformed")
    trial = _complete_trial(study, number_)
    if trial is None:
        raise missing(f"best_model names trial {number_}, which is not a COMPLETE trial")
    return trial, _sweeps(kept["artifact_id"], "best_model", missing), missing


def _front(
    study: optuna.Study, asked: int | None
) -> tuple[optuna.trial.FrozenTrial, str, Missing, str | None]:
    """``_best`` of a study of several objectives, and why the trial was chosen: trial
    ``asked``, else the front's most accurate; its model must be one of the ``front_models``."""
    name = printable(study.study_name, 200)
    stored_spec_of(study)  # a study sweep did not make has no front of sweep's
    why = None
    if asked is None:
        pick = front_pick(study)
        if pick is None:
            raise SweepError(f"study {name!r} has no model to export: no trial completed")
        asked, why = pick.number, FRONT_PICK
    trial = asked_trial(study, asked, "export")

    def missing(reason: str) -> SweepError:
        return SweepError(f"study {name!r}: trial {asked} has no model to export ({reason}); "
                          f"{_HINT} --trial {asked}")  # fmt: skip

    system = study._storage.get_study_system_attrs(study._study_id)
    models = kept_models(system.get(FRONT_MODELS))
    entry = next((m for m in models if m["trial"] == asked), None)
    if entry is None:
        numbers = sorted({m["trial"] for m in models if type(m["trial"]) is int})
        raise _not_kept(study, asked, "the front's", numbers)
    if entry["trial_id"] != trial._trial_id:
        raise missing(f"front_models names it with trial id {entry['trial_id']}, not its own")
    return trial, _sweeps(entry["artifact_id"], "front_models", missing), missing, why


def _sweeps(artifact: str, attr: str, missing: Missing) -> str:
    """``artifact`` if it has the form of an id sweep writes; another client's is never read."""
    if not artifacts.is_sweep_id(artifact):
        raise missing(f"{attr} names {printable(artifact, 80)!r}, not an artifact id sweep "
                      f"writes ({artifacts.SWEEP_FORM})")  # fmt: skip
    return artifact


def _not_kept(study: optuna.Study, number: int, whose: str, kept: list[int]) -> SweepError:
    name = printable(study.study_name, 200)
    if not kept:
        allowed = "no trial's were (it ran before checkpoints, or none completed)"
    else:
        listed = ", ".join(map(str, kept[:20])) + (", …" if len(kept) > 20 else "")
        allowed = f"only {whose} (trial{'s' if len(kept) > 1 else ''} {listed}) are"
    return SweepError(f"study {name!r}: trial {number}'s weights were not kept: {allowed}; "
                      f"{_HINT} --trial {number}")  # fmt: skip


def front_pick(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The front's most accurate trial, of a study of several objectives whose first is the
    validation accuracy (``sweep.study.objectives``): the first along the front as the report
    and ``sweep status`` show it (``sweep.queue.front.along``); None if it has none. Read from
    the database as the front of the kept models is, never through ``study.best_trials``, which
    raises on another client's odd rows and weighs constraints sweep never writes."""
    engine = rdb_of(study._storage).engine
    valued = complete_values(engine, study._study_id, len(study.directions))
    on = along(valued, maximized(study.directions))
    return study._storage.get_trial(on[0].trial_id) if on else None


def evaluated_trial(
    study: optuna.Study, asked: int | None
) -> tuple[optuna.trial.FrozenTrial, str | None]:
    """The trial ``sweep evaluate`` retrains, and why when none was asked for and there is no
    one best: trial ``asked`` (COMPLETE), else the best trial, or the front's most accurate."""
    if asked is not None:
        return asked_trial(study, asked, "evaluate"), None
    if len(study.directions) == 1:
        return study.best_trial, None
    pick = front_pick(study)
    if pick is None:
        raise SweepError(f"study {printable(study.study_name, 200)!r} has no completed trial "
                         "to evaluate")  # fmt: skip
    return pick, FRONT_PICK


def asked_trial(study: optuna.Study, number: int, purpose: str) -> optuna.trial.FrozenTrial:
    """Trial ``number`` of the study, which must be COMPLETE: SweepError (one line) if not."""
    name = printable(study.study_name, 200)
    storage = study._storage
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    except KeyError:
        count = storage.get_n_trials(study._study_id)
        held = f"its trials are numbered 0 to {count - 1}" if count else "it has no trials"
        raise SweepError(f"study {name!r} has no trial {number} ({held})") from None
    trial = storage.get_trial(trial_id)
    if trial.state != TrialState.COMPLETE or not trial.values:
        raise SweepError(f"study {name!r}: trial {number} is {trial.state.name}, not COMPLETE: "
                         f"only a completed trial has a model to {purpose}")  # fmt: skip
    return trial


def stored_spec_of(study: optuna.Study) -> StudySpec:
    """The study's stored spec, of the study's own objectives: else it was not made by sweep."""
    source = f"study {printable(study.study_name, 200)!r}"
    if SPEC not in study.user_attrs:
        raise SpecError(f"{source} was not made by sweep (it has no stored spec)")
    spec = stored_spec(study.user_attrs[SPEC], source=source)
    if study.directions != objectives.directions(spec.objectives):
        raise SpecError(f"{source} was not made by sweep (its directions are not its stored "
                        "spec's objectives)")  # fmt: skip
    return spec


def _complete_trial(study: optuna.Study, number_: int) -> optuna.trial.FrozenTrial | None:
    storage = study._storage
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number_)
        trial = storage.get_trial(trial_id)
    except KeyError:
        return None
    if trial.state != TrialState.COMPLETE or not trial.values or number(trial.values[0]) is None:
        return None
    return trial

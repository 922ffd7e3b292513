"""Continuing a study in optuna's own API, inside its rules: ``sweep.load_study`` and
``sweep.objective``.

    study = sweep.load_study("tpe-budget", storage="sqlite:///runs/sweep.db")
    study.optimize(sweep.objective(study.spec), n_trials=4)

``optuna.load_study`` gives a sweep study optuna's default sampler and pruner (TPE over
whatever the objective suggests, the median pruner from epoch 1), and its ``optimize`` creates
trials of its own beside the queue: trials pruned at their first epoch, networks outside the
parameter budget, a grid point trained twice, no checkpoints. ``load_study`` gives the study
with its own sampler and pruner (``sweep.study.joining.make_sampler``, ``make_pruner``) and an
``optimize`` that works as one more ``sweep worker`` in this process: it claims the study's
queued trials (``sweep.queue.claims``) with heartbeats, checkpoints each trial to the study's
artifact store and gives it back to the queue on Ctrl-C, tops the queue up to the study's cap
and never runs a grid point that is done. ``sweep.objective`` refuses to train a trial that
came any other way (optuna's own ``ask``), so the mistake is one line, not a silent trial.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from sweep.errors import SpecError
from sweep.queue.attrs import FAIL_REASON
from sweep.queue.storage import STORAGE_ERRORS, open_storage, resolve_url, storage_failure
from sweep.study.joining import join, make_pruner, make_sampler
from sweep.study.spec import StudySpec, first_difference
from sweep.trial.artifacts import study_store
from sweep.trial.checkpoint import policy as checkpoint_policy
from sweep.trial.objective import Objective, load_data
from sweep.worker import Limit, work_on

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StudyObjective:
    """A study's objective as ``sweep.objective`` hands it out: it trains only through the
    ``optimize`` of ``sweep.load_study``'s study, which claims each trial from the queue and
    gives it the study's artifact store. Called by anything else (optuna's own ``optimize``
    of ``optuna.load_study``, whose trials the queue never saw), it fails the trial with its
    reason and raises SpecError saying what to use instead."""

    spec: StudySpec

    def __call__(self, trial: optuna.Trial) -> float:
        name = self.spec.name
        reason = (
            f"trial {trial.number} did not come from study {name!r}'s queue: optuna's own "
            "optimize uses optuna's default sampler and pruner, not the study's, and knows "
            f"nothing of its budget, grid or checkpoints; use study = sweep.load_study({name!r}, "
            "storage=URL), then study.optimize(sweep.objective(study.spec), n_trials=N)"
        )
        trial.set_user_attr(FAIL_REASON, reason[:500])
        raise SpecError(reason)


def objective(spec: StudySpec) -> StudyObjective:
    """The objective of the study ``spec`` describes (a study file's, ``sweep.load_spec``, or
    ``sweep.load_study(...).spec``), for ``study.optimize`` of ``sweep.load_study``."""
    return StudyObjective(spec)


class SweepStudy(optuna.Study):
    """An optuna ``Study`` of a sweep study, with the study's own sampler and pruner, and the
    spec stored on it (``spec``, with this host's dataset path). Everything optuna reads
    (``trials``, ``best_trial``, ``trials_dataframe()``) is optuna's; ``optimize`` is one more
    sweep worker in this process (see the module)."""

    def __init__(self, spec: StudySpec, url: str, *, artifacts: str | None) -> None:
        run = uuid.uuid4().hex[:12]
        # A sampler seed of its own, as every worker's (sweep.api.join says why).
        salt = 1 + int(run, 16) % 2**20
        super().__init__(study_name=spec.name, storage=open_storage(url),
                         sampler=make_sampler(spec, salt), pruner=make_pruner(spec))  # fmt: skip
        self.spec = spec
        self._sweep = (url, artifacts)
        self._limit: Limit | None = None

    def optimize(
        self,
        func: Callable[[optuna.Trial], Any],
        n_trials: int | None = None,
        timeout: float | None = None,
        n_jobs: int = 1,
        catch: Iterable[type[Exception]] | type[Exception] = (),
        callbacks: Iterable[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
        gc_after_trial: bool = False,
        show_progress_bar: bool = False,
    ) -> None:
        """Run the study's queued trials in this process, as ``sweep worker`` does, until
        ``n_trials`` ran, ``timeout`` seconds passed (no trial is claimed after it; the one
        running finishes), ``stop()`` was called, or the study has nothing left to claim (a
        grid's points all done, a TPE or random study at its trial cap: raise it with
        ``sweep.run(spec, trials=N)`` or ``sweep run --trials N``), which a warning says.

        ``func`` must be ``sweep.objective(spec)`` of this study. One trial at a time:
        ``n_jobs`` other than 1 is refused (``sweep.run(spec, jobs=N)`` runs N worker
        processes). ``catch`` has nothing to do: a trial's own failure is recorded FAIL with
        its reason and never stops the loop. ``callbacks`` get this study and each finished
        trial. Ctrl-C gives the running trial back to the queue with its checkpoint.
        """
        if n_jobs != 1:
            raise SpecError(f"n_jobs must be 1 (one worker in this process; sweep.run(spec, "
                            f"jobs=N) runs N worker processes); got {n_jobs!r}")  # fmt: skip
        if not isinstance(func, StudyObjective):
            raise SpecError(
                f"study {self.study_name!r} trains sweep.objective(spec) of its own spec only, "
                f"inside its budget; got {func!r}; an objective of your own needs a study of "
                "its own (optuna.create_study)"
            )
        diff = first_difference(self.spec, func.spec)
        if diff is not None or func.spec.name != self.spec.name:
            field, stored, given = diff or ("study.name", self.spec.name, func.spec.name)
            raise SpecError(f"sweep.objective(spec): [{field}] differs from the stored study "
                            f"{self.study_name!r}: stored {stored!r}, given {given!r}; use "
                            "sweep.objective(study.spec)")  # fmt: skip
        url, artifacts = self._sweep
        load_data(self.spec)  # a missing dataset is one line before anything is claimed
        checkpoint_policy()
        store, _, warning = study_store(artifacts, url)
        if warning:
            logger.warning("%s", warning)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._limit = limit = Limit(n_trials, deadline)
        bar = _bar(n_trials) if show_progress_bar else None
        told = list(callbacks or ())

        def ended(_: optuna.Study, trial: FrozenTrial) -> None:
            for callback in told:
                callback(self, trial)
            if gc_after_trial:
                gc.collect()
            if bar is not None:
                bar.update(1)

        try:
            ran = work_on(self, self.spec, url, uuid.uuid4().hex[:12], store=store,
                          launch=True, objective=Objective(self.spec, store), limit=limit,
                          on_end=ended)  # fmt: skip
        except STORAGE_ERRORS as e:
            raise storage_failure(e, url) from None
        finally:
            self._limit = None
            if bar is not None:
                bar.close()
        if not limit.reached(ran):
            logger.warning(
                "study %r had nothing left to claim after %d trial(s) here; %s", self.study_name,
                ran, "its grid is done" if self.spec.sampler == "grid" else
                f"its cap of {self.spec.trials} trials is reached (raise it with "
                "sweep.run(spec, trials=N) or sweep run --trials N)",
            )  # fmt: skip

    def ask(self, fixed_distributions: dict[str, Any] | None = None) -> optuna.Trial:
        """Refused, in one line: a trial asked here would be made beside the queue, as optuna's
        own ``ask`` makes it (the queue's guard keeps it from popping a queued trial), with
        parameters from whatever the caller suggests, unchecked against the budget or the
        grid's points, and trained by code of the caller's with no heartbeat or checkpoint.
        Claiming a queued trial here instead is not sound either: nothing would beat its
        heartbeat while the caller trains it, so recovery would take it as dead and queue it
        again. ``optimize`` (or ``sweep worker``) trains inside the rules."""
        raise SpecError(
            f"study {self.study_name!r}: ask() would make a trial outside its queue (parameters "
            "unchecked against its budget and grid, no heartbeat or checkpoint); use "
            "study.optimize(sweep.objective(study.spec), n_trials=N) or `sweep worker`"
        )

    def stop(self) -> None:
        """Stop ``optimize`` after the running trial (from a callback, as in optuna)."""
        if self._limit is None:
            raise RuntimeError("stop() is for a callback of optimize, while it runs")
        self._limit.stopped = True


def _bar(total: int | None) -> Any:
    """A progress bar of finished trials (``tqdm.auto``: a widget in a notebook)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="trial")


def load_study(
    name: str, storage: str | None = None, *, artifacts: str | None = None,
    data_path: str | None = None,
) -> SweepStudy:  # fmt: skip
    """Study ``name`` as an optuna ``Study`` with its own sampler and pruner, from its stored
    spec (validated: SpecError for a study sweep did not make). ``storage`` as ``sweep.run``'s;
    ``artifacts`` where its trials checkpoint (see ``sweep.run``); ``data_path`` this host's
    copy of MNIST, if not the stored one."""
    url = resolve_url(storage)
    try:
        spec = join(url, name, data_path=data_path)
        return SweepStudy(spec, url, artifacts=artifacts)
    except STORAGE_ERRORS as e:
        raise storage_failure(e, url) from e

"""A study's set-up, shared by every process that joins it: the sampler and pruner its spec
asks for, creating or joining it (the stored spec is the source of truth), and the queue
operations a launcher performs (``sweep.queue``: top-up, recovery) in the study's terms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import optuna
from optuna.study import StudyDirection

from mlp.sizes import parameter_count
from sweep.errors import SpecError, StudyGone, UnfinishedError
from sweep.queue import guard, orphans, recovery, topup
from sweep.queue import tables as tb
from sweep.queue.attrs import SPEC
from sweep.queue.progress import grid_done
from sweep.queue.storage import (
    GRACE_PERIOD_S,
    MissingDatabase,
    mask_password,
    open_storage,
    rdb_of,
)
from sweep.queue.studies import adopt_spec
from sweep.queue.transactions import writing
from sweep.study import objectives
from sweep.study.budget import widths_of
from sweep.study.overrides import Override, overridden
from sweep.study.sampler import BoundedTPESampler
from sweep.study.space import grid_points
from sweep.study.spec import StudySpec, first_difference, stored_spec

logger = logging.getLogger(__name__)


def make_sampler(spec: StudySpec, salt: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with the study seed and this worker's ``salt``.

    TPE sees a bounded view of the study (``sweep.study.sampler``: the best trials, the newest ones
    and the running ones), so that an ask costs the same at any study size; a study whose
    finished trials fit in its recent window (``sweep.study.sampler.RECENT``) gets exactly optuna's
    TPE.
    """
    seed = (spec.seed + 1009 * salt) % 2**32  # numpy's seed range
    if spec.sampler == "tpe":
        # constant_liar: running trials count as provisional results, so parallel workers do not
        # all sample the same promising point.
        return BoundedTPESampler(seed=seed, constant_liar=True, n_startup_trials=10)
    if spec.sampler == "nsga2":
        # Its crossover and mutation give values that the space's in-budget intervals then
        # accept or redraw (sweep.study.space), so its children are inside the budget too.
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=spec.population)
    return optuna.samplers.RandomSampler(seed=seed)  # grid trials arrive with fixed parameters


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    searched = spec.dimension("epochs")
    epochs = spec.train.epochs
    if searched is not None:  # the longest a trial can train
        epochs = int(max(searched.choices) if searched.choices else searched.high)
    # Optuna's warm-up counts steps (our epochs, from 1): no pruning before epoch prune_after + 1.
    first = spec.prune_after + 1
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=first)
    if spec.pruner == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max(epochs, first))
    return optuna.pruners.NopPruner()


def _refuse_difference(stored: StudySpec, given: StudySpec) -> None:
    """A study file that would change the stored study's results is refused, naming the
    first field that differs."""
    diff = first_difference(stored, given)
    if diff is not None:
        field, old, new = diff
        raise SpecError(
            f"{given.source}: [{field}] differs from the stored study {given.name!r}: stored "
            f"{json.dumps(old)}, given {json.dumps(new)}; use the stored study's file, "
            "or rename [study.name] for a new study"
        )


def _warn_if_untested() -> None:
    """One warning line where a launcher or a worker starts, if optuna is a release sweep was
    not tested with."""
    untested = tb.untested_optuna()
    if untested:
        logger.warning("%s", untested)


def open_study(
    spec: StudySpec, storage: optuna.storages.BaseStorage, *, salt: int = 0
) -> optuna.Study:
    """Create the study, or load it if it exists and was made from the same spec.

    The stored spec is the study's source of truth; this launcher's trial cap (``spec.trials``)
    replaces the stored one, so lowering or raising it steers every worker.
    """
    _warn_if_untested()
    with writing(rdb_of(storage).engine) as conn:  # before SQLite gives a deleted study's id again
        orphans.clear(conn)
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        directions=objectives.directions(spec.objectives),
        sampler=make_sampler(spec, salt),
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    foreign = f"{spec.source}: study {spec.name!r} was not made by sweep"
    if study.directions != objectives.directions(spec.objectives):
        _refuse_other_objectives(study, spec)
        raise SpecError(f"{foreign} (its directions are not the study file's objectives); "
                        "rename [study.name] for a new study")  # fmt: skip
    given = json.dumps(spec.to_dict())
    stored = adopt_spec(rdb_of(study._storage), study._study_id, given)
    if stored is None:
        raise SpecError(f"{foreign} (it has trials and no stored spec); rename [study.name] "
                        "for a new study")  # fmt: skip
    if study.metric_names is None:
        with warnings.catch_warnings():  # "experimental" since optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(objectives.labels(spec.objectives))
    try:
        stored = json.loads(stored)
    except ValueError as e:  # written by another client, not by optuna's set_user_attr
        raise SpecError(f"study {spec.name!r}: its stored spec is not JSON ({e})") from e
    old = stored_spec(stored, source=f"study {spec.name!r}")
    _refuse_difference(old, spec)
    if old.trials != spec.trials:
        study.set_user_attr(SPEC, spec.to_dict())
    return study


def _refuse_other_objectives(study: optuna.Study, spec: StudySpec) -> None:
    """A study sweep made with other objectives is refused as any changed field is, naming
    [study.objectives]; anything else is left to the caller's "not made by sweep"."""
    try:
        old = stored_spec(study.user_attrs.get(SPEC), source=f"study {spec.name!r}")
    except SpecError:
        return
    _refuse_difference(old, spec)


def join(
    url: str,
    name: str,
    *,
    spec: StudySpec | None = None,
    wait: float = 0.0,
    data_path: str | None = None,
    overrides: Sequence[str | Override] | Mapping[str, Any] = (),
) -> StudySpec:
    """The stored spec of study ``name``, for a worker joining it: its source of truth.

    Waits up to ``wait`` seconds for the study to be created (a batch array whose tasks all
    start at once), polling with backoff. A study file given as ``spec`` must agree with the
    stored spec in everything that changes results; its trial cap is ignored (launchers set
    it). ``data_path`` (or the file's ``[data] path``) is this host's copy of the dataset.
    ``overrides`` (``sweep.study.overrides``) change ``spec``, or without one the stored spec,
    and must agree with it as a study file must: ``data.path`` is what they may change.
    """
    _warn_if_untested()
    deadline, delay = time.monotonic() + wait, 0.5
    # Read-only until the study is known good: a worker refused here changes nothing.
    while (peeked := _peek(url, name)) is None or SPEC not in peeked[0]:
        if time.monotonic() >= deadline:  # (a study made this instant gets its spec next)
            if peeked is not None:
                raise SpecError(f"study {name!r} was not made by sweep (it has no stored spec)")
            hint = f"start it with `sweep run {spec.source}`" if spec else "start it first"
            raise SpecError(
                f"study {name!r} does not exist in {mask_password(url)}; {hint}, "
                "or give --wait SECONDS to wait for it"
            )
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(2 * delay, 10.0)
    attrs, directions = peeked
    source = f"study {name!r} in {mask_password(url)}"
    stored = stored_spec(attrs[SPEC], source=source)
    if stored.name != name:  # e.g. optuna.copy_study copies the attributes, spec and all
        raise SpecError(f"{source}: its stored spec is study {stored.name!r}'s; join that one")
    if directions != objectives.directions(stored.objectives):  # another client's, spec copied
        raise SpecError(f"study {name!r} was not made by sweep (its directions are not its "
                        "stored spec's objectives)")  # fmt: skip
    if overrides:
        base = (spec or stored).to_dict()
        changed, given = overridden(base, overrides, source=spec.source if spec else source)
        spec = stored_spec(changed, source=given)
        if spec.name != name:
            raise SpecError(f"{given}: [study.name] is {spec.name!r}, not {name!r}")
    if spec is not None:
        _refuse_difference(stored, spec)
        data_path = data_path or spec.data_path
        if spec.trials != stored.trials:
            logger.warning("%s: trials = %s ignored; the study's cap is %s (set by `sweep run`)",
                           spec.source, spec.trials, stored.trials)  # fmt: skip
    return dataclasses.replace(stored, data_path=data_path or stored.data_path)


def _peek(url: str, name: str) -> tuple[dict[str, Any], list[StudyDirection]] | None:
    """The user attributes and directions of study ``name``, read-only; None if there is no
    such study (or no database yet: a batch array's workers may start before its launcher
    makes it)."""
    try:
        storage = open_storage(url, heartbeat_interval=None, grace_period=None, read_only=True)
    except MissingDatabase:
        return None
    try:
        study_id = storage.get_study_id_from_name(name)
        return storage.get_study_user_attrs(study_id), storage.get_study_directions(study_id)
    except KeyError:
        return None
    finally:
        storage.engine.dispose()


def _cost(spec: StudySpec, point: dict[str, Any]) -> int:
    """A grid point's training work, in proportion: epochs × weights."""
    settings = dataclasses.replace(spec.train, **point)
    return settings.epochs * parameter_count(*widths_of(settings))


def top_up(study: optuna.Study, spec: StudySpec) -> int:
    """Enqueue what the study still needs, atomically (``sweep.queue.topup.top_up``); return
    the study's total, the progress target."""
    rdb = rdb_of(study._storage)
    guard.ensure(rdb)  # before anything is queued: only sweep's workers take from the queue
    with _named(study):
        if spec.sampler != "grid":
            return topup.top_up(rdb, study._study_id, cap=spec.trials)
        grid = grid_points(spec)
        points, beyond = grid[: spec.trials], grid[spec.trials :] if spec.trials else []
        # Longest first (LPT scheduling): the queue then ends with short trials running side
        # by side, not with one large trial running alone while the other workers idle.
        points = sorted(points, key=lambda p: _cost(spec, p), reverse=True)
        return topup.top_up(rdb, study._study_id, points=points, beyond=beyond)


@contextlib.contextmanager
def _named(study: optuna.Study, gone: type[Exception] = StudyGone) -> Iterator[None]:
    """StudyGone named by the study's name, for the queue's (which knows its id only) or,
    with ``gone=KeyError``, for optuna's "Record does not exist" of a deleted study."""
    try:
        yield
    except gone:
        raise StudyGone(f"study {study.study_name!r}") from None


def _with_stored_cap(study: optuna.Study, spec: StudySpec) -> StudySpec:
    """``spec`` with the study's stored trial cap, which a launcher may have changed since
    this process read it."""
    with _named(study, KeyError):
        stored = study._storage.get_study_user_attrs(study._study_id).get(SPEC)
    if stored is None:
        return spec
    cap = stored_spec(stored, source=f"study {spec.name!r}").trials
    return dataclasses.replace(spec, trials=cap)


def refill(study: optuna.Study, spec: StudySpec) -> None:
    """``top_up`` under the study's stored cap: what a worker does when the queue runs dry,
    so that a point another client took from the queue and did not train is queued again."""
    top_up(study, _with_stored_cap(study, spec))


def grid_left(study: optuna.Study, spec: StudySpec) -> tuple[int, int]:
    """(points done, points in all) of a grid under the study's stored cap: done is trained
    (COMPLETE or PRUNED with the point's parameters) or failed for good
    (``sweep.queue.coverage``)."""
    points = grid_points(spec)[: _with_stored_cap(study, spec).trials]
    return grid_done(rdb_of(study._storage), study._study_id, points), len(points)


def unfinished(done: int, total: int, url: str) -> UnfinishedError:
    """The one line of a launcher that ends with points of its grid not done."""
    return UnfinishedError(
        f"{total - done} of {total} grid points were neither trained nor failed for good "
        f"(another client took their trials?); run again to train them ({mask_password(url)})"
    )


def recover(study: optuna.Study, *, max_retries: int) -> list[int]:
    """Fail and requeue the trials whose sweep worker went silent
    (``sweep.queue.recovery.recover``)."""
    rdb = rdb_of(study._storage)
    grace = rdb.grace_period or GRACE_PERIOD_S
    with _named(study):
        return recovery.recover(rdb, study._study_id, grace=grace, max_retries=max_retries)

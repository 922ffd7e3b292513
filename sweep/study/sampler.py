"""TPE whose ask costs the same in a study of 10^3 finished trials or 10^6: it sees a bounded
view of the study, the best trials and the most recent ones, read from the database alone.

optuna's ``TPESampler`` reads every trial of the study on every suggest call, and a worker's
first ask loads the whole history into optuna's trial cache. Measured on a TPE study of tiny
trials on SQLite (``make_sampler`` before this module): the first ask of a fresh worker took
0.8 s with 10^3 finished trials, 10 s with 10^4 and 76 s with 5·10^4 (the cache load, ~1 ms a
trial); each later ask 22 ms, 99 ms and 0.67 s.

``BoundedTPESampler`` is ``TPESampler`` (same arguments, same random stream) that hands TPE a
stand-in for the study whose trials are:
  - the ``best`` COMPLETE trials by value;
  - the ``recent`` newest COMPLETE or PRUNED trials (by creation, i.e. trial id);
  - every RUNNING trial, which ``constant_liar`` counts as a provisional result.
Each ask reads the ids of these in a few queries (``sweep.queue.view``), then loads only the
trials it has not seen: finished trials never change, so they are kept between asks, and the
memory held is the view's. The newest and the running trials are found through sweep's
index on the queue (``sweep.queue.tables.QUEUE_INDEX``: study, state, trial id); the best walk
an index on ``trial_values (value_type, value)`` from its best end where the database has one,
and otherwise read the study's values once an ask (27 ms with 5·10^4 trials on SQLite). Measured
as above: a first ask of 0.2-0.3 s at any study size (the view's ~1,100 trials), later asks
of 23 ms with 10^3 trials, 42 ms with 10^4 and 29 ms with 5·10^4 (both indexes; TPE's own
work on the view is ~20 ms of it). A study whose finished trials fit in the recent window is
seen whole: its suggestions are exactly plain TPE's with the same seed.

What is exact and what is approximated: TPE splits the trials into a "good" group, the
best ``gamma(n) = min(ceil(n / 10), 25)`` of them, and a "bad" group of all the others,
weighted by age (the oldest get weight 1/n, the newest 25 weight 1). Keeping the best
``BEST >= 25`` keeps the good group exact. The bad group's density is estimated from the
next-best trials and the recent window instead of the whole history; the old trials it
drops are those TPE already weights least.

Note: TPE sees no user attributes, and intermediate values only of PRUNED trials (its
pruned-trial ranking reads them); it reads neither otherwise. The best trials are COMPLETE
ones: in a study with fewer than 25 COMPLETE trials among more than ``best + recent``
finished ones, TPE fills its good group with the best-ranked PRUNED trials of the recent
window only. Storages that are not relational databases (optuna's in-memory one, in tests)
get the same view, picked from all their trials in memory.

Note: a study of several objectives (``[study] objectives``) gets plain multi-objective TPE,
which sees the whole study: TPE ranks its trials by non-domination over all of them, and no
"best ``BEST``" by one value keeps that ranking exact. Its asks cost what optuna's own do and
grow with the study (a worker's first ask loads the whole history, as measured above); so do
NSGA-II's, which reads every trial to find its generation.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Iterable
from typing import Any

import optuna
from optuna import distributions
from optuna.samplers import TPESampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweep.queue.storage import rdb_of
from sweep.queue.view import read_view

#: The best COMPLETE trials TPE always sees. At least 25, the cap of TPE's good group
#: (``default_gamma``), so that the good group is exact; the 75 more keep the best region's
#: next-best trials in the bad group's density, which is what steers TPE away from them.
BEST = 100
#: The newest finished trials TPE sees. TPE's cost is ~10 µs a trial it sees (measured: 97 ms
#: a suggest call with 10^4), so 1000 keeps an ask near 20 ms at any study size; TPE already
#: gives trials older than its newest 25 a weight falling linearly with age.
RECENT = 1000
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class _View:
    """A study as TPE sees it: its own trials are the view's, everything else is the study's
    (the storage TPE writes its relative parameters to, the directions, the id)."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        self._study = study
        self._trials = sorted(trials, key=lambda t: t.number)  # as optuna's storages return

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def select_view(
    trials: Iterable[FrozenTrial], *, best: int, recent: int, maximize: bool
) -> list[FrozenTrial]:
    """The trials TPE sees, from a list of a study's trials: the ``best`` COMPLETE ones, the
    ``recent`` newest COMPLETE or PRUNED ones and every RUNNING one, sorted by number."""
    trials = list(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    sign = -1.0 if maximize else 1.0
    chosen = {t._trial_id: t for t in sorted(complete, key=lambda t: sign * t.values[0])[:best]}
    finished = sorted((t for t in trials if t.state in _FINISHED), key=lambda t: t._trial_id)
    chosen.update((t._trial_id, t) for t in finished[::-1][:recent])
    chosen.update((t._trial_id, t) for t in trials if t.state == TrialState.RUNNING)
    return sorted(chosen.values(), key=lambda t: t.number)


class BoundedTPESampler(TPESampler):
    """``TPESampler`` that sees the ``best`` COMPLETE trials, the ``recent`` newest finished
    ones and the RUNNING ones: an ask costs the same at any study size (see the module)."""

    def __init__(self, *, best: int = BEST, recent: int = RECENT, **tpe: Any) -> None:
        super().__init__(**tpe)
        self._best, self._recent = best, recent
        self._kept: dict[int, FrozenTrial] = {}  # the view's finished trials, by trial id
        self._last: tuple[tuple[int, int], optuna.Study] | None = None  # one view per trial

    def view(self, study: optuna.Study, trial: FrozenTrial) -> optuna.Study:
        """The study as TPE sees it while sampling ``trial``: built once per trial (TPE asks
        for the trials once per parameter)."""
        key = (study._study_id, trial._trial_id)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        if study._is_multi_objective():
            return study  # no single "best" to bound by (see the module's note)
        maximize = study.direction == StudyDirection.MAXIMIZE
        bounds = {"best": self._best, "recent": self._recent, "maximize": maximize}
        try:
            rdb = rdb_of(study._storage)
        except TypeError:  # optuna's in-memory storage (tests): the same view, from memory
            states = (*_FINISHED, TrialState.RUNNING)
            trials = study._get_trials(deepcopy=False, states=states, use_cache=False)
            view = _View(study, select_view(trials, **bounds))
        else:
            finished, loaded = read_view(rdb.engine, study._study_id, known=self._kept.keys(),
                                         **bounds)  # fmt: skip
            kept = {i: t for i, t in loaded.items() if i in finished and t.state.is_finished()}
            kept.update((i, self._kept[i]) for i in finished & self._kept.keys())
            self._kept = kept
            now_running = [t for t in loaded.values() if t.state == TrialState.RUNNING]
            view = _View(study, [*kept.values(), *now_running])
        self._last = (key, view)
        return view

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, distributions.BaseDistribution]:
        return super().infer_relative_search_space(self.view(study, trial), trial)

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, distributions.BaseDistribution],
    ) -> dict[str, Any]:
        return super().sample_relative(self.view(study, trial), trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: distributions.BaseDistribution,
    ) -> Any:
        view = self.view(study, trial)
        return super().sample_independent(view, trial, param_name, param_distribution)

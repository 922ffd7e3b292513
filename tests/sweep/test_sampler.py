"""The bounded TPE sampler: TPE sees exactly the best, the newest and the running trials, read
from the database alone; a study smaller than the view gets plain TPE's suggestions."""

import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import TrialState, create_trial

from sweep.queue import tables as tb
from sweep.queue import view
from sweep.queue.storage import open_storage
from sweep.queue.writeback import WriteBackStorage
from sweep.study import space
from sweep.study.joining import make_sampler
from sweep.study.sampler import BEST, RECENT, BoundedTPESampler
from sweep.study.spec import parse_spec
from tests.sweep.helpers import WORKER_TAGS

X = FloatDistribution(0.0, 1.0)
#: A sweep-like space: hidden_2's range depends on hidden_1 (the budget), learning rate on a log
#: scale; TPE samples hidden_1 and the rate jointly and hidden_2 on its own.
SPEC = parse_spec({
    "study": {"name": "t", "sampler": "tpe", "trials": 60, "seed": 0},
    "budget": {"min_params": 20_000, "max_params": 60_000},
    "space": {
        "hidden_1": {"low": 24, "high": 64},
        "hidden_2": {"low": 16, "high": 64},
        "learning_rate": {"low": 0.01, "high": 0.5, "log": True},
    },
})  # fmt: skip


def _storage(kind: str, url: str):
    return None if kind == "memory" else open_storage(url)


def _study_with_history(storage) -> optuna.Study:
    """Trials of every state, by number: 0-9 COMPLETE with value = number % 7 (so the best by
    value are 6, 5, 4 ... not the newest), 10-11 PRUNED, 12 FAIL, 13 COMPLETE, 14 RUNNING,
    15 WAITING."""
    study = optuna.create_study(storage=storage, direction="maximize", study_name="h")
    add = study.add_trial
    for number in range(10):
        add(create_trial(params={"x": number / 20}, distributions={"x": X}, value=number % 7))
    for number in (10, 11):
        steps = {0: 0.1 * number}
        add(create_trial(params={"x": number / 20}, distributions={"x": X},
                         state=TrialState.PRUNED, intermediate_values=steps))  # fmt: skip
    add(create_trial(params={"x": 0.6}, distributions={"x": X}, state=TrialState.FAIL))
    add(create_trial(params={"x": 0.65}, distributions={"x": X}, value=0.5))
    add(create_trial(params={"x": 0.7}, distributions={"x": X}, state=TrialState.RUNNING))
    study.enqueue_trial({})
    return study


def _worker(url: str) -> tuple[optuna.Study, BoundedTPESampler]:
    """Study "h" as a sweep worker opens it, with a view of the best 3 and the newest 4."""
    tpe = BoundedTPESampler(best=3, recent=4, seed=0, constant_liar=True, n_startup_trials=2)
    storage = WriteBackStorage(open_storage(url))
    return optuna.load_study(study_name="h", storage=storage, sampler=tpe), tpe


def _spy(monkeypatch) -> list[list[int]]:
    """The numbers of the trials TPE's own sampling code reads, one list per call."""
    seen: list[list[int]] = []
    plain = optuna.samplers.TPESampler._sample

    def spy(self, study, trial, search_space):
        seen.append([t.number for t in study._get_trials(deepcopy=False, states=None)])
        return plain(self, study, trial, search_space)

    monkeypatch.setattr(optuna.samplers.TPESampler, "_sample", spy)
    return seen


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgresql"])
def test_tpe_sees_the_best_the_newest_and_the_running_trials(kind, monkeypatch, request, tmp_path):
    if kind == "postgresql":
        from tests.postgres import fresh_database

        url = fresh_database(request.getfixturevalue("postgres_server"))
    else:
        url = f"sqlite:///{tmp_path / 'h.db'}"
    study = _study_with_history(_storage(kind, url))
    tpe = BoundedTPESampler(best=3, recent=4, seed=0, constant_liar=True, n_startup_trials=2)
    study.sampler = tpe
    seen = _spy(monkeypatch)
    trial = study.ask()  # number 15, the WAITING one, becomes RUNNING
    trial.suggest_float("x", 0.0, 1.0)
    # The best by value: 6, 5, 4; the newest finished: 13, 11, 10, 9 (12 FAILed); running: 14
    # and the asked trial itself (TPE leaves it out of its lie).
    assert seen[-1] == [4, 5, 6, 9, 10, 11, 13, 14, 15]
    view = tpe.view(study, study._storage.get_trial(trial._trial_id))
    assert [t.number for t in view._get_trials(deepcopy=False, states=(TrialState.PRUNED,))] == [
        10,
        11,
    ]
    if kind != "memory":  # the PRUNED trials' last reports, which TPE ranks them by
        pruned = view._get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        assert [t.intermediate_values for t in pruned] == [{0: 1.0}, {0: 0.1 * 11}]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.slow
def test_a_study_smaller_than_the_view_gets_plain_tpes_suggestions(kind, tmp_path):
    def run(tpe: optuna.samplers.BaseSampler, name: str) -> list[dict]:
        storage = _storage(kind, f"sqlite:///{tmp_path / 'small.db'}")
        study = optuna.create_study(storage=storage, sampler=tpe, direction="maximize",
                                    study_name=name)  # fmt: skip

        def objective(trial: optuna.Trial) -> float:
            s = space.suggest(trial, SPEC)
            return -abs(s.hidden_1 - 40) - abs(s.hidden_2 - 30) - abs(s.learning_rate - 0.1)

        study.optimize(objective, n_trials=40)
        return [t.params for t in study.trials]

    args = dict(seed=7, constant_liar=True, n_startup_trials=10)
    plain = run(optuna.samplers.TPESampler(**args), "plain")
    assert run(BoundedTPESampler(**args), "bounded") == plain
    # ... which a view smaller than the study would not give.
    assert run(BoundedTPESampler(best=5, recent=10, **args), "tight") != plain
    assert len({tuple(p.values()) for p in plain[10:]}) > 10  # TPE at work, not one point


def test_a_workers_ask_reads_only_the_view(tmp_path, monkeypatch):
    """A worker's first ask loads the view's trials, never the study's whole history."""
    url = f"sqlite:///{tmp_path / 'w.db'}"
    _study_with_history(open_storage(url))
    study, _ = _worker(url)

    def everything(*args, **kwargs):
        raise AssertionError("the whole study was read")

    monkeypatch.setattr(_CachedStorage, "get_all_trials", everything)
    loaded: list[int] = []
    load = view.load_trials

    def counting(conn, ids):
        ids = sorted(ids)
        loaded.extend(ids)
        return load(conn, ids)

    monkeypatch.setattr(view, "load_trials", counting)
    seen = _spy(monkeypatch)
    trial_id = study._storage.claim(study._study_id, WORKER_TAGS)
    trial = optuna.Trial(study, trial_id)
    trial.suggest_float("x", 0.0, 1.0)
    assert seen == [[4, 5, 6, 9, 10, 11, 13, 14, 15]]
    assert len(loaded) == 9  # the view, once; nothing else
    study.tell(trial, 0.25)
    study.enqueue_trial({})
    trial = optuna.Trial(study, study._storage.claim(study._study_id, WORKER_TAGS))
    loaded.clear()
    trial.suggest_float("x", 0.0, 1.0)
    assert seen[-1] == [4, 5, 6, 10, 11, 13, 14, 15, 16]
    assert loaded == [15, 16, 17]  # by id: the newly finished one and the running ones


def test_unreadable_trials_are_left_out_not_fatal(tmp_path):
    """Another client's COMPLETE trial without a value, or with a parameter optuna cannot
    read, is left out of the view."""
    url = f"sqlite:///{tmp_path / 'odd.db'}"
    study = _study_with_history(open_storage(url))
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(tb.values.delete().where(tb.values.c.trial_id == 7))  # number 6: best
        conn.execute(tb.params.update().where(tb.params.c.trial_id == 6)
                     .values(distribution_json="{not json"))  # number 5  # fmt: skip
    engine.dispose()
    study, tpe = _worker(url)
    trial = optuna.Trial(study, study._storage.claim(study._study_id, WORKER_TAGS))
    assert 0.0 <= trial.suggest_float("x", 0.0, 1.0) <= 1.0
    view = tpe.view(study, study._storage.get_trial(trial._trial_id))
    assert [t.number for t in view._get_trials(deepcopy=False)] == [3, 4, 9, 10, 11, 13, 14, 15]


def test_make_sampler_bounds_tpe_and_keeps_tpes_good_group_exact():
    tpe = make_sampler(SPEC, salt=2)
    assert isinstance(tpe, BoundedTPESampler)
    assert (tpe._best, tpe._recent) == (BEST, RECENT)
    assert tpe._constant_liar and tpe._n_startup_trials == 10
    assert BEST >= 25  # optuna's default_gamma caps the good group at 25 trials
    assert optuna.samplers._tpe.sampler.default_gamma(10**6) <= BEST

"""Every sampler keeps the budget with several objectives: grid, random, multi-objective TPE and
NSGA-II, on many draws, through sweep's own suggest function (``sweep.study.space``) and the
samplers ``sweep.study.joining.make_sampler`` makes; NSGA-II well past its first generation,
so that its children (crossover of two parents, then mutation) are among the draws checked.

The trials run on optuna's in-memory storage with a fake objective that returns the values
at once: accuracy from the widths and the learning rate, the parameter count, a time.
"""

import dataclasses
import math

import optuna
import pytest
from optuna.samplers import NSGAIISampler, RandomSampler
from optuna.trial import TrialState

from mlp.config import WIDTHS
from mlp.model import parameter_count
from sweep.study import objectives, space
from sweep.study.budget import widths_of
from sweep.study.joining import make_sampler
from sweep.study.sampler import BoundedTPESampler
from sweep.study.spec import StudySpec, parse_spec

STUDY = {"name": "p", "trials": 100, "seed": 3, "objectives": ["accuracy", "params"]}
BUDGET = {"min_params": 20_000, "max_params": 60_000}
RATE = {"low": 0.01, "high": 0.5, "log": True}
SPACES = {
    # One width, its in-budget interval the same for every trial: NSGA-II crosses it over.
    "one range": {"hidden_1": {"low": 16, "high": 128}, "learning_rate": RATE},
    # The depth first, then the widths of that depth only, each from the interval the widths
    # before it leave.
    "depths of ranges": {
        "depth": [1, 2, 3], "hidden_1": {"low": 16, "high": 128},
        "hidden_2": {"low": 16, "high": 64}, "hidden_3": {"low": 8, "high": 32},
        "learning_rate": RATE,
    },
    # hidden_2's interval depends on hidden_1 at hidden_1's ends only: NSGA-II's search space
    # may hold it, and a child's crossed-over hidden_2 may then fall outside its own interval.
    "coupled ranges": {
        "hidden_1": {"low": 16, "high": 80}, "hidden_2": {"low": 16, "high": 64},
        "learning_rate": RATE,
    },
    # Lists: one list at depth 1, in-budget networks of lists ("architecture_<depth>") beyond.
    "depths of lists": {
        "depth": [1, 2, 3], "hidden_1": [16, 24, 32, 48, 64, 96], "hidden_2": [16, 32, 64],
        "hidden_3": [8, 16, 32], "learning_rate": RATE,
    },
    "a list beside a range": {
        "hidden_1": [16, 24, 32, 64], "hidden_2": {"low": 16, "high": 64}, "learning_rate": RATE,
    },
}  # fmt: skip


def _spec(sampler: str, space_: dict, **study) -> StudySpec:
    study = {k: v for k, v in {**STUDY, "sampler": sampler, **study}.items() if v is not None}
    if sampler == "nsga2":
        study.setdefault("population", 6)
    return parse_spec({"study": study, "budget": BUDGET, "train": {"depth": 2},
                       "space": space_})  # fmt: skip


def _fake(spec: StudySpec):
    """An objective of the spec's values, cheap: what a trial of these settings would return
    if it trained (a larger network and a moderate rate do better; time grows with size)."""

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        settings = space.suggest(trial, spec)
        widths = widths_of(settings)
        trial.set_user_attr("widths", list(widths))
        n = parameter_count(*widths)
        rate = settings.learning_rate
        accuracy = 100 * (1 - math.exp(-n / 25_000)) - 5 * abs(math.log(rate / 0.1))
        known = {"accuracy": accuracy, "params": float(n), "epoch_time": n * 1e-6}
        return tuple(known[name] for name in spec.objectives)

    return objective


def _run(spec: StudySpec, sampler: optuna.samplers.BaseSampler, n: int) -> optuna.Study:
    study = optuna.create_study(directions=objectives.directions(spec.objectives),
                                sampler=sampler)  # fmt: skip
    if spec.sampler == "grid":  # grid trials arrive with their point fixed, as sweep queues them
        for point in space.grid_points(spec):
            study.enqueue_trial(point)
    study.optimize(_fake(spec), n_trials=n)
    return study


def _assert_inside(spec: StudySpec, study: optuna.Study) -> None:
    """Every trial COMPLETE, a network of its own depth with only that depth's widths
    recorded, inside the budget, and told its parameter count."""
    searched = {d.name for d in spec.space}
    for t in study.trials:
        assert t.state == TrialState.COMPLETE, (t.number, t.state)
        depth = t.params.get("depth", spec.train.depth)
        widths = t.user_attrs["widths"]
        assert len(widths) == depth, (t.number, t.params)
        assert not {w for w in WIDTHS[depth:] if w in t.params}, (t.number, t.params)
        assert spec.budget.min_params < parameter_count(*widths) < spec.budget.max_params, (
            t.number, t.params, widths)  # fmt: skip
        assert t.values[1] == parameter_count(*widths)
        settings = dataclasses.replace(spec.train, **{k: v for k, v in t.params.items()
                                                      if k in searched})  # fmt: skip
        assert [w for w in widths_of(settings)] == widths or "architecture" in str(t.params)


@pytest.mark.parametrize("name", list(SPACES))
def test_random_and_tpe_keep_the_budget_with_several_objectives(name):
    for sampler, n in (("random", 200), ("tpe", 60)):
        spec = _spec(sampler, SPACES[name])
        made = make_sampler(spec)
        assert isinstance(made, BoundedTPESampler if sampler == "tpe" else RandomSampler)
        study = _run(spec, made, n)
        _assert_inside(spec, study)
        depths = {t.params.get("depth", spec.train.depth) for t in study.trials}
        assert depths == set(space.feasible_depths(spec)), (sampler, depths)  # spread, not stuck
        assert len({tuple(t.user_attrs["widths"]) for t in study.trials}) > 10


def test_multi_objective_tpe_is_optunas_own_on_the_whole_study():
    """The bounded view keeps TPE's good group exact for one value; with several, TPE ranks
    by non-domination over every trial, so it sees the study itself."""
    spec = _spec("tpe", SPACES["one range"])
    study = _run(spec, make_sampler(spec), 12)
    sampler = study.sampler
    assert sampler.view(study, study.trials[-1]) is study


def test_a_grid_of_several_objectives_runs_its_in_budget_points_once():
    lists = {"depth": [1, 2], "hidden_1": [16, 32, 48, 64], "hidden_2": [16, 32, 64],
             "learning_rate": [0.05, 0.1]}  # fmt: skip
    spec = _spec("grid", lists, trials=None)
    points = space.grid_points(spec)
    assert 4 < len(points) < 2 * 4 + 2 * 4 * 3  # the budget left some out
    study = _run(spec, make_sampler(spec), len(points))
    _assert_inside(spec, study)
    assert sorted(map(str, (t.params for t in study.trials))) == sorted(map(str, points))


def _generation(t: optuna.trial.FrozenTrial) -> int:
    return t.system_attrs[NSGAIISampler._get_generation_key()]


@pytest.mark.parametrize("name", list(SPACES))
@pytest.mark.parametrize("several", [["accuracy", "params"], ["accuracy", "params", "epoch_time"]])
def test_nsga2s_children_keep_the_budget_and_are_bred_from_their_parents(name, several):
    spec = _spec("nsga2", SPACES[name], objectives=several, population=6)
    sampler = make_sampler(spec)
    assert isinstance(sampler, NSGAIISampler) and sampler.population_size == 6
    study = _run(spec, sampler, 150)
    _assert_inside(spec, study)
    children = [t for t in study.trials if _generation(t) >= 1]
    assert max(map(_generation, children)) >= 10  # well past the first generation
    crossed = mutated = 0
    for t in children:
        parents = sampler.get_parent_population(study, _generation(t))
        rates = {p.params["learning_rate"] for p in parents}
        # A float drawn at random equals a parent's with probability 0: this one was bred.
        if t.params["learning_rate"] in rates:
            crossed += 1
        else:
            mutated += 1  # or crossed over elsewhere and its rate drawn again
    assert crossed >= len(children) // 2, (crossed, len(children))
    assert mutated > 0
    if name == "one range":  # a width crossed over too: in its interval, so in the budget
        widths = {
            (t.params["hidden_1"], t.params["learning_rate"])
            for t in children
        }  # fmt: skip
        parents_of = {
            (p.params["hidden_1"], p.params["learning_rate"])
            for g in {_generation(t) for t in children}
            for p in sampler.get_parent_population(study, g)
        }  # fmt: skip
        assert len(widths & parents_of) > 10


def test_a_crossed_over_width_outside_its_childs_own_interval_is_drawn_again_inside(monkeypatch):
    """NSGA-II's search space holds hidden_2 while every finished trial drew it from the same
    interval; a child whose hidden_1 narrows that interval may be handed a parent's hidden_2
    outside it. optuna then draws it again from the child's own interval (``Trial._suggest``
    asks its distribution), which is what keeps such a child inside the budget. Seeds are
    tried until a child was refused a parent's value, so the case is seen, not assumed."""
    refused: list[tuple[int, int]] = []  # (trial number, the parent's value it was refused)
    plain = optuna.trial.Trial._is_relative_param

    def spy(self, name, distribution):
        ok = plain(self, name, distribution)
        if name == "hidden_2" and name in self.relative_params and not ok:
            refused.append((self.number, self.relative_params[name]))
        return ok

    monkeypatch.setattr(optuna.trial.Trial, "_is_relative_param", spy)
    for seed in range(40):
        spec = _spec("nsga2", SPACES["coupled ranges"], seed=seed)
        study = _run(spec, make_sampler(spec), 150)
        _assert_inside(spec, study)
        if refused:
            break
    assert refused, "no child was handed a hidden_2 outside its interval in 40 seeds"
    number, offered = refused[0]
    child = study.trials[number]
    interval = child.distributions["hidden_2"]
    assert not interval.low <= offered <= interval.high  # outside the child's own interval...
    assert interval.low <= child.params["hidden_2"] <= interval.high  # ...drawn again inside

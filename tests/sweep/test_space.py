import copy

import numpy as np
import optuna
import pytest

from mlp import parameter_count
from sweep.study.budget import width_interval
from sweep.study.space import (
    ARCHITECTURE,
    OutsideSpace,
    grid_points,
    suggest,
    suggest_checked,
)
from sweep.study.spec import load_spec, parse_spec
from tests.sweep.test_spec import STUDIES

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_the_notebook_grid_has_its_24_points():
    points = grid_points(load_spec(STUDIES / "seed-grid.toml"))
    archs = sorted({(p["hidden_1"], p["hidden_2"]) for p in points})
    assert len(points) == 24
    assert {parameter_count(*a) for a in archs} == {
        514_066,
        617_234,
        720_402,
        535_818,
        669_706,
        803_594,
        937_482,
        802_314,
    }
    assert sorted({p["learning_rate"] for p in points}) == [0.01, 0.1, 1.0]


def _sample(spec, n, sampler):
    study = optuna.create_study(sampler=sampler, direction="maximize")
    out = []
    for _ in range(n):
        trial = study.ask()
        settings = suggest(trial, spec)
        out.append(settings)
        study.tell(trial, float(settings.learning_rate))  # any value; TPE needs results
    return out


RANGES = {
    "study": {"name": "r", "sampler": "random", "trials": 10},
    "space": {
        "hidden_1": {"low": 128, "high": 1024},
        "hidden_2": {"low": 64, "high": 1024},
        "learning_rate": {"low": 0.01, "high": 1.0, "log": True},
    },
}
DEPTHS = {
    "study": {"name": "d", "sampler": "random", "trials": 10},
    "space": {"depth": [1, 2, 3], "hidden_1": {"low": 64, "high": 1024},
              "hidden_2": {"low": 64, "high": 1024}, "hidden_3": {"low": 16, "high": 512}},
}  # fmt: skip


@pytest.mark.slow
def test_10000_random_suggestions_are_all_inside_the_budget_and_spread_across_it():
    spec = parse_spec(RANGES)
    samples = _sample(spec, 10_000, optuna.samplers.RandomSampler(seed=0))
    counts = np.array([parameter_count(s.hidden_1, s.hidden_2) for s in samples])
    assert ((500_000 < counts) & (counts < 1_000_000)).all()
    h1 = np.array([s.hidden_1 for s in samples])
    h2 = np.array([s.hidden_2 for s in samples])
    # hidden_1 covers its whole feasible range: 128 can't reach 500k with hidden_2 ≤ 1024,
    # the smallest that can is 313; the largest, 1024, fits with a small hidden_2.
    assert h1.min() <= 320 and h1.max() >= 1015
    assert h2.min() <= 70 and h2.max() >= 1015
    # and the region is filled, not a corner: every decile of parameter count is visited
    deciles = np.histogram(counts, bins=10, range=(500_000, 1_000_000))[0]
    assert deciles.min() > 200, deciles
    lr = np.array([s.learning_rate for s in samples])
    assert 0.01 <= lr.min() < 0.012 and 0.9 < lr.max() <= 1.0


@pytest.mark.slow
def test_tpe_suggestions_are_all_inside_the_budget():
    spec = parse_spec({**RANGES, "study": {"name": "t", "sampler": "tpe", "trials": 10}})
    samples = _sample(spec, 300, optuna.samplers.TPESampler(seed=0, n_startup_trials=10))
    counts = [parameter_count(s.hidden_1, s.hidden_2) for s in samples]
    assert all(500_000 < c < 1_000_000 for c in counts)
    assert len({(s.hidden_1, s.hidden_2) for s in samples}) > 100


def test_lists_with_infeasible_pairs_become_one_architecture_parameter():
    raw = copy.deepcopy(RANGES)
    raw["space"] = {"hidden_1": [392, 512, 768, 1024], "hidden_2": [256, 512, 768, 1024]}
    spec = parse_spec(raw)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(400):
        trial = study.ask()
        s = suggest(trial, spec)
        assert trial.params[ARCHITECTURE] == f"{s.hidden_1}x{s.hidden_2}"
        seen.add((s.hidden_1, s.hidden_2))
        study.tell(trial, 0.0)
    assert len(seen) == 8  # exactly the notebook's eight feasible architectures


def test_a_list_against_a_range_is_filtered_then_conditioned():
    raw = copy.deepcopy(RANGES)
    raw["space"] = {"hidden_1": [128, 392, 1024], "hidden_2": {"low": 64, "high": 1024}}
    spec = parse_spec(raw)
    samples = _sample(spec, 500, optuna.samplers.RandomSampler(seed=2))
    assert {s.hidden_1 for s in samples} == {392, 1024}  # 128 has no in-budget partner
    assert all(spec.budget.admits(s.hidden_1, s.hidden_2) for s in samples)


def test_one_searched_size_against_a_fixed_one():
    raw = copy.deepcopy(RANGES)
    raw["train"] = {"hidden_1": 512}
    raw["space"] = {"hidden_2": {"low": 1, "high": 2000}}
    spec = parse_spec(raw)
    h2 = {s.hidden_2 for s in _sample(spec, 300, optuna.samplers.RandomSampler(seed=3))}
    lo, hi = width_interval(spec.budget, (512, 0), 1)
    assert min(h2) >= lo and max(h2) <= hi and max(h2) - min(h2) > 0.8 * (hi - lo)


def _claimed(fixed: dict) -> optuna.Trial:
    """A trial enqueued by any client with these parameters, as a worker claims it."""
    study = optuna.create_study()
    study.enqueue_trial(fixed, skip_if_exists=False)
    return study.ask()


@pytest.mark.parametrize(
    "space",
    [
        RANGES["space"],
        {"hidden_1": [392, 512, 768, 1024], "hidden_2": [256, 512, 768, 1024]},  # architecture
        {"hidden_1": [128, 392, 1024], "hidden_2": {"low": 64, "high": 1024}, "shuffle": [True]},
        DEPTHS["space"],
    ],
    ids=["ranges", "architecture", "list-and-range", "depths"],
)
def test_the_parameters_a_space_suggested_pass_its_check_when_enqueued_again(space):
    # A requeued trial is enqueued with the parameters it ran with (sweep.queue.recovery): the
    # check must never fail one the space itself suggested.
    spec = parse_spec({**RANGES, "space": space})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4))
    for _ in range(200):
        trial = study.ask()
        settings = suggest(trial, spec)
        again = _claimed(trial.params)
        assert suggest_checked(again, spec, again._fixed_params) == settings
        study.tell(trial, 0.0)


@pytest.mark.parametrize(
    ("fixed", "why"),
    [
        ({"shuffle": 1}, r"parameter 'shuffle' = 1 is outside the study's space \(shuffle: one "
         r"of True, False\)"),  # 1 == True, but a number is not a boolean
        ({"learning_rate": float("nan")}, r"'learning_rate' = nan is outside .* a float in"),
        ({"hidden_1": 512.5}, r"'hidden_1' = 512\.5 is outside .* an integer in \[271, 1024\]"),
        ({"dropout": 0.5}, r"'dropout' = 0\.5 is not in the study's space \(it searches "),
    ],
)  # fmt: skip
def test_a_fixed_value_the_space_would_not_suggest_is_refused(fixed, why):
    spec = parse_spec({**RANGES, "space": {**RANGES["space"], "shuffle": [True, False]}})
    trial = _claimed(fixed)
    with pytest.raises(OutsideSpace, match=why):
        suggest_checked(trial, spec, trial._fixed_params)


@pytest.mark.parametrize(
    ("fixed", "why"),
    [
        ({"depth": 4}, r"parameter 'depth' = 4 is outside the study's space \(depth: one of 1, 2, "
         r"3\)"),
        ({"depth": 1, "hidden_1": 700, "hidden_2": 64}, r"^parameter 'hidden_2' = 64 is not used "
         r"by a trial of depth 1$"),
        ({"depth": 3, "hidden_1": 512, "hidden_2": 256, "hidden_3": 10**7}, r"^parameter "
         r"'hidden_3' = 10000000 is outside the study's space \(hidden_3: an integer in \[16, "
         r"512\]\)$"),
        ({"depth": 1, "hidden_1": 64}, r"parameter 'hidden_1' = 64 is outside the study's space "
         r"\(hidden_1: an integer in \[629, 1024\]\)"),  # 795·629 + 10 > 500,000
    ],
)  # fmt: skip
def test_a_fixed_depth_or_width_the_space_would_not_suggest_is_refused(fixed, why):
    spec = parse_spec(DEPTHS)
    trial = _claimed(fixed)
    with pytest.raises(OutsideSpace, match=why):
        suggest_checked(trial, spec, trial._fixed_params)


def test_a_grid_point_outside_the_budget_for_its_depth_is_refused():
    spec = parse_spec({"study": {"name": "g", "sampler": "grid"},
                       "space": {"depth": [1, 2], "hidden_1": [16, 800]}})  # fmt: skip
    ok = _claimed({"depth": 1, "hidden_1": 800})
    assert suggest_checked(ok, spec, ok._fixed_params).depth == 1
    trial = _claimed({"depth": 1, "hidden_1": 16})
    with pytest.raises(OutsideSpace, match=r"^architecture 16 has 12,730 parameters, outside the "
                       r"study's budget \(500,000 < parameters < 1,000,000\)$"):  # fmt: skip
        suggest_checked(trial, spec, trial._fixed_params)

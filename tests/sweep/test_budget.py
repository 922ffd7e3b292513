"""The budget at any depth: every draw of TPE or random sampling is inside it, every feasible
network can be drawn, a grid keeps its in-budget points once each, and a study file of two
widths draws exactly what it drew before depths existed."""

import hashlib
import itertools
import json

import numpy as np
import optuna
import pytest
from optuna.distributions import distribution_to_json

from mlp import parameter_count
from sweep.study.budget import Budget, width_interval
from sweep.study.joining import _cost
from sweep.study.space import grid_points, suggest
from sweep.study.spec import parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

WIDTHS = ("hidden_1", "hidden_2", "hidden_3", "hidden_4")


def _counts(hidden: np.ndarray) -> np.ndarray:
    """Parameter counts of many networks at once, (n, depth) → (n,): the oracle, written
    apart from ``parameter_count``."""
    sizes = [np.full(len(hidden), 784), *hidden.T, np.full(len(hidden), 10)]
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def _every(box) -> np.ndarray:
    """Every network in a box of integer ranges, (n, depth)."""
    axes = np.meshgrid(*(np.arange(lo, hi + 1) for lo, hi in box), indexing="ij")
    return np.stack([a.ravel() for a in axes], axis=1)


@pytest.mark.parametrize("budget", [Budget(500_000, 1_000_000), Budget(0, 5_000),
                                    Budget(70_000, 70_500)])  # fmt: skip
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_a_widths_interval_is_exactly_the_values_inside_the_budget(budget, depth):
    rng = np.random.default_rng(depth)
    for _ in range(20):
        hidden = [int(h) for h in rng.integers(1, 1500, size=depth)]
        for k in range(depth):
            lo, hi = width_interval(budget, hidden, k)
            xs = np.arange(1, 3000)
            nets = np.tile(hidden, (len(xs), 1))
            nets[:, k] = xs
            counts = _counts(nets)
            brute = xs[(budget.min_params < counts) & (counts < budget.max_params)]
            clipped = (max(lo, 1), min(hi, 2999))
            if len(brute):
                assert (brute[0], brute[-1]) == clipped
                assert len(brute) == brute[-1] - brute[0] + 1  # an interval
            else:
                assert clipped[0] > clipped[1]


class _Drawn:
    """A trial that draws each value itself: uniformly, or at the ends of its distribution
    half the time ("edges": TPE-like, it piles draws where a wrong bound would show), so that
    10⁴ draws per depth take a second, through the same ``suggest``."""

    def __init__(self, rng: np.random.Generator, edges: bool) -> None:
        self.rng, self.edges, self.params = rng, edges, {}

    def suggest_int(self, name, low, high, *, log=False):
        assert low <= high, (name, low, high)
        pick = self.rng.random()
        if self.edges and pick < 0.5:
            v = low if pick < 0.25 else high
        else:
            v = int(self.rng.integers(low, high + 1))
        self.params[name] = v
        return v

    def suggest_categorical(self, name, choices):
        self.params[name] = v = choices[self.rng.integers(len(choices))]
        return v

    def suggest_float(self, name, low, high, *, log=False):
        self.params[name] = v = float(self.rng.uniform(low, high))
        return v


def _spec(box, budget, depth, sampler="random"):
    space = {WIDTHS[k]: {"low": lo, "high": hi} for k, (lo, hi) in enumerate(box)}
    return parse_spec({
        "study": {"name": "b", "sampler": sampler, "trials": 10},
        "budget": {"min_params": budget[0], "max_params": budget[1]},
        "train": {"depth": depth},
        "space": space,
    })  # fmt: skip


def _draws(spec, n, edges, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        trial = _Drawn(rng, edges)
        s = suggest(trial, spec)
        assert set(trial.params) == set(WIDTHS[: s.depth])  # unused widths are not suggested
        out.append(tuple(getattr(s, w) for w in WIDTHS[: s.depth]))
    return np.array(out)


#: Small boxes whose every network the oracle enumerates; their budgets cut them on both sides.
SMALL = {
    1: ([(200, 1500)], (500_000, 1_000_000)),
    2: ([(16, 60), (16, 60)], (30_000, 45_000)),
    3: ([(8, 15)] * 3, (8_000, 11_000)),
    4: ([(8, 12)] * 4, (7_500, 9_200)),
}


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_10000_draws_per_depth_are_every_feasible_network_of_a_box_and_nothing_else(depth):
    box, budget = SMALL[depth]
    every = _every(box)
    counts = _counts(every)
    feasible = every[(budget[0] < counts) & (counts < budget[1])]
    assert 0 < len(feasible) < len(every)  # the budget cuts the box
    assert len(feasible) < 2_000  # so that 10⁴ draws reach every one
    spec = _spec(box, budget, depth)
    drawn = _draws(spec, 10_000, edges=False)
    assert {tuple(h) for h in drawn} == {tuple(h) for h in feasible}
    edged = _draws(spec, 3_000, edges=True, seed=1)
    assert {tuple(h) for h in edged} <= {tuple(h) for h in feasible}


#: Wide boxes at the notebook's budget; 10⁴ draws reach both ends of each width's in-budget
#: values (at depths 3 and 4, its whole range).
WIDE = {1: [(64, 2000)], 2: [(64, 1024)] * 2, 3: [(64, 1024)] * 3, 4: [(32, 1024)] * 4}


def _feasible_ends(box):
    """Each width's in-budget values, from the corners: the count rises with every width."""
    ends = []
    for k in range(len(box)):
        lows, highs = [lo for lo, _ in box], [hi for _, hi in box]
        lo = next(v for v in range(box[k][0], box[k][1] + 1)
                  if parameter_count(*highs[:k], v, *highs[k + 1 :]) > 500_000)  # fmt: skip
        hi = next(v for v in range(box[k][1], box[k][0] - 1, -1)
                  if parameter_count(*lows[:k], v, *lows[k + 1 :]) < 1_000_000)  # fmt: skip
        ends.append((lo, hi))
    return ends


@pytest.mark.parametrize("edges", [False, True], ids=["uniform", "edges"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_10000_draws_per_depth_stay_inside_the_budget_and_reach_every_end(depth, edges):
    box = WIDE[depth]
    spec = _spec(box, (500_000, 1_000_000), depth)
    drawn = _draws(spec, 10_000, edges=edges)
    counts = _counts(drawn)
    assert ((500_000 < counts) & (counts < 1_000_000)).all()
    for k, (lo, hi) in enumerate(_feasible_ends(box)):
        span = hi - lo
        assert drawn[:, k].min() <= lo + span // 50 and drawn[:, k].max() >= hi - span // 50
    if depth > 2:  # every value of the ranges is reachable (1 and 2: the budget cuts them)
        assert _feasible_ends(box) == box
    if not edges:  # the region is filled, not a corner: every decile of the count visited
        deciles = np.histogram(counts, bins=10, range=(500_000, 1_000_000))[0]
        assert deciles.min() > 100, deciles


def _sample(spec, n, sampler):
    study = optuna.create_study(sampler=sampler, direction="maximize")
    out = []
    for _ in range(n):
        trial = study.ask()
        s = suggest(trial, spec)
        out.append(tuple(getattr(s, w) for w in WIDTHS[: s.depth]))
        study.tell(trial, float(sum(out[-1]) % 101))  # any value; TPE needs results
    return out, study


@pytest.mark.slow
@pytest.mark.parametrize("depth", [1, 3, 4])
def test_optunas_samplers_draw_inside_the_budget_at_every_depth(depth):
    spec = _spec(WIDE[depth], (500_000, 1_000_000), depth)
    drawn, _ = _sample(spec, 2_000, optuna.samplers.RandomSampler(seed=depth))
    assert all(500_000 < parameter_count(*h) < 1_000_000 for h in drawn)
    drawn, _ = _sample(spec, 200, optuna.samplers.TPESampler(seed=depth, n_startup_trials=10))
    assert all(500_000 < parameter_count(*h) < 1_000_000 for h in drawn)


def test_the_depth_is_drawn_from_those_with_an_in_budget_network():
    # hidden_1 of at most 600 cannot reach 500,000 parameters alone (795·600 + 10).
    spec = parse_spec({
        "study": {"name": "d", "sampler": "random", "trials": 10},
        "space": {"depth": [1, 2, 3], "hidden_1": {"low": 64, "high": 600},
                  "hidden_2": {"low": 64, "high": 1024}, "hidden_3": [64, 128, 2048]},
    })  # fmt: skip
    drawn, study = _sample(spec, 600, optuna.samplers.RandomSampler(seed=7))
    assert {len(h) for h in drawn} == {2, 3}
    assert all(500_000 < parameter_count(*h) < 1_000_000 for h in drawn)
    assert study.trials[0].distributions["depth"].choices == (2, 3)
    # each trial records the widths its depth uses, and no other
    for t in study.trials:
        assert {k for k in t.params if k.startswith("hidden_")} == set(WIDTHS[: t.params["depth"]])


def test_lists_of_widths_at_two_depths_are_a_joint_parameter_per_depth():
    spec = parse_spec({
        "study": {"name": "j", "sampler": "tpe", "trials": 10},
        "space": {"depth": [2, 3], "hidden_1": [256, 512, 1024], "hidden_2": [128, 1024],
                  "hidden_3": [64, 512]},
    })  # fmt: skip
    drawn, study = _sample(spec, 300, optuna.samplers.RandomSampler(seed=3))
    every = {h for d in (2, 3) for h in itertools.product(*(spec.dimension(w).choices
                                                            for w in WIDTHS[:d]))}  # fmt: skip
    assert set(drawn) == {h for h in every if 500_000 < parameter_count(*h) < 1_000_000}
    for t in study.trials:
        d = t.params["depth"]
        assert t.params[f"architecture_{d}"] == "x".join(map(str, drawn[t.number]))


def test_a_grid_keeps_its_in_budget_points_once_each():
    spec = parse_spec({
        "study": {"name": "g", "sampler": "grid"},
        "space": {"depth": [1, 2, 3], "hidden_1": [256, 800, 1024], "hidden_2": [128, 512],
                  "hidden_3": [64, 256], "learning_rate": [0.1, 0.01]},
    })  # fmt: skip
    points = grid_points(spec)
    keys = [tuple(sorted(p.items())) for p in points]
    assert len(keys) == len(set(keys))  # depth-1 points differing in hidden_2/3 are one point
    want = set()
    for depth, h1, h2, h3, lr in itertools.product(*(d.choices for d in spec.space)):
        hidden = (h1, h2, h3)[:depth]
        if 500_000 < parameter_count(*hidden) < 1_000_000:
            point = {"depth": depth, "learning_rate": lr} | dict(zip(WIDTHS, hidden, strict=False))
            want.add(tuple(sorted(point.items())))
    assert set(keys) == want
    assert {p["depth"] for p in points} == {1, 2, 3}
    # a grid trial suggests its point's parameters, no unused width
    for point in points:
        trial = optuna.trial.FixedTrial(point)
        suggest(trial, spec)
        assert set(trial.params) == set(point)
    # and is queued by its own network's work (longest first): epochs × its parameters
    assert [_cost(spec, p) for p in points[:2]] == [10 * parameter_count(800)] * 2
    deep = next(p for p in points if p["depth"] == 3)
    assert _cost(spec, deep) == 10 * parameter_count(*(deep[w] for w in WIDTHS[:3]))


#: What each space of a depth-2 study file drew before depths existed (commit 20cfd44, the code
#: of #24): 40 trials' parameters and distributions, their SHA-256 (first 16 hex digits), with
#: optuna's random sampler and its TPE. A study resumed after the change asks for the same
#: parameters with the same distributions, and draws the same values.
SPACES = {
    "ranges": {"hidden_1": {"low": 128, "high": 1024},
               "hidden_2": {"low": 64, "high": 1024, "log": True}},
    "lists": {"hidden_1": [392, 512, 768, 1024], "hidden_2": [256, 512, 768, 1024]},
    "all-fit": {"hidden_1": [512, 768], "hidden_2": [512, 768]},
    "list-range": {"hidden_1": [128, 392, 1024], "hidden_2": {"low": 64, "high": 1024}},
    "range-list": {"hidden_1": {"low": 64, "high": 1024}, "hidden_2": [1024, 16, 300]},
    "range-fixed": {"hidden_1": {"low": 100, "high": 2000}},
    "fixed-list": {"hidden_2": [100, 2000, 300, 40]},
}  # fmt: skip
PINNED = {
    "ranges": ("e1dd5f01187c3822", "190f7174b69afe46"),
    "lists": ("aea56e7ce2469bdf", "9b83cc7e5e6d464c"),
    "all-fit": ("bf8b45a90b123164", "a727908e4739f734"),
    "list-range": ("554b31deb20e30ca", "626c8c2d87a74eee"),
    "range-list": ("0abefa1b8f2da728", "18cf15ae2f5e3266"),
    "range-fixed": ("431ead399b701e5b", "d360d69859365557"),
    "fixed-list": ("037b0d9a8f7b0773", "973ca64186656b03"),
}


def _digest(space, sampler) -> str:
    spec = parse_spec({
        "study": {"name": "p", "sampler": "tpe", "trials": 10},
        "train": {"hidden_1": 512, "hidden_2": 768},
        "space": {**space, "learning_rate": {"low": 0.01, "high": 1.0, "log": True}},
    })  # fmt: skip
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for _ in range(40):
        trial = study.ask()
        s = suggest(trial, spec)
        study.tell(trial, float(s.hidden_1 % 97 + s.learning_rate))
    rows = [[t.params, {n: distribution_to_json(d) for n, d in t.distributions.items()}]
            for t in study.trials]  # fmt: skip
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", SPACES)
def test_a_two_width_study_file_draws_what_it_drew_before_depths(name):
    random = _digest(SPACES[name], optuna.samplers.RandomSampler(seed=5))
    tpe = _digest(SPACES[name], optuna.samplers.TPESampler(seed=5, n_startup_trials=10))
    assert (random, tpe) == PINNED[name]

"""The parameter budget over networks of any depth: which widths keep a network inside it.

The parameter count of 784 → w_1 → … → w_d → 10 is linear and increasing in each width given
the others (``mlp.sizes.parameter_count``):

    count = slope_k · w_k + offset_k,   slope_k = w_{k-1} + 1 + w_{k+1}   (w_0 = 784, w_{d+1} = 10)

so, the other widths fixed, the values of w_k that meet min < count < max form an exact
integer interval (``width_interval``). With some of the other widths still free in their
ranges, the values of w_k for which SOME completion lands inside the budget form an interval
too (``reachable``): the count is smallest with the free widths at their lows and largest at
their highs, and every count between is within one step of a reachable one. That last step is
what makes it exact for integers: a walk from the lows to the highs, one unit of one width at
a time, never jumps by more than the largest slope, so when the budget's window
(max - min) is wider than that (``widest_slope``), some integer completion lands inside
whenever the real-valued bounds say one can. With one free width it is exact always.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mlp.config import WIDTHS
from mlp.sizes import N_CLASSES, N_INPUTS, parameter_count

#: (lowest, highest) value of each width of a network, input side first.
Box = Sequence[tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class Budget:
    """Exclusive bounds on the parameter count: min_params < count < max_params."""

    min_params: int = 500_000
    max_params: int = 1_000_000

    def admits(self, *hidden: int) -> bool:
        return self.min_params < parameter_count(*hidden) < self.max_params


def widths_of(settings: object) -> tuple[int, ...]:
    """The widths a trial's settings (a TrainSettings) use: hidden_1 … hidden_{depth}."""
    return tuple(getattr(settings, name) for name in WIDTHS[: settings.depth])  # type: ignore[attr-defined]


def used(name: str, depth: int) -> bool:
    """Whether a network of ``depth`` uses the field ``name`` (any field but an unused width)."""
    return name not in WIDTHS or WIDTHS.index(name) < depth


def _open_interval(budget: Budget, slope: int, offset: int) -> tuple[int, int]:
    """Integers x with min < slope·x + offset < max, as (lo, hi) (empty when lo > hi)."""
    lo = (budget.min_params - offset) // slope + 1
    hi = -((offset - budget.max_params) // slope) - 1
    return lo, hi


def width_interval(budget: Budget, hidden: Sequence[int], k: int) -> tuple[int, int]:
    """The values of width ``k`` (0-based) that put the network inside the budget, the other
    widths as in ``hidden`` (whatever ``hidden[k]`` says)."""
    offset = parameter_count(*hidden[:k], 0, *hidden[k + 1 :])
    slope = parameter_count(*hidden[:k], 1, *hidden[k + 1 :]) - offset
    return _open_interval(budget, slope, offset)


def reachable(budget: Budget, box: Box, k: int) -> tuple[int, int]:
    """The values of width ``k`` within its own bounds from which the other widths, each
    within its bounds, can complete an in-budget network (exact under ``widest_slope``; see
    the module); (lo, hi), empty when lo > hi."""
    lows, highs = [b[0] for b in box], [b[1] for b in box]
    lo = width_interval(budget, highs, k)[0]  # the others at their largest must pass min
    hi = width_interval(budget, lows, k)[1]  # and at their smallest stay under max
    return max(box[k][0], lo), min(box[k][1], hi)


def feasible(budget: Budget, box: Box) -> bool:
    """Whether some network with every width within its bounds is inside the budget (exact
    when at most one width is free, or under ``widest_slope``)."""
    free = [k for k, (lo, hi) in enumerate(box) if lo < hi]
    lo, hi = reachable(budget, box, free[-1] if free else 0)
    return lo <= hi


def widest_slope(box: Box, free: Sequence[int]) -> tuple[int, int]:
    """The most one unit of a ``free`` width (0-based indices into ``box``) can add to the
    count, and that width: its neighbours at their highest."""
    highs = [N_INPUTS, *(b[1] for b in box), N_CLASSES]
    slopes = [(highs[k] + 1 + highs[k + 2], k) for k in free]
    return max(slopes)

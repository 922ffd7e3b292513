"""Which trials of a study, from any client, trained a network outside its parameter budget.

sweep's own trials never do (``sweep.study.space`` draws inside it; a claimed trial whose
fixed parameters fall outside fails before it trains). Another client's may: optuna's own
``optimize`` of ``optuna.load_study`` with an objective of its own drew 768x1024 (1,400,586
parameters) in a study of 500,000 < parameters < 1,000,000 (issue 28). The report and
``sweep status`` read a trial's network from its parameters as sweep's objective would (the
study's [train] settings where a parameter does not say; ``architecture`` as its widths) and
flag it, so such a trial is never shown as an answer inside the rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlp.config import WIDTHS
from mlp.sizes import parameter_count
from sweep.study.rules import MISSING
from sweep.study.space import ARCHITECTURE, DEPTH, SearchSpec

#: The parameters a trial's network is read from (``trial_widths``): what ``sweep status`` reads.
NETWORK_PARAMS = (DEPTH, ARCHITECTURE, *(f"{ARCHITECTURE}_{d}" for d in range(1, len(WIDTHS) + 1)),
                  *WIDTHS)  # fmt: skip


def _width(v: Any) -> int | None:
    """A width (or a depth) as a parameter stores it (64, 64.0 from a float distribution, "64"
    of an architecture or another client's categorical), if it is a positive integer. Text
    counts only as ASCII digits, at most nine (``"²".isdigit()`` holds, and ``int`` refuses
    it; ``int`` refuses 4,301 digits too)."""
    if isinstance(v, str):
        v = int(v) if v.isascii() and v.isdigit() and len(v) <= 9 else None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return v if type(v) is int and v >= 1 else None


def trial_widths(params: Mapping[str, Any], spec: SearchSpec) -> tuple[int, ...] | None:
    """The hidden widths a trial with ``params`` trained, input side first, as sweep's
    objective derives them: a parameter where there is one, the study's [train] value where
    the study does not search it. None where the parameters do not say (a searched depth or
    width they lack, as a trial not yet sampled; a value that is not a positive integer, an
    architecture that is not "h1xh2…")."""
    fixed = MISSING if spec.dimension(DEPTH) else spec.train.depth  # type: ignore[attr-defined]
    depth = _width(params.get(DEPTH, fixed))  # stored as a width is: 2, 2.0, "2"
    if depth is None or depth > len(WIDTHS):
        return None
    joint = params.get(ARCHITECTURE, params.get(f"{ARCHITECTURE}_{depth}"))
    given = dict(zip(WIDTHS, joint.split("x"), strict=False)) if isinstance(joint, str) else {}
    widths = []
    for name in WIDTHS[:depth]:
        if name in params:
            widths.append(_width(params[name]))
        elif name in given:
            widths.append(_width(given[name]))
        elif spec.dimension(name) is None:
            widths.append(getattr(spec.train, name))  # type: ignore[attr-defined]
        else:
            return None
    return None if None in widths else tuple(widths)  # type: ignore[arg-type]


def outside_budget(params: Mapping[str, Any], spec: SearchSpec) -> str | None:
    """A few words flagging a trial whose network is outside the study's budget
    (``outside the budget: 768x1024, 1,400,586 parameters``); None for one inside it, or whose
    parameters make no network to judge."""
    widths = trial_widths(params, spec)
    if widths is None or spec.budget.admits(*widths):
        return None
    shown = "x".join(map(str, widths))
    return f"outside the budget: {shown}, {parameter_count(*widths):,} parameters"


#: Trials a report's summary line names before it says how many more there are.
_NAMED = 20
#: Trials a status line names before it says how many more there are.
_NAMED_IN_STATUS = 5


def _named(found: Sequence[int], named: int) -> str:
    """The first ``named`` of these trial numbers, and how many more there are:
    ``#0, #2 and 3 more``."""
    more = f" and {len(found) - named:,} more" if len(found) > named else ""
    return ", ".join(f"#{n}" for n in found[:named]) + more


def outside_numbers(trials: Iterable[Any], spec: SearchSpec) -> list[int]:
    """The numbers of the trials (anything with ``number`` and ``params``) whose network is
    outside the budget."""
    return [t.number for t in trials if outside_budget(t.params, spec)]


def outside_line(found: Sequence[int]) -> str | None:
    """The report's line naming the trials numbered ``found`` (``outside_numbers``, in the
    order to name them) whose network is outside the budget; None if there are none."""
    if not found:
        return None
    named = _named(found, _NAMED)
    return (f"- **{len(found):,} trial(s) outside the budget** ({named}): another client's "
            "(sweep's own trials never are), not answers inside the rules")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Audit:
    """Which of a study's trials ``sweep status`` judged against the budget, and what it found:
    its newest that have run, as many as its share of the database's bound
    (``sweep.queue.audit_reads.shares``; all of a smaller study's)."""

    judged: int  # how many trials were judged
    every: bool  # whether they are every trial of the study that has run
    outside: list[int]  # the numbers of those outside the budget, ascending

    @classmethod
    def of(cls, trials: Sequence[tuple[int, Mapping[str, Any]]], spec: SearchSpec,
           ran: int) -> Audit:  # fmt: skip
        """The judgement of ``trials`` ((number, parameters) each) of a study whose trials
        that have run number ``ran``."""
        found = sorted(number for number, params in trials if outside_budget(params, spec))
        return cls(len(trials), len(trials) >= ran, found)

    def text(self) -> str | None:
        """``sweep status``'s line on the trials outside the budget; None if every trial was
        judged and none is. A check of only the newest says so whatever it found: that it found
        none is no answer for the study."""
        among = "" if self.every else f" among its newest {self.judged:,} (a report judges all)"
        if not self.outside:
            return f"no trial outside the budget{among}" if among else None
        n = len(self.outside)
        return f"{n:,} trial(s) outside the budget{among}: {_named(self.outside, _NAMED_IN_STATUS)}"

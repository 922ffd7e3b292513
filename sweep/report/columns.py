"""A large study's trials as columns: what its report aggregates and draws, without a Python
object per trial.

A report of 10⁶ trials held each as a record (parameters and attribute dicts): 5.2 GB (issue
27). Pages of records (``sweep.queue.report_pages``) are folded here into arrays of one number
per trial (number, state, value, size, seconds, start and end, each parameter), some 100 bytes
a trial, plus what is counted by kind (why trials were pruned or failed, each initialisation's
latest loss curve); the records themselves are dropped with their page. Trials are folded in
any order and read in number order (``finish``), so the figures and tables come out as they did
from records.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from optuna.trial import TrialState

from sweep.queue.report_reads import Record
from sweep.report.shown import Trial, config, reason
from sweep.report.stored import count, number, series, series_of
from sweep.report.summary import fmt

_STATES = list(TrialState)
_CODE = {s: i for i, s in enumerate(_STATES)}
_EPOCH = datetime(1970, 1, 1)
_US = timedelta(microseconds=1)
_ABSENT, _NUMBER = -1, -2  # a parameter's code: absent, or a number (in ``num``)
#: The per-epoch series a page keeps the last value of (``kept``): what ``trials.csv`` shows.
SERIES = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")


def kept(key: str, value: Any) -> Any:
    """What a page's record keeps of an attribute: a valid series' last value only (a list of
    3,000 epochs would otherwise stay in memory with its page), anything else whole."""
    if key not in SERIES:
        return value
    values = series_of(value)
    return values[-1:] if values else None


class _Param:
    """One parameter's values: a number per trial, or a code for anything else (by repr)."""

    def __init__(self) -> None:
        self.num = array("d")  # the value where it is a finite number, else NaN
        self.isint = array("b")  # whether that number was an int (repr and fmt differ)
        self.code = array("i")  # _ABSENT, _NUMBER, or an index into ``shown``
        self.codes: dict[str, int] = {}  # repr → code, for the values that are no number
        self.shown: list[str] = []  # ``fmt`` of each code's value

    def add(self, value: Any, present: bool) -> None:
        if type(value) is float and -math.inf < value < math.inf:  # ``number``'s common case
            self.num.append(value), self.isint.append(False), self.code.append(_NUMBER)
            return
        n = number(value) if present else None
        if n is not None:
            self.num.append(n), self.isint.append(isinstance(value, int)), self.code.append(_NUMBER)
            return
        self.num.append(math.nan), self.isint.append(False)
        if not present:
            self.code.append(_ABSENT)
            return
        self.code.append(self._code(repr(value), value))

    def _code(self, key: str, value: Any = None, shown: str | None = None) -> int:
        """The code of the value whose repr is ``key``, given one the first time."""
        if key not in self.codes:
            self.codes[key] = len(self.shown)
            self.shown.append(fmt(value) if shown is None else shown)
        return self.codes[key]

    def merge(self, other: _Param) -> None:
        """Append the values ``other`` holds, its codes made this one's."""
        mine = [self._code(key, shown=shown) for key, shown in zip(other.codes, other.shown,
                                                                    strict=True)]  # fmt: skip
        self.num.extend(other.num), self.isint.extend(other.isint)
        self.code.extend(array("i", (c if c < 0 else mine[c] for c in other.code)))


class Columns:
    """The trials of a large study, folded one by one (``add``), then read (``finish``)."""

    def __init__(self, names: list[str], *, grid: bool) -> None:
        self.names = names
        #: the numbers of the trials outside the budget (``add``'s ``outside``), in number
        #: order once ``finish``ed
        self.outside = array("q")
        self.tid, self.number, self.state = array("q"), array("q"), array("b")
        self.value, self.n_params, self.seconds = array("d"), array("d"), array("d")
        self.start, self.complete = array("d"), array("d")  # µs since 1970, NaN if none
        self.params = {n: _Param() for n in names}
        self._notes: dict[str, list[int]] = {}  # note → [trials, first number]
        self._inits: dict[str, list[int]] = {}  # init → [first, latest number, latest id]
        self.grid: list[Record] | None = [] if grid else None  # a grid's points, small
        self._varying: list[str] | None = None

    def add(self, t: Trial, *, outside: bool = False) -> None:
        """Fold one trial in (any order); ``outside``: its network is outside the study's
        budget (``sweep.study.audit.outside_budget``, judged once for its row and here)."""
        self.tid.append(t.trial_id), self.number.append(t.number)
        self.state.append(_CODE[t.state])
        self.value.append(math.nan if t.value is None else t.value)
        self.n_params.append(_nan(count(t, "n_params")))
        self.seconds.append(_nan(number(t.user_attrs.get("seconds"))))
        (
            self.start.append(_micro(t.datetime_start)),
            self.complete.append(_micro(t.datetime_complete)),
        )
        for name, column in self.params.items():
            column.add(t.params.get(name), name in t.params)
        if t.state in (TrialState.PRUNED, TrialState.FAIL):
            seen = self._notes.setdefault(reason(t), [0, t.number])
            seen[0], seen[1] = seen[0] + 1, min(seen[1], t.number)
        if series(t, "train_loss"):
            init = self._inits.setdefault(str(config(t).get("init")), [t.number, -1, 0])
            init[0] = min(init[0], t.number)
            if t.number > init[1]:
                init[1:] = [t.number, t.trial_id]
        if outside:
            self.outside.append(t.number)
        if self.grid is not None and _finite(t):
            n = count(t, "n_params")
            self.grid.append(Record(t.trial_id, t.number, t.state, t.value, None, None,
                                    user_attrs={"config": config(t), "n_params": n}))  # fmt: skip

    def merge(self, other: Columns) -> None:
        """Fold in the trials ``other`` folded (of the same names, unfinished): a part of the
        study read by another process (``sweep.report.parts``)."""
        for name in ("tid", "number", "state", "value", "n_params", "seconds", "start",
                     "complete"):  # fmt: skip
            getattr(self, name).extend(getattr(other, name))
        for name, column in self.params.items():
            column.merge(other.params[name])
        for note, (n, first) in other._notes.items():
            seen = self._notes.setdefault(note, [0, first])
            seen[0], seen[1] = seen[0] + n, min(seen[1], first)
        for init, (first, latest, tid) in other._inits.items():
            mine = self._inits.setdefault(init, [first, -1, 0])
            mine[0] = min(mine[0], first)
            if latest > mine[1]:
                mine[1:] = [latest, tid]
        if self.grid is not None and other.grid is not None:
            self.grid += other.grid
        self.outside.extend(other.outside)

    def finish(self) -> None:
        """Every column as a numpy array in trial-number order; ``folded``: the order each
        trial was folded in, by that order (``folded[i]``: the fold of the trial at ``i``)."""
        by = np.argsort(np.frombuffer(self.number, dtype=np.int64), kind="stable")
        self.folded = by
        for name in ("tid", "number", "state", "value", "n_params", "seconds", "start",
                     "complete"):  # fmt: skip
            setattr(self, name, np.asarray(getattr(self, name))[by])
        for p in self.params.values():
            p.num, p.isint, p.code = (np.asarray(p.num)[by], np.asarray(p.isint, dtype=bool)[by],
                                      np.asarray(p.code)[by])  # fmt: skip
        if self.grid is not None:
            self.grid.sort(key=lambda r: r.number)
        self.outside = array("q", sorted(self.outside))
        self.is_done = (self.state == _STATES.index(TrialState.COMPLETE)) & np.isfinite(self.value)
        self.done = np.flatnonzero(self.is_done)

    def listed(self, order: dict[TrialState, int], *, maximize: bool) -> np.ndarray:
        """Indices (in number order) as ``summary.ordered`` lists the trials: by ``order`` of
        the state, then the best value first (a trial without one, or a NaN value, before
        them), then by number. A sort of the columns: the same sort of 10⁶ joined rows in SQL
        cost a quarter of a report's time (issue 27)."""
        rank = np.asarray([order[s] for s in _STATES])[self.state]
        sign = -1.0 if maximize else 1.0
        key = np.where(np.isnan(self.value), -np.inf, sign * self.value)
        return np.lexsort((self.number, key, rank))

    def counts(self) -> Counter[TrialState]:
        """Trials by state."""
        codes = np.bincount(self.state, minlength=len(_STATES))
        return Counter({s: int(codes[i]) for i, s in enumerate(_STATES) if codes[i]})

    def state_of(self, i: int) -> TrialState:
        """The state of the trial at index ``i``."""
        return _STATES[self.state[i]]

    def which(self, *states: TrialState) -> np.ndarray:
        """Indices (in number order) of the trials in these states."""
        return np.flatnonzero(np.isin(self.state, [_STATES.index(s) for s in states]))

    def notes(self) -> Counter[str]:
        """Why trials were pruned or failed, counted, in order of each note's first trial (as
        ``digest.note_rows`` counts them from trials in number order: ties keep that order)."""
        firsts = sorted(self._notes.items(), key=lambda kv: kv[1][1])
        return Counter({note: n for note, (n, _) in firsts if note})

    def inits(self) -> list[tuple[str, int]]:
        """Each initialisation with a loss curve, in order of its first such trial, and the
        trial id of its latest (whose curve ``drawn.init_section`` shows)."""
        return [(k, tid) for k, (_, _, tid) in sorted(self._inits.items(), key=lambda kv: kv[1][0])]

    def varying(self) -> list[str]:
        """The parameters that take more than one value among the complete trials
        (``shown.varying``): absent, each number (an int apart from its float), each other
        value by its repr. Worked out once, by least and greatest values, not a sort."""
        if self._varying is None:
            self._varying = self._varies()
        return list(self._varying)

    def _varies(self) -> list[str]:
        out = []
        for name, p in self.params.items():
            code = p.code[self.done]
            if not (code != _ABSENT).any():
                continue
            numbers = code == _NUMBER
            num, isint, other = (
                p.num[self.done][numbers],
                p.isint[self.done][numbers],
                code[~numbers],
            )
            # more than one of: the (number, int or not) pairs, the other codes; by their least
            # and greatest, not a sort (np.unique of 10⁶ pairs took 1 s a parameter)
            pairs = _kinds(num) if not len(num) or isint.min() == isint.max() else 2
            if pairs + _kinds(other) > 1:
                out.append(name)
        return out

    def groups(self, name: str) -> list[tuple[str, list[float]]] | None:
        """The complete trials' values of parameter ``name`` as ``digest.parameter_rows``
        groups them (numbers in buckets, else by shown value); None if no trial has it."""
        from sweep.report import digest

        p = self.params[name]
        rows = self.done[p.code[self.done] != _ABSENT]
        if not len(rows):
            return None
        values = self.value[rows]
        if (p.code[rows] == _NUMBER).all():
            return digest.numeric_buckets(p.num[rows], values)
        # one label id per distinct shown text: of the codes, and of the distinct numbers
        ids: dict[str, int] = {}
        code, num, isint = p.code[rows], p.num[rows], p.isint[rows]
        label = np.empty(len(rows), dtype=np.int64)
        for c in np.unique(code[code >= 0]):
            label[code == c] = ids.setdefault(p.shown[c], len(ids))
        numbers = code == _NUMBER
        pairs, back = np.unique(np.stack([num[numbers], isint[numbers]]), axis=1,
                                return_inverse=True)  # fmt: skip
        of_pair = [ids.setdefault(fmt(int(x) if i else float(x)), len(ids)) for x, i in pairs.T]
        label[numbers] = np.asarray(of_pair, dtype=np.int64)[back.reshape(-1)]
        texts = list(ids)
        _, first, which = np.unique(label, return_index=True, return_inverse=True)
        groups = [(texts[label[first[k]]], values[which == k].tolist()) for k in np.argsort(first)]
        return sorted(groups, key=lambda kv: -len(kv[1]))[:10]


def _kinds(values: np.ndarray) -> int:
    """How many distinct values, counted to two: none, one, or more."""
    return 0 if not len(values) else 1 if values.min() == values.max() else 2


def _finite(t: Trial) -> bool:
    return t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


def _micro(when: datetime | None) -> float:
    return math.nan if when is None else float((when - _EPOCH) // _US)

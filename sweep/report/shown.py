"""How a report shows one trial: which trials a figure can place, a trial's parameters,
configuration, network and note, and a Markdown table's cells.

Shared by the report (``sweep.report.writer``) and its figures (``sweep.report.drawn``); takes
sweep's narrow records (``sweep.queue.report_reads.Record``) or optuna's whole trials alike.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

import mlp.sizes
from mlp.config import WIDTHS, ModelConfig
from sweep.errors import SpecError
from sweep.queue.attrs import why_failed
from sweep.queue.report_reads import Record
from sweep.report.stored import count, number, printable, series_of
from sweep.study.rules import TRAIN_RULES, check_value

#: The final metrics ``trials.csv`` shows, each the last epoch of its stored series.
METRICS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")

#: What the report reads a trial as: sweep's own narrow record, or optuna's whole trial (the
#: multi-objective report, the best trial).
Trial = Record | FrozenTrial


def finished(trials: Sequence[Trial]) -> list[Trial]:
    """The complete trials with a finite value: the ones a figure can place (another client
    may have stored inf, or, in SQL, completed a trial without a value)."""
    return [
        t for t in trials
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
    ]  # fmt: skip


def varying(done: Sequence[Trial]) -> list[str]:
    """The parameters that take more than one value among ``done``."""
    return [n for n in param_names(done) if len({repr(t.params.get(n)) for t in done}) > 1]


def reason(t: Trial) -> str:
    """Why a trial was pruned or failed, in a few words; empty for the others."""
    if t.state == TrialState.PRUNED:
        # a large study's record carries its last step without its curve (``Record.last_step``)
        last = max(t.intermediate_values, default=getattr(t, "last_step", None))
        epoch = count(t, "pruned_at") or ("?" if last is None else last)
        return f"pruned at epoch {epoch}"
    if t.state == TrialState.FAIL:
        return printable(why_failed(t.user_attrs), 200)
    return ""


def cell(v: Any) -> str:
    """A value in a Markdown table: floats short, anyone's text printable."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else printable(v, 80)


def final(t: Trial, key: str) -> float | None:
    """The last epoch's value of a stored per-epoch series, if it is a valid one."""
    values = series_of(t.user_attrs.get(key))  # ``series``, a call fewer (10⁶ trials × 4)
    return values[-1] if values else None


def param_names(trials: Sequence[Trial]) -> list[str]:
    """Every parameter name among ``trials``, in order of first appearance."""
    names: list[str] = []
    seen: set[str] = set()
    for t in trials:
        new = [k for k in t.params if k not in seen]
        names += new
        seen.update(new)
    return names


def config(t: Trial) -> dict[str, Any]:
    """The trial's whole configuration as sweep stored it, else its parameters."""
    stored = t.user_attrs.get("config")
    return stored if isinstance(stored, dict) else dict(t.params)


def checked(t: Trial, names: Sequence[str]) -> dict[str, Any]:
    """Those of the named fields that the trial's configuration (``config``) holds, each
    checked by its study-file rule: the configuration is anyone's JSON. SpecError names the
    first that no study file could hold, in one line (``trial 3's stored config: [train.depth]
    must be an integer in [1, 4]; got 7``)."""
    stored = config(t)
    source = f"trial {t.number}'s stored config"
    return {n: check_value(source, f"train.{n}", TRAIN_RULES[n], stored[n])
            for n in names if n in stored}  # fmt: skip


def hidden(t: Trial) -> tuple[int, ...] | None:
    """The trial's hidden widths, input side first: ``depth`` of them (2 where the
    configuration has no depth, as every trial before #25). None where a width in use is
    missing; SpecError (``checked``) for a depth or width in use that no study file could
    hold."""
    depth = ModelConfig(**checked(t, ["depth"])).depth
    names = WIDTHS[:depth]
    widths = checked(t, names)
    return tuple(widths[n] for n in names) if len(widths) == depth else None


def in_use(t: Trial) -> dict[str, Any]:
    """The trial's configuration (``config``) without the widths past its depth, which its
    network does not have (a depth-2 trial stores hidden_3 and hidden_4 all the same)."""
    try:
        depth = len(hidden(t) or ())
    except SpecError:
        depth = 0
    unused = set(WIDTHS[depth:]) if depth else set()
    return {k: v for k, v in config(t).items() if k not in unused}


def network(t: Trial) -> str:
    """The trial's network as messages name one (``784-800-10``): empty where its
    configuration does not say, ``?`` where it holds a depth or width no study file could.
    Worked out once per distinct depth and widths (``_network``): a report of 10⁶ trials
    spent 30 s checking the same few networks again (issue 27)."""
    stored = config(t)
    key = tuple((n, type(stored[n]), stored[n]) for n in _SHAPE if n in stored)
    try:
        hash(key)
    except TypeError:  # a list or dict where a number belongs: never cached
        return _network.__wrapped__(key)
    return _network(key)


_SHAPE = ("depth", *WIDTHS)  # what ``hidden`` reads of a configuration


@functools.lru_cache(maxsize=4096)
def _network(key: tuple[tuple[str, type, Any], ...]) -> str:
    """``network`` of a configuration holding only ``key``'s (name, type, value) fields: all
    that ``hidden`` reads (the type in the key keeps ``True`` apart from ``1``)."""
    shape = Record(0, 0, TrialState.COMPLETE, None, None, None,
                   user_attrs={"config": {n: v for n, _, v in key}})  # fmt: skip
    try:
        widths = hidden(shape)
    except SpecError:
        return "?"
    return "" if widths is None else mlp.sizes.architecture(*widths)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table, every cell through ``cell``."""
    lines = ["| " + " | ".join(cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_header(names: Sequence[str]) -> list[str]:
    """``trials.csv``'s header: number, state, each parameter, size, value, final metrics,
    seconds, reason, and why the trial's network is outside the study's budget."""
    return ["number", "state", *names, "network", "n_params", "value", *METRICS, "seconds",
            "reason", "outside_budget"]  # fmt: skip


def csv_row(t: Trial, names: Sequence[str], outside: str | None = None) -> list[Any]:
    """One trial's row of ``trials.csv`` (``csv_header``); ``outside``: why its network is
    outside the budget (``sweep.study.audit.outside_budget``), if it is."""
    return [
        t.number, t.state.name, *(t.params.get(n, "") for n in names), network(t),
        count(t, "n_params") or "", "" if t.value is None else t.value,
        *("" if (v := final(t, m)) is None else v for m in METRICS),
        number(t.user_attrs.get("seconds")) or "", reason(t), outside or "",
    ]  # fmt: skip

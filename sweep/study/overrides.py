"""Overrides of a study file's values from the command line (``--set train.epochs=5``) or
from Python (``{"train.epochs": 5}``), checked by the same rules as the file itself.

Each override names one ``section.key`` of a study file and its value, written as in TOML
(``train.learning_rate=1e-3``, ``train.shuffle=true``, ``space.hidden_1=[64, 128]``); text
that is not a TOML value is a string (``study.name=quick-5``), and a field that holds text
takes the text as written. One override is checked on its own first, so a bad one is one line
naming it: ``--set train.epochs=0: [train.epochs] must be an integer in [1, 10000]; got 0``;
then the file with every override is checked as a whole, its messages naming both
(``x.toml with --set budget.max_params=2000: [budget] no architecture …``). What results is
the spec, so the stored spec records it: a changed result-relevant field under an existing
study's name is refused as a changed file is.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from sweep.errors import SpecError
from sweep.study.rules import (
    BUDGET_RULES,
    DATA_RULES,
    SECTIONS,
    STUDY_RULES,
    Rule,
    check_value,
    fail,
    field_key,
    show,
    train_rules,
)

#: What ``--set`` says it takes, in its help and in the message of one without ``=``.
FORM = "KEY=VALUE, KEY a study file's section.key (e.g. train.epochs=5)"


@dataclasses.dataclass(frozen=True)
class Override:
    """One checked override: ``section.key`` and its value, and how it was given."""

    section: str  # one of SECTIONS
    key: str
    value: Any
    given: str  # as messages quote it: "--set train.epochs=5", or "train.epochs=5"

    @property
    def field(self) -> str:
        return f"{self.section}.{self.key}"


def _rules(section: str) -> dict[str, Rule] | None:
    """The rules of a section's keys; None for [space], whose keys are [train]'s and whose
    values (lists, ranges) the whole file's check judges."""
    return {"study": STUDY_RULES, "budget": BUDGET_RULES, "data": DATA_RULES,
            "train": train_rules(), "space": None}[section]  # fmt: skip


_NOT_TOML = object()


def _toml_value(text: str) -> Any:
    """``text`` read as one TOML value, or _NOT_TOML."""
    try:
        doc = tomllib.loads(f"v = {text}")
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):
        return _NOT_TOML
    return doc["v"] if list(doc) == ["v"] else _NOT_TOML  # "5\nname = 1" is not one value


def parse_override(text: str) -> Override:
    """``--set``'s ``KEY=VALUE``, checked on its own; SpecError (one line) naming it."""
    key, eq, value = text.partition("=")
    if not eq or "." not in key:
        raise SpecError(f"--set must be {FORM}; got {show(text)}")
    section, _, name = key.strip().partition(".")
    rules = _rules(section) if section in SECTIONS else None
    kind = rules[name].kind if rules and name in rules else None
    parsed = _toml_value(value.strip())
    if kind is str or parsed is _NOT_TOML:  # text, as written unless quoted as TOML text
        parsed = parsed if isinstance(parsed, str) else value.strip()
    return checked(section, name, parsed, given=f"--set {_one_line(text)}")


#: The most characters of an override a message quotes (as ``rules.show`` cuts a value): a
#: value of thousands of characters was quoted whole, the message as long.
_QUOTED = 200


def _one_line(text: str) -> str:
    """An override as a message quotes it: a line break or other control character escaped,
    as ``repr`` escapes it, so that the message stays one line; cut at ``_QUOTED``
    characters."""
    line = text if text.isprintable() else repr(text)[1:-1]
    return line if len(line) <= _QUOTED else line[:_QUOTED] + "…"


def checked(section: str, key: Any, value: Any, *, given: str) -> Override:
    """One override checked by its field's rule: the section and key exist, the value obeys
    the key's rule ([space] values are judged with the whole file)."""
    if section not in SECTIONS:
        raise fail(given, field_key(section), "one of the sections " + ", ".join(SECTIONS),
                   section)  # fmt: skip
    rules = _rules(section)
    if rules is not None:
        if key not in rules:
            known = "one of the known keys " + ", ".join(rules)
            raise fail(given, f"{section}.{field_key(key)}", known, key)
        value = check_value(given, f"{section}.{key}", rules[key], value)
    elif key not in train_rules():
        raise fail(given, f"space.{field_key(key)}", "a [train] setting: "
                   + ", ".join(train_rules()), key)  # fmt: skip
    return Override(section, key, value, given)


def overrides_of(overrides: Sequence[str | Override] | Mapping[str, Any]) -> list[Override]:
    """Overrides as the command line (``KEY=VALUE`` texts, or already parsed) or Python (a
    mapping of ``section.key`` to its value) gives them, each checked."""
    if isinstance(overrides, Mapping):
        out = []
        for key, value in overrides.items():
            section, _, name = str(key).partition(".")
            out.append(checked(section, name, value, given=f"{_one_line(str(key))}={show(value)}"))
        return out
    return [o if isinstance(o, Override) else parse_override(o) for o in overrides]


def overridden(
    raw: Mapping[str, Any], overrides: Sequence[str | Override] | Mapping[str, Any], *,
    source: str,
) -> tuple[dict[str, Any], str]:  # fmt: skip
    """A study file's document (``raw``, left as it is) with the overrides applied, and the
    source its messages then name: ``x.toml with --set train.epochs=5``.

    A [train] key the file searches in [space] is refused: the override would be ignored (a
    searched setting's value is the trial's), and ``space.KEY=[VALUE]`` fixes it instead."""
    parsed = overrides_of(overrides)
    changed = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    space = changed.get("space")
    for o in parsed:
        if o.section == "train" and isinstance(space, dict) and o.key in space:
            fixes = f"space.{o.key}=[{show(o.value)}]"
            allowed = f"a setting [space] does not search ({fixes} fixes it)"
            raise fail(o.given, o.field, allowed, o.value)
        table = changed.setdefault(o.section, {})
        if isinstance(table, dict):  # else the file's own error says what it is
            table[o.key] = o.value
    if not parsed:
        return changed, source
    return changed, f"{source} with " + " ".join(o.given for o in parsed)

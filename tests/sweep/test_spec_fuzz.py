"""Property-based tests of the study-file boundary: whatever a study file or a stored spec
holds, the result is a valid StudySpec or a SpecError of one line that starts with the name
of its source; never another exception, never a hang.

The inputs: TOML documents built from strategies (a), the shipped study files mutated (b),
and JSON-like objects given to ``stored_spec`` as if read from a shared database (c).
"""

import datetime
import json
import math
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweep.errors import SpecError
from sweep.study.rules import BUDGET_RULES, DATA_RULES, SECTIONS, STUDY_RULES, TRAIN_RULES
from sweep.study.spec import StudySpec, load_spec, parse_spec, stored_spec
from tests.sweep.test_spec import STUDIES

SHIPPED = sorted(STUDIES.glob("*.toml"))
KNOWN = {
    "study": list(STUDY_RULES),
    "budget": list(BUDGET_RULES),
    "data": list(DATA_RULES),
    "train": list(TRAIN_RULES),
    "space": list(TRAIN_RULES),
}
# Bounded, reproducible, and quick: the whole file runs in well under 30 s. The deadline is
# not a speed test; it only stops an example that hangs or enumerates something huge.
FUZZ = settings(
    max_examples=250,
    deadline=datetime.timedelta(seconds=5),
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check(load, source: str) -> StudySpec | None:
    """The property: a StudySpec, or one line of SpecError naming ``source`` first."""
    try:
        spec = load()
    except SpecError as e:
        message = str(e)
        assert message.startswith(f"{source}: "), message
        assert len(message.splitlines()) == 1, message
        return None
    assert isinstance(spec, StudySpec)
    # A valid spec survives the database: stored, read back by another client, stored again.
    stored = json.loads(json.dumps(spec.to_dict()))
    assert stored_spec(stored, source="stored").to_dict() == spec.to_dict()
    return spec


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def load_bytes(folder: Path, data: bytes) -> StudySpec | None:
    path = folder / "x.toml"
    path.write_bytes(data)
    return check(lambda: load_spec(path), str(path))


# (a) TOML documents from strategies ------------------------------------------------------

EDGES = [0, 1, -1, 2, 10_000, 10_001, 50_000, 50_001, 100_000, 2**32 - 1, 2**32, 2**63 - 1,
         -(2**63), math.nan, math.inf, -math.inf, 1e308, 5e-324, -0.0,
         0.5, 1.0]  # fmt: skip
#: Literals that have broken TOML readers: past float and int64 range, past Python's
#: 4300-digit limit for int(), nested past the recursion limit.
NASTY = ["9" * 5000, "1e400", "-1e400", "1" + "0" * 400, "0x" + "f" * 5000, "9223372036854775808",
         "[" * 3000 + "]" * 3000, "{a = " * 2000 + "1" + "}" * 2000, "nan", "-inf", "[]", "{}",
         '""', "true", "1979-05-27"]  # fmt: skip
WORDS = ["grid", "tpe", "random", "none", "median", "hyperband", "relu", "tanh", "glorot",
         "normal", "zeros", "float32", "float64", "cosine", "step", "constant", "~/x", "",
         "x" * 129]  # fmt: skip
HUGE = [10**400, -(10**400), 2**63, 2**64 + 1, 10**30]  # past float and int64
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # UTF-8 encodable
numbers = st.one_of(
    *[st.sampled_from(EDGES)] * 3,  # three times as likely as the others
    st.sampled_from(HUGE),
    st.integers(),
    st.integers(min_value=1, max_value=2_000),
    st.floats(),  # nan, inf and -inf among them
    st.floats(min_value=0, max_value=1),
)
scalars = st.one_of(
    numbers,
    st.booleans(),
    text,
    st.sampled_from(WORDS),
    st.dates(),
    st.datetimes(),
    st.times(),
)
keys = st.one_of(text, st.sampled_from(sorted({k for ks in KNOWN.values() for k in ks})))


def mostly(known, other=text):
    """19 draws in 20 from ``known``: most examples get past the unknown-name checks."""
    return st.integers(0, 19).flatmap(lambda i: other if i == 19 else st.sampled_from(known))


values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
ranges = st.fixed_dictionaries(
    {"low": numbers, "high": numbers}, optional={"log": st.booleans(), "step": numbers}
)


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_value(k)


def toml_value(v) -> str:
    """A value in TOML (tomllib reads; nothing in the standard library writes)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else {math.inf: "inf", -math.inf: "-inf"}.get(v, repr(v))
    if isinstance(v, str):  # JSON's escapes are TOML's, but for DEL, which TOML escapes
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    return v.isoformat()  # dates, times, datetimes


def toml_document(doc: dict) -> str:
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for name, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{toml_key(name)}]")
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@st.composite
def documents(draw) -> dict:
    """A shipped study (or nothing) with sections, keys and values added, replaced, removed."""
    base = draw(st.sampled_from([None, *SHIPPED]))
    doc = tomllib.loads(base.read_text()) if base else {}
    for _ in range(draw(st.integers(1, 8))):
        section = draw(mostly(SECTIONS))
        table = doc.setdefault(section, {})
        if not isinstance(table, dict) or draw(st.integers(0, 19)) == 0:
            doc[section] = draw(values)  # a section that is not a table
            continue
        key = draw(mostly(KNOWN.get(section, ["x"]), keys))
        if draw(st.booleans()) and key in table:
            del table[key]
        elif section == "space":
            table[key] = draw(st.lists(numbers | scalars, max_size=6) | ranges | values)
        else:
            table[key] = draw(numbers | values)
    return doc


@FUZZ
@given(doc=documents())
def test_any_toml_document(folder, doc):
    document = toml_document(doc)
    assert tomllib.loads(document).keys() == doc.keys()  # the writer above writes TOML
    load_bytes(folder, document.encode())


@FUZZ
@given(
    base=st.sampled_from(SHIPPED),
    field=st.sampled_from([(s, k) for s in SECTIONS for k in KNOWN[s]]),
    value=numbers | values | ranges | st.lists(numbers, max_size=6),
)
def test_one_field_of_a_shipped_study_set_to_anything(folder, base, field, value):
    # Everything else valid, so each example reaches the rule of the field it changes.
    doc = tomllib.loads(base.read_text())
    doc.setdefault(field[0], {})[field[1]] = value
    load_bytes(folder, toml_document(doc).encode())


@pytest.mark.slow
def test_every_field_of_a_shipped_study_set_to_every_edge():
    # Exhaustive where the draws above are sparse: each known field set to each edge value,
    # searched as a list or a range in [space]. (The document, not its TOML: edges like nan
    # and inf are TOML values, and the file route is fuzzed above.)
    doc = tomllib.loads((STUDIES / "tpe-best.toml").read_text())
    for section in SECTIONS:
        for key in KNOWN[section]:
            for edge in [*EDGES, *HUGE]:
                shapes = [[edge], {"low": 0, "high": edge}, {"low": edge, "high": 1e308}]
                for value in shapes if section == "space" else [edge]:
                    changed = {**doc, section: {**doc.get(section, {}), key: value}}
                    check(lambda d=changed: parse_spec(d, source="x.toml"), "x.toml")


# (b) the shipped study files, mutated -------------------------------------------------------

NUMBER = re.compile(r"-?\d[\d_.e+]*")


@st.composite
def mutated(draw, original: str) -> bytes:
    """A study file with 1 to 3 lines deleted, duplicated or edited, maybe a byte changed."""
    lines = original.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1)) if lines else 0
        how = draw(st.sampled_from(["delete", "duplicate", "number", "type", "insert"]))
        if how == "delete" and lines:
            del lines[i]
        elif how == "duplicate" and lines:
            lines.insert(i, lines[i])
        elif how == "number" and lines and NUMBER.search(lines[i]):
            a, b = draw(st.sampled_from([m.span() for m in NUMBER.finditer(lines[i])]))
            new = draw(numbers.map(toml_value) | st.sampled_from(NASTY))
            lines[i] = lines[i][:a] + new + lines[i][b:]
        elif how == "type" and lines and " = " in lines[i]:
            key = lines[i].split(" = ", 1)[0]
            new = draw(st.sampled_from(NASTY) | (values | ranges).map(toml_value))
            lines[i] = f"{key} = {new}\n"
        else:  # insert random text into a line
            line = lines[i] if lines else ""
            at = draw(st.integers(0, len(line)))
            noise = draw(text | st.sampled_from(["[", "]", "=", '"', "\n", "[space]\n", "{"]))
            lines[i : i + 1] = [line[:at] + noise + line[at:]]
    data = bytearray("".join(lines).encode())
    if data and draw(st.booleans()):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_mutated_shipped_studies(folder, path):
    @settings(FUZZ, max_examples=60)
    @given(data=mutated(path.read_text()))
    def mutate(data):
        load_bytes(folder, data)

    mutate()


# (c) stored specs from a shared database ----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | numbers | text | st.sampled_from(WORDS),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=20,
)
tables = st.dictionaries(
    mostly(sorted({k for ks in KNOWN.values() for k in ks})), json_values, max_size=6
)


@FUZZ
@given(
    stored=st.integers(0, 9).flatmap(  # one in ten anything at all, the others a table
        lambda i: (
            json_values
            if i == 9
            else st.dictionaries(mostly(SECTIONS), tables | json_values, max_size=6)
        )
    )
)
@pytest.mark.slow
def test_any_json_as_a_stored_spec(stored):
    check(lambda: stored_spec(stored, source="study 'g'"), "study 'g'")


STORED = [load_spec(p).to_dict() for p in SHIPPED]


@FUZZ
@given(data=st.data())
def test_a_stored_spec_with_values_replaced(data):
    stored = json.loads(json.dumps(data.draw(st.sampled_from(STORED))))
    for _ in range(data.draw(st.integers(1, 3))):
        section = data.draw(mostly(SECTIONS, keys))
        table = stored.setdefault(section, {})
        if not isinstance(table, dict):
            continue
        key = data.draw(mostly(KNOWN.get(section, ["x"]), keys))
        table[key] = data.draw(numbers | json_values | ranges | st.lists(numbers, max_size=6))
    check(lambda: stored_spec(stored, source="study 'g'"), "study 'g'")

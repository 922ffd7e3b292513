"""The catalogue of user errors: each is one line on stderr with the right exit code, no
traceback, and leaves an existing study database byte for byte as it was.

The README's table of messages is checked against this list, so the two cannot drift apart.
"""

import hashlib
import re
from pathlib import Path

import pytest

from tests.sweep.helpers import run_cli

README = Path(__file__).parents[2] / "README.md"


# (case, study-file text or None for the good one, extra CLI args, exit code, message pattern)
BASE = """[study]
name = "g"
sampler = "{sampler}"
trials = 3
pruner = "{pruner}"
{study_extra}
[budget]
min_params = {min_params}
max_params = 200_000
[data]
train_size = 2000
{data}
[train]
epochs = 1
init = "{init}"
activation = "{activation}"
learning_rate = {lr}
{extra}
[space]
{space}
"""
GOOD_SPACE = "hidden_1 = [64, 128]\nhidden_2 = [32, 64]"


def study(**changes):
    values = dict(sampler="grid", pruner="none", min_params="50_000", data="", init="glorot",
                  activation="relu", lr="0.1", extra="", space=GOOD_SPACE,
                  study_extra="")  # fmt: skip
    return BASE.format(**(values | changes))


CASES = [
    ("malformed TOML", "[study\n", 2, r"{file}: not valid TOML: .*"),
    (
        "nesterov without momentum",
        study(extra="nesterov = true"),
        2,
        r"{file}: \[train\.nesterov\] must be false unless momentum > 0; got True",
    ),
    (
        "log scale from zero",
        study(
            sampler="tpe",
            space=GOOD_SPACE + "\nweight_decay = { low = 0.0, high = 0.1, log = true }",
        ),
        2,
        r"{file}: \[space\.weight_decay\.low\] must be greater than 0 with log = true; got 0\.0",
    ),
    (
        "seed beyond numpy's range",
        study(study_extra="seed = 4294967296"),
        2,
        r"{file}: \[study\.seed\] must be an integer in \[0, 4294967295\]; got 4294967296",
    ),
    (
        "unknown key",
        study(extra="epochz = 3"),
        2,
        r"{file}: \[train\.epochz\] must be one of the known keys .*; got 'epochz'",
    ),
    (
        "wrong type",
        study(lr='"fast"'),
        2,
        r"{file}: \[train\.learning_rate\] must be a float in \(0, inf\); got 'fast'",
    ),
    (
        "out-of-range value",
        study(lr="-0.1"),
        2,
        r"{file}: \[train\.learning_rate\] must be a float in \(0, inf\); got -0\.1",
    ),
    (
        "impossible budget",
        study(min_params="190_000"),
        2,
        r"{file}: \[budget\] no architecture .* has 190,000 < parameters < 200,000 .*",
    ),
    (
        "empty grid",
        study(space=""),
        2,
        r"{file}: \[space\] must be at least one list of values with sampler 'grid'; got \{{\}}",
    ),
    (
        "unknown sampler",
        study(sampler="bayes"),
        2,
        r"{file}: \[study\.sampler\] must be one of 'grid', 'tpe', 'random'; got 'bayes'",
    ),
    (
        "unknown pruner",
        study(pruner="asha"),
        2,
        r"{file}: \[study\.pruner\] must be one of 'none', 'median', .*; got 'asha'",
    ),
    (
        "unknown init",
        study(init="he"),
        2,
        r"{file}: \[train\.init\] must be one of 'glorot', 'normal', 'zeros'; got 'he'",
    ),
    (
        "unknown activation",
        study(activation="gelu"),
        2,
        r"{file}: \[train\.activation\] must be one of 'relu', 'sigmoid', 'tanh'; got 'gelu'",
    ),
    (
        "study name clash with a different space",
        study(space="hidden_1 = [64]\nhidden_2 = [32, 64]"),
        2,
        r"{file}: \[space\.hidden_1\] differs from the stored study 'g': stored \[64, 128\], "
        r"given \[64\]; .*",
    ),
    (
        "missing dataset path",
        study(data='path = "/nonexistent/mnist.pkl.gz"'),
        1,
        r"/nonexistent/mnist\.pkl\.gz: no such file or folder .*",
    ),
    (
        "corrupt dataset",
        study(data='path = "{tmp}/corrupt.pkl.gz"'),
        1,
        r"{tmp}/corrupt\.pkl\.gz: expected a gzipped pickle of \(train, valid, test\); .*",
    ),
    (
        "unreachable storage URL",
        study(),
        1,
        r"storage postgresql://u:\*\*\*@127\.0\.0\.1:1/sweep: cannot open: .*",
    ),
    (
        "malformed storage URL",
        study(),
        1,
        r"storage URL 'mongodb://x' is not supported; use sqlite:///PATH or postgresql://.*",
    ),
]
STORAGE_ARGS = {
    "unreachable storage URL": "postgresql://u:secret@127.0.0.1:1/sweep",
    "malformed storage URL": "mongodb://x",
}


@pytest.fixture(scope="module")
def existing_db(tmp_path_factory):
    """A database holding one finished study, made by the good study file."""
    tmp = tmp_path_factory.mktemp("existing")
    path = tmp / "good.toml"
    path.write_text(study())
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    out = run_cli("run", str(path), "--storage", url)
    assert out.returncode == 0, out.stderr
    return tmp / "db.sqlite"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("case", "text", "code", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, text, code, pattern, existing_db, tmp_path):
    (tmp_path / "corrupt.pkl.gz").write_bytes(b"\x1f\x8b not really gzip")
    file = tmp_path / "bad.toml"
    file.write_text(text.replace("{tmp}", str(tmp_path)))
    url = STORAGE_ARGS.get(case, f"sqlite:///{existing_db}")
    before = _digest(existing_db)
    out = run_cli("run", str(file), "--storage", url)
    assert out.returncode == code, out.stderr
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr
    expected = "sweep: error: " + pattern.format(
        file=re.escape(str(file)), tmp=re.escape(str(tmp_path))
    )
    assert re.fullmatch(expected + "\n", out.stderr), out.stderr
    assert _digest(existing_db) == before, "the existing database changed"


def test_the_readme_catalogues_every_case():
    text = README.read_text()
    for case, *_ in CASES:
        assert f"| {case} |" in text, f"README's table of errors lacks {case!r}"

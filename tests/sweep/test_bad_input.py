"""The catalogue of user errors: each is one line on stderr with the right exit code, no
traceback, and leaves an existing study database byte for byte as it was.

The README's table of messages is checked against this list, so the two cannot drift apart.
"""

import hashlib
import io
import os
import re
import resource
import socket
import zipfile
import zlib
from pathlib import Path

import numpy as np
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
        "nesterov searched with a momentum of 0",
        study(space=GOOD_SPACE + "\nnesterov = [true, false]\nmomentum = [0.0, 0.5]"),
        2,
        r"{file}: \[space\.momentum\] must be greater than 0 where nesterov may be true; "
        r"got \[0\.0, 0\.5\]",
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
        study(data='path = "{tmp}corrupt.pkl.gz"'),
        1,
        r"{tmp}corrupt\.pkl\.gz: expected a gzipped pickle of \(train, valid, test\); .*",
    ),
    (
        "a name with a control character",
        study(study_extra="").replace('name = "g"', 'name = "g\\tgrid"'),
        2,
        r"{file}: \[study\.name\] must be 1 to 128 characters, no control characters; "
        r"got 'g\\tgrid'",
    ),
    (
        "too many trials",
        study(sampler="random", study_extra="").replace("trials = 3", "trials = 1_000_001"),
        2,
        r"{file}: \[study\.trials\] must be an integer in \[1, 1000000\]; got 1000001",
    ),
    (
        "too many epochs",
        study().replace("epochs = 1", "epochs = 10_001"),
        2,
        r"{file}: \[train\.epochs\] must be an integer in \[1, 10000\]; got 10001",
    ),
    (
        "a batch larger than the training set",
        study(extra="batch_size = 4096"),
        2,
        r"{file}: \[train\.batch_size\] must be an integer in \[1, 2000\] \(at most the "
        r"training set in use\); got 4096",
    ),
    (
        "nan in a list",
        study(space=GOOD_SPACE + "\nlearning_rate = [0.1, nan]"),
        2,
        r"{file}: \[space\.learning_rate\] must be a float in \(0, inf\); got nan",
    ),
    (
        "a grid too large",
        study(
            space="\n".join(
                f"{k} = [{', '.join(str(v) for v in range(1, 101))}]"
                for k in ("epochs", "batch_size", "patience")
            )
        ),
        2,
        r"{file}: \[space\] must be at most 100,000 grid points \(the product of the list "
        r"lengths\); got 1,000,000",
    ),
    (
        "a study file that is not UTF-8",
        b'[study]\nname = "caf\xe9"\n',  # Latin-1
        2,
        r"{file}: not valid UTF-8: byte 0xe9 at line 2, column 12",
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
        2,
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
    if isinstance(text, bytes):
        file.write_bytes(text)
    else:
        file.write_text(text.replace("{tmp}", f"{tmp_path}/"))
    url = STORAGE_ARGS.get(case, f"sqlite:///{existing_db}")
    before = _digest(existing_db)
    out = run_cli("run", str(file), "--storage", url)
    _assert_one_line(
        out, code, pattern.format(file=re.escape(str(file)), tmp=re.escape(f"{tmp_path}/"))
    )
    assert _digest(existing_db) == before, "the existing database changed"


def _assert_one_line(out, code: int, pattern: str) -> None:
    assert out.returncode == code, out.stderr
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert re.fullmatch("sweep: error: " + pattern + "\n", out.stderr), out.stderr


def _fifo(tmp: Path) -> None:
    os.mkfifo(tmp / "fifo.toml")


def _busy_port(tmp: Path) -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    (tmp / "port").write_text(str(listener.getsockname()[1]))
    return listener


def _gzip_bomb(tmp: Path) -> None:
    """611 KB that inflate to 600 MiB of zeros, past the 512 MiB cap."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    with (tmp / "bomb.pkl.gz").open("wb") as f:
        for _ in range(600):
            f.write(squeeze.compress(bytes(2**20)))
        f.write(squeeze.flush())


def _npz_claiming_5_tib(tmp: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (5 * 2**40,)}
    )
    with zipfile.ZipFile(tmp / "huge.npz", "w") as zf:
        zf.writestr("x_train.npy", header.getvalue())


EXPORT = ["export", "g", "--storage", "sqlite:///{db}"]

# Other commands: (case, arguments, set-up, exit code, message pattern); in the arguments,
# {tmp} is a fresh folder (with its slash), {db} the existing database, {port} a busy port.
OTHER_CASES = [
    (
        "a study file that does not exist",
        ["run", "seed-gird"],  # run from the project folder, which holds studies/
        None,
        2,
        r"seed-gird: no such study file; did you mean studies/seed-grid\.toml\?",
    ),
    (
        "a FIFO as the study file",
        ["run", "{tmp}fifo.toml"],
        _fifo,
        2,
        r"{tmp}fifo\.toml: cannot read study file: a FIFO, not a regular file",
    ),
    (
        "a study file over 1 MiB",
        ["run", "{tmp}big.toml"],
        lambda tmp: (tmp / "big.toml").write_text("# " + "x" * 2_000_000),
        2,
        r"{tmp}big\.toml: cannot read study file: 2,000,002 bytes; at most 1,048,576",
    ),
    (
        "a device as the dataset",
        ["data", "--path", "{tmp}zero.pkl.gz"],
        lambda tmp: (tmp / "zero.pkl.gz").symlink_to("/dev/zero"),
        1,
        r"{tmp}zero\.pkl\.gz: expected a gzipped pickle of \(train, valid, test\); got a "
        r"character device, not a regular file",
    ),
    (
        "a FIFO as the dataset",
        ["data", "--path", "{tmp}fifo.pkl.gz"],
        lambda tmp: os.mkfifo(tmp / "fifo.pkl.gz"),
        1,
        r"{tmp}fifo\.pkl\.gz: expected a gzipped pickle of \(train, valid, test\); got a "
        r"FIFO, not a regular file",
    ),
    (
        "a gzip bomb as the dataset",
        ["data", "--path", "{tmp}bomb.pkl.gz"],
        _gzip_bomb,
        1,
        r"{tmp}bomb\.pkl\.gz: expected a gzipped pickle of \(train, valid, test\); got more "
        r"than 536,870,912 bytes after decompression",
    ),
    (
        "an npz header claiming 5 TiB",
        ["data", "--path", "{tmp}huge.npz"],
        _npz_claiming_5_tib,
        1,
        r"{tmp}huge\.npz: expected a keras-style \.npz with x_train, y_train, x_test, y_test; "
        r"got x_train of uint8 \(5497558138880,\), not uint8 \(60000, 28, 28\) or "
        r"\(60000, 784\)",
    ),
    (
        "not an optuna study database",
        ["status", "--storage", "sqlite:///{tmp}notes.txt"],
        lambda tmp: (tmp / "notes.txt").write_text("a shopping list\n"),
        1,
        r"storage sqlite:///{tmp}notes\.txt: not an optuna study database \(file is not a "
        r"database\)",
    ),
    (
        "a database file that does not exist (status, report, dashboard)",
        ["report", "all", "--storage", "sqlite:///{tmp}none.db"],
        None,
        1,
        r"storage sqlite:///{tmp}none\.db: no such database file {tmp}none\.db",
    ),
    (
        "a storage URL whose port is not a number (every command)",
        ["status", "--storage", "postgresql://u:pw@127.0.0.1:xx/db"],
        None,
        2,
        r"storage URL 'postgresql://\*\*\*@127\.0\.0\.1:xx/db' does not parse: the port must be a "
        r"number from 1 to 65535; use sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB",
    ),
    (
        "a storage URL with an unclosed IPv6 host",
        ["report", "all", "--storage", "postgresql://u:pw@[::1/db"],
        None,
        2,
        r"storage URL 'postgresql://\*\*\*@\[::1/db' does not parse: an IPv6 host must be closed "
        r"with \], as in \[::1\]; use sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB",
    ),
    (
        "a storage URL with an @ after the password's",
        [*EXPORT[:2], "--out", "{tmp}best.npz", "--storage", "postgresql://u:p@ss@127.0.0.1/db"],
        None,
        2,
        r"storage URL 'postgresql://\*\*\*@127\.0\.0\.1/db' does not parse: an @ leaves its host "
        r"unclear \(in a user name, password or value, write @ as %40, and : / \? # beside one as "
        r"%3A %2F %3F %23\); use sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB",
    ),
    (
        "a dashboard port in use",
        ["dashboard", "--storage", "sqlite:///{db}", "--port", "{port}"],
        _busy_port,
        1,
        r"cannot serve on 127\.0\.0\.1:\d+: address already in use \(another dashboard\? "
        r"choose another --port\)",
    ),
    (
        "an unknown dashboard host",
        ["dashboard", "--storage", "sqlite:///{db}", "--host", "nosuchhost.invalid"],
        None,
        1,
        # without a resolver at all (no network), the lookup fails another way
        r"cannot serve on nosuchhost\.invalid:8080: (unknown host|cannot resolve host \(.*\))",
    ),
    (
        "an export --out that is not .npz",
        [*EXPORT, "--out", "{tmp}best.json"],
        None,
        2,
        r"--out must be a \.npz file \(the sidecar goes beside it as \.json\); got "
        r"'{tmp}best\.json'",
    ),
    (
        "an export --out that is a folder",
        [*EXPORT, "--out", "{tmp}best.npz"],
        lambda tmp: (tmp / "best.npz").mkdir(),
        1,
        r"--out {tmp}best\.npz: is a folder; give a file name, e\.g\. {tmp}best\.npz/model\.npz",
    ),
    (
        "an export --out in a missing folder",
        [*EXPORT, "--out", "{tmp}none/best.npz"],
        None,
        1,
        r"--out {tmp}none/best\.npz: no such folder {tmp}none",
    ),
    (
        "an export of a study without a best model",
        [*EXPORT, "--out", "{tmp}best.npz", "--artifacts", "{tmp}empty"],
        None,
        1,
        r"study 'g' has no best model to export \(its artifact [0-9a-f-]+ is not in "
        r"{tmp}empty\); retrain and upload it with: sweep evaluate STUDY\.toml",
    ),
    (
        "an export over a file it did not write",
        [*EXPORT, "--out", "{tmp}config.npz"],
        lambda tmp: (tmp / "config.json").write_text('{"someone": "else\'s"}\n'),
        2,
        r"--out {tmp}config\.npz: {tmp}config\.json already exists; export replaces no file "
        r"unless --force",
    ),
    (
        "a network too large for the memory",
        ["train", "--hidden-1", "200000", "--hidden-2", "200000"],
        None,
        1,
        r"training 784-200000-200000-10 \(40,159,200,010 parameters\) in float32 with batches "
        r"of 128 needs about [\d,.]+ GiB of memory, more than the [\d,.]+ [GM]iB available",
    ),
    (
        "a gradient check too large for the memory",
        ["gradcheck", "--hidden-1", "1000000", "--hidden-2", "1000000", "--out", "{tmp}gc"],
        None,
        1,
        r"a gradient check of 784-1000000-1000000-10 \(1,000,796,000,010 parameters\) in "
        r"float64 on 10 examples needs about [\d,.]+ GiB of memory, more than the [\d,.]+ "
        r"[GM]iB available",
    ),
    (
        "a negative seed",
        ["gradcheck", "--seed", "-1", "--out", "{tmp}gc"],
        None,
        2,
        r"--seed must be a 64-bit integer >= 0; got -1",
    ),
    (
        "a training size over the data",
        ["train", "--train-size", "1000000000"],
        None,
        2,
        r"--train-size must be an integer in \[1, 50000\] \(the examples in MNIST's training "
        r"split\); got 1000000000",
    ),
    (
        "more gradient-check examples than the data",
        ["gradcheck", "--examples", "50001", "--out", "{tmp}gc"],
        None,
        2,
        r"--examples must be an integer in \[1, 50000\] \(the examples in MNIST's training "
        r"split\); got 50001",
    ),
    (
        "an empty dataset path",
        ["train", "--data", ""],
        None,
        2,
        r"--data must be a path to your own copy of MNIST \(not empty, no NUL character\); "
        r"got ''",
    ),
    (
        "initial weights past the dtype's range",
        ["train", "--init", "normal", "--init-std", "1e308"],
        None,
        2,
        # numpy's overflow warnings preceded the line (#22): the one-line check refuses them
        r"init 'normal' with init_std 1e\+308 drew W1 weights that are not finite in float32 "
        r"\(largest finite: 3\.4e\+38\)",
    ),
]


#: The address space each command of OTHER_CASES may take: no bad input may take the machine's
#: memory, and a size check that failed would meet MemoryError here, not the OOM killer.
ADDRESS_SPACE = 8 << 30


def _bounded() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.mark.parametrize(
    ("case", "args", "setup", "code", "pattern"), OTHER_CASES, ids=[c[0] for c in OTHER_CASES]
)
def test_bad_input_to_other_commands(case, args, setup, code, pattern, existing_db, tmp_path):
    held = setup(tmp_path) if setup else None
    port = (tmp_path / "port").read_text() if (tmp_path / "port").exists() else ""
    tmp = f"{tmp_path}/"
    before = _digest(existing_db)
    try:
        out = run_cli(*(a.format(tmp=tmp, db=existing_db, port=port) for a in args), timeout=60,
                      preexec_fn=_bounded)  # fmt: skip
    finally:
        if isinstance(held, socket.socket):
            held.close()
    _assert_one_line(out, code, pattern.format(tmp=re.escape(tmp)))
    assert _digest(existing_db) == before, "the existing database changed"


def _readme_rows() -> dict[str, tuple[int, str]]:
    """The README's table of errors: case → (exit code, message)."""
    section = README.read_text().split("### Errors a user can make")[1].split("\n### ")[0]
    rows = {}
    for line in section.splitlines():
        if m := re.fullmatch(r"\| (.+?) \| `(.+?)` \| (\d+) \| `(.+)` \|", line):
            rows[m[1]] = (int(m[3]), m[4].replace("\\|", "|"))
    return rows


def test_the_readme_table_and_the_tests_agree_both_ways():
    # Every case is a row and every row a case, with the same exit code, and the message the
    # README shows is one the test accepts (x.toml for the study file, any folder for {tmp}).
    cases = {c[0]: (c[2], c[3]) for c in CASES} | {c[0]: (c[3], c[4]) for c in OTHER_CASES}
    rows = _readme_rows()
    assert sorted(rows) == sorted(cases)
    for case, (code, message) in rows.items():
        want_code, pattern = cases[case]
        assert code == want_code, case
        expected = "sweep: error: " + pattern.format(file=re.escape("x.toml"), tmp=r"(?:\S*/)?")
        assert re.fullmatch(expected, message), (case, message)


@pytest.mark.parametrize("command", ["train", "gradcheck"])
def test_sizes_no_machine_has_are_one_line_before_anything_is_allocated(command, tmp_path):
    # numpy's `array is too big; arr.size * arr.dtype.itemsize is larger than the maximum
    # possible size` traceback (#22); the estimate is exact integer arithmetic at any size.
    out_dir = ["--out", str(tmp_path)] if command == "gradcheck" else []
    out = run_cli(command, "--hidden-1", str(2**62), *out_dir)
    _assert_one_line(
        out, 1, r"(a gradient check of|training) 784-4611686018427387904-768-10 \(7,161,948,"
        r"386,617,733,423,370 parameters\) .* needs about [\d,.]+ GiB of memory, more than the "
        r"[\d,.]+ [GM]iB available",
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [["data", "--path", ""], ["gradcheck", "--data", ""],
     ["worker", "--study", "g", "--storage", "sqlite:///{db}", "--data", ""]],
    ids=["data", "gradcheck", "worker"],
)  # fmt: skip
def test_every_empty_dataset_flag_is_the_same_one_line(args, existing_db):
    # `sweep data --path ''` checked the cache instead, and a worker's `--data ''` meant the
    # stored study's copy: each now says what the flag must be.
    out = run_cli(*(a.format(db=existing_db) for a in args))
    flag = "--path" if args[0] == "data" else "--data"
    _assert_one_line(out, 2, f"{flag} must be a path to your own copy of MNIST \\(not empty, "
                     "no NUL character\\); got ''")  # fmt: skip

"""The catalogue of user errors: each is one line on stderr with the right exit code, no
traceback, and leaves an existing study database byte for byte as it was.

The README's table of messages is checked against this list, so the two cannot drift apart.
Each case runs the command's ``main`` in this process (``main_in_process``); the few whose check,
were it gone, would block or take the machine's memory run in a process of their own, bounded
in memory and time. That the real command turns each way out of ``main`` into the same line and
exit code is tested once per way, in tests/sweep/test_cli.py.
"""

import hashlib
import io
import json
import os
import re
import resource
import shlex
import shutil
import socket
import sqlite3
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from sweep.cli import build_parser
from sweep.errors import SpecError
from sweep.slurm import SBATCH_LINE
from tests.sweep.helpers import grid_study, main_in_process, run_cli

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
        "impossible budget at every depth searched",
        study(min_params="190_000", space="depth = [1, 2]\n" + GOOD_SPACE),
        2,
        r"{file}: \[budget\] no architecture of depth 1 or 2 has 190,000 < parameters < 200,000 "
        r"\(depth 1: hidden_1 in \[64, 128\] give .*; depth 2: .*\)",
    ),
    (
        "a depth searched as a range",
        study(sampler="tpe", space="depth = { low = 1, high = 3 }"),
        2,
        r"{file}: \[space\.depth\] must be a list of depths \(the widths a trial uses depend on "
        r"its depth\); got \{{'low': 1, 'high': 3\}}",
    ),
    (
        "a list of widths whose in-budget values change with the depth",
        study(
            sampler="random", space="depth = [1, 2]\nhidden_1 = [62, 128]", extra="hidden_2 = 32"
        ),
        2,
        r"{file}: \[space\.hidden_1\] must be the same in-budget values at every depth \(optuna's "
        r"categorical choices cannot change between trials\); got depth 1: \[128\]; depth 2: "
        r"\[62, 128\]",
    ),
    (
        "a width searched past the study's depths",
        study(space=GOOD_SPACE + "\nhidden_3 = [64, 128]"),
        2,
        r"{file}: \[space\.hidden_3\] must be a width of a depth the study has \(hidden_3 needs "
        r"depth >= 3; \[train\] depth = 2\); got \[64, 128\]",
    ),
    (
        "lists of widths beside a range",
        study(
            sampler="tpe",
            extra="depth = 3",
            space=GOOD_SPACE + "\nhidden_3 = { low = 8, high = 64 }",
        ),
        2,
        r"{file}: \[space\] must be the widths of depth 3 as lists, or as ranges with one list "
        r"at most; got lists hidden_1, hidden_2 and ranges hidden_3",
    ),
    (
        "a budget narrower than a width's step",
        study(
            sampler="tpe",
            min_params="199_500",
            space="hidden_1 = { low = 64, high = 128 }\nhidden_2 = { low = 32, high = 128 }",
        ),
        2,
        r"{file}: \[budget\.max_params\] must be more than min_params \+ 913 when widths are "
        r"searched as ranges \(a unit of hidden_1 adds up to 913 parameters\); got 200000",
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
        r"{file}: \[study\.sampler\] must be one of 'grid', 'tpe', 'random', 'nsga2'; got 'bayes'",
    ),
    (
        "a pruner with several objectives",
        study(pruner="median", study_extra='objectives = ["accuracy", "params"]'),
        2,
        r"{file}: \[study\.pruner\] must be 'none' with several objectives \(optuna cannot prune "
        r"a multi-objective trial\); got 'median'",
    ),
    (
        "an objective sweep does not know",
        study(study_extra='objectives = ["accuracy", "loss"]'),
        2,
        r"{file}: \[study\.objectives\] must be a list of distinct objectives, 'accuracy' first, "
        r"of 'accuracy', 'params', 'epoch_time'; got \['accuracy', 'loss'\]",
    ),
    (
        "a population without NSGA-II",
        study(sampler="random", study_extra="population = 8"),
        2,
        r"{file}: \[study\.population\] must be given only with sampler 'nsga2'; got 8",
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
        "study name clash with other objectives",
        study(study_extra='objectives = ["accuracy", "params"]'),
        2,
        r"{file}: \[study\.objectives\] differs from the stored study \'g\': stored "
        r'\["accuracy"\], given \["accuracy", "params"\]; use the stored study\'s file, or rename '
        r"\[study\.name\] for a new study",
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
        study(sampler="random", study_extra="").replace("trials = 3", "trials = 10_000_001"),
        2,
        r"{file}: \[study\.trials\] must be an integer in \[1, 10000000\]; got 10000001",
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
    """A database holding one finished study, made by the good study file, with its artifacts
    beside it.

    Made in this process (one worker trains the three small trials here, 1-2 s, where a
    launcher and its worker processes took 8-20 s), then copied: the run's connections, still
    open in this process, may checkpoint SQLite's write-ahead log into the file they opened
    whenever they are collected, which would change its bytes under the tests."""
    made, tmp = tmp_path_factory.mktemp("made"), tmp_path_factory.mktemp("existing")
    path = made / "good.toml"
    path.write_text(study())
    url = f"sqlite:///{made / 'db.sqlite'}"
    out = main_in_process("run", str(path), "--storage", url, "--jobs", "1")
    assert out.returncode == 0, out.stderr
    with sqlite3.connect(made / "db.sqlite") as source, sqlite3.connect(tmp / "db.sqlite") as copy:
        source.backup(copy)
    source.close()
    copy.close()
    shutil.copytree(made / "artifacts", tmp / "artifacts")
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
    out = main_in_process("run", str(file), "--storage", url)
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


def _gzip_bomb(tmp: Path, mib: int = 600) -> None:
    """622 KB that inflate to 600 MiB of zeros, past the 512 MiB cap: one gzip stream whose
    MiB of zeros is compressed once and repeated (a full flush resets the compressor, so each
    MiB after the first is the same bytes; compressing all 600 took 5 s)."""
    zeros = bytes(2**20)
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    first = squeeze.compress(zeros) + squeeze.flush(zlib.Z_FULL_FLUSH)
    again = squeeze.compress(zeros) + squeeze.flush(zlib.Z_FULL_FLUSH)
    last_block = squeeze.flush()[:-8]  # without the trailer of the 2 MiB it compressed
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    trailer = struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)  # CRC-32, size modulo 2**32
    (tmp / "bomb.pkl.gz").write_bytes(first + again * (mib - 1) + last_block + trailer)


def _npz_claiming_5_tib(tmp: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (5 * 2**40,)}
    )
    with zipfile.ZipFile(tmp / "huge.npz", "w") as zf:
        zf.writestr("x_train.npy", header.getvalue())


def _good_study(tmp: Path) -> None:
    """x.toml: the study file that made the existing database's study 'g'."""
    (tmp / "x.toml").write_text(study())


def _sbatch_refusing(tmp: Path) -> dict[str, str]:
    """A stand-in sbatch on PATH that refuses every job, as SLURM refuses an unknown account."""
    (tmp / "bin").mkdir()
    (tmp / "bin" / "sbatch").write_text(f"#!/bin/sh\necho {shlex.quote(REFUSAL)} >&2\nexit 1\n")
    (tmp / "bin" / "sbatch").chmod(0o755)
    return {"PATH": f"{tmp / 'bin'}:{os.environ['PATH']}"}


#: What an --sbatch value may be, as the error says it (a pattern).
SBATCH_ALLOWED = r"--sbatch must be " + re.escape(SBATCH_LINE.allowed)
REFUSAL = ("sbatch: error: Batch job submission failed: Invalid account or account/partition "
           "combination specified")  # fmt: skip
RUN_GOOD = ["run", "{tmp}x.toml", "--storage", "sqlite:///{db}"]
#: ``sweep submit`` of the existing study: it only reads the database.
SUBMIT = ["submit", "--study", "g", "--storage", "sqlite:///{db}", "--workers", "2",
          "--script", "{tmp}g.sbatch"]  # fmt: skip
EXPORT = ["export", "g", "--storage", "sqlite:///{db}"]

# Other commands: (case, arguments, set-up, exit code, message pattern); in the arguments,
# {tmp} is a fresh folder (with its slash), {db} the existing database, {port} a busy port,
# {other} the number of one of its trials that is not its best.
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
        "an export of a trial whose weights were not kept",
        [*EXPORT, "--trial", "{other}", "--out", "{tmp}best.npz"],
        None,
        1,
        r"study 'g': trial \d+'s weights were not kept: only the best trial's \(trial \d+\) are; "
        r"retrain and upload it with: sweep evaluate STUDY\.toml --trial \d+",
    ),
    (
        "a trial that does not exist",
        [*EXPORT, "--trial", "99", "--out", "{tmp}best.npz"],
        None,
        1,
        r"study 'g' has no trial 99 \(its trials are numbered 0 to 2\)",
    ),
    (
        "a negative trial number",
        [*EXPORT, "--trial", "-1", "--out", "{tmp}best.npz"],
        None,
        2,
        r"--trial must be an integer in \[0, 2147483647\]; got -1",
    ),
    (
        "an unknown output format",
        ["status", "--storage", "sqlite:///{db}", "--format", "xml"],
        None,
        2,
        r"--format must be one of 'text', 'json'; got 'xml'",
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
    (
        "an override that is not KEY=VALUE",
        [*RUN_GOOD, "--set", "epochs=5"],
        _good_study,
        2,
        r"--set must be KEY=VALUE, KEY a study file's section\.key \(e\.g\. train\.epochs=5\); "
        r"got 'epochs=5'",
    ),
    (
        "an override out of range",
        [*RUN_GOOD, "--set", "train.epochs=0"],
        _good_study,
        2,
        r"--set train\.epochs=0: \[train\.epochs\] must be an integer in \[1, 10000\]; got 0",
    ),
    (
        "an override of an unknown key",
        [*RUN_GOOD, "--set", "train.epochz=5"],
        _good_study,
        2,
        r"--set train\.epochz=5: \[train\.epochz\] must be one of the known keys .*; "
        r"got 'epochz'",
    ),
    (
        "an override of a setting the study searches",
        [*RUN_GOOD, "--set", "train.hidden_1=64"],
        _good_study,
        2,
        r"--set train\.hidden_1=64: \[train\.hidden_1\] must be a setting \[space\] does not "
        r"search \(space\.hidden_1=\[64\] fixes it\); got 64",
    ),
    (
        "an override that breaks a rule between fields",
        [*RUN_GOOD, "--set", "train.batch_size=4096"],
        _good_study,
        2,
        r"{tmp}x\.toml with --set train\.batch_size=4096: \[train\.batch_size\] must be an "
        r"integer in \[1, 2000\] \(at most the training set in use\); got 4096",
    ),
    (
        "an override that changes the stored study",
        [*RUN_GOOD, "--set", "train.epochs=2"],
        _good_study,
        2,
        r"{tmp}x\.toml with --set train\.epochs=2: \[train\.epochs\] differs from the stored "
        r"study 'g': stored 1, given 2; use the stored study's file, or rename \[study\.name\] "
        r"for a new study",
    ),
    (
        "a worker's override that changes the stored study",
        ["worker", "--study", "g", "--storage", "sqlite:///{db}", "--set", "train.epochs=2"],
        None,
        2,
        r"study 'g' in sqlite:///\S+ with --set train\.epochs=2: \[train\.epochs\] differs "
        r"from the stored study 'g': stored 1, given 2; use the stored study's file, or rename "
        r"\[study\.name\] for a new study",
    ),
    (
        "an override sweep train does not read",
        ["train", "--set", "study.name=x"],
        None,
        2,
        r"--set study\.name=x: \[study\.name\] is not a setting of sweep train; use "
        r"train\.KEY, data\.train_size or data\.path",
    ),
    (
        "a SLURM time limit that is not one",
        [*SUBMIT, "--time", "2h"],
        None,
        2,
        r"--time must be a SLURM time limit: MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, "
        r"DAYS-HOURS, DAYS-HOURS:MINUTES or DAYS-HOURS:MINUTES:SECONDS \(e\.g\. 2:00:00\); "
        r"got '2h'",
    ),
    (
        "more array tasks than SLURM allows",
        [*SUBMIT, "--workers", "4000002"],
        None,
        2,
        r"--workers must be an integer in \[1, 4000001\] \(SLURM's largest array\); got 4000002",
    ),
    (
        "a partition name with a space",
        [*SUBMIT, "--partition", "gpu long"],
        None,
        2,
        r"--partition must be a partition name \(letters, digits, '_', '\.', '-'\), or several "
        r"separated by commas; got 'gpu long'",
    ),
    (
        "a memory size SLURM does not read",
        [*SUBMIT, "--mem", "4GB"],
        None,
        2,
        r"--mem must be a size in megabytes, or with a unit K, M, G or T \(e\.g\. 4G; 0: all of a "
        r"node's\); got '4GB'",
    ),
    (
        "an account name with a semicolon",
        [*SUBMIT, "--account", "lab;x"],
        None,
        2,
        r"--account must be an account name \(letters, digits, '_', '\.', '-'\); got 'lab;x'",
    ),
    (
        "no CPUs per task",
        [*SUBMIT, "--cpus-per-task", "0"],
        None,
        2,
        r"--cpus-per-task must be an integer in \[1, 4096\]; got 0",
    ),
    (
        "an --sbatch line with a line break",
        [*SUBMIT, "--sbatch=--qos=long\nrm -rf ~"],
        None,
        2,
        SBATCH_ALLOWED + r"; "
        r"got '--qos=long\\nrm -rf ~'",
    ),
    (
        "an --sbatch line of an option submit writes",
        [*SUBMIT, "--sbatch=--qos=long --arr=0-99"],
        None,
        2,
        SBATCH_ALLOWED + r"; "
        r"got '--qos=long --arr=0-99'",
    ),
    (
        "a submit of a stored study that does not exist",
        [
            "submit",
            "--study",
            "nope",
            "--storage",
            "sqlite:///{db}",
            "--workers",
            "2",
            "--script",
            "{tmp}g.sbatch",
        ],
        None,
        2,
        r"study 'nope' does not exist in sqlite:///\S+; give its study file, which submit "
        r"creates it from",
    ),
    (
        "a submit's --set without its study file",
        [*SUBMIT, "--set", "train.epochs=2"],
        None,
        2,
        r"--set changes a study file: give the study file \(sweep submit STUDY\.toml --set "
        r"KEY=VALUE\)",
    ),
    (
        "a submit --script over a file it did not write",
        SUBMIT,
        lambda tmp: (tmp / "g.sbatch").write_text("#!/bin/sh\necho mine\n"),
        2,
        r"--script {tmp}g\.sbatch: exists and sweep submit did not write it; give another "
        r"--script",
    ),
    (
        "a submit where SLURM is not installed",
        SUBMIT,
        lambda tmp: {"PATH": str(tmp)},
        1,
        r"sbatch not found: run sweep submit where SLURM's client is \(a login node\), or "
        r"--dry-run to see the script",
    ),
    (
        "a submit that sbatch refuses",
        SUBMIT,
        _sbatch_refusing,
        1,
        r"sbatch refused {tmp}g\.sbatch: sbatch: error: Batch job submission failed: Invalid "
        r"account or account/partition combination specified",
    ),
    (
        "a submit --script in a folder SLURM cannot take as written",
        [*SUBMIT[:-1], "{tmp}my jobs/g.sbatch"],
        None,
        2,
        r"--script {tmp}my jobs/g\.sbatch: its folder holds characters SLURM's #SBATCH --output "
        r"cannot take as written \(the tasks' logs go there\); allowed: \[A-Za-z0-9\._/\+,:@-\]",
    ),
    (
        "a submit --script under a file",
        [*SUBMIT[:-1], "{tmp}x.toml/g.sbatch"],
        _good_study,
        2,
        r"--script {tmp}x\.toml/g\.sbatch: cannot write it: (Not a directory|File exists)",
    ),
]


#: The cases whose check, were it gone, would leave the command blocked (reading a FIFO or a
#: device, serving on a port) or allocating what the machine does not have: each runs in a
#: process of its own, with a timeout and at most ADDRESS_SPACE of memory.
ISOLATED = {
    "a FIFO as the study file", "a device as the dataset", "a FIFO as the dataset",
    "a gzip bomb as the dataset", "an npz header claiming 5 TiB", "a dashboard port in use",
    "an unknown dashboard host", "a network too large for the memory",
    "a gradient check too large for the memory",
}  # fmt: skip
#: The address space each ISOLATED command may take: no bad input may take the machine's
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
    other = _not_the_best(existing_db) if any("{other}" in a for a in args) else None
    before = _digest(existing_db)
    args = [a.format(tmp=tmp, db=existing_db, port=port, other=other) for a in args]
    try:
        if case in ISOLATED:
            out = run_cli(*args, timeout=60, preexec_fn=_bounded)
        else:  # a set-up may give the environment: a PATH with its own sbatch, or none
            out = main_in_process(*args, env=held if isinstance(held, dict) else None)
    finally:
        if isinstance(held, socket.socket):
            held.close()
    _assert_one_line(out, code, pattern.format(tmp=re.escape(tmp)))
    assert _digest(existing_db) == before, "the existing database changed"


def _not_the_best(db: Path) -> int:
    """The number of a trial of study 'g' whose weights were not kept: not the best."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        best = conn.execute("SELECT value_json FROM study_system_attributes "
                            "WHERE key = 'best_model'").fetchone()  # fmt: skip
    conn.close()
    return next(n for n in range(3) if n != json.loads(best[0])["trial"])


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


def test_the_isolated_cases_are_cases():
    assert ISOLATED <= {c[0] for c in OTHER_CASES}


@pytest.mark.parametrize("command", ["train", "gradcheck"])
def test_sizes_no_machine_has_are_one_line_before_anything_is_allocated(command, tmp_path):
    # numpy's `array is too big; arr.size * arr.dtype.itemsize is larger than the maximum
    # possible size` traceback (#22); the estimate is exact integer arithmetic at any size.
    # (In this process: without the estimate, numpy refuses the size before allocating.)
    out_dir = ["--out", str(tmp_path)] if command == "gradcheck" else []
    out = main_in_process(command, "--hidden-1", str(2**62), *out_dir)
    _assert_one_line(
        out, 1, r"(a gradient check of|training) 784-4611686018427387904-768-10 \(7,161,948,"
        r"386,617,733,423,370 parameters\) .* needs about [\d,.]+ GiB of memory, more than the "
        r"[\d,.]+ [GM]iB available",
    )  # fmt: skip


_DATASET = "must be a path to your own copy of MNIST (not empty, no NUL character); got ''"

#: Flags whose value breaks its rule: (arguments, the line after ``sweep: error: ``). Each flag
#: is typed by the rule of the value it stands for (sweep.study.rules) and refused while it is
#: parsed, so the parser alone is run: a command whose flag got through could serve or wait
#: for ever. (The flags of `sweep train`'s hyperparameters: tests/sweep/test_settings.py.)
FLAGS = [
    (["run", "x.toml", "--jobs", "0"], "--jobs must be an integer in [1, 1024]; got 0"),
    (["run", "x.toml", "-j", "2000"], "--jobs must be an integer in [1, 1024]; got 2000"),
    (["run", "x.toml", "--trials", "0"], "--trials must be an integer in [1, 10000000]; got 0"),
    (["train", "--train-size", "abc"], "--train-size must be an integer in [1, 50000] (the "
     "examples in MNIST's training split); got 'abc'"),
    (["train", "--seed", "x"], "--seed must be a 64-bit integer >= 0; got 'x'"),
    (["dashboard", "--port", "0"], "--port must be an integer in [1, 65535]; got 0"),
    (["dashboard", "--port", "70000"], "--port must be an integer in [1, 65535]; got 70000"),
    (["dashboard", "--port", "http"], "--port must be an integer in [1, 65535]; got 'http'"),
    (["worker", "--study", "g", "--wait", "nan"], "--wait must be a float in [0, inf); got nan"),
    (["gradcheck", "--hidden-1", "0"], "--hidden-1 must be a 64-bit integer >= 1; got 0"),
    (["gradcheck", "--depth", "5"], "--depth must be an integer in [1, 4]; got 5"),
    (["gradcheck", "--depth", "0"], "--depth must be an integer in [1, 4]; got 0"),
    (["gradcheck", "--hidden-4", "0"], "--hidden-4 must be a 64-bit integer >= 1; got 0"),
    # `sweep data --path ''` checked the cache instead, and a worker's `--data ''` meant the
    # stored study's copy: each flag for a dataset says what it must be.
    (["data", "--path", ""], f"--path {_DATASET}"),
    (["gradcheck", "--data", ""], f"--data {_DATASET}"),
    (["worker", "--study", "g", "--data", ""], f"--data {_DATASET}"),
    (["train", "-f", "yaml"], "--format must be one of 'text', 'json'; got 'yaml'"),
    (["submit", "x.toml", "--workers", "0"], "--workers must be an integer in [1, 4000001] "
     "(SLURM's largest array); got 0"),
    (["submit", "x.toml", "--workers", "1", "--time", "1:2:3:4"], "--time must be a SLURM time "
     "limit: MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES or "
     "DAYS-HOURS:MINUTES:SECONDS (e.g. 2:00:00); got '1:2:3:4'"),
    (["submit", "x.toml", "--workers", "1", "--sbatch", "qos=long"],
     f"--sbatch must be {SBATCH_LINE.allowed}; got 'qos=long'"),
    (["submit", "x.toml", "--workers", "1", "--sbatch=-o x"],
     f"--sbatch must be {SBATCH_LINE.allowed}; got '-o x'"),
    (["submit", "x.toml", "--workers", "1", "--sbatch=-a0-99"],
     f"--sbatch must be {SBATCH_LINE.allowed}; got '-a0-99'"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "line"), FLAGS, ids=[" ".join(a) for a, _ in FLAGS])
def test_a_flag_that_breaks_its_rule_is_refused_while_parsed(args, line):
    with pytest.raises(SpecError) as refused:
        build_parser().parse_args(args)
    assert str(refused.value) == line


@pytest.mark.parametrize(
    ("args", "dest", "value"),
    [(["run", "x.toml", "-j", "1024"], "jobs", 1024),
     (["run", "x.toml", "--trials", "1000001"], "trials", 1_000_001),  # past 10^6 (#27)
     (["run", "x.toml", "--trials", "10000000"], "trials", 10_000_000),
     (["train", "--train-size", "50000", "--seed", "0"], "train_size", 50_000),
     (["dashboard", "--port", "65535"], "port", 65535),
     (["dashboard", "--port", "1"], "port", 1),
     (["worker", "--wait", "0"], "wait", 0.0),
     (["gradcheck", "--examples", "1", "--hidden-1", "1"], "examples", 1),
     (["gradcheck", "--depth", "4"], "depth", 4),
     (["gradcheck", "--depth", "1"], "depth", 1),
     (["data", "--path", "~/mnist.pkl.gz"], "path", "~/mnist.pkl.gz"),
     (["status", "-f", "json"], "format", "json"),
     (["submit", "x.toml", "--workers", "4000001"], "workers", 4_000_001),
     (["submit", "x.toml", "--workers", "1"], "workers", 1),
     (["submit", "x.toml", "--workers", "1", "--time", "7-00:00:00"], "time", "7-00:00:00"),
     (["submit", "x.toml", "--workers", "1", "--time", "UNLIMITED"], "time", "UNLIMITED"),
     (["submit", "x.toml", "--workers", "1", "--mem", "0"], "mem", "0"),
     (["submit", "x.toml", "--workers", "1", "--partition", "a,b.c"], "partition", "a,b.c"),
     (["submit", "x.toml", "--workers", "1", "--sbatch=-C haswell"], "sbatch", ["-C haswell"]),
     (["export", "g", "--out", "b.npz"], "format", "text")],
)  # fmt: skip
def test_a_flag_at_the_edge_of_its_rule_is_its_value(args, dest, value):
    got = getattr(build_parser().parse_args(args), dest)
    assert got == value and type(got) is type(value)


def test_no_command_is_one_line_and_exit_2():
    out = main_in_process()
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == "sweep: error: the following arguments are required: COMMAND; see " \
        "sweep --help\n"  # fmt: skip


SECRET_URLS = [
    "postgresql://me:SECRET@127.0.0.1:1/sweep",
    "postgresql://:SECRET@127.0.0.1:1/sweep",  # an empty user
    "postgresql://me@127.0.0.1:1/sweep?sslmode=disable&PassWord=SECRET",
    "postgresql://me@127.0.0.1:1/sweep?pass%77ord=SECRET",  # percent-encoded key
    "postgresql+psycopg://me:SEC%52ET@127.0.0.1:1/sweep",  # percent-encoded secret
    "postgresql://me:SE@CRET@127.0.0.1:1/sweep",  # a raw @ in the password
    "me:SECRET@127.0.0.1:1/sweep",  # no scheme at all
]
#: URLs that are bad usage (exit 2: they do not parse one way, or are of no supported form);
#: the others parse and fail to connect (exit 1).
UNUSABLE = {"postgresql://me:SE@CRET@127.0.0.1:1/sweep", "me:SECRET@127.0.0.1:1/sweep"}


@pytest.mark.parametrize("url", SECRET_URLS)
def test_no_command_prints_a_password(tmp_path, url):
    study_file = str(grid_study(tmp_path))
    commands = [
        ["run", study_file, "--storage", url],
        ["worker", "--study", "g", "--storage", url],
        ["status", "--storage", url],
        ["report", "g", "--storage", url],
        ["report", "all", "--storage", url],
        ["evaluate", study_file, "--storage", url],
        ["submit", study_file, "--storage", url, "--workers", "1"],
        # a host that does not resolve: had the storage opened, serving fails rather than waits
        ["dashboard", "--storage", url, "--host", "nosuchhost.invalid"],
        ["status"],  # from the environment
    ]
    for args in commands:
        out = main_in_process(*args, env={"SWEEP_STORAGE": url})
        shown = out.stdout + out.stderr
        assert out.returncode == (2 if url in UNUSABLE else 1), (args, shown)
        assert "SECRET" not in shown and "SEC%52ET" not in shown, (args, shown)
        assert "***" in shown and shown.count("\n") == 1, (args, shown)

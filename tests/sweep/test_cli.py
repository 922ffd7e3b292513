"""The real `sweep` entry point, run as a user runs it: exit codes and one-line errors."""

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from mlp import data as data_mod
from tests.sweep.helpers import grid_study, load, start_cli, sweep_cmd, wait_for


def sweep(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sweep_cmd(*args), capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def sweep_at_once(
    commands: list[list[str]], env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """`sweep(*args, env=env)` for each of independent commands, all started together.

    Each `sweep` spends most of a second importing before it fails; one after another, the 8
    commands of a password test keep one core busy for 7-8 s, together they can use every core.
    """
    pipe, environ = subprocess.PIPE, {**os.environ, **(env or {})}
    procs = [
        subprocess.Popen(sweep_cmd(*args), stdout=pipe, stderr=pipe, text=True, env=environ)
        for args in commands
    ]
    outs = [p.communicate() for p in procs]
    return [
        subprocess.CompletedProcess(p.args, p.returncode, *out)
        for p, out in zip(procs, outs, strict=True)
    ]


def test_version_is_the_installed_package_version():
    from importlib.metadata import version

    out = sweep("--version")
    assert out.returncode == 0 and out.stdout == f"sweep {version('mlp-sweep')}\n"


def test_help_shows_an_example():
    out = sweep("--help")
    assert out.returncode == 0
    assert "example:" in out.stdout


def test_data_prints_the_cache_path():
    out = sweep("data")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == data_mod.cache_dir() / data_mod.CACHE_NAME


def test_train_prints_a_line_per_epoch_and_the_accuracy():
    out = sweep(
        "train", "--hidden-1", "32", "--hidden-2", "16", "--epochs", "2", "--train-size", "2000"
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("784-32-16-10 (25,818 parameters)")
    assert [ln.split()[1] for ln in lines if ln.startswith("epoch")] == ["1", "2"]
    assert lines[-1].startswith("validation accuracy: ")
    assert 50 < float(lines[-1].split()[-1].rstrip("%")) <= 100


def test_missing_dataset_is_one_line_and_exit_1(tmp_path):
    out = sweep("train", "--data", str(tmp_path / "missing.pkl.gz"))
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("sweep: error: ") and "missing.pkl.gz: no such file" in out.stderr


def test_corrupt_cache_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"garbage")
    out = sweep("data", env={data_mod.CACHE_ENV: str(tmp_path)})
    assert out.returncode == 1
    assert (
        out.stderr
        == f"sweep: error: {tmp_path / 'mnist.npz'}: corrupt dataset cache"
        + out.stderr.split("corrupt dataset cache", 1)[1]
    )
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_divergence_is_one_line_and_exit_1():
    out = sweep(
        "train",
        "--hidden-1",
        "64",
        "--hidden-2",
        "64",
        "--epochs",
        "3",
        "--train-size",
        "2000",
        "--init",
        "normal",
        "--init-std",
        "100",
        "--lr",
        "1e6",
    )
    assert out.returncode == 1
    assert out.stderr.startswith("sweep: error: training diverged")


@pytest.mark.parametrize("args", [["nosuch"], []])
def test_a_usage_error_is_one_line_and_exit_2(args):
    out = sweep(*args)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("sweep: error: ") and "see sweep --help" in out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(["run", "x.toml", "--jobs", "0"], "--jobs must be an integer in [1, 1024]; got 0"),
     (["run", "x.toml", "-j", "2000"], "--jobs must be an integer in [1, 1024]; got 2000"),
     (["train", "--train-size", "abc"], "--train-size must be an integer in [1, 50000] (the "
      "examples in MNIST's training split); got 'abc'"),
     (["dashboard", "--port", "70000"], "--port must be an integer in [1, 65535]; got 70000"),
     (["worker", "--study", "g", "--wait", "nan"], "--wait must be a float in [0, inf); got nan")],
)  # fmt: skip
def test_a_flag_that_breaks_its_rule_is_one_line_and_exit_2(args, message):
    out = sweep(*args)
    assert (out.returncode, out.stderr) == (2, f"sweep: error: {message}\n")


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--init", "he"], ["--lr", "-1"]])
def test_bad_options_exit_2(bad):
    out = sweep("train", *bad)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


# --- run, worker, status, dashboard -------------------------------------------------------


def test_run_then_status_then_the_optuna_cli(tmp_path):
    study_file = grid_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    out = sweep("run", str(study_file), "--storage", url, "--jobs", "2")
    assert out.returncode == 0, out.stderr
    table = out.stdout.splitlines()
    assert table[0].split() == [
        "#",
        "state",
        "hidden_1",
        "hidden_2",
        "learning_rate",
        "params",
        "valid",
        "%",
    ]
    assert len(table) == 1 + 8 and all(" complete " in row for row in table[1:])
    values = [float(row.split()[-1]) for row in table[1:]]
    assert values == sorted(values, reverse=True)
    assert "8/8 trials" in out.stderr

    out = sweep("status", "--storage", url)
    assert out.returncode == 0
    assert out.stdout.startswith("g: 8 complete\n  best: trial ")

    optuna_cli = Path(sys.executable).with_name("optuna")
    out = subprocess.run(
        [str(optuna_cli), "trials", "--study-name", "g", "--storage", url, "-f", "json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 8


def test_worker_joins_a_study_by_name_with_its_stored_spec(tmp_path):
    study_file = grid_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    out = sweep("worker", "--study", "g", "--storage", url)
    assert out.returncode == 2 and "study 'g' does not exist in sqlite:///" in out.stderr
    out = sweep("run", str(study_file), "--storage", url, "--trials", "3")
    assert out.returncode == 0, out.stderr
    assert len(load(url, "g").trials) == 3
    # A worker on "another host", with no study file: nothing is left under the cap of 3.
    out = sweep("worker", "--study", "g", "--storage", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("worker ran 0 trial(s)")
    out = sweep("run", str(study_file), "--storage", url, "--trials", "4", "--jobs", "1")
    assert out.returncode == 0, out.stderr
    assert len(load(url, "g").trials) == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[study\n", "bad.toml: not valid TOML"),
        (
            '[study]\nname = "x"\nsampler = "grid"\n[trian]\n',
            "bad.toml: [trian] must be one of the sections",
        ),
        (
            '[study]\nname = "x"\nsampler = "grid"\n'
            "[space]\nhidden_1 = [1024]\nhidden_2 = [1024]\n",
            "bad.toml: [budget] no architecture",
        ),
    ],
)
def test_bad_study_files_exit_2_with_one_line(tmp_path, content, message):
    (tmp_path / "bad.toml").write_text(content)
    db = tmp_path / "db.sqlite"
    out = sweep("run", str(tmp_path / "bad.toml"), "--storage", f"sqlite:///{db}")
    assert out.returncode == 2
    assert out.stderr.startswith(f"sweep: error: {tmp_path / message}")
    assert out.stderr.count("\n") == 1
    assert not db.exists(), "a bad study file must not touch the database"


def test_unreachable_storage_exits_1_with_the_password_masked(tmp_path):
    study_file = grid_study(tmp_path)
    out = sweep("run", str(study_file), "--storage", "postgresql://me:hunter2@127.0.0.1:1/sweep")
    assert out.returncode == 1
    assert "me:***@127.0.0.1:1/sweep: cannot open" in out.stderr
    assert "hunter2" not in out.stderr and out.stderr.count("\n") == 1


def test_dashboard_serves_the_study_on_loopback(tmp_path):
    study_file = grid_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert sweep("run", str(study_file), "--storage", url, "--trials", "2").returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_cli("dashboard", "--storage", url, "--port", str(port))
    try:

        def studies():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    return json.load(r)
            except OSError:
                return None

        body = wait_for(studies, timeout=60)
        assert [s["study_name"] for s in body["study_summaries"]] == ["g"], body
        rename = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/studies/{body['study_summaries'][0]['study_id']}/rename",
            data=b'{"study_name": "../../x"}', method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rename, timeout=5)
        assert refused.value.code == 405
        assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["g"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err.splitlines()[0] == (
        f"dashboard for {url} at http://127.0.0.1:{port}/ (read-only; --allow-writes lets it "
        "change studies; Ctrl-C stops it)"
    )
    assert err.splitlines()[-1] == "sweep: terminated; rerun to resume"


def test_a_dashboard_port_in_use_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.create_study(study_name="g", storage=url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = sweep("dashboard", "--storage", url, "--port", str(s.getsockname()[1]))
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "address already in use" in out.stderr


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
        ["dashboard", "--storage", url, "--port", "1"],
        ["status"],  # from the environment
    ]
    # The commands share no database (none can open one), so they can run at the same time.
    outs = sweep_at_once(commands, env={"SWEEP_STORAGE": url})
    for args, out in zip(commands, outs, strict=True):
        shown = out.stdout + out.stderr
        assert out.returncode == (2 if url in UNUSABLE else 1), (args, shown)
        assert "SECRET" not in shown and "SEC%52ET" not in shown, (args, shown)
        assert "***" in shown and shown.count("\n") == 1, (args, shown)


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_a_dashboard_port_out_of_range_is_a_usage_error(port):
    out = sweep("dashboard", "--port", port)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--port" in out.stderr


def test_a_data_path_starting_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    from sweep.study.spec import load_spec

    monkeypatch.setenv("HOME", str(tmp_path))
    path = grid_study(tmp_path, extra_train="")
    path.write_text(path.read_text().replace("[data]\n", '[data]\npath = "~/mnist.pkl.gz"\n'))
    assert load_spec(path).data_path == str(tmp_path / "mnist.pkl.gz")

"""The real `sweep` entry point, run as a user runs it: each command's output, and one command
for each way out of ``main`` (exit 2 from argparse, from a flag's rule and from a study file;
exit 1 from a dataset, a storage and a diverged training; 143 from SIGTERM): each a single line
on stderr. Which input gives which line is the catalogue in test_bad_input.py, run in-process."""

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
from tests.sweep.helpers import grid_study, load, main_in_process, start_cli, sweep_cmd, wait_for


def sweep(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sweep_cmd(*args), capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


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


def test_corrupt_cache_is_one_line_and_exit_1(tmp_path):
    cache = tmp_path / data_mod.CACHE_NAME
    cache.mkdir()
    (cache / "index.json").write_bytes(b"garbage")
    out = sweep("data", env={data_mod.CACHE_ENV: str(tmp_path)})
    assert out.returncode == 1
    assert (
        out.stderr
        == f"sweep: error: {cache}: corrupt dataset cache"
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


def test_a_usage_error_is_one_line_and_exit_2():
    out = sweep("nosuch")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("sweep: error: argument COMMAND: invalid choice: 'nosuch'")
    assert out.stderr.endswith("; see sweep --help\n")


def test_a_flag_that_breaks_its_rule_is_one_line_and_exit_2():
    out = sweep("run", "x.toml", "--jobs", "0")
    assert (out.returncode, out.stderr) == (2, "sweep: error: --jobs must be an integer in "
                                               "[1, 1024]; got 0\n")  # fmt: skip


# --- run, worker, status, dashboard -------------------------------------------------------


@pytest.mark.slow
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
    out = main_in_process("worker", "--study", "g", "--storage", url)
    assert out.returncode == 2 and "study 'g' does not exist in sqlite:///" in out.stderr
    # The launchers run here, with one worker each (the run above is the parallel one).
    out = main_in_process("run", str(study_file), "--storage", url, "--trials", "3", "--jobs", "1")
    assert out.returncode == 0, out.stderr
    assert len(load(url, "g").trials) == 3
    # A worker on "another host", with no study file: nothing is left under the cap of 3.
    out = sweep("worker", "--study", "g", "--storage", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("worker ran 0 trial(s)")
    out = main_in_process("run", str(study_file), "--storage", url, "--trials", "4", "--jobs", "1")
    assert out.returncode == 0, out.stderr
    assert len(load(url, "g").trials) == 4


def test_a_bad_study_file_is_one_line_and_exit_2_and_makes_no_database(tmp_path):
    (tmp_path / "bad.toml").write_text("[study\n")
    db = tmp_path / "db.sqlite"
    out = sweep("run", str(tmp_path / "bad.toml"), "--storage", f"sqlite:///{db}")
    assert out.returncode == 2
    assert out.stderr.startswith(f"sweep: error: {tmp_path / 'bad.toml'}: not valid TOML")
    assert out.stderr.count("\n") == 1
    assert not db.exists(), "a bad study file must not touch the database"


def test_unreachable_storage_exits_1_with_the_password_masked(tmp_path):
    study_file = grid_study(tmp_path)
    out = sweep("run", str(study_file), "--storage", "postgresql://me:hunter2@127.0.0.1:1/sweep")
    assert out.returncode == 1
    assert "me:***@127.0.0.1:1/sweep: cannot open" in out.stderr
    assert "hunter2" not in out.stderr and out.stderr.count("\n") == 1


def test_dashboard_serves_the_study_on_loopback(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.create_study(study_name="g", storage=url)  # what it serves is any optuna study
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

"""``sweep submit``: the batch script it writes, read back as SLURM and bash read it, and the
submission through a stand-in ``sbatch`` on PATH (a script that writes down its arguments and
prints a job id, or refuses). Running the script on a real SLURM is tests/sweep/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.cli import build_parser
from sweep.slurm import MARK
from tests.sweep.helpers import grid_study, main_in_process, run_cli

SECRET_URL = "postgresql://me:SECRET@db.example:5432/sweep"


def _sbatch(folder: Path, *, job: str = "4242", refuse: str | None = None) -> dict[str, str]:
    """A stand-in ``sbatch`` in ``folder``: writes its arguments to ``folder/args`` and prints
    ``job`` as ``--parsable`` does (``JOBID;CLUSTER``), or writes ``refuse`` and exits 1. The
    environment that puts it first on PATH."""
    body = (f"echo {shlex.quote(refuse)} >&2\nexit 1\n" if refuse is not None
            else f"echo '{job};cluster'\n")  # fmt: skip
    folder.mkdir(exist_ok=True)
    fake = folder / "sbatch"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{folder}/args"\n{body}')
    fake.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def _parts(text: str) -> tuple[list[str], list[str], list[str]]:
    """A script's ``#SBATCH`` options (as sbatch reads them: the comment lines before the
    first command), its commands, and the words of its ``exec`` line."""
    options, commands = [], []
    for line in text.splitlines()[1:]:
        if line.startswith("#SBATCH ") and not commands:
            options.append(line.removeprefix("#SBATCH "))
        elif line and not line.startswith("#"):
            commands.append(line)
    assert commands[-1].startswith("exec "), "the worker is not the task's last command"
    return options, commands, shlex.split(commands[-1])[1:]


def test_dry_run_prints_the_script_every_option_and_a_worker_line_that_parses(tmp_path):
    study = grid_study(tmp_path)
    out = main_in_process(
        "submit", str(study), "--workers", "16", "--storage", SECRET_URL,
        "--artifacts", "s3://bucket/sweep", "--wait", "30", "--time", "1-02:00",
        "--partition", "short,long", "--cpus-per-task", "2", "--mem", "4G",
        "--account", "lab_1", "--requeue", "--sbatch=--qos=low", "--sbatch=--gres=gpu:1",
        "--dry-run",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith(f"#!/bin/bash\n{MARK}")
    options, commands, words = _parts(text)
    log = Path.cwd() / "runs" / "slurm" / "g-%A_%a.log"
    assert options == [
        "--job-name=sweep-g", "--array=0-15", f"--output={log}", "--time=1-02:00",
        "--partition=short,long", "--cpus-per-task=2", "--mem=4G", "--account=lab_1",
        "--requeue", "--open-mode=append", "--qos=low", "--gres=gpu:1",
    ]  # fmt: skip
    activate = Path(sys.prefix, "bin", "activate")
    assert f". {shlex.quote(str(activate))}" in " ".join(commands)  # the tests run in a venv
    assert "export SWEEP_STORAGE='postgresql://me:***@db.example:5432/sweep'" in commands
    assert f"cd {shlex.quote(str(Path.cwd()))}" in commands
    assert "SECRET" not in text and out.stderr == ""
    assert words[:3] == [sys.executable, "-m", "sweep.cli"]
    args = build_parser().parse_args(words[3:])
    assert args.func.__name__ == "cmd_worker"
    assert (args.name, args.wait, args.artifacts, args.study) == ("g", 30.0, "s3://bucket/sweep",
                                                                  None)  # fmt: skip
    assert args.storage is None, "the password would show in every node's process list"
    assert not list(tmp_path.glob("*.db")), "a dry run opened the database"


def test_submit_creates_the_study_writes_the_script_0600_and_runs_sbatch(tmp_path):
    study = grid_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    script = tmp_path / "jobs" / "g.sbatch"
    env = _sbatch(tmp_path / "bin")
    out = main_in_process("submit", str(study), "--workers", "3", "--storage", url,
                          "--script", str(script), env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"submitted job 4242: 3 workers of study g (script {script})\n"
    assert (tmp_path / "bin" / "args").read_text().split() == ["--parsable", str(script)]
    assert stat.S_IMODE(script.stat().st_mode) == 0o600
    options, commands, _ = _parts(script.read_text())
    assert f"--output={script.parent}/g-%A_%a.log" in options  # beside the script
    assert f"export SWEEP_STORAGE={shlex.quote(url)}" in commands  # the file holds the URL
    # the study exists with its queue filled: every task joins the same stored spec
    import optuna

    trials = optuna.load_study(study_name="g", storage=url).get_trials(deepcopy=False)
    assert len(trials) == 8 and {t.state.name for t in trials} == {"WAITING"}
    # a second submit replaces its own script, and --format json says what it did
    out = main_in_process("submit", "--study", "g", "--workers", "1", "--storage", url,
                          "--script", str(script), "-f", "json", env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"job_id": "4242", "script": str(script), "workers": 1,
                                      "study": "g"}  # fmt: skip


def test_the_shell_runs_the_worker_with_exactly_its_arguments(tmp_path, monkeypatch):
    """A study name, a store, a database and a folder of shell syntax reach the worker as
    they are: bash runs the script (its ``exec`` a function that writes down what it gets) and
    nothing else runs."""
    here = tmp_path / "w d;$(touch pwned6)"
    here.mkdir()
    monkeypatch.chdir(here)
    name = "g'; touch pwned; echo $(touch pwned2) `touch pwned3` \"x"
    study = grid_study(tmp_path, name="x")
    study.write_text(study.read_text().replace('name = "x"', f"name = {json.dumps(name)}"))
    store = str(tmp_path / "a b;$(touch pwned4)")
    url = f"sqlite:///{tmp_path / 'd b;$(touch pwned5)' / 'db.sqlite'}"
    script = tmp_path / "s.sbatch"
    out = main_in_process("submit", str(study), "--workers", "2", "--storage", url,
                          "--artifacts", store, "--script", str(script),
                          env=_sbatch(tmp_path / "bin"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    seen = tmp_path / "seen"
    probe = f'exec() {{ printf "%s\\0" "$@" "$SWEEP_STORAGE" "$PWD" > {shlex.quote(str(seen))}; }}'
    done = subprocess.run(["bash", "-c", f"{probe}\n. {shlex.quote(str(script))}"],
                          cwd=tmp_path / "bin", env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = seen.read_text().split("\0")[:-1]
    assert got == [sys.executable, "-m", "sweep.cli", "worker", "--study", name, "--wait", "600",
                   "--artifacts", store, url, str(here)]  # fmt: skip
    assert not [p for p in tmp_path.rglob("pwned*")], "the script ran what a value held"


def test_environment_values_a_worker_reads_are_carried(tmp_path):
    env = {"SWEEP_GRACE_PERIOD": "7", "MLP_SWEEP_CACHE": "/cache dir", "SWEEP_DB_PASSWORD": "pw"}
    out = main_in_process("submit", "--study", "g", "--workers", "1", "--dry-run",
                          "--storage", f"sqlite:///{tmp_path / 'db'}", env=env)  # fmt: skip
    _, commands, _ = _parts(out.stdout)
    assert "export SWEEP_GRACE_PERIOD=7" in commands
    assert "export MLP_SWEEP_CACHE='/cache dir'" in commands
    assert "pw" not in out.stdout  # only what a worker reads, never the user's own secrets


@pytest.mark.parametrize("line", ["--qos=long\nrm -rf ~", "qos=long", "--array=0-99", "-o x"])
def test_an_sbatch_line_that_is_not_one_option_is_refused_in_python_too(line):
    from sweep.errors import SpecError
    from sweep.slurm import options

    with pytest.raises(SpecError, match="--sbatch must be one sbatch option on one line"):
        options(extra=(line,))


def test_a_refused_or_missing_sbatch_is_one_line_and_the_study_stays(tmp_path):
    study = grid_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    script = tmp_path / "s.sbatch"
    refuse = "sbatch: error: Batch job submission failed: Invalid partition name specified"
    env = _sbatch(tmp_path / "bin", refuse=refuse + "\nmore")
    out = main_in_process("submit", str(study), "--workers", "2", "--storage", url,
                          "--script", str(script), env=env)  # fmt: skip
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == f"sweep: error: sbatch refused {script}: {refuse}\n"
    out = main_in_process("submit", str(study), "--workers", "2", "--storage", url,
                          "--script", str(script), env={"PATH": str(tmp_path)})  # fmt: skip
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr.startswith("sweep: error: sbatch not found: ") and out.stderr.count("\n") == 1


def test_a_bad_option_writes_and_submits_nothing(tmp_path):
    env = _sbatch(tmp_path / "bin")
    study = grid_study(tmp_path)
    for bad in (["--time", "2h"], ["--sbatch=--qos=a\n#SBATCH --x"], ["--workers", "0"]):
        url = f"sqlite:///{tmp_path / 'db'}"
        args = ["submit", str(study), "--workers", "2", *bad, "--storage", url,
                "--script", str(tmp_path / "s")]  # fmt: skip
        out = main_in_process(*args, env=env)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert not (tmp_path / "s").exists() and not (tmp_path / "db").exists()
        assert not (tmp_path / "bin" / "args").exists(), "sbatch ran"


@pytest.mark.parametrize("kind", ["fifo", "link", "own file"])
def test_a_script_path_submit_did_not_write_is_never_read_nor_replaced(tmp_path, kind):
    """A FIFO would block the read of its first lines (run in a process of its own, with a
    timeout); a link would lead the write elsewhere; a file of one's own would be lost."""
    target = tmp_path / "mine.sh"
    target.write_text(f"#!/bin/bash\n{MARK}: a file that only looks like ours\n")
    script = tmp_path / "s.sbatch"
    if kind == "fifo":
        os.mkfifo(script)
    elif kind == "link":
        script.symlink_to(target)
    else:
        script.write_text("#!/bin/bash\necho mine\n")
    before = target.read_text()
    out = run_cli("submit", str(grid_study(tmp_path)), "--workers", "1", "--script", str(script),
                  "--storage", f"sqlite:///{tmp_path / 'db'}", timeout=60,
                  env=_sbatch(tmp_path / "bin"))  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.endswith("exists and sweep submit did not write it; give another --script\n")
    assert target.read_text() == before and not (tmp_path / "bin" / "args").exists()

"""``sweep submit``: the batch script it writes, read back as SLURM and bash read it, and the
submission through a stand-in ``sbatch`` on PATH (a script that writes down its arguments and
prints a job id, or refuses). Running the script on a real SLURM is tests/sweep/test_slurm.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.cli import build_parser
from sweep.slurm import MARK
from sweep.text import printable
from tests.sweep.helpers import grid_study, main_in_process, run_cli

SECRET_URL = "postgresql://me:SECRET@db.example:5432/sweep"


def _sbatch(folder: Path, *, job: str = "4242", refuse: str | None = None) -> dict[str, str]:
    """A stand-in ``sbatch`` in ``folder``: writes its arguments to ``folder/args`` and what it
    reads (the script) to ``folder/stdin``, and prints
    ``job`` as ``--parsable`` does (``JOBID;CLUSTER``), or writes ``refuse`` and exits 1. The
    environment that puts it first on PATH."""
    body = (f"echo {shlex.quote(refuse)} >&2\nexit 1\n" if refuse is not None
            else f"echo '{job};cluster'\n")  # fmt: skip
    folder.mkdir(exist_ok=True)
    fake = folder / "sbatch"
    fake.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{folder}/args"\ncat > "{folder}/stdin"\n{body}'
    )
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
        "--job-name=sweep-g", "--array=0-15", f"--output={log}", "--open-mode=append",
        "--time=1-02:00", "--partition=short,long", "--cpus-per-task=2", "--mem=4G",
        "--account=lab_1", "--requeue", "--qos=low", "--gres=gpu:1",
    ]  # fmt: skip
    activate = Path(sys.prefix, "bin", "activate")
    assert f". {shlex.quote(str(activate))}" in " ".join(commands)  # the tests run in a venv
    assert "export SWEEP_STORAGE='postgresql://me:***@db.example:5432/sweep'" in commands
    assert f"cd {shlex.quote(str(Path.cwd()))}" in commands
    assert "SECRET" not in text and out.stderr == ""  # PostgreSQL: no warning of SQLite
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
    # the script on sbatch's stdin: the job runs the text written, whatever replaces the file
    assert (tmp_path / "bin" / "args").read_text().split() == ["--parsable"]
    assert (tmp_path / "bin" / "stdin").read_text() == script.read_text()
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
    assert got == [sys.executable, "-m", "sweep.cli", "worker", f"--study={name}", "--wait=600.0",
                   f"--artifacts={store}", url, str(here)]  # fmt: skip
    assert not [p for p in tmp_path.rglob("pwned*")], "the script ran what a value held"


def test_environment_values_a_worker_reads_are_carried(tmp_path):
    env = {"SWEEP_GRACE_PERIOD": "7", "MLP_SWEEP_CACHE": "/cache dir", "SWEEP_DB_PASSWORD": "pw"}
    out = main_in_process("submit", "--study", "g", "--workers", "1", "--dry-run",
                          "--storage", f"sqlite:///{tmp_path / 'db'}", env=env)  # fmt: skip
    _, commands, _ = _parts(out.stdout)
    assert "export SWEEP_GRACE_PERIOD=7" in commands
    assert "export MLP_SWEEP_CACHE='/cache dir'" in commands
    assert "pw" not in out.stdout  # only what a worker reads, never the user's own secrets


@pytest.mark.parametrize(
    ("given", "line"),
    [
        ("/a::/b:", "export PYTHONPATH=/a:/b"),
        (":", None),
        ("", None),
        ("/a", "export PYTHONPATH=/a"),
    ],
)
def test_a_search_path_is_carried_without_empty_entries(tmp_path, given, line):
    # An empty entry (`/a:$PYTHONPATH` of an unset one) would put the task's folder on its path.
    out = main_in_process("submit", "--study", "g", "--workers", "1", "--dry-run",
                          "--storage", f"sqlite:///{tmp_path / 'db'}",
                          env={"PYTHONPATH": given})  # fmt: skip
    _, commands, _ = _parts(out.stdout)
    exported = [c for c in commands if c.startswith("export PYTHONPATH")]
    assert exported == ([line] if line else []), commands


#: ``--sbatch`` values that are not one option SLURM reads as written, or that set what submit
#: writes itself: sbatch splits a ``#SBATCH`` line at whitespace, takes a long option's prefix
#: and a short option's attached value, and unquotes.
REFUSED = ["--qos=long\nrm -rf ~", "qos=long", "--array=0-99", "-o x", "--qos=long --arr=0-99",
           "-a0-99", "-a", "--out=/x", "--o=/x", "--j=x", "--sig=USR1@60", "-o/tmp/evil",
           "--qos='long'", '--qos="a', "--comment=a#b", "--comment=a\\b", "-Chaswell",
           "--open-mode=truncate", "-e /x", "-J x", "-D /", "--chd=/", "--wr=ls", "-W",
           "--test", "--qos=a\tb", "--qos=a\xa0b", "--signal=USR2@90", "--signal=B:KILL@60",
           "--signal", "--si=B:STOP"]  # fmt: skip


@pytest.mark.parametrize("line", REFUSED)
def test_an_sbatch_line_that_is_not_one_option_is_refused_in_python_too(line):
    from sweep.errors import SpecError
    from sweep.slurm import options

    with pytest.raises(SpecError, match="--sbatch must be one sbatch option: --NAME, "):
        options(extra=(line,))


def test_a_refused_or_missing_sbatch_is_one_line_and_the_study_stays(tmp_path):
    study = grid_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    script = tmp_path / "s.sbatch"
    refuse = "sbatch: error: Batch job submission failed: Invalid partition name specified"
    env = _sbatch(tmp_path / "bin", refuse=f"sbatch: error: first\n{refuse}\nmore\n")
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


def test_sbatch_that_does_not_answer_may_have_submitted(tmp_path, monkeypatch):
    monkeypatch.setattr("sweep.slurm.SBATCH_TIMEOUT", 1)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sbatch").write_text("#!/bin/sh\nexec sleep 30\n")
    (tmp_path / "bin" / "sbatch").chmod(0o755)
    out = main_in_process("submit", str(grid_study(tmp_path)), "--workers", "1",
                          "--storage", f"sqlite:///{tmp_path / 'db'}", "--script",
                          str(tmp_path / "s.sbatch"),
                          env={"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})  # fmt: skip
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "the job may have been submitted all the same: see squeue --me --name sweep-g" \
        in out.stderr  # fmt: skip


def _sbatch_reads(text: str, tmp_path: Path) -> dict[str, str]:
    """The options the installed ``sbatch`` reads from script ``text`` (``-vv`` lists them
    before it connects), with no controller: a configuration naming a port nothing listens
    on. Its parse errors come before the list (then the list is empty, the error its key
    "error")."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\n"
                    "NodeName=localhost CPUs=1\n"
                    "PartitionName=p Nodes=localhost Default=YES\n")  # fmt: skip
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for k in [k for k in env if k.startswith(("SLURM_", "SBATCH_")) and k != "SLURM_CONF"]:
        del env[k]  # options sbatch would take from the environment
    proc = subprocess.Popen(["sbatch", "-vv"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
    proc.stdin.write(text)
    proc.stdin.close()
    read, said = {}, []
    try:
        for line in proc.stderr:  # stop at the list's end: then it would try to connect
            said.append(line)
            if "end of defined options" in line:
                break
            if m := re.fullmatch(r"sbatch: ([a-z-]+) +: (.*)\n", line):
                read[m[1]] = m[2]
    finally:
        proc.kill()
        proc.wait()
    if not read:
        read["error"] = "".join(said)
    return {k: v for k, v in read.items() if k not in ("verbose", "-------------------")}


needs_sbatch = pytest.mark.skipif(shutil.which("sbatch") is None, reason="no SLURM client here")


@needs_sbatch
def test_the_installed_sbatch_reads_each_option_as_written(tmp_path, monkeypatch):
    """SLURM itself reads the script: the log path of every character submit allows (the
    folder's), each option as given (as sbatch -vv shows it: a time in full, a gres typed),
    and no other."""
    here = tmp_path / "a+b,c:d@e-f.g_h"
    here.mkdir()
    monkeypatch.chdir(here)
    out = main_in_process(
        "submit", str(grid_study(tmp_path)), "--workers", "16", "--storage", SECRET_URL,
        "--time", "1-02:00", "--partition", "short,long", "--cpus-per-task", "2",
        "--mem", "4G", "--account", "lab_1", "--requeue", "--sbatch=--qos=low",
        "--sbatch=--gres=gpu:1", "--sbatch=-C haswell", "--sbatch=--exclusive",
        "--sbatch=--signal=B:USR2@90", "--dry-run",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert _sbatch_reads(out.stdout, tmp_path) == {
        "job-name": "sweep-g", "array": "0-15", "output": f"{here}/runs/slurm/g-%A_%a.log",
        "open-mode": "a", "time": "1-02:00:00", "partition": "short,long", "cpus-per-task": "2",
        "mem": "4G", "account": "lab_1", "requeue": "requeue", "qos": "low", "gres": "gres:gpu:1",
        "constraint": "haswell", "exclusive": "exclusive", "signal": "B:USR2@90",
    }  # fmt: skip


#: What an --sbatch value would do to the options submit writes, as the installed sbatch reads
#: it: each of these is refused (REFUSED), and here is why.
HARMFUL = {
    "--qos=long --arr=0-99": "array",
    "-a0-99": "array",
    "--out=/x": "output",
    "-o/tmp/evil": "output",
    "--j=x": "job-name",
    "--open-mode=truncate": "open-mode",
}


@needs_sbatch
@pytest.mark.parametrize("line", list(HARMFUL))
def test_what_a_refused_sbatch_line_would_have_done(line, tmp_path):
    assert line in REFUSED
    text = f"#!/bin/bash\n#SBATCH --array=0-3\n#SBATCH --output=/o\n#SBATCH --job-name=n\n" \
           f"#SBATCH --open-mode=append\n#SBATCH {line}\nexec true\n"  # fmt: skip
    read = _sbatch_reads(text, tmp_path)
    changed = HARMFUL[line]
    assert read[changed] != {"array": "0-3", "output": "/o", "job-name": "n", "open-mode": "a"}[
        changed], read  # fmt: skip


@needs_sbatch
def test_a_log_path_sbatch_would_misread_is_what_submit_refuses(tmp_path):
    """The installed sbatch splits an --output path at a space (an "invalid directive"): the
    reason submit refuses such a folder."""
    text = "#!/bin/bash\n#SBATCH --output=/a b/x.log\nexec true\n"
    assert "Invalid directive" in _sbatch_reads(text, tmp_path)["error"]


@pytest.mark.parametrize("folder", ["jobs\ntouch /tmp/PWNED;", "a b", "it's", "a#b", "50%", 'a"b'])
@pytest.mark.parametrize("via", ["--script", "cwd"])
def test_a_log_folder_slurm_cannot_take_as_written_is_refused_first(tmp_path, monkeypatch, folder,
                                                                    via):  # fmt: skip
    """The logs go beside the script: a folder (--script's, or the current one for the default
    runs/slurm/) SLURM would split, unquote or expand is one line, and nothing is made."""
    study = grid_study(tmp_path)
    args = ["submit", str(study), "--workers", "2", "--storage", f"sqlite:///{tmp_path / 'db'}"]
    if via == "cwd":
        (tmp_path / folder).mkdir(parents=True)
        monkeypatch.chdir(tmp_path / folder)
        shown = re.escape(printable(str(tmp_path / folder), 300))
        line = rf"the current folder {shown} holds"
    else:
        args += ["--script", str(tmp_path / folder / "q.sbatch")]
        line = rf"--script {re.escape(printable(str(tmp_path / folder / 'q.sbatch'), 300))}: " \
               r"its folder holds"  # fmt: skip
    for dry in ([], ["--dry-run"]):
        out = main_in_process(*args, *dry, env=_sbatch(tmp_path / "bin"))
        assert out.returncode == 2 and out.stdout == "", out.stderr
        assert re.fullmatch(rf"sweep: error: {line} characters SLURM's #SBATCH --output cannot "
                            r"take as written \(the tasks' logs go there\); allowed: "
                            r"\[A-Za-z0-9\._/\+,:@-\]\n", out.stderr), out.stderr  # fmt: skip
    assert not (tmp_path / "db").exists() and not (tmp_path / "bin" / "args").exists()
    assert not list(tmp_path.rglob("*.sbatch")) and not list(tmp_path.rglob("slurm"))
    assert not Path("/tmp/PWNED").exists()


def test_studies_whose_names_look_alike_get_their_own_job_and_script():
    from sweep.slurm import stem

    names = ["a b", "a/b", "a-b", "a--b", "été", "研究", "x" * 61, "x" * 62, ".a", "a."]
    stems = [stem(n) for n in names]
    assert len(set(stems)) == len(names), stems
    assert stem("a-b") == "a-b" and stem("tpe-budget") == "tpe-budget"  # a plain name is kept
    assert re.fullmatch(r"a-b-[0-9a-f]{8}", stem("a b"))
    assert re.fullmatch(r"study-[0-9a-f]{8}", stem("研究"))
    assert all(re.fullmatch(r"[A-Za-z0-9._-]{1,59}", s) for s in stems)


def test_a_study_named_like_an_option_its_data_and_wait_reach_the_worker(tmp_path, monkeypatch):
    """A name starting with '-' is a value (``--study=-lr``); the study file's dataset is the
    one submit was given, made absolute (the stored spec's is its creator's); every digit of
    --wait is kept."""
    monkeypatch.chdir(tmp_path)
    study = grid_study(tmp_path, name="-lr")
    study.write_text(study.read_text().replace("[data]\n", '[data]\npath = "my mnist.pkl.gz"\n'))
    out = main_in_process("submit", str(study), "--study=-lr", "--workers", "1", "--wait",
                          "0.1234567891", "--storage", SECRET_URL, "--dry-run")  # fmt: skip
    assert out.returncode == 0, out.stderr
    _, _, words = _parts(out.stdout)
    args = build_parser().parse_args(words[3:])
    assert (args.func.__name__, args.name, args.wait) == ("cmd_worker", "-lr", 0.1234567891)
    assert args.data == str(tmp_path / "my mnist.pkl.gz")


def test_credentials_are_carried_in_the_file_and_masked_when_shown(tmp_path):
    env = {"AWS_ENDPOINT_URL_S3": "http://minio:9000", "AWS_SECRET_ACCESS_KEY": "AWSSECRET",
           "PGPASSWORD": "PGSECRET", "PGSSLMODE": "require",
           "LD_LIBRARY_PATH": "/opt/lib"}  # fmt: skip
    args = ["submit", str(grid_study(tmp_path)), "--workers", "1", "--storage", SECRET_URL]
    out = main_in_process(*args, "--dry-run", env=env)
    _, commands, _ = _parts(out.stdout)
    for shown in ("AWS_ENDPOINT_URL_S3=http://minio:9000", "AWS_SECRET_ACCESS_KEY='***'",
                  "PGPASSWORD='***'", "PGSSLMODE=require", "LD_LIBRARY_PATH=/opt/lib"):  # fmt: skip
        assert f"export {shown}" in commands
    assert not re.search("AWSSECRET|PGSECRET|:SECRET@", out.stdout + out.stderr)
    from sweep import slurm

    batch = slurm.Batch("g", SECRET_URL, "s3://b", 1, 1.0, tmp_path, "g", tmp_path, (),
                        tuple(env.items()))  # fmt: skip
    written = slurm.script(batch)  # what the 0600 file holds: the values themselves
    assert "export AWS_SECRET_ACCESS_KEY=AWSSECRET" in written
    assert "export PGPASSWORD=PGSECRET" in written and "me:SECRET@" in written


def test_a_study_in_sqlite_is_warned_of_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'db'}"
    out = main_in_process("submit", str(grid_study(tmp_path)), "--workers", "2", "--dry-run",
                          "--storage", url, "--artifacts", "s3://b/p")  # fmt: skip
    assert out.returncode == 0 and out.stderr.count("\n") == 1, out.stderr
    assert "SQLite, which works on one node only" in out.stderr


@pytest.mark.parametrize("where", ["file as folder", "name too long"])
def test_a_script_that_cannot_be_written_is_one_line_before_the_study_is_made(tmp_path, where):
    study = grid_study(tmp_path)
    if where == "file as folder":
        script = study / "x.sbatch"  # its folder is the study file
    else:  # refused to root too, as a read-only folder is not (CI runs as root)
        script = tmp_path / ("a" * 300) / "x.sbatch"
    out = main_in_process("submit", str(study), "--workers", "1", "--script", str(script),
                          "--storage", f"sqlite:///{tmp_path / 'db'}",
                          env=_sbatch(tmp_path / "bin"))  # fmt: skip
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"sweep: error: --script {str(script)[:60]}")  # cut if long
    assert ": cannot write it: " in out.stderr
    assert not (tmp_path / "db").exists(), "the study was created"
    assert not (tmp_path / "bin" / "args").exists()


def test_every_setting_sweep_reads_from_its_environment_is_carried_to_the_tasks():
    """The script carries what a worker reads (``slurm.CARRIED``), so a task under
    ``--export=NONE`` runs as it would here. The names are read where they are used; this
    finds each one in the sources, so that a new setting cannot be left out of the script."""
    from sweep import slurm

    root = Path(__file__).parents[2]
    read = set()
    for path in [*root.glob("sweep/**/*.py"), *root.glob("mlp/**/*.py")]:
        text = path.read_text()
        read |= set(re.findall(r'environ(?:\.get)?[\[(]\s*"((?:SWEEP|MLP|XDG)_[A-Z_]+)"', text))
        read |= set(re.findall(r'_ENV = "((?:SWEEP|MLP)_[A-Z_]+)"', text))
    given = {"SWEEP_STORAGE", "SWEEP_ARTIFACTS"}  # exported, and a flag, by the script itself
    assert len(read) >= 8, read  # the search still finds what it looks for
    assert read - given <= set(slurm.CARRIED), read - given - set(slurm.CARRIED)

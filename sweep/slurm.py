"""The batch script ``sweep submit`` hands to SLURM: an array of N tasks, each one
``sweep worker`` of a study, in the Python environment sweep runs from; and ``sbatch``.

Plain ``sbatch``, not a submission library: the script is a file anyone can read (``--dry-run``
prints it), SLURM needs nothing installed on the login node but its own client, and the worker
already does what a library would add (it rejoins the study, resumes from the last checkpoint,
gives its trial back on SIGTERM). submitit, which Hydra's SLURM launcher uses, pickles a
function per job and its ``result()`` polls ``sacct``, which a cluster without accounting does
not have (a cancelled job's result then never returns, #29); it also asks for
``--signal=USR2@90`` by default.

Every value that reaches the script is checked first, by the rules below (one line, exit 2,
nothing written), and every value in a shell line is quoted (``shlex.quote``): the script does
nothing but what it shows. ``#SBATCH`` lines are comments to the shell; SLURM reads them up to
the first command, so a line of ``--sbatch`` is one option, on one line, and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from sweep.errors import SpecError, SweepError
from sweep.study.rules import Rule, int_in
from sweep.text import printable

#: The first line after the shebang of every script ``sweep submit`` writes: how it knows a
#: file it may replace (it replaces no other file).
MARK = "# written by sweep submit"
#: Array tasks: SLURM's MaxArraySize is at most 4,000,001 (indices 0 to 4,000,000).
WORKERS = int_in(1, 4_000_001, " (SLURM's largest array)")
#: CPUs per task: a worker uses its study's ``threads``; a node has no more than this.
CPUS = int_in(1, 4096)

_TIME = re.compile(r"(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2}|UNLIMITED|INFINITE)")
TIME = Rule(str, lambda v: bool(_TIME.fullmatch(v)), "a SLURM time limit: MINUTES, "
            "MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES or "
            "DAYS-HOURS:MINUTES:SECONDS (e.g. 2:00:00)")  # fmt: skip
#: SLURM's names (partitions, accounts): letters, digits, '_', '.', '-'; a list of partitions
#: is comma-separated (the first that can run the job does).
_NAME = r"[A-Za-z0-9_.-]{1,64}"
PARTITION = Rule(str, lambda v: bool(re.fullmatch(rf"{_NAME}(,{_NAME})*", v)),
                 "a partition name (letters, digits, '_', '.', '-'), or several separated by "
                 "commas")  # fmt: skip
ACCOUNT = Rule(
    str, lambda v: bool(re.fullmatch(_NAME, v)), "an account name (letters, digits, '_', '.', '-')"
)
MEM = Rule(
    str,
    lambda v: bool(re.fullmatch(r"\d{1,12}[KMGTkmgt]?", v)),
    "a size in megabytes, or with a unit K, M, G or T (e.g. 4G; 0: all of a node's)",
)
#: Options ``sweep submit`` writes itself, from its own flags.
OWN = {"--array": "--workers", "-a": "--workers", "--output": "nothing (logs go to "
       "runs/slurm/)", "-o": "nothing (logs go to runs/slurm/)"}  # fmt: skip


def _is_option_line(line: str) -> bool:
    """One sbatch option as a command line gives it: ``--qos=long``, ``--gres=gpu:1``,
    ``-C haswell``; printable, so on one line (a line break would end the comment and start
    a command), and not one of the options submit writes itself."""
    if not (line.isprintable() and re.match(r"--?[A-Za-z]", line)) or len(line) > 500:
        return False
    return re.split(r"[=\s]", line, maxsplit=1)[0] not in OWN


SBATCH_LINE = Rule(str, _is_option_line, "one sbatch option on one line, as on sbatch's "
                   "command line (e.g. --qos=long or '--gres=gpu:1'), not --array or --output "
                   "(sweep submit writes them)")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Batch:
    """An array of ``sweep worker`` tasks on one study, as the script runs them."""

    study: str  # the study's name: every task joins it with its stored spec
    storage: str  # the database URL, resolved; the script exports it as $SWEEP_STORAGE
    artifacts: str  # the artifact store's location, resolved (every task checkpoints there)
    workers: int  # array tasks (WORKERS)
    wait: float  # seconds a task waits for the study to exist
    log_dir: Path  # absolute: each task's stdout and stderr, as STEM-JOB_TASK.log
    stem: str  # the job's name after ``sweep-`` and its logs' first part: letters, digits, ._-
    cwd: Path  # absolute: where the tasks run (a relative SQLite path or store means the same)
    #: ``#SBATCH`` options, each checked by its rule: ``--time=…`` and so on, then ``--sbatch``'s
    options: tuple[str, ...] = ()
    #: environment values the worker reads, as they are where submit runs (``CARRIED``)
    environment: tuple[tuple[str, str], ...] = ()


#: What a worker reads from its environment besides the storage: the heartbeat, grace and
#: checkpoint settings, the MNIST cache, and the path Python imports from. A batch job may
#: start without the submitting shell's environment (``--export=NONE``), so the script sets
#: those that are set here.
CARRIED = (
    "SWEEP_HEARTBEAT_INTERVAL", "SWEEP_GRACE_PERIOD", "SWEEP_BUSY_TIMEOUT",
    "SWEEP_CHECKPOINT_EPOCHS", "SWEEP_CHECKPOINT_OVERHEAD", "MLP_SWEEP_CACHE", "PYTHONPATH",
)  # fmt: skip


def carried() -> tuple[tuple[str, str], ...]:
    """The ``CARRIED`` variables set in this process, with their values."""
    return tuple((k, os.environ[k]) for k in CARRIED if k in os.environ)


def activation() -> list[str]:
    """The lines that put the task in the Python environment this sweep runs from: a venv's
    ``bin/activate`` (its PATH first, whatever the job inherited), and the interpreter by its
    absolute path either way (``sys.executable``)."""
    activate = Path(sys.prefix, "bin", "activate")
    if sys.prefix != sys.base_prefix and activate.is_file():
        return [f". {shlex.quote(str(activate))}   # the venv sweep was submitted from"]
    return [f"# no venv: {shlex.quote(sys.executable)}, the Python sweep was submitted with"]


def worker_args(batch: Batch) -> list[str]:
    """The arguments of ``sweep worker`` in each task (the storage comes from the environment,
    so that its password is in no process's command line: ``ps`` shows those to every user of
    a node)."""
    return ["worker", "--study", batch.study, "--wait", f"{batch.wait:g}",
            "--artifacts", batch.artifacts]  # fmt: skip


def script(batch: Batch, *, storage_shown: str | None = None) -> str:
    """The batch script's text; ``storage_shown`` in place of the URL (the password masked,
    for ``--dry-run``)."""
    q = shlex.quote
    log = batch.log_dir / f"{batch.stem}-%A_%a.log"
    lines = [
        "#!/bin/bash",
        f"{MARK}: {batch.workers} worker(s) of one study, each `sweep worker` in one array task",
        f"#SBATCH --job-name=sweep-{batch.stem}",
        f"#SBATCH --array=0-{batch.workers - 1}",
        f"#SBATCH --output={log}",
        *(f"#SBATCH {option}" for option in batch.options),
        "set -eu",
        *activation(),
        f"export SWEEP_STORAGE={q(storage_shown or batch.storage)}",
        *(f"export {k}={q(v)}" for k, v in batch.environment),
        f"cd {q(str(batch.cwd))}",
        "exec " + shlex.join([sys.executable, "-m", "sweep.cli", *worker_args(batch)]),
    ]
    return "\n".join(lines) + "\n"


def options(
    *, time: str | None = None, partition: str | None = None, cpus_per_task: int | None = None,
    mem: str | None = None, account: str | None = None, requeue: bool = False,
    extra: tuple[str, ...] = (),
) -> tuple[str, ...]:  # fmt: skip
    """The ``#SBATCH`` options of the given values (each already checked by its rule). A
    requeued task appends to its log rather than starting it anew."""
    given = {"--time": time, "--partition": partition, "--cpus-per-task": cpus_per_task,
             "--mem": mem, "--account": account}  # fmt: skip
    out = [f"{k}={v}" for k, v in given.items() if v is not None]
    if requeue:
        out += ["--requeue", "--open-mode=append"]
    for line in extra:  # checked by SBATCH_LINE again: a value from Python came no other way
        if not SBATCH_LINE.check(line):
            raise SpecError(f"--sbatch must be {SBATCH_LINE.allowed}; got {line!r}")
    return (*out, *extra)


def stem(name: str) -> str:
    """A study name as a job's name and its logs' first part: letters, digits, '.', '_', '-'
    (a name is anyone's text; the report folder's slug, ``sweep.report.writer``, the same)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:60] or "study"


def sbatch(path: Path) -> str:
    """Submit the script at ``path`` with ``sbatch --parsable``; the job's id. SweepError (exit
    1) if there is no ``sbatch`` here or it refuses the job: the first line it wrote."""
    try:
        done = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    except FileNotFoundError:
        raise SweepError("sbatch not found: run sweep submit where SLURM's client is (a login "
                         "node), or --dry-run to see the script") from None  # fmt: skip
    except subprocess.TimeoutExpired:
        raise SweepError("sbatch did not answer within 120 s (is slurmctld up?)") from None
    said = printable((done.stderr.strip().splitlines() or [""])[0], 300)
    if done.returncode != 0:
        raise SweepError(f"sbatch refused {path}: {said or f'exit {done.returncode}'}")
    job = done.stdout.strip().split(";")[0]  # --parsable: "JOBID" or "JOBID;CLUSTER"
    if not job.isdigit():
        raise SweepError(f"sbatch gave no job id for {path}: {printable(done.stdout, 200)!r}")
    return job

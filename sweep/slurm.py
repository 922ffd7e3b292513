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
import hashlib
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
#: What ``sweep submit`` writes itself (``script``) or must not be asked (a job that waits, a
#: run that only tests, a script replaced by one command): an ``--sbatch`` option that names
#: one of these, or a prefix of one (sbatch, by getopt_long, takes any unambiguous prefix of a
#: long option: ``--arr=0-99`` is ``--array``), is refused; and their short forms.
OWN_LONG = ("array", "output", "error", "job-name", "open-mode", "chdir", "test-only", "wrap",
            "wait", "parsable", "help", "usage", "version")  # fmt: skip
#: ``--signal``'s value: a warning before the time limit that the worker takes as its cue to
#: give its trial back (TERM, USR2 as submitit asks, INT; by name or number), sent to the
#: batch shell (``B:``), which the script replaces by the worker: without it SLURM signals
#: only job steps, and the script starts none. Never one the worker cannot take (KILL, STOP:
#: the trial would wait for its heartbeat to go stale).
SIGNAL = re.compile(r"(?:R?B|BR):(?:(?:SIG)?(?:TERM|USR2|INT)|15|12|2)(?:@\d{1,5})?")
OWN_SHORT = "aoeJDWhV"
#: One sbatch option as SLURM reads it from a ``#SBATCH`` line, which it splits at whitespace
#: and unquotes: ``--name`` or ``--name=value``, ``-X`` or ``-X value``, a value without
#: whitespace, quotes, ``#`` or ``\`` (so that it is read as written, and is one option).
_VALUE = r"[^\s'\"#\\]+"
_OPTION = re.compile(
    rf"--(?P<long>[A-Za-z][A-Za-z0-9-]+)(={_VALUE})?|-(?P<short>[A-Za-z])( {_VALUE})?"
)


def _is_option_line(line: str) -> bool:
    """One sbatch option (``_OPTION``) on one line, printable, and not one that submit writes
    itself nor a prefix of one (``OWN_LONG``, ``OWN_SHORT``)."""
    m = _OPTION.fullmatch(line) if line.isprintable() and len(line) <= 500 else None
    if m is None:
        return False
    if m["short"]:
        return m["short"] not in OWN_SHORT
    if len(m["long"]) >= 2 and "signal".startswith(m["long"]):
        return bool(m[2]) and SIGNAL.fullmatch(m[2][1:]) is not None
    return not any(own.startswith(m["long"]) for own in OWN_LONG)


SBATCH_LINE = Rule(str, _is_option_line, "one sbatch option: --NAME, --NAME=VALUE, -X or "
                   "'-X VALUE', the value without spaces, quotes, '#' or '\\' (e.g. --qos=long "
                   "or --gres=gpu:1), and none that sweep submit writes or forbids ("
                   + ", ".join([*(f"--{o}" for o in OWN_LONG), *(f"-{o}" for o in OWN_SHORT)])
                   + ", or a prefix of one); --signal only of a signal the worker takes as "
                   "its cue, sent to the batch shell (B:TERM, B:USR2 or B:INT, @SECONDS "
                   "before the end)")  # fmt: skip
#: The characters of a log path that SLURM's ``--output`` takes as written: no whitespace or
#: quote (sbatch splits and unquotes the line), no ``%`` (a file name pattern), no ``#``, no
#: ``\``; the folder of the script, where the logs go, must be made of them.
LOG_CHARS = "[A-Za-z0-9._/+,:@-]"


def log_path_ok(folder: Path) -> bool:
    """Whether SLURM takes ``folder`` (absolute) as written, in an ``#SBATCH --output`` line."""
    return bool(re.fullmatch(f"{LOG_CHARS}+", str(folder)))


@dataclasses.dataclass(frozen=True)
class Batch:
    """An array of ``sweep worker`` tasks on one study, as the script runs them."""

    study: str  # the study's name: every task joins it with its stored spec
    storage: str  # the database URL, resolved; the script exports it as $SWEEP_STORAGE
    artifacts: str  # the artifact store's location, resolved (every task checkpoints there)
    workers: int  # array tasks (WORKERS)
    wait: float  # seconds a task waits for the study to exist
    log_dir: Path  # absolute, of LOG_CHARS: each task's stdout and stderr, STEM-JOB_TASK.log
    stem: str  # the job's name after ``sweep-`` and its logs' first part (``stem``)
    cwd: Path  # absolute: where the tasks run (a relative SQLite path or store means the same)
    #: ``#SBATCH`` options, each checked by its rule: ``--time=…`` and so on, then ``--sbatch``'s
    options: tuple[str, ...] = ()
    #: environment values the worker reads, as they are where submit runs (``carried``)
    environment: tuple[tuple[str, str], ...] = ()
    #: the study file's dataset, absolute (``--data``: the tasks read the copy submit checked,
    #: not the stored spec's, which is whichever host created the study); None: the cache's
    data: str | None = None


#: What a worker reads from its environment besides the storage: sweep's heartbeat, grace,
#: SQLite and checkpoint settings, the MNIST cache (``MLP_SWEEP_CACHE``, ``XDG_CACHE_HOME``),
#: where Python imports from and its libraries load from, boto3's settings for an S3 store
#: and libpq's for PostgreSQL. A batch job may start without the submitting shell's
#: environment (``--export=NONE``), so the script sets those that are set here.
CARRIED = (
    "SWEEP_HEARTBEAT_INTERVAL", "SWEEP_GRACE_PERIOD", "SWEEP_BUSY_TIMEOUT",
    "SWEEP_CHECKPOINT_EPOCHS", "SWEEP_CHECKPOINT_OVERHEAD", "MLP_SWEEP_CACHE",
    "XDG_CACHE_HOME", "PYTHONPATH", "LD_LIBRARY_PATH",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE",
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSFILE", "PGSERVICE",
    "PGSERVICEFILE", "PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "PGSSLCRL",
    "PGCONNECT_TIMEOUT", "PGAPPNAME", "PGOPTIONS", "PGTZ", "PGCLIENTENCODING",
)  # fmt: skip
#: Credentials a worker reads from its environment: carried too (the script is mode 0600, as
#: the storage URL's password in it), and shown as ``***`` by ``--dry-run``.
SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD")


#: Search paths among ``CARRIED``: an empty entry (``PYTHONPATH=/a:``, as ``/a:$PYTHONPATH``
#: makes of an unset one) means "the current folder" to Python and the loader, which the
#: task's is not meant to add; the script carries the other entries only.
PATH_LISTS = ("PYTHONPATH", "LD_LIBRARY_PATH")


def carried() -> tuple[tuple[str, str], ...]:
    """The ``CARRIED`` and ``SECRETS`` variables set in this process, with their values; of a
    search path (``PATH_LISTS``) its non-empty entries, and none if it has none."""
    found = []
    for k in (*CARRIED, *SECRETS):
        v = os.environ.get(k)
        if v is not None and k in PATH_LISTS:
            v = os.pathsep.join(filter(None, v.split(os.pathsep))) or None
        if v is not None:
            found.append((k, v))
    return tuple(found)


def activation() -> list[str]:
    """The lines that put the task in the Python environment this sweep runs from: a venv's
    ``bin/activate`` (its PATH first, whatever the job inherited), and the interpreter by its
    absolute path either way (``sys.executable``)."""
    activate = Path(sys.prefix, "bin", "activate")
    if sys.prefix != sys.base_prefix and activate.is_file():
        return [f". {shlex.quote(str(activate))}   # the venv sweep was submitted from"]
    return [f"# no venv: {shlex.quote(sys.executable)}, the Python sweep was submitted with"]


def worker_args(batch: Batch) -> list[str]:
    """The arguments of ``sweep worker`` in each task, each value after ``=`` (a study named
    ``-lr`` is a value, not an option) and the wait as ``repr`` (every digit). The storage comes
    from the environment, so that its password is in no process's command line: ``ps`` shows
    those to every user of a node."""
    data = [f"--data={batch.data}"] if batch.data is not None else []
    return ["worker", f"--study={batch.study}", f"--wait={batch.wait!r}",
            f"--artifacts={batch.artifacts}", *data]  # fmt: skip


def script(batch: Batch, *, storage_shown: str | None = None) -> str:
    """The batch script's text; ``storage_shown`` in place of the URL (the password masked,
    for ``--dry-run``), and then the ``SECRETS`` as ``***`` too. Every task appends to its
    log (``--open-mode=append``): a requeued task's lines follow its first run's."""
    q = shlex.quote
    log = batch.log_dir / f"{batch.stem}-%A_%a.log"
    assert log_path_ok(batch.log_dir), "submit refuses a folder SLURM would not read as written"

    def shown(k: str, v: str) -> str:
        return "***" if storage_shown is not None and k in SECRETS else v

    lines = [
        "#!/bin/bash",
        f"{MARK}: {batch.workers} worker(s) of one study, each `sweep worker` in one array task",
        f"#SBATCH --job-name=sweep-{batch.stem}",
        f"#SBATCH --array=0-{batch.workers - 1}",
        f"#SBATCH --output={log}",
        "#SBATCH --open-mode=append",
        *(f"#SBATCH {option}" for option in batch.options),
        "set -eu",
        *activation(),
        f"export SWEEP_STORAGE={q(storage_shown or batch.storage)}",
        *(f"export {k}={q(shown(k, v))}" for k, v in batch.environment),
        f"cd {q(str(batch.cwd))}",
        "exec " + shlex.join([sys.executable, "-m", "sweep.cli", *worker_args(batch)]),
    ]
    return "\n".join(lines) + "\n"


def options(
    *, time: str | None = None, partition: str | None = None, cpus_per_task: int | None = None,
    mem: str | None = None, account: str | None = None, requeue: bool = False,
    extra: tuple[str, ...] = (),
) -> tuple[str, ...]:  # fmt: skip
    """The ``#SBATCH`` options of the given values (each already checked by its rule)."""
    given = {"--time": time, "--partition": partition, "--cpus-per-task": cpus_per_task,
             "--mem": mem, "--account": account}  # fmt: skip
    out = [f"{k}={v}" for k, v in given.items() if v is not None]
    if requeue:
        out.append("--requeue")
    for line in extra:  # checked by SBATCH_LINE again: a value from Python came no other way
        if not SBATCH_LINE.check(line):
            raise SpecError(f"--sbatch must be {SBATCH_LINE.allowed}; got {line!r}")
    return (*out, *extra)


def stem(name: str) -> str:
    """A study name as a job's name and its files' first part: letters, digits, '.', '_', '-'
    (a name is anyone's text), and, unless that is the name itself, 8 hex digits of the name's
    SHA-256 after it, so that two studies (``a b``, ``a/b``, ``a-b``) never share a job name
    or a script."""
    plain = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:50] or "study"
    if plain == name:
        return plain
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{plain}-{digest}"


#: How long ``sbatch`` may take to answer: a busy controller takes seconds; more is a fault.
SBATCH_TIMEOUT = 120


def sbatch(text: str, *, shown: str, job_name: str) -> str:
    """Submit the script ``text`` with ``sbatch --parsable``, the text on its stdin (the job
    runs exactly this text, whatever another submit writes to the same file meanwhile; and no
    path reaches sbatch's command line, where one starting with ``-`` would be an option);
    the job's id. SweepError (exit 1) if there is no ``sbatch`` here, it refuses the job (its
    last ``error:`` line) or does not answer. ``shown``: the script's path, for messages."""
    try:
        done = subprocess.run(["sbatch", "--parsable"], input=text, capture_output=True,
                              text=True, timeout=SBATCH_TIMEOUT)  # fmt: skip
    except FileNotFoundError:
        raise SweepError("sbatch not found: run sweep submit where SLURM's client is (a login "
                         "node), or --dry-run to see the script") from None  # fmt: skip
    except subprocess.TimeoutExpired:
        raise SweepError(f"sbatch did not answer within {SBATCH_TIMEOUT} s (is slurmctld up?); "
                         "the job may have been submitted all the same: see squeue --me "
                         f"--name {job_name} before submitting again") from None  # fmt: skip
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        said = [line for line in lines if "error:" in line] or lines or [f"exit {done.returncode}"]
        raise SweepError(
            f"sbatch refused {printable(shown, 300)}: {printable(said[-1].strip(), 300)}"
        )
    job = done.stdout.strip().split(";")[0]  # --parsable: "JOBID" or "JOBID;CLUSTER"
    if not job.isdigit():
        raise SweepError(f"sbatch gave no job id for {printable(shown, 300)}: "
                         f"{printable(done.stdout, 200)!r}")  # fmt: skip
    return job

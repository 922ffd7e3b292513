"""``sweep submit``: a study's workers sent to SLURM as one job array (``sweep.slurm`` writes
the script), from a login node.

A study file's study is created (or checked against the stored one) and its queue filled
before anything is submitted, as ``sweep run`` would: every task then joins the same stored
spec by name, a refused file costs no allocation, and ``sweep status`` shows the queue at once.
A stored study (``--study NAME`` alone) must exist: a misspelt name would otherwise hold N
allocations waiting for a study that never comes.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sweep import records, slurm
from sweep.errors import SpecError

if TYPE_CHECKING:
    from sweep.study.spec import StudySpec

logger = logging.getLogger(__name__)

#: Where the script goes by default, under the folder submit runs in; the tasks' logs go
#: beside the script.
FOLDER = Path("runs", "slurm")


@dataclasses.dataclass(frozen=True)
class Submitted:
    """What ``submit`` did: the job's id (None with ``dry_run``: nothing was submitted)."""

    study: str
    workers: int
    script: Path
    job_id: str | None
    text: str  # the script as it may be shown: the storage URL's password masked


def submit(
    *, spec: StudySpec | None, name: str | None, storage: str | None, artifacts: str | None,
    workers: int, wait: float, options: tuple[str, ...] = (), script: Path | None = None,
    dry_run: bool = False,
) -> Submitted:  # fmt: skip
    """Submit ``workers`` tasks of ``sweep worker`` on study ``spec`` (a study file's, which is
    created first) or ``name`` (a stored study, which must exist) with ``options`` (``#SBATCH``
    lines, each checked: ``sweep.slurm.options``). The script goes to ``script`` (default
    ``runs/slurm/STEM.sbatch``), mode 0600: it holds the storage URL; the tasks' logs beside
    it (``STEM-JOB_TASK.log``). Every path is checked, and the script's folder made and
    written to, before the study is created. ``dry_run``: the script's text only; nothing is
    read, written or submitted."""
    from sweep.queue.storage import checked_url, mask_password
    from sweep.text import printable
    from sweep.trial.artifacts import artifacts_location

    if spec is None and name is None:
        raise SpecError("submit needs a study: a study file, or --study NAME")
    if spec is not None and name is not None and spec.name != name:
        raise SpecError(f"{spec.source}: [study.name] is {spec.name!r}, not {name!r}")
    study = spec.name if spec is not None else str(name)
    url = checked_url(storage)
    location, local = artifacts_location(artifacts, url)
    stem = slurm.stem(study)
    path = script or FOLDER / f"{stem}.sbatch"
    here = Path.cwd()  # the tasks' logs go beside the script
    if not slurm.log_path_ok((here / path).parent):
        where = (f"--script {printable(str(path), 300)}: its folder" if script is not None
                 else f"the current folder {printable(str(here), 300)}")  # fmt: skip
        raise SpecError(f"{where} holds characters SLURM's #SBATCH --output cannot take "
                        "as written (the tasks' logs go there); allowed: "
                        f"{slurm.LOG_CHARS}")  # fmt: skip
    data = os.path.join(here, spec.data_path) if spec is not None and spec.data_path else None
    batch = slurm.Batch(study, url, location, workers, wait, (here / path).parent, stem, here,
                        options, slurm.carried(), data)  # fmt: skip
    shown = slurm.script(batch, storage_shown=mask_password(url))
    notes = [local] if local else []  # a folder of this host's: the nodes may not share it
    if url.startswith("sqlite"):
        notes.append("the study is in SQLite, which works on one node only (its locks need "
                     "one machine's file system): an array's tasks may start on several; use "
                     "PostgreSQL across nodes")  # fmt: skip
    if dry_run:
        _warn(notes)
        return Submitted(study, workers, path, None, shown)
    _writable(here / path, shown=printable(str(path), 300))
    _ready(spec, study, url, artifacts)
    text = slurm.script(batch)
    try:
        _write(here / path, text)
    except OSError as e:
        raise SpecError(f"--script {printable(str(path), 300)}: cannot write it: "
                        f"{e.strerror or e}") from e  # fmt: skip
    job = slurm.sbatch(text, shown=str(path), job_name=f"sweep-{stem}")
    _warn(notes)
    return Submitted(study, workers, path, job, shown)


def _warn(notes: list[str]) -> None:
    """Each note as one warning (after the job is submitted: an error stays one line)."""
    for note in notes:
        logger.warning("%s", note)


def _writable(path: Path, *, shown: str) -> None:
    """A script file submit may write at ``path`` (absolute): new, or one it wrote before
    (``slurm.MARK`` on its second line), in a folder it can make and write to. Anything else
    is refused in one line, before the study is created. The file is opened without following
    a link and without blocking (a FIFO would block a read) and checked by what was opened
    (``fstat``), so that it cannot be swapped between the check and the read; it is then
    replaced by a rename, never written through."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        fd = None
    except OSError as e:  # a link (ELOOP), a path through a file, no permission
        if e.errno == errno.ELOOP:
            raise SpecError(f"--script {shown}: exists and sweep submit did not write it; "
                            "give another --script") from None  # fmt: skip
        raise SpecError(f"--script {shown}: cannot write it: {e.strerror}") from None
    if fd is not None:
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if stat.S_ISDIR(mode):
                raise SpecError(f"--script {shown}: is a folder; give a file name")
            head = f.read(512).split(b"\n") if stat.S_ISREG(mode) else []
        if not (len(head) > 1 and head[1].startswith(slurm.MARK.encode())):
            raise SpecError(f"--script {shown}: exists and sweep submit did not write it; "
                            "give another --script")  # fmt: skip
    try:  # the folder made (the logs' too: SLURM makes none) and written to, as _write will
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise SpecError(f"--script {shown}: cannot write it: {e.strerror or e}") from None


def _ready(spec: StudySpec | None, name: str, url: str, artifacts: str | None) -> None:
    """The study as its workers will find it: a study file's created (or checked against the
    stored one) with its queue filled, as ``sweep run`` starts one; a stored one checked as
    a worker checks it. The artifact store and the checkpoint settings are checked here, so
    that a bad one is one line now rather than in every task."""
    from sweep.queue.storage import STORAGE_ERRORS, open_storage, storage_failure, study_names
    from sweep.study.joining import join, open_study, top_up
    from sweep.trial.artifacts import study_store
    from sweep.trial.checkpoint import policy

    policy()
    study_store(artifacts, url)
    try:
        if spec is not None:
            top_up(open_study(spec, open_storage(url)), spec)
            return
        rdb = open_storage(url, heartbeat_interval=None, grace_period=None, read_only=True)
        if name not in study_names(rdb):
            from sweep.queue.storage import mask_password

            raise SpecError(f"study {name!r} does not exist in {mask_password(url)}; give its "
                            "study file, which submit creates it from")  # fmt: skip
        join(url, name)
    except STORAGE_ERRORS as e:
        raise storage_failure(e, url) from e


def _write(path: Path, text: str) -> None:
    """The script, mode 0600 from its first byte (it holds the storage URL's password)."""
    from mlp.files import write_atomically

    def write(f: object) -> None:
        os.fchmod(f.fileno(), 0o600)  # type: ignore[attr-defined]
        f.write(text.encode())  # type: ignore[attr-defined]

    write_atomically(path, write)


def cmd_submit(args: argparse.Namespace) -> int:
    """Send a study's workers to SLURM as one job array: writes the batch script (each task
    one `sweep worker`, in this Python environment) and submits it with sbatch; --dry-run
    prints the script (the storage password masked) and submits nothing. A study file's study
    is created first, so every task joins its stored spec."""
    from sweep.commands import quiet_optuna, study_spec

    quiet_optuna(args)
    if args.set and not args.study:
        raise SpecError("--set changes a study file: give the study file "
                        "(sweep submit STUDY.toml --set KEY=VALUE)")  # fmt: skip
    spec = study_spec(args.study, args.set) if args.study else None
    extra = slurm.options(time=args.time, partition=args.partition,
                          cpus_per_task=args.cpus_per_task, mem=args.mem, account=args.account,
                          requeue=args.requeue, extra=tuple(args.sbatch))  # fmt: skip
    done = submit(spec=spec, name=args.name, storage=args.storage, artifacts=args.artifacts,
                  workers=args.workers, wait=args.wait, options=extra,
                  script=Path(args.script) if args.script else None,
                  dry_run=args.dry_run)  # fmt: skip
    if args.format == "json":
        record = {"job_id": done.job_id, "script": str(done.script), "workers": done.workers,
                  "study": done.study}  # fmt: skip
        print(records.dumps(record | ({"text": done.text} if args.dry_run else {})), flush=True)
    elif args.dry_run:
        print(done.text, end="")
    else:
        from sweep.text import printable

        script = printable(str(done.script), 300)
        print(f"submitted job {done.job_id}: {done.workers} workers of study "
              f"{printable(done.study, 200)} (script {script})")  # fmt: skip
    return 0

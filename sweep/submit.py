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
import logging
import os
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
    it (``STEM-JOB_TASK.log``). ``dry_run``: the script's
    text only; nothing is read, written or submitted."""
    from sweep.queue.storage import checked_url, mask_password
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
    batch = slurm.Batch(study, url, location, workers, wait, (here / path).parent, stem, here,
                        options, slurm.carried())  # fmt: skip
    shown = slurm.script(batch, storage_shown=mask_password(url))
    if dry_run:
        return Submitted(study, workers, path, None, shown)
    _replaceable(path)
    _ready(spec, study, url, artifacts)
    if local:  # a folder of this host's: the tasks reach it only if the nodes share it
        logger.warning("%s", local)
    _write(path, slurm.script(batch))
    return Submitted(study, workers, path, slurm.sbatch(path), shown)


def _replaceable(path: Path) -> None:
    """A script file submit may write: new, or one it wrote before (``slurm.MARK`` on its
    second line). Anything else is never opened for reading (a FIFO would block) nor replaced:
    a folder, a link, a device, a file of the user's own."""
    if path.is_dir():
        raise SpecError(f"--script {path}: is a folder; give a file name")
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_file() and not path.is_symlink():
        try:
            with path.open("rb") as f:
                head = f.read(512).split(b"\n")
        except OSError:
            head = []
        if len(head) > 1 and head[1].startswith(slurm.MARK.encode()):
            return
    raise SpecError(f"--script {path}: exists and sweep submit did not write it; "
                    "give another --script")  # fmt: skip


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

    path.parent.mkdir(parents=True, exist_ok=True)  # the logs' too: SLURM makes no folder
    write_atomically(path, write)


def cmd_submit(args: argparse.Namespace) -> int:
    """Send a study's workers to SLURM as one job array: writes the batch script (each task
    one `sweep worker`, in this Python environment) and submits it with sbatch; --dry-run
    prints the script (the storage password masked) and submits nothing. A study file's study
    is created first, so every task joins its stored spec."""
    from sweep.commands import _quiet_optuna, _study_spec

    _quiet_optuna(args)
    if args.set and not args.study:
        raise SpecError("--set changes a study file: give the study file "
                        "(sweep submit STUDY.toml --set KEY=VALUE)")  # fmt: skip
    spec = _study_spec(args.study, args.set) if args.study else None
    extra = slurm.options(time=args.time, partition=args.partition,
                          cpus_per_task=args.cpus_per_task, mem=args.mem, account=args.account,
                          requeue=args.requeue, extra=tuple(args.sbatch))  # fmt: skip
    done = submit(spec=spec, name=args.name, storage=args.storage, artifacts=args.artifacts,
                  workers=args.workers, wait=args.wait, options=extra,
                  script=Path(args.script) if args.script else None,
                  dry_run=args.dry_run)  # fmt: skip
    if args.format == "json":
        record = {"job_id": done.job_id, "script": done.script, "workers": done.workers,
                  "study": done.study}  # fmt: skip
        print(records.dumps(record | ({"text": done.text} if args.dry_run else {})), flush=True)
    elif args.dry_run:
        print(done.text, end="")
    else:
        from sweep.text import printable

        print(f"submitted job {done.job_id}: {done.workers} workers of study "
              f"{printable(done.study, 200)} (script {done.script})")  # fmt: skip
    return 0

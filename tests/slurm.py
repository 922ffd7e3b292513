"""A throwaway one-node SLURM on loopback for the batch-cluster tests (#29).

Uses Debian's Slurm (``slurmctld slurmd slurm-client munge``; `.ci/run` installs them): munged
on a private socket, slurmctld and slurmd on free loopback ports, everything (configuration,
state, spool, logs, the munge key and socket) in a fresh temporary folder, no cgroups, no
systemd, no accounting (so ``sacct`` is off: jobs are followed with ``squeue``/``scontrol``).
The clients (``sbatch``, ``squeue``, ``scancel``, ``scontrol``) find it through the
``SLURM_CONF`` of ``Slurm.env``. Without the binaries the tests that need it are skipped on a
developer's machine and fail in CI, where a skipped cluster would hide a failure.

Every daemon runs in the foreground as a child of the test, and is stopped by its PID at the
end (or when start-up fails); so is any process the cluster left behind (a job step, a job's
own process), recognised by the ``SLURM_CONF`` of this cluster in its environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
#: The node's CPUs as slurmd reports them (config_overrides lets it claim more than the host
#: has): a grid's array of single-CPU workers runs at once even on a 2-core machine.
CPUS = 4
#: Seconds SLURM waits between the SIGTERM of a job it ends and the SIGKILL.
KILL_WAIT = 5

CONFIG = """\
ClusterName=sweeptest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
ReturnToService=2
KillWait={kill_wait}
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
NodeName=n1 NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=n1 Default=YES MaxTime=INFINITE State=UP
"""


@dataclasses.dataclass(frozen=True)
class Slurm:
    """A running cluster: ``env`` for its clients (``SLURM_CONF``), its folder, its jobs."""

    root: Path
    env: dict[str, str]
    #: the PIDs of munged, slurmctld and slurmd, as started
    daemons: list[int] = dataclasses.field(default_factory=list)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A client command against this cluster."""
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check,
                              timeout=60)  # fmt: skip

    def states(self, job: str) -> dict[str, str]:
        """Each task of job ``job`` (an array's id ``123_4``) and its state, from slurmctld's
        records (kept ``MinJobAge`` seconds after a job ended: there is no ``sacct`` here)."""
        out = self.run("scontrol", "-o", "show", "job", job, check=False)
        found = {}
        for line in out.stdout.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            task = fields.get("JobId", "")
            if fields.get("ArrayTaskId"):
                task = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
            found[task] = fields.get("JobState", "")
        return found

    def queued(self, job: str | None = None) -> list[str]:
        """The pending or running tasks (``squeue``), of ``job`` or of every job."""
        cmd = ["squeue", "-h", "-r", "-o", "%i %T"] + (["-j", job] if job else [])
        out = self.run(*cmd, check=False)
        return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]

    def wait_ended(self, job: str | None = None, timeout: float = 180) -> None:
        """Wait until ``job`` (or every job) has neither pending nor running tasks."""
        deadline = time.monotonic() + timeout
        while self.queued(job):
            if time.monotonic() > deadline:
                why = self.run("squeue", "-h", "-r", "-o", "%i %T %r", check=False).stdout
                raise TimeoutError(f"SLURM job {job or '(all)'} still queued: {why}"
                                   f"\n{self.logs()}")  # fmt: skip
            time.sleep(0.5)

    def wait_running(self, job: str, n: int = 1, timeout: float = 60) -> None:
        """Wait until ``n`` tasks of ``job`` are RUNNING."""
        deadline = time.monotonic() + timeout
        while sum(s == "RUNNING" for s in self.states(job).values()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"SLURM job {job}: {self.states(job)}\n{self.logs()}")
            time.sleep(0.3)

    def logs(self) -> str:
        """The daemons' last log lines, for a failure's message."""
        parts = []
        for name in ("slurmctld", "slurmd"):
            path = self.root / f"{name}.log"
            if path.exists():
                parts.append(f"--- {name}.log\n" + "\n".join(path.read_text().splitlines()[-15:]))
        return "\n".join(parts)

    def cancel_all(self) -> None:
        """Cancel every job (its batch shell and steps: ``--full``) and wait until none is
        queued: what one test started never runs into the next."""
        self.run("scancel", "--full", "--user", _user(), check=False)
        self.wait_ended(timeout=3 * KILL_WAIT + 30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binaries() -> dict[str, str] | None:
    found = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
             for name in DAEMONS + CLIENTS}  # fmt: skip
    return found if all(found.values()) else None  # type: ignore[return-value]


def _wait(ready, what: str, procs: list[subprocess.Popen], root: Path, timeout: float = 30):
    """Wait for ``ready()``; fail with the daemon logs if a daemon dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited {proc.returncode} while waiting for "
                                   f"{what}:\n{_tails(root)}")  # fmt: skip
        if time.monotonic() > deadline:
            raise TimeoutError(f"SLURM: no {what} after {timeout} s:\n{_tails(root)}")
        time.sleep(0.2)


def _tails(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-20:])
                     for p in sorted(root.glob("*.log")))  # fmt: skip


def _left_behind(conf: Path) -> list[int]:
    """Processes whose environment names this cluster's configuration (its job steps and the
    jobs' own processes): what a stopped cluster must not leave running."""
    mark = f"SLURM_CONF={conf}".encode()
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return pids


def _stop(procs: list[subprocess.Popen], conf: Path) -> None:
    """SIGTERM each daemon by its PID (the last started first), SIGKILL what is left after 10 s;
    then SIGKILL whatever process still carries this cluster's configuration."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for _ in range(50):  # again until none is found: a process may fork while it is killed
        left = _left_behind(conf)
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise RuntimeError(f"SLURM: processes of {conf} still running: {_left_behind(conf)}")


def _die_with_parent() -> None:
    """In a daemon before it runs: SIGKILL it when the test process dies (Linux's
    ``PR_SET_PDEATHSIG``), so a pytest killed outright leaves no daemon behind."""
    import ctypes

    PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def cluster() -> Iterator[Slurm]:
    """Start munged, slurmctld and slurmd in a new temporary folder; yield the cluster; cancel
    its jobs, stop the daemons by PID and remove the folder."""
    found = _binaries()
    if found is None:
        message = "SLURM not found (apt-get install slurmctld slurmd slurm-client munge)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="mlp-sweep-slurm-"))
    for sub in ("state", "spool"):  # slurmd does not make its spool folder itself
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = root / "slurm.conf"
    conf.write_text(CONFIG.format(
        root=root, ctld_port=_free_port(), slurmd_port=_free_port(), cpus=CPUS,
        kill_wait=KILL_WAIT, user=os.environ.get("USER") or _user(),
    ))  # fmt: skip
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen] = []

    def start(*cmd: str) -> None:
        with open(root / f"{Path(cmd[0]).name}.out", "wb") as log:  # the child keeps its copy
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            )
            slurm.daemons.append(procs[-1].pid)

    slurm = Slurm(root, env)
    try:
        start(found["munged"], "--foreground", "--force", f"--socket={root}/munge.socket",
              f"--key-file={key}", f"--pid-file={root}/munged.pid",
              f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed")  # fmt: skip
        _wait(lambda: (root / "munge.socket").exists(), "munge socket", procs, root)
        start(found["slurmctld"], "-D", "-i", "-f", str(conf))
        _wait(lambda: slurm.run("scontrol", "ping", check=False).returncode == 0,
              "slurmctld", procs, root)  # fmt: skip
        start(found["slurmd"], "-D", "-N", "n1", "-f", str(conf))
        _wait(lambda: "idle" in slurm.run("sinfo", "-h", "-o", "%t", check=False).stdout,
              "idle node", procs, root)  # fmt: skip
        yield slurm
    finally:
        with contextlib.suppress(Exception):
            if procs and procs[-1].poll() is None:
                slurm.cancel_all()
        try:
            _stop(procs, conf)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name

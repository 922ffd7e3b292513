"""The scale benchmark's measurements through the command line, each in a subprocess: the
wall time of ``sweep status`` (alternating with one on an empty database), of ``sweep report``
with its peak memory, the first trial-list call of a fresh ``sweep dashboard`` with the
server's peak memory, and ``sweep run`` from launch to its first claim.

A command is stopped at its timeout, and ``report`` and the dashboard also when their memory
passes a cap (today's code at 10⁶ trials grows to 5–6 GB), so that the benchmark finishes
and the row reads MISSED.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

from tests.bench.scale_table import Result

_POLL_S = 0.05
_URL = re.compile(r" at (http://\S+/) ")  # sweep dashboard's start-up line names its URL


def sweep(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweep.cli", *args]


def alternating(cmds: list[list[str]], repeats: int, timeout: float) -> list[Result]:
    """Wall seconds of each command, run in turn ``repeats`` times (so the machine's load
    falls alike on each); fewer once a round has taken a fifth of ``timeout``; a command that
    fails or times out stops."""
    out = [Result() for _ in cmds]
    for _ in range(repeats):
        if sum(sum(r.samples) for r in out) > timeout / 5:
            break
        for cmd, result in zip(cmds, out, strict=True):
            if result.failed:
                continue
            start = time.perf_counter()
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                result.failed, result.above = f"> {timeout:.0f} s (timeout)", timeout
                continue
            if done.returncode != 0:
                result.failed = _exit(done.returncode, done.stderr)
                continue
            result.samples.append(time.perf_counter() - start)
    return out


def _exit(code: int, stderr: str) -> str:
    last = (stderr.strip().splitlines() or ["?"])[-1]
    return f"error: exit {code}: {last[:120]}"


def _memory_mb(pid: int, field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (the peak) of a live process, in MB; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
    return int(m[1]) * 1024 / 1e6 if m else 0.0


def _stop(proc: subprocess.Popen) -> None:
    """SIGKILL to the process group (a command past its cap owes no clean exit)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _stopped(reason: str, after_s: float, cap_mb: float, peak_mb: float) -> tuple[Result, Result]:
    """The two cells of a command stopped at its memory cap or its timeout (where its peak so
    far is a lower bound: the row misses, as its time does)."""
    if reason == "memory":
        return (Result(failed=f"killed at {after_s:.0f} s (> {cap_mb:,.0f} MB)", above=after_s),
                Result(failed=f"> {cap_mb:,.0f} MB (killed)", above=cap_mb))  # fmt: skip
    return (Result(failed=f"> {after_s:.0f} s (timeout)", above=after_s),
            Result(failed=f"≥ {peak_mb:,.0f} MB at the timeout", above=peak_mb))  # fmt: skip


# A launcher between the benchmark and the command: a child's maximum resident set (rusage)
# starts from its parent's at the fork (the kernel keeps the largest through ``exec``), and the
# benchmark's own process is larger than ``sweep status``. Writes "seconds peak_KiB" to argv[1].
_LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[2:])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(sys.argv[1], "w").write(f"{seconds} {peak}")
sys.exit(code)
"""


def _tree_rss_mb(pid: int) -> float:
    """The resident memory of a process and its descendants, in MB."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += _memory_mb(p, "VmRSS")
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return total


def report_watched(cmd: list[str], timeout: float, cap_mb: float) -> tuple[Result, Result]:
    """(wall seconds, peak memory in MB) of one run of ``cmd``, through ``_LAUNCHER``: the
    peak is the larger of the most the command and its children held together (polled) and
    the largest of their maximum resident sets (a report reads a large study in parallel
    processes, ``sweep.report.parts``)."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        said, err = Path(tmp, "said"), Path(tmp, "stderr")
        launch = [sys.executable, "-c", _LAUNCHER, str(said), *cmd]
        start = time.perf_counter()
        with err.open("w") as stderr:
            proc = subprocess.Popen(launch, stdout=subprocess.DEVNULL, stderr=stderr,
                                    start_new_session=True)  # fmt: skip
        peak, reason = 0.0, None
        while proc.poll() is None:
            rss = _tree_rss_mb(proc.pid)
            peak = max(peak, rss)
            if rss > cap_mb:
                reason = "memory"
            elif time.perf_counter() - start > timeout:
                reason = "timeout"
            if reason:
                after = time.perf_counter() - start
                _stop(proc)
                return _stopped(reason, after, cap_mb, peak)
            time.sleep(_POLL_S)
        if proc.returncode != 0 or not said.exists():
            failed = _exit(proc.returncode, err.read_text())
            return Result(failed=failed), Result(failed=failed)
        seconds, peak_kib = said.read_text().split()
    most = max(peak, int(peak_kib) * 1024 / 1e6)  # ru_maxrss in KiB on Linux
    return Result([float(seconds)]), Result([most])


def dashboard_watched(url: str, name: str, artifacts: Path, timeout: float, cap_mb: float
                      ) -> tuple[Result, Result]:  # fmt: skip
    """(seconds, server's peak memory in MB) of the first trial-list call of a fresh ``sweep
    dashboard``: optuna-dashboard's ``GET /api/studies/<id>?after=0``, which its page polls
    for the study's trials (the study's id from ``GET /api/studies``, not timed)."""
    port = str(_free_port())
    cmd = sweep("dashboard", "--storage", url, "--port", port, "--artifacts", str(artifacts))
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                start_new_session=True)  # fmt: skip
        answer: dict = {}
        call: threading.Thread | None = None
        peak, reason = 0.0, None
        try:
            while reason is None:
                if proc.poll() is not None:
                    err.seek(0)
                    failed = _exit(proc.returncode, err.read())
                    return Result(failed=failed), Result(failed=failed)
                peak = max(peak, _memory_mb(proc.pid, "VmHWM"))
                if _memory_mb(proc.pid, "VmRSS") > cap_mb:
                    reason = "memory"
                elif time.perf_counter() - start > timeout:
                    reason = "timeout"
                elif call is None:
                    err.seek(0)
                    if m := _URL.search(err.read()):
                        call = threading.Thread(target=_trial_list, daemon=True,
                                                args=(m[1], name, timeout, answer))  # fmt: skip
                        call.start()
                elif not call.is_alive():
                    break
                time.sleep(_POLL_S)
            if reason:
                return _stopped(reason, time.perf_counter() - start, cap_mb, peak)
            peak = max(peak, _memory_mb(proc.pid, "VmHWM"))
        finally:
            _stop(proc)
    if "error" in answer:
        return Result(failed=answer["error"]), Result(failed=answer["error"])
    return Result([answer["seconds"]]), Result([peak])


def _free_port() -> int:
    """A port nothing listens on now (``sweep dashboard`` refuses ``--port 0``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trial_list(base: str, name: str, timeout: float, answer: dict) -> None:
    """Into ``answer``: the seconds of the study's trial-list call, or an error line."""
    try:
        with urllib.request.urlopen(base + "api/studies", timeout=timeout) as r:
            studies = json.load(r)["study_summaries"]
        study_id = next(s["study_id"] for s in studies if s["study_name"] == name)
        start = time.perf_counter()
        with urllib.request.urlopen(f"{base}api/studies/{study_id}?after=0", timeout=timeout) as r:
            trials = json.load(r)["trials"]
        answer["seconds"] = time.perf_counter() - start
        answer["trials"] = len(trials)
    except Exception as e:  # one line: a table cell
        first = (str(e).strip().splitlines() or [""])[0]
        answer["error"] = f"error: {type(e).__name__}: {first[:120]}"


def run_startup(url: str, study_file: Path, trials: int, timeout: float) -> Result:
    """Seconds from launching ``sweep run --trials N+1 --jobs 1`` until its worker claimed the
    new trial (read from the trial's ``datetime_start``, so polling adds nothing), then
    Ctrl-C to the launcher's process group, as a terminal sends it."""
    import sqlalchemy

    from sweep.queue import tables as tb
    from sweep.queue.storage import open_storage

    rdb = open_storage(url, heartbeat_interval=None, grace_period=None, read_only=True)
    t = tb.trials
    with rdb.engine.connect() as conn:  # the new trial comes after every trial there is
        top = conn.execute(sqlalchemy.select(sqlalchemy.func.max(t.c.trial_id))).scalar_one()
    launched = tb.utc_now()
    cmd = sweep("run", str(study_file), "--storage", url, "--trials", str(trials), "--jobs", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    first = sqlalchemy.select(sqlalchemy.func.min(t.c.datetime_start)).where(
        t.c.trial_id > top, t.c.datetime_start.is_not(None)
    )
    result = Result(failed=f"> {timeout:.0f} s (timeout)", above=timeout)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with rdb.engine.connect() as conn:
                started = conn.execute(first).scalar()
            if started is not None:
                result = Result([(started - launched) / timedelta(seconds=1)])
                break
            if proc.poll() is not None:
                result = Result(failed=_exit(proc.returncode, proc.stderr.read()))
                break
            time.sleep(0.1)
    finally:
        _interrupt(proc)
        rdb.engine.dispose()
    return result


def _interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C to the process group; after 60 s, SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    proc.stderr.close()

"""A large study's report read in parts by forked children (``sweep.report.parts``) stops
cleanly: a part that fails ends the report in its one line, a killed report leaves no process
behind, and the staging folder of a report killed before it could clear it goes with the next
report into the same folder. What the parts write is compared with the record path in
tests/sweep/test_report_pages.py."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest

from sweep.errors import SweepError
from sweep.queue import report_pages
from sweep.queue.storage import open_storage
from sweep.report import digest, parts, writer

N = 40


def _study(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    x = optuna.distributions.FloatDistribution(0, 1)
    for i in range(N):
        study.add_trial(optuna.trial.create_trial(params={"x": i / N}, distributions={"x": x},
                                                  value=float(i % 7)))  # fmt: skip
    return url


@pytest.fixture
def in_parts(monkeypatch):
    monkeypatch.setattr(digest, "LARGE", 10)
    monkeypatch.setattr(parts, "PART", 10)
    monkeypatch.setattr(parts, "_cores", lambda: 2)
    monkeypatch.setattr(parts, "_may_fork", lambda: True)  # earlier tests' idle threads


def test_a_part_that_fails_ends_the_report_in_its_line(tmp_path, in_parts, monkeypatch):
    url = _study(tmp_path)
    real = report_pages.pages

    def pages(*args, span, **kw):  # the second part, in its child, fails
        if span[0] is not None:
            raise SweepError("the database went away")
        yield from real(*args, span=span, **kw)

    monkeypatch.setattr(report_pages, "pages", pages)
    out = tmp_path / "out"
    before = set(multiprocessing.active_children())  # earlier tests' (loky's workers)
    with pytest.raises(SweepError, match=r"^the database went away$"):
        writer.write_report(open_storage(url, read_only=True), "s", out_dir=out)
    assert set(multiprocessing.active_children()) <= before
    assert not list(out.glob(".trials-*"))  # the staging folder went with the report


def test_a_part_that_dies_is_said_in_one_line(tmp_path, in_parts, monkeypatch):
    url = _study(tmp_path)
    real = report_pages.pages

    def pages(*args, span, **kw):
        if span[0] is not None:
            os._exit(3)  # as if killed: no result written
        yield from real(*args, span=span, **kw)

    monkeypatch.setattr(report_pages, "pages", pages)
    with pytest.raises(SweepError, match=r"^a process reading part of the study ended with "
                       r"exit code 3$"):  # fmt: skip
        writer.write_report(open_storage(url, read_only=True), "s", out_dir=tmp_path / "out")


def test_a_process_running_threads_reads_in_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(digest, "LARGE", 10)
    monkeypatch.setattr(parts, "PART", 10)
    monkeypatch.setattr(parts, "_cores", lambda: 2)
    url = _study(tmp_path)
    forked = []
    monkeypatch.setattr(parts, "_in_children", lambda *a: forked.append(a))
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)  # one of our own, whatever others are left
    other.start()
    try:
        writer.write_report(open_storage(url, read_only=True), "s", out_dir=tmp_path / "out")
    finally:
        stop.set()
        other.join()
    assert not forked
    assert len((tmp_path / "out" / "trials.csv").read_text().splitlines()) == N + 1


def test_a_stale_staging_folder_goes_with_the_next_report(tmp_path, in_parts):
    url = _study(tmp_path)
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    host = parts._HOST
    (out / f".trials-{host}-{dead}-abcd1234").mkdir(parents=True)  # a killed report's: gone
    (out / f".trials-{host}-{dead}-abcd1234" / "part-0.csv").write_text("x")
    kept = {
        f".trials-{host}-{os.getpid()}-live_123",  # a live process's
        f".trials-otherhost-{dead}-abcd1234",  # another host's: its ids mean nothing here
        f".trials-{host}-9999999999-abcd1234",  # past any pid: not a crash, kept
        ".trials-2024-backup",  # a user's, not named as a report names its own
        ".trials-notapid-x",
    }
    for name in kept:
        (out / name).mkdir()
    writer.write_report(open_storage(url, read_only=True), "s", out_dir=out)
    assert {p.name for p in out.glob(".trials-*")} == kept


_SLOW_REPORT = textwrap.dedent("""
    import sys, time
    from sweep.queue import report_pages
    from sweep.report import digest, parts
    from sweep.cli import main
    digest.LARGE, parts.PART = 10, 10
    parts._cores = lambda: 2
    real = report_pages.pages
    def pages(*args, **kw):
        for page in real(*args, **kw):
            time.sleep(60)  # each child holds its first page
            yield page
    report_pages.pages = pages
    sys.exit(main(["report", "s", "--storage", sys.argv[1], "--out", sys.argv[2]]))
""")


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in found]


def _gone(pid: int, within: float) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _started(tmp_path: Path, url: str) -> tuple[subprocess.Popen, list[int]]:
    """A report whose two children hold their first page, and the children's ids."""
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_REPORT, url, str(tmp_path / "out")],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    end = time.monotonic() + 60
    while len(children := _children(proc.pid)) < 2 and time.monotonic() < end:
        time.sleep(0.1)
    assert len(children) == 2, proc.stderr.read() if proc.poll() is not None else children
    return proc, children


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
def test_a_report_stopped_or_killed_leaves_no_process_behind(tmp_path, in_parts):
    url = _study(tmp_path)
    proc, children = _started(tmp_path, url)
    proc.send_signal(signal.SIGTERM)  # as a batch system's time limit
    assert proc.wait(timeout=10) == 143
    assert "Traceback" not in proc.stderr.read()
    assert all(_gone(c, 5) for c in children)
    assert not list((tmp_path / "out").glob(".trials-*"))

    proc, children = _started(tmp_path, url)
    proc.kill()  # SIGKILL, as the OOM killer: no cleanup in the parent
    proc.wait()
    assert all(_gone(c, 5) for c in children)  # each child sees its parent gone
    [left] = (tmp_path / "out").glob(".trials-*")
    writer.write_report(open_storage(url, read_only=True), "s", out_dir=tmp_path / "out")
    assert not left.exists()

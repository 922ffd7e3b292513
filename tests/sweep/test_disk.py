"""A full disk, a read-only file system, a lock held too long: each is one line naming it, a
non-zero exit, nothing stored damaged, and a rerun that resumes once the cause is gone. The
tests mount a small tmpfs, so they need root (CI is)."""

import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from sweep import runner
from sweep.study.spec import load_spec
from tests.sweep.helpers import grid_study, load, run_cli


@pytest.fixture
def small_disk():
    where = Path(tempfile.mkdtemp(prefix="mlp-sweep-disk-"))
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode != 0:
        message = f"cannot mount a small tmpfs ({mount.stderr.strip()}); run as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=True)  # pooled connections linger
        where.rmdir()


def _snapshot(url: str) -> list:
    return [(t.number, t.state, t.value, t.params, t.user_attrs) for t in load(url, "g").trials]


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_damages_nothing(small_disk, tmp_path, monkeypatch):
    # The database's disk fills; checkpoints (megabytes) go to another one, as they may.
    monkeypatch.setenv("SWEEP_ARTIFACTS", str(tmp_path / "artifacts"))
    url = f"sqlite:///{small_disk / 'sweep.db'}"
    runner.run(load_spec(grid_study(tmp_path)), storage=url, jobs=1)
    before = _snapshot(url)
    filler = small_disk / "filler"
    # take every remaining byte (unbuffered: a buffered file would fail again when it closes)
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    other = grid_study(tmp_path, name="h")
    out = run_cli("run", str(other), "--storage", url)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"sweep: error: storage {url}: database or disk is full")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    filler.unlink()
    assert _snapshot(url) == before
    out = run_cli("run", str(other), "--storage", url)  # with space again, it simply runs
    assert out.returncode == 0, out.stderr
    assert _snapshot(url) == before
    assert len(load(url, "h").trials) == 8


def test_a_read_only_file_system_is_one_line_and_damages_nothing(small_disk, tmp_path):
    url = f"sqlite:///{small_disk / 'sweep.db'}"
    runner.run(load_spec(grid_study(tmp_path)), storage=url, jobs=1)
    before = _snapshot(url)
    view = tmp_path / "read-only"  # the same files, through a read-only bind mount
    view.mkdir()
    subprocess.run(["mount", "--bind", str(small_disk), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        ro_url = f"sqlite:///{view / 'sweep.db'}"
        out = run_cli("run", str(grid_study(tmp_path, name="h")), "--storage", ro_url)
    finally:
        subprocess.run(["umount", "--lazy", str(view)], check=True)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"sweep: error: storage {ro_url}: ")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert _snapshot(url) == before


@pytest.mark.slow
def test_a_write_lock_held_too_long_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    runner.run(load_spec(grid_study(tmp_path)), storage=url, jobs=1)
    before = _snapshot(url)
    holder = sqlite3.connect(tmp_path / "sweep.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # an SQL shell in the middle of a write, say
    try:
        out = run_cli("run", str(grid_study(tmp_path, name="h")), "--storage", url,
                      env={"SWEEP_BUSY_TIMEOUT": "2"})  # fmt: skip
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert out.returncode == 1, out.stderr
    assert out.stderr == (
        f"sweep: error: storage {url}: database is locked (another process held a write "
        "transaction for more than 2 s; an open SQL shell or a stuck tool?)\n"
    )
    assert _snapshot(url) == before

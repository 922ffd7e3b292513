"""Shared helpers for the sweep tests: study files, the real CLI, reading results back."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

SWEEP = Path(sys.executable).with_name("sweep")
#: Heartbeats every second and a grace period of three, for tests that kill workers.
FAST_STALE = {"SWEEP_HEARTBEAT_INTERVAL": "1", "SWEEP_GRACE_PERIOD": "3"}
#: Every epoch checkpointed, whatever it costs.
EVERY_EPOCH = {"SWEEP_CHECKPOINT_OVERHEAD": "inf"}
#: The test-only sitecustomize that stalls a worker after an epoch (tests/sweep/stall).
STALL = Path(__file__).with_name("stall")


def stalled_env(tmp_path: Path, epoch: int, stall: bool = True) -> dict[str, str]:
    """Fast heartbeats and every epoch checkpointed; with ``stall``, the worker stalls after
    training ``epoch``, before its checkpoint, and writes its pid to tmp_path/stalled.pid."""
    env = {**FAST_STALE, **EVERY_EPOCH}
    if stall:
        env |= {
            "PYTHONPATH": os.pathsep.join([str(STALL), os.environ.get("PYTHONPATH", "")]),
            "SWEEP_TEST_STALL_EPOCH": str(epoch),
            "SWEEP_TEST_STALL_FILE": str(tmp_path / "stalled.pid"),
        }
    return env


#: What a sweep worker tags its claims with (sweep.queue.attrs.RUN_TAG, WORKER_TAG).
WORKER_TAGS = {"run": "r", "worker": "host:1"}

GRID = """
[study]
name = "{name}"
sampler = "grid"
seed = 0
{extra_study}
[budget]
min_params = 50_000
max_params = 200_000

[data]
train_size = {train_size}

[train]
epochs = {epochs}
batch_size = 64
{extra_train}
[space]
hidden_1 = [64, 128, 16]
hidden_2 = [32, 64]
learning_rate = [0.1, 0.05]
"""


def grid_study(
    tmp_path: Path,
    name: str = "g",
    *,
    train_size: int = 2000,
    epochs: int = 2,
    extra_study: str = "",
    extra_train: str = "",
) -> Path:
    """A grid of 12 points of which 8 are in budget (hidden_1 = 16 is too small)."""
    path = tmp_path / f"{name}.toml"
    path.write_text(
        GRID.format(
            name=name,
            train_size=train_size,
            epochs=epochs,
            extra_study=extra_study,
            extra_train=extra_train,
        )
    )
    return path


def sweep_cmd(*args: str) -> list[str]:
    return [str(SWEEP), *args] if SWEEP.exists() else [sys.executable, "-m", "sweep.cli", *args]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, preexec_fn=None):
    return subprocess.run(
        sweep_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,
    )


#: Warnings the interpreter does not show unless asked (Python's default warning filters).
_HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def main_in_process(*args: str, env: dict[str, str] | None = None):
    """``sweep *args`` run by ``sweep.cli.main`` in this process: its exit code and what it wrote,
    as ``run_cli`` returns them, in milliseconds instead of the second a new process spends
    importing optuna before it fails.

    Everything the process would write to stderr is gathered there: its prints, its log records
    (sweep's from WARNING up, as ``main``'s logging set-up has them; optuna's at optuna's own
    level, through optuna's handler) and every warning the interpreter would show. ``main``'s
    SIGTERM and SIGUSR2 handlers and optuna's verbosity are put back. For inputs whose check,
    if it were gone, could not hang or take the machine's memory: those run in a bounded process
    (``run_cli``), as does one command per way out of ``main`` (tests/sweep/test_cli.py)."""
    import contextlib
    import io
    import logging
    import unittest.mock
    import warnings

    from sweep.cli import main

    out, err = io.StringIO(), io.StringIO()
    ours = logging.StreamHandler(err)
    ours.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    ours.setLevel(logging.WARNING)
    theirs = logging.StreamHandler(err)  # optuna's logger does not propagate to the root
    handlers = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGUSR2)}
    verbosity = optuna.logging.get_verbosity()
    logging.getLogger().addHandler(ours)
    logging.getLogger("optuna").addHandler(theirs)
    try:
        with (contextlib.redirect_stdout(out), contextlib.redirect_stderr(err),
              warnings.catch_warnings(record=True) as shown,
              unittest.mock.patch.dict(os.environ, env or {})):  # fmt: skip
            warnings.simplefilter("default")
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's usage errors, --help and --version
                code = 0 if e.code is None else e.code
    finally:
        logging.getLogger().removeHandler(ours)
        logging.getLogger("optuna").removeHandler(theirs)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        optuna.logging.set_verbosity(verbosity)
    for w in shown:
        if not issubclass(w.category, _HIDDEN_WARNINGS):
            err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
    return subprocess.CompletedProcess(["sweep", *args], code, out.getvalue(), err.getvalue())


def _default_sigint() -> None:
    # A test run started in the background (nohup, CI) inherits SIGINT ignored, and Python then
    # never turns SIGINT into KeyboardInterrupt; a terminal's child has the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`sweep …` in its own process group, so a test can signal it like a terminal would."""
    return subprocess.Popen(
        sweep_cmd(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        preexec_fn=_default_sigint,
    )


def load(url: str, name: str) -> optuna.Study:
    from sweep.queue.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url))


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def states(study: optuna.Study) -> collections.Counter:
    return collections.Counter(t.state for t in study.get_trials(deepcopy=False))


def count_state(url: str, name: str, state: TrialState) -> int:
    try:
        return states(load(url, name))[state]
    except KeyError:  # the study does not exist yet
        return 0


def completed_points(study: optuna.Study) -> collections.Counter:
    return collections.Counter(
        json.dumps(t.params, sort_keys=True)
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE
    )


def children(pid: int) -> list[int]:
    """Process ids whose parent is pid (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    """Whether process pid exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    os.killpg(proc.pid, sig)


def run_sql(url: str, *statements: str) -> None:
    """Run SQL statements on the database at ``url`` in one transaction, as another client
    (or a user at the SQL prompt) would."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        for s in statements:
            conn.execute(sqlalchemy.text(s))
    engine.dispose()

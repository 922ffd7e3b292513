"""The framework's exceptions: one tree, turned into a one-line message by the CLI only."""

import contextlib
import signal
import threading
from collections.abc import Iterator

from mlp.errors import DataError


class SweepError(Exception):
    """Base of every error a user can cause and fix (the CLI prints it in one line)."""


class SpecError(SweepError):
    """A study file or command-line value is malformed or out of range."""


class StorageError(SweepError):
    """The study database cannot be reached, read or written."""


class WorkerError(SweepError):
    """A worker cannot run trials where it is (out of memory, a library missing); its trial
    went back to the queue."""


class StudyGone(StorageError):
    """The study was deleted (another client's ``optuna delete-study``) under a launcher or a
    worker, which then stops: nothing more can be stored in it."""

    def __init__(self, study: str) -> None:
        super().__init__(
            f"{study} was deleted while sweep worked on it (another client's delete-study?); "
            "nothing more is stored in it; run again to start it anew"
        )


class ForeignDistribution(StorageError, ValueError):
    """A parameter suggested from a distribution of another kind than the study has stored
    for it (optuna's ValueError). Not the trial's own failure: another client may have
    stored the parameter first, and every later trial would fail the same way, so the worker
    gives the trial back and stops, rather than failing each point for good."""


class UnfinishedError(SweepError):
    """A run ended with points of its grid neither trained nor failed for good (another client
    took their trials from the queue while nothing was left to put them back)."""


#: The signals that end sweep as Ctrl-C does: SIGTERM (``kill``, ``scancel``, a batch job's time
#: limit or preemption, after which SLURM waits ``KillWait`` seconds, then SIGKILLs) and SIGUSR2,
#: the warning submitit asks SLURM for (``--signal=USR2@90``, 90 s before a time limit; #29). On
#: either a worker gives its trial back at once with its last epoch's checkpoint, so the next
#: worker goes on from there, rather than racing an epoch against the SIGKILL.
STOP_SIGNALS = ("SIGTERM", "SIGUSR2")


class Terminated(KeyboardInterrupt):
    """One of ``STOP_SIGNALS`` (a batch scheduler ending its job, ``kill``), taken through the
    same clean-up as Ctrl-C: running trials go back to the queue. The CLI exits 128 + its
    number for it (143 for SIGTERM, 140 for SIGUSR2), 130 for Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum


def stop_signals() -> list[int]:
    """The numbers of ``STOP_SIGNALS`` this platform has (Windows has no SIGUSR2)."""
    found = (getattr(signal, name, None) for name in STOP_SIGNALS)
    return [signum for signum in found if signum is not None]


#: The stop signals that came while they were held (``hold_stop_signals``); None: not held.
_held: list[int] | None = None


def _raise_terminated(signum: int, frame: object) -> None:
    if _held is not None:  # a claim or a release under way: raised when it is done
        _held.append(signum)
        return
    raise Terminated(signum)


def on_stop_signals_raise_terminated() -> None:
    """Make each of ``STOP_SIGNALS`` raise ``Terminated`` in the main thread, where nobody
    handles it yet (a worker process run inside ``sweep`` keeps the command's own handler). The
    one handler of the CLI and of every kind of worker process."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in stop_signals():
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _raise_terminated)


def hold_stop_signals() -> bool:
    """Hold ``Terminated`` back until ``let_stop_signals_through``: a stop signal that comes
    meanwhile is raised then. A worker holds it over a claim, until it is inside the ``try``
    that releases the trial, and over a release, so that no signal leaves a trial claimed and
    not given back (#29). Held in Python's handler, not by ``pthread_sigmask``: a signal
    masked in the main thread is taken by another thread (numpy's, the heartbeat's) and its
    Python handler still runs in the main thread at once. Only in the main thread, where
    handlers run (a worker in a notebook's thread holds nothing); True if it holds."""
    global _held
    if threading.current_thread() is not threading.main_thread() or _held is not None:
        return False
    _held = []
    return True


def let_stop_signals_through(held: bool) -> None:
    """End what ``hold_stop_signals`` began (if it returned True): raise ``Terminated`` for the
    first stop signal that came while held."""
    global _held
    if not held:
        return
    came, _held = _held, None  # a signal after this line raises at once
    if came:
        raise Terminated(came[0])


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """``hold_stop_signals`` over the block: a stop signal that came is raised at its end."""
    held = hold_stop_signals()
    try:
        yield
    finally:
        let_stop_signals_through(held)


# mlp cannot import sweep, so its DataError is re-exported here as part of the same family.
__all__ = [
    "STOP_SIGNALS", "DataError", "ForeignDistribution", "SpecError", "StorageError", "StudyGone",
    "SweepError", "Terminated", "UnfinishedError", "WorkerError",
    "hold_stop_signals", "let_stop_signals_through", "on_stop_signals_raise_terminated",
    "stop_signals", "stop_signals_held",
]  # fmt: skip

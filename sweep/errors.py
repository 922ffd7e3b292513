"""The framework's exceptions: one tree, turned into a one-line message by the CLI only."""

from mlp.data import DataError


class SweepError(Exception):
    """Base of every error a user can cause and fix (the CLI prints it in one line)."""


class SpecError(SweepError):
    """A study file or command-line value is malformed or out of range."""


class StorageError(SweepError):
    """The study database cannot be reached, read or written."""


class WorkerError(SweepError):
    """A worker cannot run trials where it is (out of memory, a library missing); its trial
    went back to the queue."""


# mlp cannot import sweep, so its DataError is re-exported here as part of the same family.
__all__ = ["DataError", "SpecError", "StorageError", "SweepError", "WorkerError"]

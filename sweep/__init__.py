"""mlp-sweep: optuna studies of the numpy MLP, run in parallel worker processes."""

from sweep.errors import DataError, SpecError, StorageError, SweepError, WorkerError

__all__ = ["DataError", "SpecError", "StorageError", "SweepError", "WorkerError"]

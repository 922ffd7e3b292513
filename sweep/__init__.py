"""mlp-sweep: optuna studies of the numpy MLP, run in parallel worker processes.

The public surface is ``sweep.api``'s functions (``load_spec``, ``run``, ``join``, ``status``,
``report_study``, ``report_all``, ``evaluate``, ``export``, ``load_study``, ``objective``) and
the errors; see ``sweep.api`` for an example. They are loaded on first use, so that
``import sweep`` (and ``sweep --help``) stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweep.errors import DataError, SpecError, StorageError, SweepError, WorkerError

if TYPE_CHECKING:
    from sweep.api import (
        evaluate,
        export,
        join,
        load_spec,
        load_study,
        objective,
        report_all,
        report_study,
        run,
        status,
    )

__all__ = [
    "DataError", "SpecError", "StorageError", "SweepError", "WorkerError",
    "evaluate", "export", "join", "load_spec", "load_study", "objective", "report_all",
    "report_study", "run", "status",
]  # fmt: skip
_API = frozenset(__all__[5:])


def __getattr__(name: str) -> Any:
    if name in _API:
        from sweep import api

        return getattr(api, name)
    raise AttributeError(f"module 'sweep' has no attribute {name!r}")

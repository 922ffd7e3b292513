"""A study's front as its database holds it: the values of its COMPLETE trials, read in one
statement (``sweep.queue.status_reads.complete_values``), and which of them no other trial
dominates (``sweep.study.objectives.non_dominated``), the trials optuna's ``study.best_trials``
returns, without loading every trial's parameters and attributes (the progress line of
``sweep run`` asks every second, and every trial's end of a study of several objectives asks
which models to keep, ``sweep.trial.cleanup``). Trials of equal values are all on it, as on
``best_trials``; a COMPLETE trial with fewer or more values than the study has objectives, or a
value optuna never stores (only another client's SQL writes one; ``best_trials`` would raise),
is left out.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import sqlalchemy
from optuna.study import StudyDirection

from sweep.queue.status_reads import complete_values
from sweep.study.objectives import non_dominated


@dataclasses.dataclass(frozen=True)
class Front:
    """The study's COMPLETE trials (by trial id) and those of them on its front."""

    complete: dict[int, int]  # trial id -> number, every COMPLETE trial with all its values
    front: dict[int, int]  # trial id -> number, the non-dominated ones


def read_front(
    engine: sqlalchemy.engine.Engine, study_id: int, directions: list[StudyDirection]
) -> Front:
    """The study's ``Front``, in one read-only statement. 16-19 ms at 10³ trials of two
    objectives on SQLite, 80-90 ms at 10⁴, 0.7 s at 10⁵ (a loaded 2-core machine), where
    ``best_trials`` took 0.1, 1.6 and 17 s (it loads every trial whole)."""
    valued = complete_values(engine, study_id, len(directions))
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    loss = np.array([v.values for v in valued], dtype=float).reshape(-1, len(directions)) * signs
    on = non_dominated(loss)
    front = {v.trial_id: v.number for v, kept in zip(valued, on, strict=True) if kept}
    return Front({v.trial_id: v.number for v in valued}, front)

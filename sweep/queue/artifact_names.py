"""The artifacts a study's trials and the study itself name: optuna's ``artifacts:<id>`` system
attributes, read and deleted.

An artifact is named on its trial (or study) before its bytes are written
(``sweep.trial.artifacts.upload``), so these names are how a trial's end finds what to delete
(``sweep.trial.cleanup``). The ids come back as stored: anyone may have written them, and which
of them are sweep's to delete is the caller's question (``sweep.trial.artifacts.is_sweep_id``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy
from optuna.trial import TrialState

from sweep.queue import tables as tb
from sweep.queue.attrs import ARTIFACT_PREFIX, FAIL_REASON, RETRY_HISTORY, decoded
from sweep.queue.transactions import reading, writing

#: At most this many ids or numbers in one statement's IN list: a ``retry_history`` is anyone's
#: list, and a database binds a bounded number of parameters.
MOST_IDS = 1000


def _is_name(key: Any) -> Any:
    return key.startswith(ARTIFACT_PREFIX, autoescape=True)


def named(
    engine: sqlalchemy.engine.Engine, study_id: int, trial_id: int | None, numbers: list[int]
) -> list[tuple[int, str]]:
    """(trial id, artifact id) of every artifact named on trial ``trial_id`` (if not None: the
    caller knows it is the study's) and on the study's trials numbered ``numbers`` (the first
    ``MOST_IDS`` of them)."""
    attrs, trials = tb.system_attrs, tb.trials
    owners = attrs.c.trial_id == trial_id if trial_id is not None else sqlalchemy.false()
    if numbers:
        dead = sqlalchemy.select(trials.c.trial_id).where(
            trials.c.study_id == study_id, trials.c.number.in_(numbers[:MOST_IDS])
        )
        owners = sqlalchemy.or_(owners, attrs.c.trial_id.in_(dead))
    query = sqlalchemy.select(attrs.c.trial_id, attrs.c.key).where(owners, _is_name(attrs.c.key))
    with reading(engine) as conn:
        rows = conn.execute(query).all()
    return [(owner, key[len(ARTIFACT_PREFIX) :]) for owner, key in rows]


def ended_naming(engine: sqlalchemy.engine.Engine, study_id: int) -> list[tuple[int, str]]:
    """(trial id, artifact id) of every artifact named on the study's trials that ended for good:
    COMPLETE, PRUNED, or FAIL with a ``fail_reason`` (its own result, or its workers died
    ``max_retries`` times). A FAIL without one was handed on: its successor owns what it names.

    One pass over the trials' system attributes for the few that name an artifact, then the
    queue index: 60–160 ms on a loaded machine at 10⁵ trials on SQLite, where a probe of each
    finished trial for a name took 0.5–1.1 s."""
    trials, system, user = tb.trials, tb.system_attrs, tb.user_attrs
    naming = sqlalchemy.select(system.c.trial_id).where(_is_name(system.c.key))
    reason = sqlalchemy.exists().where(
        user.c.trial_id == trials.c.trial_id, user.c.key == FAIL_REASON
    )
    query = sqlalchemy.select(trials.c.trial_id).where(
        trials.c.study_id == study_id,
        trials.c.state.in_([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]),
        sqlalchemy.or_(trials.c.state != TrialState.FAIL, reason),
        trials.c.trial_id.in_(naming),
    )
    rows = []
    with reading(engine) as conn:
        ended = list(conn.execute(query).scalars())
        for start in range(0, len(ended), MOST_IDS):
            owners = system.c.trial_id.in_(ended[start : start + MOST_IDS])
            names = sqlalchemy.select(system.c.trial_id, system.c.key)
            rows += conn.execute(names.where(owners, _is_name(system.c.key))).all()
    return [(owner, key[len(ARTIFACT_PREFIX) :]) for owner, key in rows]


def retry_history(
    engine: sqlalchemy.engine.Engine, study_id: int, trial_id: int
) -> tuple[bool, Any]:
    """(whether ``trial_id`` is a trial of the study, its ``retry_history`` decoded: anything,
    None if unset or not JSON)."""
    trials, attrs = tb.trials, tb.system_attrs
    query = (
        sqlalchemy.select(trials.c.trial_id, attrs.c.value_json)
        .outerjoin(attrs, sqlalchemy.and_(
            attrs.c.trial_id == trials.c.trial_id, attrs.c.key == RETRY_HISTORY))
        .where(trials.c.trial_id == trial_id, trials.c.study_id == study_id)
    )  # fmt: skip
    with reading(engine) as conn:
        found = conn.execute(query).first()
    return (False, None) if found is None else (True, decoded(found[1]))


def forget(engine: sqlalchemy.engine.Engine, names: list[tuple[int, str]]) -> None:
    """Delete the names ``(trial id, artifact id)`` (of artifacts that are gone)."""
    if not names:
        return
    attrs = tb.system_attrs
    with writing(engine) as conn:
        for owner, artifact in names:
            key = ARTIFACT_PREFIX + artifact
            conn.execute(attrs.delete().where(attrs.c.trial_id == owner, attrs.c.key == key))


def forget_on_study(engine: sqlalchemy.engine.Engine, study_id: int, artifacts: list[str]) -> None:
    """Delete the names of ``artifacts`` (that are gone) on the study itself."""
    if not artifacts:
        return
    attrs = tb.study_system_attrs
    keys = [ARTIFACT_PREFIX + a for a in artifacts]
    with writing(engine) as conn:
        conn.execute(attrs.delete().where(attrs.c.study_id == study_id, attrs.c.key.in_(keys)))

"""Large studies for the scale benchmark and the tests that pin query plans: a few real trials,
run by sweep itself, then copied row by row in SQL until the study holds ``n`` trials.

The copies are what sweep writes for a real trial (parameters, values, learning curves, user
and system attributes), on any backend, in seconds for 10⁵ trials. Copied values are shifted
a little so that orderings and figures are not degenerate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import sqlalchemy
from optuna.trial import TrialState

from sweep.queue import tables as tb

#: A random study of tiny trials; every real trial takes well under a second.
STUDY = """
[study]
name = "{name}"
sampler = "{sampler}"
trials = {trials}
seed = 0

[budget]
min_params = 20_000
max_params = 60_000

[data]
train_size = 500

[train]
epochs = 3
batch_size = 64
shuffle = true
full_train_eval = false

[space]
hidden_1 = {{ low = 24, high = 64 }}
hidden_2 = {{ low = 16, high = 64 }}
learning_rate = {{ low = 0.01, high = 0.5, log = true }}
"""

#: The per-trial tables, with the columns a copy carries over (their own ids are generated).
_CHILDREN = (tb.params, tb.values, tb.steps, tb.user_attrs, tb.system_attrs)


def study_file(
    folder: Path, name: str = "big", *, sampler: str = "random", trials: int = 8
) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(STUDY.format(name=name, sampler=sampler, trials=trials))
    return path


def _copyable(table: sqlalchemy.Table) -> list[str]:
    return [c.name for c in table.columns if not (c.primary_key and c.autoincrement is not False)]


def build(url: str, folder: Path, n: int, *, name: str = "big", sampler: str = "random",
          seed_trials: int = 8) -> int:  # fmt: skip
    """Make study ``name`` in ``url`` with ``n`` finished trials (``seed_trials`` run for real,
    the rest copied) and a trial cap of ``n``, so that a launcher finds nothing to enqueue.
    Returns the study id."""
    from sweep import runner
    from sweep.queue import attrs
    from sweep.queue.storage import open_storage, rdb_of
    from sweep.study.spec import load_spec

    spec = load_spec(study_file(folder, name, sampler=sampler, trials=seed_trials))
    study = runner.run(spec, storage=url, jobs=1)
    rdb, sid = rdb_of(study._storage), study._study_id
    trials = tb.trials
    with rdb.engine.begin() as conn:
        while (count := conn.execute(
                sqlalchemy.select(sqlalchemy.func.count()).select_from(trials)
                .where(trials.c.study_id == sid)).scalar_one()) < n:  # fmt: skip
            _double(conn, sid, count, n - count)
        if rdb.engine.name == "postgresql":  # copies carry explicit ids: move the sequences on
            for table in (trials, *_CHILDREN):
                pk = next(c.name for c in table.primary_key.columns)
                conn.execute(sqlalchemy.text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{pk}'), "
                    f"(SELECT max({pk}) FROM {table.name}))"))  # fmt: skip
            # The planner's statistics, which the server's autovacuum gathers as a real study
            # grows: without them a TPE ask's best-trials lookup took 934 ms at 10^5, 37 ms with.
            conn.execute(sqlalchemy.text("ANALYZE"))
    stored = dataclasses.replace(spec, trials=n)
    storage = open_storage(url)
    storage.set_study_user_attr(sid, attrs.SPEC, stored.to_dict())
    storage.engine.dispose()
    return sid


def _double(conn, sid: int, count: int, wanted: int) -> None:
    """Copy up to ``wanted`` of the study's finished trials, children and all."""
    trials = tb.trials
    top = conn.execute(sqlalchemy.select(sqlalchemy.func.max(trials.c.trial_id))).scalar_one()
    source = (
        sqlalchemy.select(trials.c.trial_id)
        .where(trials.c.study_id == sid, trials.c.state == TrialState.COMPLETE)
        .order_by(trials.c.trial_id)
        .limit(wanted)
        .scalar_subquery()
    )
    ids = trials.c.trial_id
    low, high = conn.execute(
        sqlalchemy.select(sqlalchemy.func.min(ids), sqlalchemy.func.max(ids)).where(ids.in_(source))
    ).one()
    offset = top - low + 1
    picked = sqlalchemy.and_(
        ids >= low, ids <= high, trials.c.study_id == sid, trials.c.state == TrialState.COMPLETE
    )
    # Numbers continue the study's; the copies keep their order.
    rank = sqlalchemy.func.row_number().over(order_by=trials.c.trial_id) - 1 + count
    numbered = (
        sqlalchemy.select(trials.c.trial_id, rank.label("number")).where(picked).limit(wanted)
    )
    numbered = numbered.subquery()
    conn.execute(
        trials.insert().from_select(
            ["trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"],
            sqlalchemy.select(
                trials.c.trial_id + offset, numbered.c.number, trials.c.study_id, trials.c.state,
                trials.c.datetime_start, trials.c.datetime_complete,
            ).select_from(trials.join(numbered, numbered.c.trial_id == trials.c.trial_id)),
        )
    )  # fmt: skip
    copied = sqlalchemy.select(numbered.c.trial_id)
    for table in _CHILDREN:
        columns = _copyable(table)
        chosen = []
        for c in columns:
            col = table.c[c]
            if c == "trial_id":
                col = col + offset
            elif table is tb.values and c == "value":  # shifted, so the copies differ
                col = col - (table.c.trial_id + offset) % 997 * 0.001
            chosen.append(col)
        conn.execute(
            table.insert().from_select(
                columns, sqlalchemy.select(*chosen).where(table.c.trial_id.in_(copied))
            )
        )

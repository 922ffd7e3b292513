"""A read-only storage that shows optuna-dashboard a bounded view of each large study.

optuna-dashboard 0.21 lists a study's trials through ``storage.get_all_trials`` (its
``GET /api/studies/<id>``, again every 10 s while the page is open) and computes its search
spaces, best trials, importances and plots from that list: at 10⁵ trials one call took 80–96 s
and 4.6 GB, at 10⁶ it ran out of memory (issue #27). :class:`BoundedStorage` answers those
calls for a study of more than ``threshold`` trials with its bounded view: the ``best`` best
COMPLETE trials, the ``newest`` newest COMPLETE or PRUNED ones and every RUNNING one, chosen and
loaded as the bounded TPE sampler chooses and loads them (:mod:`sweep.queue.view`), plus the
``newest`` newest FAIL and WAITING ones (a dashboard is where failures are looked at), with
their user attributes and learning curves. A smaller study is
answered by the wrapped storage, exactly as before. Counts (:meth:`get_n_trials`) and the best
trial stay true: each is one bounded query. The whole study stays in ``sweep report`` and SQL.

The page says so: the study's note, as the dashboard reads it (``get_all_studies``), begins with
:func:`bounded_text`. Nothing is written: every write method raises :class:`StorageError`, as
the read-only dashboard refuses every write.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Container, Sequence
from typing import Any

import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from sweep.errors import StorageError
from sweep.queue import tables as tb
from sweep.queue.transactions import reading
from sweep.queue.view import load_trials, view_ids
from sweep.text import printable

# A study of more trials than this is shown bounded. At 10⁴ trials the whole list costs the
# dashboard ~10 s and ~0.5 GB a call (10⁵: 80–96 s, 4.6 GB; issue #27); below, every trial.
THRESHOLD = 10_000
BEST = 1000  # best COMPLETE trials shown of a large study
NEWEST = 1000  # newest finished trials shown of a large study (of each kind, see the docstring)
# Where optuna-dashboard 0.21 keeps a study's note (optuna_dashboard/_note.py: note_ver_key,
# note_str_key_prefix): read from the study's system attributes, in chunks numbered from 0.
_NOTE_VERSION = "dashboard:note_ver"
_NOTE_CHUNK = re.compile(r"dashboard:note_str:(\d+)")


@dataclasses.dataclass(frozen=True)
class Bounded:
    """How a large study is shown: its ``best`` best, ``newest`` newest and running trials of
    ``n_trials`` (the true count)."""

    name: str
    n_trials: int
    best: int
    newest: int


def bounded_text(b: Bounded) -> str:
    """The one line that says a study is shown bounded (start-up line and the study's note)."""
    name = printable(b.name, 200)
    return (
        f"study '{name}' shows its best {b.best:,}, newest {b.newest:,} (and newest {b.newest:,} "
        f"failed and waiting) and running trials of {b.n_trials:,}; the whole study is in "
        "`sweep report` and SQL"
    )


class BoundedStorage(BaseStorage):
    """``storage``, read only, with each study of more than ``threshold`` trials bounded to its
    ``best`` best, ``newest`` newest and running trials (see the module docstring)."""

    def __init__(
        self,
        storage: RDBStorage,
        *,
        threshold: int | None = None,
        best: int | None = None,
        newest: int | None = None,
    ) -> None:
        self._storage = storage
        self._threshold = THRESHOLD if threshold is None else threshold  # read now: tests set it
        self._best = BEST if best is None else best
        self._newest = NEWEST if newest is None else newest
        self._shown: dict[int, Bounded | None] = {}  # as each study was last listed

    def shown(self, study_id: int) -> Bounded | None:
        """How the study was shown when its trials were last listed: None if whole (or not
        listed yet)."""
        return self._shown.get(study_id)

    def bounded(self) -> list[Bounded]:
        """The studies shown bounded, by id, in one query of their trial counts."""
        counts = _counts(self._storage.engine)
        return [
            Bounded(s.study_name, counts[s._study_id], self._best, self._newest)
            for s in self._storage.get_all_studies()
            if counts.get(s._study_id, 0) > self._threshold
        ]

    # The calls optuna-dashboard lists and counts trials with.

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        """Every trial of a small study; the bounded view of a large one, by number."""
        view = self._view(study_id)
        if view is None:
            return self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        shown = (t for t in view if states is None or t.state in states)
        return sorted(shown, key=lambda t: t.number)

    def get_n_trials(
        self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None
    ) -> int:
        """The true count, by one query (optuna's default would load every trial)."""
        states = (state,) if isinstance(state, TrialState) else state
        where = [tb.trials.c.study_id == study_id]
        if states is not None:
            where.append(tb.trials.c.state.in_(states))
        with reading(self._storage.engine) as conn:
            return conn.execute(sqlalchemy.select(sqlalchemy.func.count()).where(*where)).scalar()

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._storage.get_best_trial(study_id)  # one query, whatever the study's size

    def get_all_studies(self) -> list[FrozenStudy]:
        """The studies, each large one's note beginning with :func:`bounded_text`."""
        studies = self._storage.get_all_studies()
        shown = {b.name: b for b in self.bounded()}
        return [_noted(s, shown[s.study_name]) if s.study_name in shown else s for s in studies]

    def _view(self, study_id: int) -> list[FrozenTrial] | None:
        """A large study's bounded view, in one read-only transaction; None for a small study.
        Loaded by sweep's reader of a few trials (optuna's ORM took 2–3 s for 2,000)."""
        t = tb.trials
        with reading(self._storage.engine) as conn:
            count = sqlalchemy.select(sqlalchemy.func.count()).where(t.c.study_id == study_id)
            n_trials = conn.execute(count).scalar()
            if n_trials <= self._threshold:
                self._shown[study_id] = None
                return None
            # none stored (SQL may delete them): minimised, as optuna shows such a study
            maximize = self.get_study_directions(study_id)[:1] == [StudyDirection.MAXIMIZE]
            finished, running = view_ids(conn, study_id, best=self._best, recent=self._newest,
                                         maximize=maximize)  # fmt: skip
            ids = finished | running
            for state in (TrialState.FAIL, TrialState.WAITING):  # QUEUE_INDEX serves both
                newest = (
                    sqlalchemy.select(t.c.trial_id)
                    .where(t.c.study_id == study_id, t.c.state == state)
                    .order_by(t.c.trial_id.desc())
                    .limit(self._newest)
                )
                ids.update(conn.execute(newest).scalars())
            view = list(load_trials(conn, ids, whole=True).values())
        name = self.get_study_name_from_id(study_id)
        self._shown[study_id] = Bounded(name, n_trials, self._best, self._newest)
        return view

    # Reads passed through.

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._storage.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._storage.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._storage.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._storage.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._storage.get_study_system_attrs(study_id)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._storage.get_trial(trial_id)

    def remove_session(self) -> None:
        self._storage.remove_session()

    # Writes refused.

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        raise _refused()

    def delete_study(self, study_id: int) -> None:
        raise _refused()

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        raise _refused()

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        raise _refused()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        raise _refused()

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: Any) -> None:  # fmt: skip
        raise _refused()

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        raise _refused()

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        raise _refused()

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        raise _refused()

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        raise _refused()


def _refused() -> StorageError:
    return StorageError("the dashboard is read-only (it was started without allowing writes)")


def _counts(engine: sqlalchemy.engine.Engine) -> dict[int, int]:
    """Trials per study id, in one query."""
    t = tb.trials
    query = sqlalchemy.select(t.c.study_id, sqlalchemy.func.count()).group_by(t.c.study_id)
    with reading(engine) as conn:
        return dict(conn.execute(query).all())


def _noted(study: FrozenStudy, b: Bounded) -> FrozenStudy:
    """``study`` with its note (in memory only) beginning with :func:`bounded_text`."""
    attrs = dict(study.system_attrs)
    chunks = sorted((int(m[1]), k) for k in attrs if (m := _NOTE_CHUNK.fullmatch(k)))
    old = "".join(str(attrs.pop(k)) for _, k in chunks)
    attrs["dashboard:note_str:0"] = f"**{bounded_text(b)}.**" + (f"\n\n{old}" if old else "")
    attrs.setdefault(_NOTE_VERSION, 0)
    return FrozenStudy(
        study_name=study.study_name, direction=None, directions=study.directions,
        user_attrs=study.user_attrs, system_attrs=attrs, study_id=study._study_id,
    )  # fmt: skip

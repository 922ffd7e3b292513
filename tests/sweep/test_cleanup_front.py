"""The models of a front kept, case by case, without worker processes: a study of several
objectives keeps the final weights of every trial on its front (``study.best_trials``) and
deletes those of trials another dominates, whatever the order in which trials are told and
ended, and after an end a kill cut short. The oracle is optuna's own ``best_trials``.
"""

import logging
import threading

import optuna
from hypothesis import given, settings
from hypothesis import strategies as st

from sweep.queue.attrs import CHECKPOINT, FRONT_MODELS
from sweep.queue.front import read_front
from sweep.queue.storage import open_storage, rdb_of
from sweep.trial import cleanup
from sweep.trial.artifacts import open_store, upload
from sweep.trial.cleanup import clear_ended, trial_ended


def _study(tmp_path, directions=("maximize", "minimize"), *, url=None):
    """A study in ``url`` (default: SQLite in ``tmp_path``) and a folder store in ``tmp_path``."""
    storage = open_storage(url or f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="f", storage=storage, directions=list(directions))
    return study, open_store(str(tmp_path / "artifacts"))


def _told(study, store, tmp_path, values, *, end=True):
    """A COMPLETE trial of ``values`` as a worker leaves it at ``study.tell``: its final weights
    (epoch 2 of 2) named as its checkpoint and an earlier checkpoint still named beside them;
    then its end, unless ``end`` is False (its worker killed between the two). (number, the
    final weights' artifact id)."""
    trial, final = _trained(study, store, tmp_path, values)
    study.tell(trial, values)
    if end:
        trial_ended(store, study, study._storage.get_trial(trial._trial_id))
    return trial.number, final


def _trained(study, store, tmp_path, values):
    """A RUNNING trial that trained for ``values``, not yet told; (it, its final weights)."""
    trial = study.ask()
    ids = []
    for epoch in (1, 2):
        path = tmp_path / f"t{trial.number}-{epoch}.npz"
        path.write_bytes(f"trial {trial.number}, epoch {epoch}".encode())
        ids.append(upload(store, study._storage, path, trial_id=trial._trial_id))
    study._storage.set_trial_system_attr(trial._trial_id, CHECKPOINT,
                                         {"artifact_id": ids[-1], "epoch": 2})  # fmt: skip
    trial.set_user_attr("valid_accuracy", [values[0] - 1, values[0]])  # its two epochs
    return trial, ids[-1]


def _files(tmp_path) -> set[str]:
    return {p.name for p in (tmp_path / "artifacts").iterdir()}


def _kept(study) -> dict[int, str]:
    """trial number → artifact id, as the study's ``front_models`` names them."""
    stored = study._storage.get_study_system_attrs(study._study_id).get(FRONT_MODELS, [])
    return {m["trial"]: m["artifact_id"] for m in stored}


def _front(study) -> set[int]:
    return {t.number for t in study.best_trials}


def _holds_exactly_the_front(study, tmp_path, finals: dict[int, str]) -> None:
    front = _front(study)
    assert set(_kept(study)) == front
    assert _files(tmp_path) == {finals[n] for n in front}
    # and no trial names a file that is gone (read past optuna's cache of finished trials)
    for t in rdb_of(study._storage).get_all_trials(study._study_id, deepcopy=False):
        named = {k.removeprefix("artifacts:") for k in t.system_attrs if k.startswith("artifacts:")}
        assert named == ({finals[t.number]} if t.number in front else set()), t.number


def test_each_end_keeps_the_fronts_weights_and_deletes_the_dominated(tmp_path, storage_url):
    study, store = _study(tmp_path, url=storage_url)
    finals = {}
    for values in ([80.0, 1000], [85.0, 2000], [82.0, 3000], [90.0, 500], [90.0, 500]):
        number, final = _told(study, store, tmp_path, values)
        finals[number] = final
        _holds_exactly_the_front(study, tmp_path, finals)
    # The last two (equal values: neither dominates) dominate the first three.
    assert _front(study) == {3, 4}


def test_of_two_trials_told_before_either_ends_the_dominated_ones_weights_go(tmp_path):
    for order in ((0, 1), (1, 0)):
        folder = tmp_path / "".join(map(str, order))
        folder.mkdir()
        study, store = _study(folder)
        finals = dict(
            _told(study, store, folder, values, end=False) for values in ([80.0, 1000], [85.0, 500])
        )
        for number in order:  # the end of the dominated one first, or last
            trial_ended(store, study, study.trials[number])
        _holds_exactly_the_front(study, folder, finals)
        assert _front(study) == {1}


def test_an_end_reads_the_front_under_the_study_lock(tmp_path, storage_url, monkeypatch):
    # Trial 1, which dominates trial 0, is told and ended by another worker while trial 0's end
    # reads the front. Read before the lock, trial 0's end would miss trial 1 and list its own
    # model after trial 1's end had chosen: a dominated model kept. Read under it, trial 1's
    # end waits for trial 0's to commit, and then sees it.
    study, store = _study(tmp_path, url=storage_url)
    first, first_final = _trained(study, store, tmp_path, [80.0, 1000])
    second, second_final = _trained(study, store, tmp_path, [85.0, 500])
    study.tell(first, [80.0, 1000])
    other = threading.Thread(target=lambda: (
        study.tell(second, [85.0, 500]),
        trial_ended(store, study, study._storage.get_trial(second._trial_id)),
    ))  # fmt: skip
    real = cleanup.read_front

    def racing(*args):
        found = real(*args)
        if not other.is_alive() and other.ident is None:  # trial 0's end, the first read
            other.start()
            other.join(timeout=2.0)  # the other end runs now, unless the lock holds it
        return found

    monkeypatch.setattr(cleanup, "read_front", racing)
    trial_ended(store, study, study._storage.get_trial(first._trial_id))
    other.join()
    _holds_exactly_the_front(study, tmp_path, {0: first_final, 1: second_final})


def test_an_end_a_kill_cut_short_is_finished_by_the_next_clean_up(tmp_path):
    study, store = _study(tmp_path)
    finals = dict([_told(study, store, tmp_path, [80.0, 1000])])
    # Its worker is killed after telling trial 1, which dominates trial 0, before its end.
    finals.update([_told(study, store, tmp_path, [85.0, 500], end=False)])
    assert len(_files(tmp_path)) == 3  # trial 0's final, trial 1's two checkpoints
    storage = rdb_of(study._storage)
    clear_ended(store, storage, study._study_id)  # the next launcher, or a worker at its end
    _holds_exactly_the_front(study, tmp_path, finals)
    # Its end again (two clean-ups at once, or its own worker late): nothing changes.
    trial_ended(store, study, study.trials[1])
    clear_ended(store, storage, study._study_id)
    _holds_exactly_the_front(study, tmp_path, finals)


def test_a_model_an_end_left_kept_off_the_front_is_deleted_by_the_next_clean_up(tmp_path):
    # What an end that read the front before the other trial's values committed, or an end
    # killed between its compare-and-set and its deletions, leaves: a dominated model listed.
    study, store = _study(tmp_path)
    finals = dict(_told(study, store, tmp_path, values) for values in ([80.0, 1000], [85.0, 500]))
    ids = [t._trial_id for t in study.trials]
    stale = [{"artifact_id": finals[n], "trial": n, "trial_id": ids[n]} for n in (0, 1)]
    study._storage.set_study_system_attr(study._study_id, FRONT_MODELS, stale)
    # trial 1's end deleted trial 0's weights and name: as if it had not come to that
    (tmp_path / "artifacts" / finals[0]).write_bytes(b"trial 0's weights")
    with rdb_of(study._storage).engine.begin() as conn:  # optuna refuses a finished trial's
        conn.exec_driver_sql("INSERT INTO trial_system_attributes (trial_id, key, value_json) "
                             f"VALUES ({ids[0]}, 'artifacts:{finals[0]}', '{{}}')")  # fmt: skip
    clear_ended(store, rdb_of(study._storage), study._study_id)
    _holds_exactly_the_front(study, tmp_path, finals)


def test_malformed_front_models_are_dropped_and_their_files_left(tmp_path, caplog):
    study, store = _study(tmp_path)
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    (tmp_path / "artifacts" / "victim.txt").write_text("someone else's")
    forged = [1, {"artifact_id": "../victim.txt", "trial_id": 1}, {"artifact_id": "victim.txt"}]
    study._storage.set_study_system_attr(study._study_id, FRONT_MODELS, forged)
    with caplog.at_level(logging.WARNING, logger="sweep.trial.cleanup"):
        finals = dict([_told(study, store, tmp_path, [80.0, 1000])])
    warned = [r.getMessage() for r in caplog.records if r.name == "sweep.trial.cleanup"]
    assert len(warned) == 1 and "front_models" in warned[0] and "dropped" in warned[0]
    assert _kept(study) == finals
    assert _files(tmp_path) == {finals[0], "victim.txt"}


def test_a_single_objective_keeps_only_its_best_model(tmp_path):
    study, store = _study(tmp_path, directions=("maximize",))
    trial = study.ask()
    path = tmp_path / "w.npz"
    path.write_bytes(b"weights")
    final = upload(store, study._storage, path, trial_id=trial._trial_id)
    study._storage.set_trial_system_attr(trial._trial_id, CHECKPOINT,
                                         {"artifact_id": final, "epoch": 2})  # fmt: skip
    trial.report(79.0, 1)
    trial.report(80.0, 2)
    study.tell(trial, 80.0)
    trial_ended(store, study, study.trials[0])
    system = study._storage.get_study_system_attrs(study._study_id)
    assert system["best_model"]["artifact_id"] == final and FRONT_MODELS not in system


_VALUE = st.sampled_from([0.0, 1.0, 2.0, 3.0, float("inf"), float("-inf")])


@settings(max_examples=25, deadline=None)
@given(
    directions=st.lists(st.sampled_from(["maximize", "minimize"]), min_size=2, max_size=3),
    rows=st.lists(st.lists(_VALUE, min_size=3, max_size=3), min_size=0, max_size=12),
)
def test_the_front_read_from_the_database_is_optunas_best_trials(tmp_path_factory, directions,
                                                                 rows):  # fmt: skip
    # Few distinct values: ties, duplicates and infinities on every side of the front.
    tmp = tmp_path_factory.mktemp("front")
    rdb = open_storage(f"sqlite:///{tmp / 's.db'}")
    study = optuna.create_study(storage=rdb, directions=directions)
    for row in rows:
        study.add_trial(optuna.trial.create_trial(values=row[: len(directions)]))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    found = read_front(rdb_of(study._storage).engine, study._study_id, study.directions)
    assert sorted(found.front.values()) == sorted(t.number for t in study.best_trials)
    assert sorted(found.complete.values()) == list(range(len(rows)))


def test_the_front_leaves_out_values_optuna_never_writes(tmp_path):
    study, _ = _study(tmp_path)
    for values in ([80.0, 1000], [70.0, 500]):
        study.add_trial(optuna.trial.create_trial(values=values))
    engine = rdb_of(study._storage).engine
    with engine.begin() as conn:  # another client's SQL: a NULL where a number must be
        conn.exec_driver_sql("UPDATE trial_values SET value = NULL WHERE trial_id = 2 "
                             "AND objective = 1")  # fmt: skip
    found = read_front(engine, study._study_id, study.directions)
    assert found.front == found.complete == {1: 0}


def test_an_entry_naming_a_front_models_weights_under_another_trial_deletes_nothing(tmp_path):
    """Another client listed trial 1's final weights under trial 0 (off the front): trial 1's
    end matched the entry by its artifact alone, took it for trial 0's and deleted the file of
    the front's only trial. Now the ending trial's own entry replaces it."""
    study, store = _study(tmp_path)
    off = study.ask()
    study.tell(off, [10.0, 9000])  # dominated
    trial, final = _trained(study, store, tmp_path, [80.0, 1000])
    forged = [{"artifact_id": final, "trial": 0, "trial_id": off._trial_id}]
    study._storage.set_study_system_attr(study._study_id, FRONT_MODELS, forged)
    study.tell(trial, [80.0, 1000])
    trial_ended(store, study, study._storage.get_trial(trial._trial_id))
    kept = study._storage.get_study_system_attrs(study._study_id)[FRONT_MODELS]
    assert kept == [{"artifact_id": final, "trial": 1, "trial_id": trial._trial_id}]
    assert final in _files(tmp_path)

"""Continuing a study in optuna's own API: ``sweep.load_study`` gives the study's sampler and
pruner, and its ``optimize`` trains through the queue (claims, checkpoints, no grid point
twice); optuna's own ``load_study`` then ``optimize`` with sweep's objective is refused."""

import logging
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

import sweep
from sweep.queue.attrs import BEST_MODEL, FAIL_REASON, RUN_TAG
from sweep.queue.storage import open_storage
from sweep.study.joining import make_pruner, make_sampler, open_study
from sweep.study.sampler import BoundedTPESampler
from tests.sweep.helpers import grid_study

TPE = """[study]
name = "t"
sampler = "tpe"
trials = 3
pruner = "median"
[budget]
min_params = 20_000
max_params = 60_000
[data]
train_size = 300
[train]
epochs = 1
batch_size = 100
[space]
hidden_1 = { low = 24, high = 64 }
hidden_2 = { low = 16, high = 32 }
"""


def _made(tmp_path, spec):
    """The study made as ``sweep run`` makes it, nothing trained yet."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    open_study(spec, open_storage(url))
    return url


def _grid(tmp_path):
    return sweep.load_spec(grid_study(tmp_path, train_size=300, epochs=1))


def test_load_study_carries_the_studys_own_sampler_and_pruner(tmp_path):
    (tmp_path / "t.toml").write_text(TPE)
    spec = sweep.load_spec(tmp_path / "t.toml")
    study = sweep.load_study("t", storage=_made(tmp_path, spec))
    assert isinstance(study, optuna.Study)
    assert isinstance(study.sampler, BoundedTPESampler)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    assert type(study.sampler) is type(make_sampler(spec))
    assert study.spec.to_dict() == spec.to_dict()  # the stored spec
    assert type(study.pruner) is type(make_pruner(spec))
    assert study.pruner._n_warmup_steps == 1  # the study's prune_after, not optuna's 0
    # optuna's own load_study: its defaults, which sweep.objective then refuses (below)
    plain = optuna.load_study(study_name="t", storage=study._storage)
    assert type(plain.pruner) is optuna.pruners.MedianPruner and plain.pruner._n_warmup_steps == 0


def test_load_study_of_a_study_sweep_did_not_make_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    optuna.create_study(study_name="theirs", storage=url)
    with pytest.raises(sweep.SpecError, match=r"^study 'theirs' was not made by sweep"):
        sweep.load_study("theirs", storage=url)
    with pytest.raises(sweep.SpecError, match=r"^study 'none' does not exist in sqlite:///"):
        sweep.load_study("none", storage=url)


def test_optimize_claims_the_queue_and_never_trains_a_grid_point_twice(tmp_path, caplog):
    spec = _grid(tmp_path)
    study = sweep.load_study("g", storage=_made(tmp_path, spec))
    seen = []
    study.optimize(sweep.objective(spec), n_trials=3, callbacks=[lambda s, t: seen.append(t)])
    assert [t.state for t in seen] == [TrialState.COMPLETE] * 3
    with caplog.at_level(logging.WARNING, logger="sweep.notebook"):
        study.optimize(sweep.objective(study.spec), n_trials=20)  # more than the grid has
    assert "study 'g' had nothing left to claim after 5 trial(s) here; its grid is done" in (
        caplog.text
    )
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    points = Counter(tuple(sorted(t.params.items())) for t in trials)
    assert len(trials) == 8 and set(points.values()) == {1}  # the 8 in-budget points, once
    assert all(RUN_TAG in t.user_attrs for t in trials)  # claimed by a sweep worker
    assert all(t.user_attrs["n_params"] > 50_000 for t in trials)  # inside the budget
    # its trials checkpointed to the study's artifact store, and the best one's weights kept
    assert BEST_MODEL in study._storage.get_study_system_attrs(study._study_id)
    assert len(study.trials) == 8  # nothing beside the queue


def test_optimize_of_a_capped_study_stops_at_its_cap_and_says_so(tmp_path, caplog):
    (tmp_path / "t.toml").write_text(TPE)
    spec = sweep.load_spec(tmp_path / "t.toml")
    study = sweep.load_study("t", storage=_made(tmp_path, spec))
    with caplog.at_level(logging.WARNING, logger="sweep.notebook"):
        study.optimize(sweep.objective(spec), n_trials=5, timeout=600)
    assert "its cap of 3 trials is reached (raise it with sweep.run(spec, trials=N)" in caplog.text
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == len(study.trials) == 3
    assert all(20_000 < t.user_attrs["n_params"] < 60_000 for t in done)


def test_stop_from_a_callback_ends_optimize_after_that_trial(tmp_path):
    spec = _grid(tmp_path)
    study = sweep.load_study("g", storage=_made(tmp_path, spec))
    study.optimize(sweep.objective(spec), callbacks=[lambda s, t: s.stop()],
                   show_progress_bar=True, gc_after_trial=True)  # fmt: skip
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1
    with pytest.raises(RuntimeError, match="stop"):
        study.stop()


def test_optimize_refuses_what_would_leave_the_rules(tmp_path):
    spec = _grid(tmp_path)
    study = sweep.load_study("g", storage=_made(tmp_path, spec))
    with pytest.raises(sweep.SpecError, match=r"^study 'g' trains sweep\.objective\(spec\) of "
                                              r"its own spec only"):  # fmt: skip
        study.optimize(lambda trial: 1.0, n_trials=1)
    with pytest.raises(sweep.SpecError, match=r"^n_jobs must be 1 .*; got 2$"):
        study.optimize(sweep.objective(spec), n_trials=1, n_jobs=2)
    other = sweep.load_spec(grid_study(tmp_path, train_size=300, epochs=3))
    with pytest.raises(sweep.SpecError, match=r"\[train\.epochs\] differs from the stored "
                                              r"study 'g': stored 1, given 3"):  # fmt: skip
        study.optimize(sweep.objective(other), n_trials=1)
    renamed = sweep.load_spec(grid_study(tmp_path, name="h", train_size=300, epochs=1))
    with pytest.raises(sweep.SpecError, match=r"\[study\.name\] differs"):
        study.optimize(sweep.objective(renamed), n_trials=1)
    assert study.trials == []  # nothing was queued or run


def test_ask_is_refused_in_one_line_and_makes_no_trial(tmp_path):
    spec = _grid(tmp_path)
    url = _made(tmp_path, spec)
    study = sweep.load_study("g", storage=url)
    with pytest.raises(sweep.SpecError) as refused:
        study.ask()
    message = str(refused.value)
    assert "\n" not in message and message.startswith("study 'g': ask() would make a trial "
                                                         "outside its queue")  # fmt: skip
    assert message.endswith("use study.optimize(sweep.objective(study.spec), n_trials=N) or "
                            "`sweep worker`")  # fmt: skip
    with pytest.raises(sweep.SpecError, match=r"ask\(\) would make a trial outside"):
        study.ask({"hidden_1": optuna.distributions.IntDistribution(1, 2)})
    assert optuna.load_study(study_name="g", storage=url).trials == []  # none was made
    study.optimize(sweep.objective(spec), n_trials=1)  # its own optimize still trains
    assert Counter(t.state for t in study.trials)[TrialState.COMPLETE] == 1


def test_optuna_load_study_then_optimize_with_sweeps_objective_is_refused(tmp_path):
    spec = _grid(tmp_path)
    url = _made(tmp_path, spec)
    plain = optuna.load_study(study_name="g", storage=url)  # optuna's default sampler, pruner
    with pytest.raises(
        sweep.SpecError,
        match=r"^trial 0 did not come from study 'g''s queue: "
        r"optuna's own optimize .*sweep\.load_study",
    ):
        plain.optimize(sweep.objective(spec), n_trials=2)
    [trial] = plain.trials
    assert trial.state == TrialState.FAIL and trial.params == {}  # nothing was trained
    assert trial.user_attrs[FAIL_REASON].startswith("trial 0 did not come from")

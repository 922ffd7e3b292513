"""The public Python surface: a study run, inspected, reported and evaluated from a notebook."""

import copy
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import sweep
from sweep.queue.storage import open_storage
from sweep.study.joining import open_study, top_up
from sweep.trial.objective import settings_of
from tests.sweep.helpers import grid_study


@pytest.mark.slow
def test_a_study_run_inspected_reported_and_evaluated_from_python(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # reports go to runs/<slug>/ under the working folder
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec = sweep.load_spec(grid_study(tmp_path))
    study = sweep.run(spec, storage=url, jobs=1, trials=3)
    assert isinstance(study, optuna.Study)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3
    # another host's launcher raises the cap to the whole grid; a worker joins by name
    top_up(open_study(spec, open_storage(url)), spec)
    assert sweep.join("g", storage=url) == 5

    [status] = sweep.status(url)
    assert (status.name, status.counts) == ("g", {"complete": 8})
    assert status.best_value() == f"{study.best_value:.2f}%"

    written = sweep.report_study("g", storage=url)
    assert written.out_dir == Path("runs", "g") and (tmp_path / "runs/g/report.md").exists()
    assert written.best_number == study.best_trial.number

    reports, failed = sweep.report_all(storage=url, root=tmp_path / "all")
    assert [r.out_dir for r in reports] == [tmp_path / "all" / "g"] and failed == {}

    result = sweep.evaluate(spec, storage=url)
    assert result.trial == study.best_trial.number and 50 < result.test_accuracy <= 100


def test_errors_are_sweeps_own():
    with pytest.raises(sweep.SpecError, match=r"no-such\.toml: no such study file"):
        sweep.load_spec("no-such.toml")
    with pytest.raises(sweep.StorageError, match="no such database file"):
        sweep.status("sqlite:///no/such.db")
    assert set(sweep.__all__) >= {"run", "join", "status", "report_study", "evaluate", "load_spec"}


def test_evaluate_derives_the_best_configuration_from_the_spec_not_stored_attributes(tmp_path):
    # The stored config attribute is anyone's JSON: evaluate rebuilds the settings from the
    # study file and the trial's parameters, checks them, and ignores the attribute.
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec = sweep.load_spec(grid_study(tmp_path))
    study = sweep.run(spec, storage=url, jobs=1, trials=2)
    best = study.best_trial
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    conn.execute("UPDATE trial_user_attributes SET value_json = '\"garbage\"' "
                 "WHERE key IN ('config', 'seed')")  # fmt: skip
    conn.commit()
    result = sweep.evaluate(spec, storage=url)
    assert result.trial == best.number
    assert result.valid_accuracy == pytest.approx(best.value, abs=0.15)  # the same training

    outside = copy.copy(best)
    outside.params = {**best.params, "hidden_1": 10**9}
    with pytest.raises(sweep.SpecError, match=r"trial \d+: its parameters do not fit"):
        settings_of(outside, spec)

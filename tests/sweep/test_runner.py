"""The runner against a real SQLite database and real worker processes."""

import os
import signal

import optuna
import pytest
from optuna.trial import TrialState

from sweep import runner
from sweep.errors import SpecError
from sweep.space import grid_points
from sweep.spec import load_spec
from tests.sweep.helpers import (
    completed_points,
    count_state,
    descendants,
    grid_study,
    kill_group,
    load,
    run_cli,
    start_cli,
    states,
    wait_for,
)

FAST_STALE = {"SWEEP_HEARTBEAT_INTERVAL": "1", "SWEEP_GRACE_PERIOD": "3"}


def _assert_grid_done_once(url, spec):
    study = load(url, spec.name)
    done = completed_points(study)
    assert len(done) == len(grid_points(spec)) == 8
    assert set(done.values()) == {1}, "a grid point ran more than once"
    left = states(study)
    assert left[TrialState.RUNNING] == 0 and left[TrialState.WAITING] == 0
    return study


def test_four_workers_run_each_grid_point_exactly_once(tmp_path):
    spec = load_spec(grid_study(tmp_path))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    runner.run(spec, storage=url, jobs=4)
    study = _assert_grid_done_once(url, spec)
    assert states(study) == {TrialState.COMPLETE: 8}
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) >= 2, "the work was not shared between processes"
    for t in study.trials:  # the contract the reports read
        assert len(t.user_attrs["valid_accuracy"]) == 2 == len(t.intermediate_values)
        assert t.value == t.user_attrs["valid_accuracy"][-1]
        assert 50_000 < t.user_attrs["n_params"] < 200_000
    # Rerunning a finished study runs nothing.
    runner.run(spec, storage=url, jobs=2)
    assert len(load(url, spec.name).trials) == 8


def test_results_do_not_depend_on_the_worker_or_the_run(tmp_path):
    spec = load_spec(grid_study(tmp_path))
    a, b = (f"sqlite:///{tmp_path / n}" for n in ("a.db", "b.db"))
    runner.run(spec, storage=a, jobs=1)
    runner.run(spec, storage=b, jobs=3)

    def values(url):
        return {tuple(sorted(t.params.items())): t.value for t in load(url, spec.name).trials}

    assert values(a) == values(b)


def test_trial_cap_holds_for_all_workers_together(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        '[study]\nname = "r"\nsampler = "random"\ntrials = 7\n'
        "[budget]\nmin_params = 20_000\nmax_params = 60_000\n"
        "[data]\ntrain_size = 500\n[train]\nepochs = 1\n"
        "[space]\nhidden_1 = { low = 16, high = 64 }\nhidden_2 = { low = 8, high = 64 }\n"
    )
    spec = load_spec(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    runner.run(spec, storage=url, jobs=3)
    study = load(url, "r")
    assert states(study) == {TrialState.COMPLETE: 7}
    assert all(20_000 < t.user_attrs["n_params"] < 60_000 for t in study.trials)
    runner.run(spec, storage=url, jobs=2, trials=9)  # raising the cap adds exactly two
    assert states(load(url, "r")) == {TrialState.COMPLETE: 9}


def test_a_diverging_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    path = grid_study(tmp_path, extra_train='init = "normal"\ninit_std = 100.0\n')
    text = path.read_text().replace("learning_rate = [0.1, 0.05]", "learning_rate = [1e6, 1e-3]")
    path.write_text(text)
    spec = load_spec(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    runner.run(spec, storage=url, jobs=2)
    study = load(url, spec.name)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all("diverged" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.params["learning_rate"] == 1e6 for t in failed)
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.FAIL}
    assert len(study.trials) == 8
    runner.run(spec, storage=url, jobs=1)  # a genuine failure is a result: not rerun
    assert len(load(url, spec.name).trials) == 8


def test_a_different_spec_under_the_same_name_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    runner.run(load_spec(grid_study(tmp_path, epochs=1)), storage=url, jobs=1)
    with pytest.raises(SpecError, match=r"study 'g' already exists with a different \[train\]"):
        runner.run(load_spec(grid_study(tmp_path, epochs=2)), storage=url, jobs=1)


SLOW = {"train_size": 20_000, "epochs": 3}  # about a second a trial: time to kill one


def test_sigkill_of_a_worker_then_rerun_finishes_the_grid_once(tmp_path):
    study_file = grid_study(tmp_path, **SLOW)
    spec = load_spec(study_file)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    proc = start_cli("run", str(study_file), "--storage", url, "--jobs", "4", env=FAST_STALE)
    wait_for(
        lambda: (
            count_state(url, "g", TrialState.COMPLETE) >= 2
            and count_state(url, "g", TrialState.RUNNING) >= 1
        )
    )
    workers = descendants(proc.pid)
    assert workers
    for pid in workers:  # kill every worker process (the loky workers and their helpers)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=120)
    assert proc.returncode == 1, proc.stderr.read()
    assert "run again to resume" in proc.stderr.read()
    assert count_state(url, "g", TrialState.RUNNING) == 0  # the parent released them
    out = run_cli("run", str(study_file), "--storage", url, "--jobs", "4", env=FAST_STALE)
    assert out.returncode == 0, out.stderr
    _assert_grid_done_once(url, spec)


def test_sigkill_of_everything_is_recovered_through_heartbeats(tmp_path):
    study_file = grid_study(tmp_path, **SLOW)
    spec = load_spec(study_file)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    proc = start_cli("run", str(study_file), "--storage", url, "--jobs", "4", env=FAST_STALE)
    wait_for(
        lambda: (
            count_state(url, "g", TrialState.COMPLETE) >= 1
            and count_state(url, "g", TrialState.RUNNING) >= 1
        )
    )
    kill_group(proc, signal.SIGKILL)
    proc.wait(timeout=30)
    before = {t.number: t.value for t in load(url, "g").trials if t.state == TrialState.COMPLETE}
    assert count_state(url, "g", TrialState.RUNNING) >= 1  # nobody was left to release them
    out = run_cli("run", str(study_file), "--storage", url, "--jobs", "4", env=FAST_STALE)
    assert out.returncode == 0, out.stderr
    study = _assert_grid_done_once(url, spec)
    after = {t.number: t.value for t in study.trials if t.state == TrialState.COMPLETE}
    assert all(after[n] == v for n, v in before.items()), "a completed result changed"


@pytest.mark.parametrize("target", ["group", "parent"])
def test_ctrl_c_exits_130_and_the_next_run_resumes(tmp_path, target):
    study_file = grid_study(tmp_path, **SLOW)
    spec = load_spec(study_file)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    proc = start_cli("run", str(study_file), "--storage", url, "--jobs", "2", env=FAST_STALE)
    wait_for(lambda: count_state(url, "g", TrialState.RUNNING) >= 1)
    if target == "group":  # what a terminal's Ctrl-C does
        kill_group(proc, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode == 130, proc.stderr.read()
    wait_for(lambda: not descendants(proc.pid), timeout=30)
    assert count_state(url, "g", TrialState.RUNNING) == 0
    out = run_cli("run", str(study_file), "--storage", url, "--jobs", "2", env=FAST_STALE)
    assert out.returncode == 0, out.stderr
    _assert_grid_done_once(url, spec)


def test_the_database_is_plain_optuna(tmp_path):
    spec = load_spec(grid_study(tmp_path))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    runner.run(spec, storage=url, jobs=1)
    study = optuna.load_study(study_name="g", storage=url)
    assert study.best_value == max(t.value for t in study.trials)
    assert study.user_attrs["spec"]["budget"] == {"min_params": 50_000, "max_params": 200_000}


def test_two_hosts_finish_a_grid_exactly_once(tmp_path, storage_url):
    # Two `sweep worker` processes standing for two hosts, sharing one database.
    study_file = grid_study(tmp_path)
    spec = load_spec(study_file)
    study = runner.open_study(spec, runner.open_storage(storage_url))
    runner.top_up(study, spec)
    hosts = [start_cli("worker", str(study_file), "--storage", storage_url) for _ in range(2)]
    ran = 0
    for proc in hosts:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        ran += int(out.split()[2])  # "worker ran N trial(s); …"
    assert ran == 8
    _assert_grid_done_once(storage_url, spec)
    assert len({t.user_attrs["worker"] for t in load(storage_url, "g").trials}) == 2

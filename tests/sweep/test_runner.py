"""The runner against a real SQLite database and real worker processes."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from sweep import runner
from sweep.errors import SpecError, WorkerError
from sweep.queue.storage import open_storage
from sweep.queue.writeback import WriteBackStorage
from sweep.study.joining import open_study, recover, top_up
from sweep.study.space import grid_points
from sweep.study.spec import load_spec
from sweep.worker import serve
from tests.sweep.helpers import (
    FAST_STALE,
    WORKER_TAGS,
    alive,
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


def _assert_grid_done_once(url, spec):
    study = load(url, spec.name)
    done = completed_points(study)
    assert len(done) == len(grid_points(spec)) == 8
    assert set(done.values()) == {1}, "a grid point ran more than once"
    left = states(study)
    assert left[TrialState.RUNNING] == 0 and left[TrialState.WAITING] == 0
    return study


def _assert_released(url):
    """Every trial the run had started is released. (A worker killed in the milliseconds
    between claiming a trial and tagging it with its run leaves it to the stale-trial check,
    which the rerun's completion covers.)"""
    leftover = [t for t in load(url, "g").trials if t.state == TrialState.RUNNING]
    assert not [t for t in leftover if "run" in t.user_attrs]


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
    # Rerunning a finished study runs nothing (one worker: it runs in this process).
    runner.run(spec, storage=url, jobs=1)
    assert len(load(url, spec.name).trials) == 8


@pytest.mark.slow
def test_results_do_not_depend_on_the_worker_or_the_run_and_are_plain_optuna(tmp_path):
    spec = load_spec(grid_study(tmp_path))
    a, b = (f"sqlite:///{tmp_path / n}" for n in ("a.db", "b.db"))
    runner.run(spec, storage=a, jobs=1)
    runner.run(spec, storage=b, jobs=3)

    def values(url):
        return {tuple(sorted(t.params.items())): t.value for t in load(url, spec.name).trials}

    assert values(a) == values(b)
    # and the database is plain optuna's
    study = optuna.load_study(study_name="g", storage=a)
    assert study.best_value == max(t.value for t in study.trials)
    assert study.user_attrs["spec"]["budget"] == {"min_params": 50_000, "max_params": 200_000}


@pytest.mark.slow
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
    stored = r"\[train.epochs\] differs from the stored study 'g': stored 1, given 2"
    with pytest.raises(SpecError, match=stored):
        runner.run(load_spec(grid_study(tmp_path, epochs=2)), storage=url, jobs=1)


SLOW = {"train_size": 20_000, "epochs": 3}  # about a second a trial: time to kill one


def _start_slow_run(tmp_path, jobs: int = 4):
    """`sweep run` of a grid slow enough to interrupt, in the background."""
    study_file = grid_study(tmp_path, **SLOW)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    proc = start_cli("run", str(study_file), "--storage", url, "--jobs", str(jobs), env=FAST_STALE)
    return study_file, load_spec(study_file), url, proc


@pytest.mark.slow
def test_sigkill_of_a_worker_then_rerun_finishes_the_grid_once(tmp_path):
    study_file, spec, url, proc = _start_slow_run(tmp_path)
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
    err = proc.stderr.read()
    assert proc.returncode == 1, err
    assert "a worker process died" in err and "run again to resume" in err
    _assert_released(url)  # by the parent, at once, each trial counted as a death
    trials = load(url, "g").trials
    dead = [t for t in trials if "died with its run's processes" in t.user_attrs.get("lost", "")]
    retries = [t for t in trials if "retry_history" in t.system_attrs]
    assert dead and len(retries) == len(dead)
    out = run_cli("run", str(study_file), "--storage", url, "--jobs", "4", env=FAST_STALE)
    assert out.returncode == 0, out.stderr
    _assert_grid_done_once(url, spec)


@pytest.mark.parametrize(
    ("target", "sig", "code"),
    [
        ("group", signal.SIGINT, 130),
        ("parent", signal.SIGINT, 130),
        ("parent", signal.SIGTERM, 143),
        ("group", signal.SIGTERM, 143),  # a batch scheduler or `kill -TERM -PGID`
    ],
)
@pytest.mark.slow
def test_ctrl_c_or_sigterm_exit_130_or_143_and_the_next_run_resumes(tmp_path, target, sig, code):
    # Every way of stopping leaves the same released trials (_assert_released); the next run
    # that finishes them is run after a terminal's Ctrl-C only (a grid of slow trials each).
    study_file, spec, url, proc = _start_slow_run(tmp_path, jobs=2)
    wait_for(lambda: count_state(url, "g", TrialState.RUNNING) >= 1)
    workers = descendants(proc.pid)  # before the signal: after it, orphans are re-parented
    assert len(workers) >= 2
    if target == "group":  # what a terminal's Ctrl-C does
        kill_group(proc, sig)
    else:
        proc.send_signal(sig)
    proc.wait(timeout=60)
    err = proc.stderr.read()
    assert proc.returncode == code, err
    word = "terminated" if sig == signal.SIGTERM else "interrupted"
    assert err.splitlines()[-1] == f"sweep: {word}; rerun to resume", err
    wait_for(lambda: not [pid for pid in workers if alive(pid)], timeout=30)
    _assert_released(url)
    if (target, sig) == ("group", signal.SIGINT):
        out = run_cli("run", str(study_file), "--storage", url, "--jobs", "2", env=FAST_STALE)
        assert out.returncode == 0, out.stderr
        _assert_grid_done_once(url, spec)


@pytest.mark.slow
def test_two_hosts_finish_a_grid_exactly_once(tmp_path, storage_url):
    # Two `sweep worker` processes standing for two hosts, sharing one database.
    study_file = grid_study(tmp_path)
    spec = load_spec(study_file)
    study = open_study(spec, open_storage(storage_url))
    top_up(study, spec)
    hosts = [start_cli("worker", str(study_file), "--storage", storage_url) for _ in range(2)]
    ran = 0
    for proc in hosts:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        ran += int(out.split()[2])  # "worker ran N trial(s); …"
    assert ran == 8
    _assert_grid_done_once(storage_url, spec)
    assert len({t.user_attrs["worker"] for t in load(storage_url, "g").trials}) == 2


@pytest.mark.slow
def test_sigkill_of_everything_is_recovered_through_heartbeats_and_loses_nothing(tmp_path):
    # Kill everything (parent and workers), nobody left to release a trial: once with a trial
    # done and one running, then twice at random moments (mid-training or mid-write); then
    # one run recovers the running ones through their heartbeats and finishes the grid.
    # Every completed result survives unchanged.
    rng = random.Random(7)
    completed: dict[int, float] = {}
    for kill in range(3):
        study_file, spec, url, proc = _start_slow_run(tmp_path)
        if kill == 0:
            wait_for(lambda u=url: count_state(u, "g", TrialState.COMPLETE) >= 1
                     and count_state(u, "g", TrialState.RUNNING) >= 1)  # fmt: skip
        else:
            wait_for(lambda u=url: count_state(u, "g", TrialState.RUNNING) >= 1)
            time.sleep(rng.uniform(0.0, 2.0))
        kill_group(proc, signal.SIGKILL)
        proc.wait(timeout=30)
        if kill == 0:
            assert count_state(url, "g", TrialState.RUNNING) >= 1  # nobody released them
        study = load(url, "g")
        done = {t.number: t.value for t in study.trials if t.state == TrialState.COMPLETE}
        assert all(done[n] == v for n, v in completed.items()), "a completed result changed"
        completed = done
    out = run_cli("run", str(study_file), "--storage", url, "--jobs", "4", env=FAST_STALE)
    assert out.returncode == 0, out.stderr
    study = _assert_grid_done_once(url, spec)
    final = {t.number: t.value for t in study.trials if t.state == TrialState.COMPLETE}
    assert all(final[n] == v for n, v in completed.items())


def test_a_trial_that_raises_is_recorded_and_the_queue_goes_on(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    study = optuna.create_study(study_name="e", storage=storage, direction="maximize")
    for i in range(3):
        study.enqueue_trial({"i": i})

    def objective(trial):
        i = trial.suggest_int("i", 0, 2)
        if i == 1:
            raise ValueError("a bug in one trial")
        return float(i)

    assert serve(study, objective, run_id="t") == 3
    by_i = {t.params["i"]: t for t in study.get_trials()}
    assert by_i[0].state == by_i[2].state == TrialState.COMPLETE
    assert by_i[1].state == TrialState.FAIL
    assert by_i[1].user_attrs["fail_reason"] == "ValueError: a bug in one trial"


@pytest.mark.parametrize(
    "failure", [MemoryError("cannot allocate 3.2 GiB"), ImportError("no module named x")]
)
def test_a_failure_of_the_worker_gives_the_trial_back_and_ends_the_worker(tmp_path, failure):
    storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    study = optuna.create_study(study_name="e", storage=storage, direction="maximize")
    for i in range(3):
        study.enqueue_trial({"i": i})

    def objective(trial):
        trial.set_user_attr("epoch", 1)
        if trial.suggest_int("i", 0, 2) == 1:
            raise failure
        return 1.0

    with pytest.raises(WorkerError, match=f"{type(failure).__name__}: .*went back to the queue"):
        serve(study, objective, run_id="t")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.WAITING,
                                         TrialState.WAITING]  # fmt: skip
    released = trials[1]  # as it was enqueued: no parameters, attributes or heartbeat
    assert released.params == {} and released.user_attrs == {}
    assert released.system_attrs == {"fixed_params": {"i": 1}}
    assert released.datetime_start is None


@pytest.mark.slow
def test_a_reader_holding_a_transaction_blocks_no_writer(tmp_path):
    # What the dashboard or a SQL shell does; in rollback-journal mode it stalls writers until
    # it ends. Here every trial completes while the reader still holds its transaction.
    path = tmp_path / "db.sqlite"
    storage = open_storage(f"sqlite:///{path}")
    study = optuna.create_study(study_name="o", storage=storage)
    for _ in range(80):
        study.enqueue_trial({}, skip_if_exists=False)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM trials").fetchone()  # holds a read snapshot
    workers = [start_cli_python(SERVE, f"sqlite:///{path}") for _ in range(8)]
    ran = 0
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        ran += int(out)
    assert reader.in_transaction  # still held: the writers finished under it
    complete = "SELECT count(*) FROM trials WHERE state = 'COMPLETE'"
    assert sqlite3.connect(path).execute(complete).fetchone()[0] == 80
    reader.execute("COMMIT")
    assert ran == 80


SERVE = """
import sys, optuna
from sweep.worker import serve
from sweep.queue.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="o", storage=open_storage(sys.argv[1]),
                          sampler=optuna.samplers.RandomSampler())
print(serve(study, lambda t: t.suggest_float("x", 0, 1), run_id="r"))
"""


def start_cli_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_a_trial_whose_worker_died_at_once_is_requeued_from_the_claims_heartbeat(tmp_path):
    # The claim itself records the first heartbeat: a worker killed right after it leaves a
    # trial that the stale check can see.
    path = tmp_path / "db.sqlite"
    # SQLite's CURRENT_TIMESTAMP has whole seconds: a heartbeat written at 0.99 s reads as 0 s,
    # so a grace period of 1 s could pass 0.01 s after the claim. Two leave a second of margin.
    storage = open_storage(f"sqlite:///{path}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"i": 1})
    trial_id = WriteBackStorage(storage).claim(study._study_id, WORKER_TAGS)
    beats = "SELECT count(*) FROM trial_heartbeats WHERE trial_id = ?"
    assert sqlite3.connect(path).execute(beats, (trial_id,)).fetchone()[0] == 1
    assert recover(study, max_retries=3) == []  # not before the grace period
    assert states(study) == {TrialState.RUNNING: 1}
    time.sleep(3.5)  # the grace period, plus a second: SQLite's CURRENT_TIMESTAMP has seconds
    assert recover(study, max_retries=3) == [0]
    assert recover(study, max_retries=3) == []  # a second look requeues nothing more
    assert states(study) == {TrialState.FAIL: 1, TrialState.WAITING: 1}
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    assert waiting.system_attrs["fixed_params"] == {"i": 1}
    assert waiting.system_attrs["retry_history"] == [0]

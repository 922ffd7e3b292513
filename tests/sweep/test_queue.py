"""The queue's contract however a study is joined: several launchers at once, workers with
stale files or no data, other optuna clients, lowered caps, workers that keep dying."""

import contextlib
import signal
import threading
import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from threadpoolctl import threadpool_limits

from sweep import runner
from sweep.errors import DataError, SpecError
from sweep.queue import progress, recovery, topup
from sweep.queue.storage import open_storage
from sweep.queue.writeback import WriteBackStorage
from sweep.study.joining import join, open_study, recover, top_up
from sweep.study.spec import load_spec
from sweep.trial.objective import Objective
from sweep.worker import work
from tests.sweep.helpers import (
    FAST_STALE,
    WORKER_TAGS,
    completed_points,
    count_state,
    grid_study,
    load,
    run_cli,
    start_cli,
    states,
    wait_for,
)

# 25 × 20 = 500 points of tiny networks, every one inside the budget.
WIDE_GRID = """
[study]
name = "wide"
sampler = "grid"
[budget]
min_params = 0
max_params = 1_000_000
[data]
train_size = 64
[train]
epochs = 1
batch_size = 64
[space]
hidden_1 = {h1}
hidden_2 = {h2}
"""


@pytest.mark.slow
@pytest.mark.parametrize("database", ["fresh", "existing"])
def test_two_launchers_started_at_once_run_every_point_exactly_once(
    tmp_path, storage_url, database
):
    path = tmp_path / "wide.toml"
    path.write_text(WIDE_GRID.format(h1=list(range(1, 26)), h2=list(range(1, 21))))
    if database == "existing":
        open_storage(storage_url)  # the schema exists; the study does not
    launchers = [
        start_cli("run", str(path), "--storage", storage_url, "--jobs", "2") for _ in range(2)
    ]
    for proc in launchers:
        _out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    study = load(storage_url, "wide")
    done = completed_points(study)
    assert len(done) == 500 and set(done.values()) == {1}, "a point ran twice or never"
    # Counted in SQL: optuna's cache keys trials by number and would hide a second trial
    # numbered like the first.
    assert _rows_and_numbers(storage_url, study._study_id) == (500, 500), "enqueued twice"


def _rows_and_numbers(url: str, study_id: int) -> tuple[int, int]:
    with open_storage(url).engine.connect() as conn:
        count = "SELECT count(*), count(DISTINCT number) FROM trials WHERE study_id = :s"
        return tuple(conn.execute(sqlalchemy.text(count), {"s": study_id}).one())


def test_two_top_ups_racing_enqueue_each_point_once(storage_url):
    # Each top-up pauses after every transaction, once its locks are released: without the
    # study lock around read-then-enqueue, both read an empty queue and both enqueue it.
    study = optuna.create_study(study_name="w", storage=open_storage(storage_url))
    points = [{"i": i} for i in range(50)]
    storages = [open_storage(storage_url) for _ in range(2)]
    for storage in storages:
        sqlalchemy.event.listen(storage.engine.pool, "checkin", lambda *a: time.sleep(1.5))
    racers = [
        threading.Thread(target=topup.top_up, args=(s, study._study_id), kwargs={"points": points})
        for s in storages
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert _rows_and_numbers(storage_url, study._study_id) == (50, 50)


def _queued_grid(tmp_path, url, **kw):
    study_file = grid_study(tmp_path, **kw)
    spec = load_spec(study_file)
    top_up(open_study(spec, open_storage(url)), spec)
    return study_file, spec


@pytest.mark.slow
def test_batch_array_tasks_started_before_the_study_wait_for_it(tmp_path, storage_url):
    tasks = [
        start_cli("worker", "--study", "g", "--storage", storage_url, "--wait", "120")
        for _ in range(2)
    ]
    time.sleep(3)  # the tasks are polling for a study that does not exist yet
    assert all(task.poll() is None for task in tasks)
    _queued_grid(tmp_path, storage_url)
    ran = 0
    for task in tasks:
        out, err = task.communicate(timeout=300)
        assert task.returncode == 0, err
        ran += int(out.split()[2])  # "worker ran N trial(s); …"
    assert ran == 8
    assert states(load(storage_url, "g")) == {TrialState.COMPLETE: 8}


def test_a_worker_whose_study_file_differs_is_refused_before_it_claims(tmp_path, storage_url):
    _queued_grid(tmp_path, storage_url, epochs=2)
    (tmp_path / "host-b").mkdir()
    edited = grid_study(tmp_path / "host-b", epochs=3)  # the same study, edited on one host
    out = run_cli("worker", str(edited), "--storage", storage_url)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"sweep: error: {edited}: [train.epochs] differs from the stored study 'g': stored 2, "
        "given 3; use the stored study's file, or rename [study.name] for a new study"
    ]
    assert states(load(storage_url, "g")) == {TrialState.WAITING: 8}


def test_a_worker_checks_the_dataset_before_it_claims(tmp_path, storage_url, monkeypatch):
    _queued_grid(tmp_path, storage_url)
    claims = []
    real = WriteBackStorage.claim
    monkeypatch.setattr(
        WriteBackStorage, "claim", lambda self, *a: claims.append(a) or real(self, *a)
    )
    spec = join(storage_url, "g", data_path=str(tmp_path / "no-mnist.npz"))
    with pytest.raises(DataError, match=r"no-mnist\.npz"):
        work(spec, storage_url, "r", launch=True)
    assert claims == []


@pytest.mark.slow
def test_a_worker_without_the_dataset_claims_nothing(tmp_path, storage_url):
    _queued_grid(tmp_path, storage_url)
    out = run_cli("worker", "--study", "g", "--storage", storage_url, "--data", "/no/mnist.npz")
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and "/no/mnist.npz" in out.stderr
    assert states(load(storage_url, "g")) == {TrialState.WAITING: 8}  # no FAIL, none taken
    out = run_cli("worker", "--study", "g", "--storage", storage_url)
    assert out.returncode == 0, out.stderr
    assert states(load(storage_url, "g")) == {TrialState.COMPLETE: 8}


def test_a_worker_with_a_bad_checkpoint_setting_claims_nothing(tmp_path, storage_url):
    _queued_grid(tmp_path, storage_url)
    bad = {"SWEEP_CHECKPOINT_EPOCHS": "x"}  # read by every trial: each one would be a FAIL
    out = run_cli("worker", "--study", "g", "--storage", storage_url, env=bad)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "sweep: error: SWEEP_CHECKPOINT_EPOCHS must be an integer in [1, 10000]; got 'x'"
    ]
    assert states(load(storage_url, "g")) == {TrialState.WAITING: 8}


@pytest.mark.slow
def test_a_foreign_trial_held_past_the_grace_period_survives_a_sweep_run(tmp_path, storage_url):
    # Another optuna client asks for a trial in the same study and holds it, with a
    # heartbeat of its own, longer than sweep's grace period.
    study_file = grid_study(tmp_path)
    open_study(load_spec(study_file), open_storage(storage_url))  # sweep's study, no queue yet
    theirs = optuna.load_study(study_name="g", storage=storage_url)
    trial = theirs.ask()
    open_storage(storage_url).record_heartbeat(trial._trial_id)
    time.sleep(4)  # past the grace period of FAST_STALE
    out = run_cli("run", str(study_file), "--storage", storage_url, "--jobs", "2", env=FAST_STALE)
    assert out.returncode == 0, out.stderr
    assert states(load(storage_url, "g")) == {TrialState.COMPLETE: 8, TrialState.RUNNING: 1}
    theirs.tell(trial, 1.0)  # the client's tell still works
    assert load(storage_url, "g").trials[trial.number].state == TrialState.COMPLETE


def _random_study(tmp_path, *, trials: int):
    path = tmp_path / "r.toml"
    path.write_text(
        f'[study]\nname = "r"\nsampler = "random"\ntrials = {trials}\n'
        "[budget]\nmin_params = 20_000\nmax_params = 60_000\n"
        "[data]\ntrain_size = 2000\n[train]\nepochs = 1\n"
        "[space]\nhidden_1 = { low = 16, high = 64 }\nhidden_2 = { low = 8, high = 64 }\n"
    )
    return path


@pytest.mark.slow
def test_a_lowered_cap_stops_claims_beyond_it(tmp_path, storage_url):
    # An interrupted run of a random study left 8 slots; it is rerun with a cap of 3.
    spec = load_spec(_random_study(tmp_path, trials=8))
    top_up(open_study(spec, open_storage(storage_url)), spec)
    runner.run(spec, storage=storage_url, jobs=2, trials=3)
    study = load(storage_url, "r")
    assert states(study) == {TrialState.COMPLETE: 3, TrialState.FAIL: 5}
    skipped = [t for t in study.trials if t.state == TrialState.FAIL]
    assert {t.user_attrs["skipped"] for t in skipped} == {"beyond the trial cap of 3"}
    assert study.user_attrs["spec"]["study"]["trials"] == 3  # every worker sees the new cap
    runner.run(spec, storage=storage_url, jobs=2, trials=5)  # raising it again adds two
    assert states(load(storage_url, "r"))[TrialState.COMPLETE] == 5


@pytest.mark.slow
def test_workers_of_a_random_study_draw_different_points(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec = load_spec(_random_study(tmp_path, trials=40))  # enough that both get some
    top_up(open_study(spec, open_storage(url)), spec)
    workers = [start_cli("worker", "--study", "r", "--storage", url) for _ in range(2)]
    ran = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        ran.append(int(out.split()[2]))
    assert all(ran), f"one worker took every trial ({ran}): nothing was compared"
    # Each worker's draws in its own order: the same seed gives the same sequence (random
    # points of a small space may still meet by chance, so sets are not compared).
    by_worker: dict[str, list] = {}
    for t in load(url, "r").trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(tuple(sorted(t.params.items())))
    first, second = by_worker.values()
    k = min(len(first), len(second), 5)
    assert first[:k] != second[:k], "two workers drew the same sequence of points"


@pytest.mark.slow
def test_a_lowered_cap_on_a_grid_skips_the_points_beyond_it(tmp_path, storage_url):
    study_file, _spec = _queued_grid(tmp_path, storage_url)
    out = run_cli("run", str(study_file), "--storage", storage_url, "--trials", "5")
    assert out.returncode == 0, out.stderr
    assert states(load(storage_url, "g")) == {TrialState.COMPLETE: 5, TrialState.FAIL: 3}
    out = run_cli("status", "--storage", storage_url)
    assert "g: 5 complete, 3 skipped" in out.stdout


def _claim_and_die(study: optuna.Study) -> int:
    """A worker claims the next trial and is killed at once: no heartbeat after the claim."""
    trial_id = WriteBackStorage(study._storage._backend).claim(study._study_id, WORKER_TAGS)
    assert trial_id is not None
    time.sleep(2.2)  # the grace period of 1 s, plus SQLite's whole seconds
    return trial_id


@pytest.mark.slow
def test_a_trial_whose_workers_keep_dying_fails_after_max_retries(tmp_path, storage_url):
    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.enqueue_trial({"i": 7})
    for death in (1, 2, 3):
        _claim_and_die(study)
        assert len(recover(study, max_retries=3)) == 1
        left = states(study)
        assert left[TrialState.FAIL] == death
        assert left[TrialState.WAITING] == (0 if death == 3 else 1)
    last = study.trials[-1]
    assert last.user_attrs["fail_reason"] == "worker died 3 times"
    assert last.system_attrs["retry_history"] == [0, 1]
    assert last.system_attrs["fixed_params"] == {"i": 7}
    assert recover(study, max_retries=3) == []
    assert progress.pending(storage, study._study_id).empty


def _running_on(url: str, pid: int) -> bool:
    """Whether the worker process ``pid`` holds a RUNNING trial."""
    study = load(url, "g")
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return any(t.user_attrs.get("worker", "").endswith(f":{pid}") for t in running)


@pytest.mark.slow
def test_a_killed_host_is_waited_for_and_its_trial_finished_elsewhere(tmp_path, storage_url):
    # Host A runs `sweep run`, host B a `sweep worker`; B is killed mid-trial. A's run must not
    # leave before B's trial is recovered and finished, and must say what it waits for.
    slow_stale = {"SWEEP_HEARTBEAT_INTERVAL": "1", "SWEEP_GRACE_PERIOD": "6"}
    study_file, _spec = _queued_grid(tmp_path, storage_url, train_size=20_000, epochs=3)
    host_b = start_cli("worker", str(study_file), "--storage", storage_url, env=slow_stale)
    host_a = start_cli(
        "run", str(study_file), "--storage", storage_url, "--jobs", "1", env=slow_stale
    )
    try:
        wait_for(lambda: count_state(storage_url, "g", TrialState.COMPLETE) >= 1)
        wait_for(lambda: _running_on(storage_url, host_b.pid), interval=0.05)
    finally:
        host_b.send_signal(signal.SIGKILL)
        host_b.wait(timeout=30)
    _out, err = host_a.communicate(timeout=600)
    assert host_a.returncode == 0, err
    study = load(storage_url, "g")
    left = states(study)
    assert left[TrialState.COMPLETE] == 8 and not left[TrialState.RUNNING]
    assert set(completed_points(study).values()) == {1}
    assert "'s worker: silent for" in err
    lost = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.user_attrs.get("lost", "").startswith("worker") for t in lost] == [True]


@pytest.mark.slow
def test_a_point_gives_the_same_number_on_every_kind_of_worker(tmp_path):
    # A loky worker of `sweep run`, a `sweep worker` process (which would use every core) and
    # a dask worker: each runs the study's BLAS thread count, so float32 sums and the result
    # agree to the last bit.
    import distributed

    text = grid_study(tmp_path, train_size=5000, epochs=1).read_text()
    text = text.replace("seed = 0\n", "seed = 0\nthreads = 1\n")
    text = text.replace("hidden_1 = [64, 128, 16]", "hidden_1 = [128]")
    text = text.replace("hidden_2 = [32, 64]", "hidden_2 = [64]")
    text = text.replace("learning_rate = [0.1, 0.05]", "learning_rate = [0.1]")
    path = tmp_path / "one.toml"
    path.write_text(text)
    spec = load_spec(path)
    urls = {kind: f"sqlite:///{tmp_path / kind}.db" for kind in ("loky", "worker", "dask")}
    runner.run(spec, storage=urls["loky"], jobs=1)
    assert top_up(open_study(spec, open_storage(urls["worker"])), spec) == 1
    out = run_cli("worker", str(path), "--storage", urls["worker"])
    assert out.returncode == 0, out.stderr
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:  # fmt: skip
        runner.run(spec, storage=urls["dask"], jobs=1, backend="dask",
                   scheduler=cluster.scheduler_address)  # fmt: skip

    def result(url):  # the losses show a different summation order where accuracy may not
        t = load(url, "g").trials[0]
        return t.value, tuple(t.user_attrs["valid_loss"]), tuple(t.user_attrs["train_loss"])

    # The number the study's one thread gives, computed here under an explicit limit (this
    # machine's BLAS would use both cores, and sums in another order).
    reference = optuna.create_study(direction="maximize")
    reference.enqueue_trial({"hidden_1": 128, "hidden_2": 64, "learning_rate": 0.1})
    with threadpool_limits(limits=1, user_api="blas"):
        reference.optimize(Objective(spec), n_trials=1)
    t = reference.trials[0]
    expected = t.value, tuple(t.user_attrs["valid_loss"]), tuple(t.user_attrs["train_loss"])
    assert {kind: result(url) for kind, url in urls.items()} == dict.fromkeys(urls, expected)


def _claimed_and_silent(storage_url, run="r"):
    """A study with one trial, claimed under run ``run`` by a worker that then went silent."""
    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.enqueue_trial({"i": 7})
    tags = {**WORKER_TAGS, "run": run}
    trial_id = WriteBackStorage(storage).claim(study._study_id, tags)
    return storage, study, trial_id


@pytest.mark.slow
def test_recovery_leaves_a_trial_whose_finish_commits_while_it_waits(storage_url):
    # The worker's finishing write-back holds the trial's row; recovery, which saw a silent
    # heartbeat, must wait for it and then leave the finished trial alone.
    storage, study, trial_id = _claimed_and_silent(storage_url)
    time.sleep(2.2)  # silent past the grace period
    finish = storage.engine.connect()
    finish.begin()
    finish.execute(
        sqlalchemy.text("UPDATE trials SET state = 'COMPLETE' WHERE trial_id = :t"), {"t": trial_id}
    )
    found = []
    racer = threading.Thread(target=lambda: found.append(recover(study, max_retries=3)))
    racer.start()
    time.sleep(1.0)
    finish.commit()
    finish.close()
    racer.join(timeout=60)
    assert found == [[]]
    assert states(study) == {TrialState.COMPLETE: 1}
    assert "lost" not in study.trials[0].user_attrs


def test_a_run_whose_worker_processes_died_counts_a_death_at_once(storage_url):
    storage, study, _trial_id = _claimed_and_silent(storage_url, run="dead")
    other = WriteBackStorage(storage)
    study.enqueue_trial({"i": 8})
    other.claim(study._study_id, {**WORKER_TAGS, "run": "alive"})
    assert recovery.abandon_run(storage, study._study_id, "dead", max_retries=3) == [0]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert trials[0].user_attrs["lost"] == "worker host:1 died with its run's processes"
    assert trials[2].system_attrs["retry_history"] == [0]
    assert recovery.release_run(storage, study._study_id, "dead") == 0  # the other run's trial


def test_two_launchers_creating_one_study_with_different_specs_one_is_refused(
    tmp_path, storage_url, monkeypatch
):
    # Both read the study's attributes before either writes (a barrier makes the race
    # certain): a check-then-set of the stored spec would let both store their own spec.
    specs = []
    for epochs in (1, 2):
        (tmp_path / str(epochs)).mkdir()
        specs.append(load_spec(grid_study(tmp_path / str(epochs), epochs=epochs)))
    together = threading.Barrier(2, timeout=5)
    read = optuna.storages.RDBStorage.get_study_user_attrs

    def read_together(self, study_id):
        attrs = read(self, study_id)
        with contextlib.suppress(threading.BrokenBarrierError):
            together.wait()
        return attrs

    monkeypatch.setattr(optuna.storages.RDBStorage, "get_study_user_attrs", read_together)
    errors = []

    def launch(spec):
        try:
            open_study(spec, open_storage(storage_url))
        except SpecError as e:
            errors.append(str(e))

    racers = [threading.Thread(target=launch, args=(spec,)) for spec in specs]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert len(errors) == 1 and "[train.epochs] differs from the stored study" in errors[0]


def test_sigterm_to_a_worker_exits_143_and_gives_its_trial_back(tmp_path, storage_url):
    _queued_grid(tmp_path, storage_url, train_size=20_000, epochs=3)
    worker = start_cli("worker", "--study", "g", "--storage", storage_url)
    wait_for(lambda: _running_on(storage_url, worker.pid), interval=0.05)
    worker.send_signal(signal.SIGTERM)
    _out, err = worker.communicate(timeout=60)
    assert worker.returncode == 143, err
    assert err.strip().splitlines()[-1] == "sweep: terminated; rerun to resume"
    assert not states(load(storage_url, "g"))[TrialState.RUNNING]


def test_a_copied_study_is_not_joined_as_its_original(tmp_path, storage_url):
    _queued_grid(tmp_path, storage_url)
    optuna.copy_study(from_study_name="g", from_storage=storage_url,
                      to_storage=storage_url, to_study_name="copy")  # fmt: skip
    out = run_cli("worker", "--study", "copy", "--storage", storage_url)
    assert out.returncode == 2
    assert "its stored spec is study 'g''s; join that one" in out.stderr


@pytest.mark.slow
def test_a_retry_history_of_another_type_is_ignored(storage_url):
    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING, system_attrs={"fixed_params": [1], "retry_history": "ab"}
        )
    )
    WriteBackStorage(storage).claim(study._study_id, WORKER_TAGS)
    time.sleep(2.2)
    assert recover(study, max_retries=3) == [0]
    replacement = study.trials[1]
    assert replacement.system_attrs["retry_history"] == [0]
    assert replacement.system_attrs["fixed_params"] == {}


def test_attributes_that_are_not_json_are_read_as_absent(tmp_path, storage_url):
    # optuna always writes JSON; a client writing the tables by SQL may not. A grid whose
    # queue holds a trial with garbage for fixed_params still tops up to each point once.
    _, spec = _queued_grid(tmp_path, storage_url)
    engine = sqlalchemy.create_engine(storage_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(
            "UPDATE trial_system_attributes SET value_json = 'not json {' "
            "WHERE key = 'fixed_params' AND trial_id = (SELECT min(trial_id) FROM trials)"
        ))  # fmt: skip
    study = optuna.load_study(study_name="g", storage=open_storage(storage_url))
    top_up(study, spec)  # reads the queue by SQL (optuna itself cannot load that trial)
    assert _rows_and_numbers(storage_url, study._study_id) == (9, 9)  # + the point it lost


def test_a_stored_spec_that_is_not_json_is_one_line(tmp_path, storage_url):
    study_file, _ = _queued_grid(tmp_path, storage_url)
    engine = sqlalchemy.create_engine(storage_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(
            "UPDATE study_user_attributes SET value_json = '{\"study\": ' WHERE key = 'spec'"
        ))  # fmt: skip
    out = run_cli("run", str(study_file), "--storage", storage_url)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "sweep: error: study 'g': its stored spec is not JSON" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_study_another_client_made_is_not_taken_over(tmp_path, storage_url, direction):
    theirs = optuna.create_study(study_name="g", storage=storage_url, direction=direction)
    theirs.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    out = run_cli("run", str(grid_study(tmp_path)), "--storage", storage_url)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "study 'g' was not made by sweep" in out.stderr
    after = optuna.load_study(study_name="g", storage=storage_url)
    assert len(after.trials) == 2 and after.user_attrs == {} and after.metric_names is None


@pytest.mark.slow
def test_a_refused_worker_leaves_the_database_file_as_it_was(tmp_path):
    path = tmp_path / "theirs.db"
    optuna.create_study(study_name="mini", storage=f"sqlite:///{path}").optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=1
    )
    before = path.read_bytes()
    for name in ("mini", "nosuch"):  # not sweep's; not there
        out = run_cli("worker", "--study", name, "--storage", f"sqlite:///{path}")
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert path.read_bytes() == before  # not even switched to WAL

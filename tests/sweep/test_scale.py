"""Scale-out and load: a dask.distributed cluster on loopback, and 8 writers with a reader
polling the database the way the dashboard does."""

import json
import threading
import time
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState

from sweep import runner
from sweep.queue.storage import open_storage
from sweep.study.spec import load_spec
from tests.sweep.helpers import completed_points, grid_study, load, start_cli, states, wait_for
from tests.sweep.test_runner import SERVE, start_cli_python


@pytest.mark.slow
def test_a_study_on_postgresql_runs_through_a_dask_cluster(tmp_path, postgres_server):
    import distributed

    from tests.postgres import fresh_database

    storage_url = fresh_database(postgres_server)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:  # fmt: skip
        spec = load_spec(grid_study(tmp_path))
        runner.run(spec, storage=storage_url, jobs=2, backend="dask",
                   scheduler=cluster.scheduler_address)  # fmt: skip
    study = load(storage_url, "g")
    assert set(completed_points(study).values()) == {1} and len(completed_points(study)) == 8
    assert states(study) == {TrialState.COMPLETE: 8}


def test_unreachable_dask_scheduler_is_a_clear_error(tmp_path, monkeypatch):
    from sweep.errors import StorageError

    monkeypatch.setattr(runner, "DASK_TIMEOUT_S", 1)  # a refused port fails at once anyway
    spec = load_spec(grid_study(tmp_path))
    with pytest.raises(StorageError, match=r"cannot reach the dask scheduler at tcp://127.0.0.1:1"):
        runner.run(spec, storage=f"sqlite:///{tmp_path / 'db.sqlite'}", backend="dask",
                   scheduler="tcp://127.0.0.1:1")  # fmt: skip


@pytest.mark.parametrize("reader", ["sql", "dashboard"])
@pytest.mark.slow
def test_8_writers_and_a_polling_reader(tmp_path, reader):
    path = tmp_path / "db.sqlite"
    url = f"sqlite:///{path}"
    study = optuna.create_study(study_name="o", storage=open_storage(url))
    n = 200
    for _ in range(n):
        study.enqueue_trial({}, skip_if_exists=False)
    polls, errors, done = [0], [], threading.Event()
    dashboard = None
    if reader == "dashboard":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dashboard = start_cli("dashboard", "--storage", url, "--port", str(port))
        api = f"http://127.0.0.1:{port}/api/studies"

        def poll_once():
            with urllib.request.urlopen(api, timeout=10) as r:
                json.load(r)

        wait_for(lambda: _ok(poll_once), timeout=60)
    else:
        watcher = optuna.load_study(study_name="o", storage=open_storage(url))

        def poll_once():
            watcher.get_trials(deepcopy=False)

    def poll():
        while not done.is_set():
            try:
                poll_once()
                polls[0] += 1
            except Exception as e:
                errors.append(repr(e))
            time.sleep(0.05)

    thread = threading.Thread(target=poll)
    thread.start()
    start = time.monotonic()
    workers = [start_cli_python(SERVE, url) for _ in range(8)]
    try:
        outs = [w.communicate(timeout=600) for w in workers]
    finally:
        done.set()
        thread.join()
        if dashboard is not None:
            dashboard.terminate()
            dashboard.wait(timeout=30)
    elapsed = time.monotonic() - start
    for w, (_, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, err
        assert "locked" not in err
    assert sum(int(out) for out, _ in outs) == n
    assert states(load(url, "o")) == {TrialState.COMPLETE: n}
    assert errors == [] and polls[0] > 5
    print(f"\n8 workers + {reader} reader: {n / elapsed:.1f} trials/s, {polls[0]} polls")


def _ok(fn) -> bool:
    try:
        fn()
        return True
    except OSError:
        return False

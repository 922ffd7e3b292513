"""Checkpoints: a killed or interrupted trial resumes where it was, with the result of a run that
never stopped; broken checkpoints cost time, never a result; the files stay bounded; the best
model is kept.

The kills are real (SIGKILL of a `sweep run` worker, SIGINT to the launcher's process group).
To kill "in the middle of epoch 6" however fast an epoch is, the workers run with
tests/sweep/stall on PYTHONPATH: the first of them to finish training epoch 6 stalls there,
after epoch 5's checkpoint and before epoch 6's, and writes its pid for the test to kill.
"""

import json
import multiprocessing
import os
import signal
import threading
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sweep import runner
from sweep.errors import SpecError, StorageError
from sweep.queue.attrs import BEST_MODEL, CHECKPOINT, RESUME_FROM
from sweep.queue.storage import open_storage
from sweep.study.spec import load_spec
from sweep.trial.artifacts import open_store
from sweep.trial.cleanup import keep_best
from tests.sweep.helpers import load, run_cli, stalled_env, start_cli, wait_for

EPOCHS, STALL_AT = 10, 6
#: Every epoch checkpointed, whatever it costs.

STUDY = """
[study]
name = "{name}"
sampler = "grid"
seed = 0

[budget]
min_params = 0
max_params = 100_000

[data]
train_size = 2000

[train]
epochs = {epochs}
batch_size = 64
dtype = "float64"
momentum = 0.9
# Every kind of distortion, drawn from the trial's generator: the resumed run must draw the
# same digits as the uninterrupted one (#25).
shift = 2
rotation = 10.0
zoom = 0.1
shear = 0.15
elastic_alpha = 20.0

[space]
hidden_1 = {hidden_1}
hidden_2 = [8]
learning_rate = [0.05]
"""


def _study(tmp_path: Path, name: str = "c", hidden_1: str = "[16]") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDY.format(name=name, epochs=EPOCHS, hidden_1=hidden_1))
    return path


def _env(tmp_path: Path, stall: bool = True) -> dict[str, str]:
    return stalled_env(tmp_path, STALL_AT, stall)


def _reference(tmp_path: Path, study: Path) -> dict:
    """Each point's uninterrupted trial, by parameters."""
    url = f"sqlite:///{tmp_path / 'reference' / 'db.sqlite'}"
    (tmp_path / "reference").mkdir()
    runner.run(load_spec(study), storage=url, jobs=1)
    return {_key(t): t for t in load(url, load_spec(study).name).trials}


def _key(trial) -> str:
    return json.dumps(trial.params, sort_keys=True)


def _stalled(tmp_path: Path, proc) -> int:
    """The pid of the worker stalled after training epoch STALL_AT."""
    marker = tmp_path / "stalled.pid"

    def stalled() -> bool:
        assert proc.poll() is None, proc.stderr.read()
        return marker.exists() and bool(marker.read_text())

    wait_for(stalled)
    return int(marker.read_text())


def _checkpoint_epoch(url: str, name: str) -> int | None:
    try:
        running = [t for t in load(url, name).trials if t.state == TrialState.RUNNING]
    except KeyError:
        return None
    epochs = [t.system_attrs.get(CHECKPOINT, {}).get("epoch") for t in running]
    return max((e for e in epochs if e), default=None)


def _assert_same_as_uninterrupted(trial, reference) -> None:
    ref = reference[_key(trial)]
    assert trial.value == ref.value
    assert trial.intermediate_values == ref.intermediate_values
    assert len(trial.intermediate_values) == EPOCHS
    for curve in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
        assert trial.user_attrs[curve] == ref.user_attrs[curve], curve


def _best(url: str) -> dict:
    study = load(url, "c")
    return study._storage.get_study_system_attrs(study._study_id)[BEST_MODEL]


def _artifacts(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _kill_mid_epoch(tmp_path: Path, study: Path, url: str, sig: int, *, jobs: int = 2):
    """Start `sweep run`, wait until a worker is in epoch STALL_AT with epoch STALL_AT - 1
    checkpointed, and send ``sig``: SIGKILL to that worker, SIGINT to the launcher's group.
    (Two jobs at least: joblib runs a single one in the launcher's own process.)"""
    proc = start_cli("run", str(study), "--storage", url, "--jobs", str(jobs), env=_env(tmp_path))
    pid = _stalled(tmp_path, proc)
    name = load_spec(study).name
    assert wait_for(lambda: _checkpoint_epoch(url, name) == STALL_AT - 1)
    if sig == signal.SIGKILL:
        os.kill(pid, signal.SIGKILL)
    else:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    return proc


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGKILL, 1), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_a_killed_trial_resumes_after_its_last_epoch_with_an_uninterrupted_result(
    tmp_path, sig, code
):
    study = _study(tmp_path)
    reference = _reference(tmp_path, study)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    proc = _kill_mid_epoch(tmp_path, study, url, sig)
    err = proc.stderr.read()
    assert proc.returncode == code, err
    [waiting] = [t for t in load(url, "c").trials if t.state == TrialState.WAITING]
    given = waiting.system_attrs[RESUME_FROM]
    assert given["epoch"] == STALL_AT - 1
    out = run_cli("run", str(study), "--storage", url, "--jobs", "1", env=_env(tmp_path, False))
    assert out.returncode == 0, out.stderr
    assert "cannot resume" not in out.stderr, out.stderr
    [done] = [t for t in load(url, "c").trials if t.state == TrialState.COMPLETE]
    assert done.user_attrs["resumed_from_epoch"] == STALL_AT - 1
    assert done.user_attrs["resumed_from_trial"] == given["trial"]
    assert done.user_attrs["epochs_run"] == EPOCHS - STALL_AT + 1  # epochs 6-10 only
    if sig == signal.SIGINT:  # released: the same trial, back in the queue
        assert done.number == given["trial"]
    _assert_same_as_uninterrupted(done, reference)
    # Only the best model's weights are left.
    best = _best(url)
    assert best["trial"] == done.number and best["value"] == done.value
    assert _artifacts(tmp_path / "artifacts") == {best["artifact_id"]}


@pytest.mark.slow
def test_a_corrupt_checkpoint_restarts_from_epoch_1_with_one_warning(tmp_path):
    study = _study(tmp_path)
    reference = _reference(tmp_path, study)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _kill_mid_epoch(tmp_path, study, url, signal.SIGKILL)
    [waiting] = [t for t in load(url, "c").trials if t.state == TrialState.WAITING]
    artifact = tmp_path / "artifacts" / waiting.system_attrs[RESUME_FROM]["artifact_id"]
    data = artifact.read_bytes()
    artifact.write_bytes(data[: len(data) // 2] + b"\x00" * (len(data) - len(data) // 2))
    out = run_cli("run", str(study), "--storage", url, "--jobs", "1", env=_env(tmp_path, False))
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "cannot resume" in line]
    assert len(warnings) == 1, out.stderr
    assert "training from epoch 1" in warnings[0]
    assert "Traceback" not in out.stderr
    [done] = [t for t in load(url, "c").trials if t.state == TrialState.COMPLETE]
    assert "resumed_from_epoch" not in done.user_attrs
    _assert_same_as_uninterrupted(done, reference)
    assert not artifact.exists()  # of no use: deleted


@pytest.mark.slow
def test_a_trial_whose_workers_died_for_good_leaves_no_checkpoint(tmp_path):
    # max_retries = 1: the killed trial ends FAIL and nobody takes its work over; the next
    # run's workers, finding the queue empty, delete what it left.
    study = _study(tmp_path)
    study.write_text(study.read_text().replace("seed = 0", "seed = 0\nmax_retries = 1"))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    proc = _kill_mid_epoch(tmp_path, study, url, signal.SIGKILL)
    assert proc.returncode == 1
    assert _artifacts(tmp_path / "artifacts")  # its checkpoint, until then
    out = run_cli("run", str(study), "--storage", url, "--jobs", "1", env=_env(tmp_path, False))
    [dead] = load(url, "c").trials
    assert dead.state == TrialState.FAIL and "died" in dead.user_attrs["fail_reason"], out.stderr
    assert _artifacts(tmp_path / "artifacts") == set()
    assert not any(k.startswith("artifacts:") for k in dead.system_attrs)


def _pointers(trials) -> list:
    """Each trial's state and the artifacts it names: what a failure should show."""
    keys = (CHECKPOINT, RESUME_FROM, "resumed_from")
    return [
        (t.number, t.state.name, {k: t.system_attrs[k] for k in t.system_attrs if k in keys},
         sorted(k[10:18] for k in t.system_attrs if k.startswith("artifacts:")))
        for t in trials
    ]  # fmt: skip


def _complete(url: str) -> int:
    try:
        return sum(t.state == TrialState.COMPLETE for t in load(url, "c").trials)
    except KeyError:
        return 0


#: Where the other worker is, kill by kill, when the stalled one is killed (loky then kills it
#: too, and the launcher ends its run): in training; after its trial's ``tell`` and before the
#: trial's end cleans up; inside that end, its files deleted and their names not yet
#: (tests/sweep/stall).
THEN = ("epoch", "ended", "unnamed")


def _expected(url: str, then: str) -> set[str]:
    """What the folder holds while both workers are stalled, ``then`` giving where the second
    is: each RUNNING trial's checkpoint, the best model and, if a trial ended and its end has
    not begun, that trial's checkpoint. Nothing else: what earlier runs' kills left was cleared
    when this run started."""
    trials = load(url, "c").trials
    pointers = {
        t.number: t.system_attrs[CHECKPOINT]["artifact_id"]
        for t in trials if CHECKPOINT in t.system_attrs
    }  # fmt: skip
    running = {pointers[t.number] for t in trials
               if t.state == TrialState.RUNNING and t.number in pointers}  # fmt: skip
    ended = {
        pointers[t.number] for t in trials if t.state == TrialState.COMPLETE
        and t.number in pointers and f"artifacts:{pointers[t.number]}" in t.system_attrs
    }  # fmt: skip
    return running | {_best(url)["artifact_id"]} | (ended if then == "ended" else set())


def _held_as_expected(url: str, folder: Path, then: str) -> None:
    """The folder holds ``_expected``: waited for until the stalled workers' held pointers
    reach the database (a heartbeat's write-back), at most a minute."""
    try:
        wait_for(lambda: _artifacts(folder) == _expected(url, then), timeout=60)
    except AssertionError:
        trials = load(url, "c").trials
        assert _artifacts(folder) == _expected(url, then), _pointers(trials)


def _left_by(url: str, folder: Path, then: str) -> None:
    """The other worker stopped where ``then`` says, and left what a kill there leaves."""
    trials, best = load(url, "c").trials, f"artifacts:{_best(url)['artifact_id']}"
    ended = [t for t in trials if t.state == TrialState.COMPLETE
             and any(k.startswith("artifacts:") and k != best for k in t.system_attrs)]  # fmt: skip
    if then == "epoch":  # both trials in training, handed on with their checkpoints
        assert ended == [], _pointers(trials)
        assert sum(RESUME_FROM in t.system_attrs for t in trials) == 2, _pointers(trials)
    elif then == "ended":  # a COMPLETE trial whose end never began: its files and names
        [cut] = ended
        assert cut.system_attrs[CHECKPOINT]["artifact_id"] in _artifacts(folder)
    else:  # trials whose end was cut short: names of files that are gone
        names = {k[len("artifacts:") :] for t in ended for k in t.system_attrs
                 if k.startswith("artifacts:")}  # fmt: skip
        assert names - _artifacts(folder), _pointers(trials)


@pytest.mark.slow
def test_the_artifacts_stay_bounded_through_kills_and_only_the_best_model_is_left(tmp_path):
    # A 30-point grid; three times one worker stalls in epoch 6 of a trial and the other at a
    # known point (THEN), the folder is checked, and the first is killed; then a last run
    # finishes the grid. Each run starts by finishing the trial ends the last kill cut short,
    # and takes the trials it handed on, with their checkpoints, before any other.
    jobs, points = 2, 30
    widths = ", ".join(str(8 + 2 * i) for i in range(points))
    study = _study(tmp_path, hidden_1=f"[{widths}]")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    folder = tmp_path / "artifacts"
    marker, then_marker = tmp_path / "stalled.pid", tmp_path / "then.pid"
    counts: list[int] = []
    stop = threading.Event()

    crowded: list[set[str]] = []  # what the folder held when it held too much

    def poll() -> None:
        while not stop.is_set():
            held = _artifacts(folder)
            counts.append(len(held))
            if len(held) > 2 * jobs + 1:
                crowded.append(held)
            stop.wait(0.01)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        for kill, then in enumerate(THEN):
            marker.write_text("")  # no worker stalls while it exists
            then_marker.unlink(missing_ok=True)
            env = _env(tmp_path) | {
                "SWEEP_TEST_STALL_THEN": then, "SWEEP_TEST_STALL_THEN_FILE": str(then_marker)
            }  # fmt: skip
            proc = start_cli("run", str(study), "--storage", url, "--jobs", str(jobs), env=env)
            done = 6 * (kill + 1)  # kills spread over the grid
            wait_for(lambda done=done: _complete(url) >= done)
            marker.unlink()
            first = _stalled(tmp_path, proc)
            wait_for(lambda proc=proc: proc.poll() is None and then_marker.exists()
                     and then_marker.read_text())  # fmt: skip
            _held_as_expected(url, folder, then)
            os.kill(first, signal.SIGKILL)
            proc.wait(timeout=120)
            assert proc.returncode == 1, proc.stderr.read()
            _left_by(url, folder, then)
        out = run_cli("run", str(study), "--storage", url, "--jobs", str(jobs),
                      env=_env(tmp_path, False))  # fmt: skip
        assert out.returncode == 0, out.stderr
    finally:
        stop.set()
        watcher.join()
    trials = load(url, "c").trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["hidden_1"] for t in complete) == [8 + 2 * i for i in range(points)]
    assert sum("resumed_from_epoch" in t.user_attrs for t in complete) >= len(THEN) + 1
    # Each running worker's checkpoint and, while it replaces it, the next one; the best model.
    assert max(counts) <= 2 * jobs + 1, (max(counts), crowded[:3], _pointers(trials))
    best = _best(url)
    top = max(complete, key=lambda t: t.value)
    assert best["value"] == top.value
    assert _artifacts(folder) == {best["artifact_id"]}
    # and only the best model is still named on its trial (the dashboard lists no other)
    names = [k for t in trials for k in t.system_attrs if k.startswith("artifacts:")]
    assert names == [f"artifacts:{best['artifact_id']}"]


# -- the artifact store's URL ------------------------------------------------------------------


def test_artifact_urls(tmp_path, monkeypatch):
    from optuna.artifacts import FileSystemArtifactStore

    assert isinstance(open_store(str(tmp_path / "a")), FileSystemArtifactStore)
    assert (tmp_path / "a").is_dir()
    open_store(f"file://{tmp_path / 'b'}")
    assert (tmp_path / "b").is_dir()
    for bad in ("ftp://host/x", "file://otherhost/x", "s3://", "s3://B_ad/x", "", "a\x00b"):
        with pytest.raises(SpecError, match="artifacts"):
            open_store(bad)
    monkeypatch.setitem(__import__("sys").modules, "boto3", None)
    with pytest.raises(StorageError, match="needs boto3"):
        open_store("s3://bucket/prefix")
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="cannot use"):
        open_store(str(tmp_path / "file" / "sub"))


def test_a_bad_artifacts_url_is_one_line_and_exit_2(tmp_path):
    study = _study(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    out = run_cli("run", str(study), "--storage", url, "--artifacts", "ftp://x/y")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "sweep: error: --artifacts must be a folder, file:///folder or s3://bucket/prefix; "
        "got 'ftp://x/y'"
    ]


# -- the best model: a compare-and-set ---------------------------------------------------------


def _offer(url: str, study_id: int, first: int, step: int, barrier) -> None:
    """Offer models of rising value, as workers finishing better and better trials do."""
    rdb = open_storage(url)
    keep_best(rdb, study_id, {"artifact_id": "warm", "trial": 0, "value": 0.0})  # connected
    barrier.wait()
    for value in range(first, 2000, step):
        keep_best(rdb, study_id, {"artifact_id": f"a{value}", "trial": value, "value": value})


@pytest.mark.slow
def test_keep_best_keeps_the_better_model(storage_url):
    import optuna

    rdb = open_storage(storage_url)
    study = optuna.create_study(storage=rdb, study_name="b", direction="maximize")
    sid = study._study_id
    assert keep_best(rdb, sid, {"artifact_id": "x", "trial": 0, "value": 50.0}) == (True, None)
    assert keep_best(rdb, sid, {"artifact_id": "y", "trial": 1, "value": 40.0}) == (False, None)
    replaced = {"artifact_id": "x", "trial": 0, "value": 50.0}
    assert keep_best(rdb, sid, {"artifact_id": "z", "trial": 2, "value": 60.0}) == (True, replaced)
    # Many workers finishing at once, again and again: the best of them is kept.
    n = 4
    barrier = multiprocessing.get_context("spawn").Barrier(n)
    procs = [
        multiprocessing.get_context("spawn").Process(
            target=_offer, args=(storage_url, sid, 100 + i, n, barrier)
        )
        for i in range(n)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)  # a guard against a hang, not a speed limit: under load a worker took > 60 s
        assert p.exitcode == 0
    stored = rdb.get_study_system_attrs(sid)[BEST_MODEL]
    assert stored["value"] == 1999 and stored["artifact_id"] == "a1999"


@pytest.mark.slow
def test_keep_best_waits_for_the_study_lock(postgres_server):
    """The compare-and-set reads the stored best under the study lock: while another
    transaction holds it (as a second worker's keep_best would), it waits."""
    import optuna
    import sqlalchemy

    from sweep.queue import tables as tb
    from tests.postgres import fresh_database

    url = fresh_database(postgres_server)
    rdb = open_storage(url)
    sid = optuna.create_study(storage=rdb, study_name="b", direction="maximize")._study_id
    done = threading.Event()
    with rdb.engine.begin() as conn:
        conn.execute(
            sqlalchemy.select(tb.studies.c.study_id)
            .where(tb.studies.c.study_id == sid)
            .with_for_update(key_share=True)  # NO KEY UPDATE: lets foreign-key checks pass
        )
        offer = {"artifact_id": "x", "trial": 0, "value": 1.0}
        t = threading.Thread(target=lambda: (keep_best(open_storage(url), sid, offer), done.set()))
        t.start()
        assert not done.wait(2.0), "keep_best did not wait for the study lock"
    t.join(30)
    assert done.is_set()
    assert rdb.get_study_system_attrs(sid)[BEST_MODEL]["artifact_id"] == "x"

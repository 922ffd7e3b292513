"""A `sweep worker` under a batch scheduler's signals (#29): SIGTERM (``scancel``, a time limit,
preemption) and SIGUSR2 (submitit's warning, ``--signal=USR2@90``) mid-trial give the trial back
at once with its last epoch's checkpoint, and the next worker goes on from there, losing at most
the epoch that was running; a worker started after its study finished (a batch array's late
task) exits 0 without running anything.

The worker stalls after training epoch STALL_AT, before that epoch's checkpoint
(tests/sweep/stall): the signal lands "in the middle of epoch STALL_AT + 1" however fast an
epoch is, with epoch STALL_AT - 1 checkpointed.
"""

import contextlib
import os
import signal
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sweep.errors import Terminated, on_stop_signals_raise_terminated
from sweep.queue.attrs import CHECKPOINT, RESUME_FROM
from sweep.queue.storage import open_storage
from sweep.queue.writeback import WriteBackStorage
from sweep.study.joining import open_study, top_up
from sweep.study.spec import load_spec
from sweep.worker import serve
from tests.sweep.helpers import grid_study, load, run_cli, stalled_env, start_cli, wait_for

EPOCHS, STALL_AT = 4, 3

STUDY = """
[study]
name = "s"
sampler = "grid"
seed = 0
[budget]
min_params = 0
max_params = 100_000
[data]
train_size = 500
[train]
epochs = {epochs}
batch_size = 50
[space]
hidden_1 = [16]
hidden_2 = [8]
learning_rate = [0.05]
"""


def _queued(tmp_path: Path) -> tuple[Path, str]:
    study = tmp_path / "s.toml"
    study.write_text(STUDY.format(epochs=EPOCHS))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec = load_spec(study)
    top_up(open_study(spec, open_storage(url)), spec)
    return study, url


def _env(tmp_path: Path, stall: bool) -> dict[str, str]:
    return stalled_env(tmp_path, STALL_AT, stall)


def _checkpointed(url: str) -> int | None:
    running = load(url, "s").get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return max((t.system_attrs.get(CHECKPOINT, {}).get("epoch", 0) for t in running), default=None)


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGUSR2, 140, "terminated by SIGUSR2")],
)
def test_a_stop_signal_mid_trial_gives_it_back_at_once_and_the_next_worker_resumes_it(
    tmp_path, sig, code, word
):
    study, url = _queued(tmp_path)
    worker = start_cli("worker", str(study), "--storage", url, env=_env(tmp_path, stall=True))
    marker = tmp_path / "stalled.pid"
    try:  # a failed wait must not leave the stalled worker for 600 s
        wait_for(lambda: worker.poll() is None and marker.exists() and marker.read_text())
        assert int(marker.read_text()) == worker.pid  # `sweep worker` trains in its own process
        assert wait_for(lambda: _checkpointed(url) == STALL_AT - 1)
        worker.send_signal(sig)
        _, err = worker.communicate(timeout=60)  # at once: the stall would last 600 s
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)  # its own group (start_cli): nothing else
        worker.wait(timeout=10)
    assert worker.returncode == code, err
    assert err.splitlines()[-1] == f"sweep: {word}; rerun to resume"
    [waiting] = load(url, "s").trials  # given back (released), not left RUNNING to go stale
    assert waiting.state == TrialState.WAITING
    assert waiting.system_attrs[RESUME_FROM]["epoch"] == STALL_AT - 1

    out = run_cli("worker", str(study), "--storage", url, env=_env(tmp_path, stall=False))
    assert out.returncode == 0, out.stderr
    [done] = load(url, "s").trials
    assert done.state == TrialState.COMPLETE
    assert done.user_attrs["resumed_from_epoch"] == STALL_AT - 1
    # Epochs 1..STALL_AT trained before the signal, STALL_AT..EPOCHS after: one epoch lost.
    assert done.user_attrs["epochs_run"] == EPOCHS - STALL_AT + 1
    assert len(done.intermediate_values) == EPOCHS


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["grid", "random"])
def test_a_worker_started_after_its_study_finished_exits_0_and_runs_nothing(tmp_path, sampler):
    extra = "" if sampler == "grid" else 'sampler = "random"\ntrials = 2'
    study = grid_study(tmp_path, train_size=200, epochs=1, extra_study=extra)
    if sampler != "grid":  # the file's grid sampler line is overridden by the later one
        study.write_text(study.read_text().replace('sampler = "grid"\n', "", 1))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert run_cli("run", str(study), "--storage", url, "--jobs", "1").returncode == 0
    before = [(t.number, t.state, t.datetime_complete) for t in load(url, "g").trials]
    for how in (["--study", "g"], [str(study), "--wait", "600"]):  # --wait: no wait either
        # A bounded run: a worker that waited for work that never comes would fail here.
        out = run_cli("worker", *how, "--storage", url, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "worker ran 0 trial(s); study 'g' has nothing left to claim\n"
        assert [(t.number, t.state, t.datetime_complete) for t in load(url, "g").trials] == before


@contextlib.contextmanager
def _handled():
    """SIGTERM raising ``Terminated`` in this process, as in a worker's; pytest's own after."""
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        on_stop_signals_raise_terminated()
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _sigterm(*_: object) -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in this (the main) thread at once


def test_a_second_sigterm_during_the_release_still_gives_the_trial_back(tmp_path, monkeypatch):
    # scancel, then SLURM's or a user's second SIGTERM while the first one's release is under
    # way: the release completes, and the worker ends as terminated after it.
    _, url = _queued(tmp_path)
    release = WriteBackStorage.release

    def slow_release(self, trial_id):
        _sigterm()
        return release(self, trial_id)

    monkeypatch.setattr(WriteBackStorage, "release", slow_release)
    with _handled(), pytest.raises(Terminated):
        serve(load(url, "s"), _sigterm, run_id="r")
    assert [t.state for t in load(url, "s").trials] == [TrialState.WAITING]


def test_a_sigterm_just_after_the_claim_gives_the_trial_back(tmp_path, monkeypatch):
    # The signal lands after the claim committed, before the worker is in the code that gives
    # its trial back: held, and raised there.
    _, url = _queued(tmp_path)
    claim = WriteBackStorage.claim

    def claim_then_signal(self, study_id, tags):
        claimed = claim(self, study_id, tags)
        _sigterm()
        return claimed

    monkeypatch.setattr(WriteBackStorage, "claim", claim_then_signal)
    with _handled(), pytest.raises(Terminated):
        serve(load(url, "s"), pytest.fail, run_id="r")
    assert [t.state for t in load(url, "s").trials] == [TrialState.WAITING]


def test_a_stop_signal_the_platform_lacks_is_skipped(monkeypatch):
    # Windows has no SIGUSR2: the worker takes the signals there are, and starts.
    import sweep.errors

    monkeypatch.setattr(sweep.errors, "STOP_SIGNALS", ("SIGTERM", "SIGNOSUCH"))
    assert sweep.errors.stop_signals() == [signal.SIGTERM]


def test_a_trial_given_back_does_not_wait_for_a_heartbeat_held_up_in_the_database(
    tmp_path, monkeypatch
):
    # A beat in SQLite's busy wait (up to 60 s) while SIGTERM comes: the trial is given back
    # without it; the beat, a daemon thread's, ends on its own.
    import threading

    _, url = _queued(tmp_path)
    beating, let_go, beat_ended = threading.Event(), threading.Event(), threading.Event()

    def held_up_beat(self, trial_id):
        beating.set()
        let_go.wait(20)
        beat_ended.set()

    def objective(trial):
        assert beating.wait(10)
        _sigterm()

    monkeypatch.setattr(WriteBackStorage, "get_heartbeat_interval", lambda self: 0.01)
    monkeypatch.setattr(WriteBackStorage, "record_heartbeat", held_up_beat)
    try:
        with _handled(), pytest.raises(Terminated):
            serve(load(url, "s"), objective, run_id="r")
        assert not beat_ended.is_set()  # given back while the beat was still held up
    finally:
        let_go.set()
    assert [t.state for t in load(url, "s").trials] == [TrialState.WAITING]

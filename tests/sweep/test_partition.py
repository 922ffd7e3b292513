"""A worker cut off from PostgreSQL mid-trial for longer than the grace period.

Worker A reaches the database only through a TCP proxy that the test cuts. While A is cut
off, worker B recovers A's silent trial (fails it and enqueues its replacement in one
transaction) and completes the replacement. When the proxy heals, A's late result must be
fenced off: the point keeps exactly one COMPLETE trial, B's, and A leaves quietly.
"""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep.queue import progress
from sweep.queue.storage import open_storage
from tests.postgres import fresh_database
from tests.sweep.helpers import wait_for

HEARTBEAT, GRACE = 1, 3
FAST_STALE = {"SWEEP_HEARTBEAT_INTERVAL": str(HEARTBEAT), "SWEEP_GRACE_PERIOD": str(GRACE)}
A_VALUE, B_VALUE = 1.0, 2.0

# One worker: serve the study with an objective that returns `value`. Until the file `gate`
# exists (at most 120 s, should the test die first), it reports an intermediate value every
# half second: the test, not a guessed sleep, makes A's result arrive after the heal, however
# slow the machine. B gets no gate and returns at once.
WORKER = """
import os, sys, time, optuna
from sweep.worker import serve
from sweep.queue.storage import open_storage
url, name, run_id, value, gate = sys.argv[1:]
optuna.logging.set_verbosity(optuna.logging.WARNING)

def objective(trial):
    i = trial.suggest_int("i", 0, 9)
    deadline, step = time.monotonic() + 120, 0
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        trial.report(float(i), step)  # held in memory while the database is out of reach
        step += 1
        time.sleep(0.5)
    return float(value)

study = optuna.load_study(study_name=name, storage=open_storage(url),
                          sampler=optuna.samplers.RandomSampler())
print(serve(study, objective, run_id=run_id))
"""


class _Pair:
    """A forwarded connection: the client's socket and the upstream one."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self._pumps_left = 2
        self._lock = threading.Lock()

    def shutdown(self) -> None:
        # Wakes both pumps (a close from another thread would not); the peers see EOF.
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pump_ended(self) -> None:
        self.shutdown()
        with self._lock:
            self._pumps_left -= 1
            last = self._pumps_left == 0
        if last:  # closed only once no thread uses them: a reused descriptor is never hit
            for s in self.sockets:
                s.close()


class Proxy:
    """A TCP forwarder on loopback to ``127.0.0.1:target``. ``cut()`` closes every forwarded
    connection and refuses new ones (accepted and closed at once, so the client fails fast
    instead of waiting for a timeout) until ``heal()``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # the accept loop sees close() within 0.2 s
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        self._cut = self._closed = False
        self._start(self._accept)

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                refuse = self._cut or self._closed
            if refuse:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.add(pair)
            self._start(self._pump, pair, client, upstream)
            self._start(self._pump, pair, upstream, client)

    def _pump(self, pair: _Pair, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._pairs.discard(pair)
            pair.pump_ended()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            pairs = list(self._pairs)
        for pair in pairs:
            pair.shutdown()

    def heal(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=10)


def _start_worker(url: str, name: str, run_id: str, value: float, gate: str, log: Path):
    """A worker process; its output goes to files (a full pipe would block its logging)."""
    out, err = open(log.with_suffix(".out"), "w"), open(log.with_suffix(".err"), "w")
    with out, err:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, url, name, run_id, str(value), gate],
            stdout=out,
            stderr=err,
            env={**os.environ, **FAST_STALE},
        )


def _output(log: Path) -> tuple[str, str]:
    return log.with_suffix(".out").read_text(), log.with_suffix(".err").read_text()


def _tail(text: str, lines: int = 30) -> str:
    """The end of a worker's log: enough to see why it stopped, without the whole cut."""
    return "\n".join(text.splitlines()[-lines:])


def _check_alive(proc: subprocess.Popen, log: Path) -> None:
    """Fail at once, with its output, if a worker that should still run has exited."""
    if proc.poll() is not None:
        out, err = _output(log)
        raise AssertionError(f"worker exited early ({proc.returncode}): {out}{_tail(err)}")


@pytest.mark.slow
def test_a_worker_cut_off_past_the_grace_period_cannot_complete_its_point_twice(
    postgres_server, tmp_path
):
    url = fresh_database(postgres_server)
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    rdb = open_storage(url)  # the test's own connections: direct, never through the proxy
    study = optuna.create_study(study_name="p", storage=rdb, direction="maximize")
    study.enqueue_trial({"i": 1})
    sid = study._study_id
    proxy = Proxy(port)
    proxied = url.replace(f":{port}/", f":{proxy.port}/")
    gate = tmp_path / "finish"
    a_log, b_log = tmp_path / "a", tmp_path / "b"
    procs: list[subprocess.Popen] = []

    def trials():
        return rdb.get_all_trials(sid, deepcopy=False)

    try:
        try:
            a = _start_worker(proxied, "p", "a", A_VALUE, str(gate), a_log)
            procs.append(a)

            def a_in_its_loop() -> bool:
                # An intermediate value in the database means A's objective is past its
                # start-up reads (a cut before them would be a worker failure, not this test).
                _check_alive(a, a_log)
                return any(t.state == TrialState.RUNNING and t.intermediate_values
                           for t in trials())  # fmt: skip

            wait_for(a_in_its_loop, timeout=120)
            (original,) = trials()
            assert original.user_attrs["run"] == "a"

            proxy.cut()
            cut_at = time.monotonic()
            b = _start_worker(url, "p", "b", B_VALUE, "", b_log)
            procs.append(b)
            # B leaves only when nothing is WAITING or RUNNING: after it recovered A's trial
            # (possible only once A had been silent for the grace period) and completed the
            # replacement. The proxy stays cut until then, so A is cut off all that time.
            b.wait(timeout=120)
            out, err = _output(b_log)
            assert b.returncode == 0, _tail(err)
            assert out.strip() == "1", f"B ran {out.strip()} trial(s), not 1: {_tail(err)}"
            assert time.monotonic() - cut_at > GRACE
            _check_alive(a, a_log)  # A outlived the cut, its trial running in its memory

            proxy.heal()
            gate.touch()  # now A's objective returns its late result
            a.wait(timeout=60)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=30)
            proxy.close()

        final = {t.number: t for t in trials()}
        assert collections.Counter(t.state for t in final.values()) == {
            TrialState.FAIL: 1,
            TrialState.COMPLETE: 1,
        }
        lost = final[original.number]
        assert lost.state == TrialState.FAIL and lost.values is None  # A's value never landed
        assert lost.user_attrs["lost"].startswith("worker ")
        (done,) = [t for t in final.values() if t.state == TrialState.COMPLETE]
        assert done.params == {"i": 1}
        assert done.value == B_VALUE
        assert done.user_attrs["run"] == "b"
        assert done.system_attrs["retry_history"] == [original.number]
        assert progress.pending(rdb, sid).empty

        # A's finish was fenced (tables.transition raised TrialGone, the write-back
        # UpdateFinishedTrialError), which serve logs and skips: A ran nothing and exits 0.
        out, err = _output(a_log)
        fenced = f"trial id {original._trial_id} was failed elsewhere while it ran"
        assert a.returncode == 0, _tail(err)
        assert out.strip() == "0", _tail(err)
        # The fence is the last thing A says: no traceback, no other complaint once the
        # database was back. (Before it, A logged each missed heartbeat and delayed
        # write-back of the cut as a warning with its traceback; a thread that died would
        # have said "Exception in thread".)
        assert err.rstrip().endswith(fenced), _tail(err)
        assert "Exception in thread" not in err, _tail(err)
        assert all(proc.returncode is not None for proc in procs)
    finally:
        rdb.engine.dispose()

"""``sweep status`` lists each study's workers by host: the hosts whose sweep workers hold its
RUNNING trials now (their claims' ``worker`` tag, ``host:pid``), each with how many; read
through the RUNNING range of the queue's index, never a walk of the study's trials."""

from __future__ import annotations

import json

import optuna
import sqlalchemy
from optuna.trial import TrialState

from sweep.queue import claims
from sweep.queue.status_reads import studies
from sweep.queue.storage import open_reader, open_storage
from tests.sweep.helpers import main_in_process
from tests.sweep.test_queue_scale import _plan, _Statements

EVIL = "evil\x1b[2Jhost"  # a tag another client wrote: no pid, an escape code


def _claimed(url: str) -> None:
    """Study 'w': a RUNNING trial of another client (no tags), five claimed by sweep workers
    on three hosts (one of them then finished), and a WAITING one; study 'idle': none."""
    rdb = open_storage(url)
    optuna.create_study(study_name="idle", storage=rdb)
    study = optuna.create_study(study_name="w", storage=rdb, direction="maximize")
    study.ask()  # another client's trial: RUNNING, without a worker's tag
    for _ in range(6):
        study.enqueue_trial({})
    sid = study._study_id
    held = [claims.claim(rdb, sid, {"run": "r", "worker": w})
            for w in ("nodeA:11", "nodeA:12", "nodeB:7", "nodeB:8", EVIL)]  # fmt: skip
    rdb.set_trial_state_values(held[3].trial_id, TrialState.COMPLETE, [1.0])  # nodeB:8 done


def test_status_lists_the_hosts_of_running_trials(storage_url):
    _claimed(storage_url)
    got = {s.name: s.workers for s in studies(open_reader(storage_url))}
    assert got == {"idle": {}, "w": {EVIL: 1, "nodeA": 2, "nodeB": 1}}
    out = main_in_process("status", "--storage", storage_url, "-f", "json")
    assert out.returncode == 0, out.stderr
    assert {s["name"]: s["workers"] for s in json.loads(out.stdout)} == got
    out = main_in_process("status", "--storage", storage_url)
    assert "  running on: evil?[2Jhost (1 trial), nodeA (2 trials), nodeB (1 trial)\n" in out.stdout
    assert out.stdout.count("running on") == 1 and "\x1b" not in out.stdout


def test_the_hosts_are_read_through_the_running_range_of_the_index(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    _claimed(url)
    reader = open_reader(url)
    with _Statements(reader) as sent:
        studies(reader)
    engine = sqlalchemy.create_engine(url)
    running = [(s, p) for s, p in sent.sent if "value_json" in s and "trial_user_attributes" in s]
    assert len(running) == 2  # one per study
    for statement, parameters in running:
        plan = _plan(engine, statement, parameters)
        assert "SEARCH trials USING COVERING INDEX ix_sweep_trials_queue (study_id=? AND state=?)" \
            in plan, plan  # fmt: skip
        assert "SCAN" not in plan, plan

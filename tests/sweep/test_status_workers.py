"""``sweep status`` lists each study's workers by host: the hosts whose sweep workers hold its
RUNNING trials now (their claims' ``worker`` tag, ``host:pid``), each with how many; read
through the RUNNING range of the queue's index, never a walk of the study's trials."""

from __future__ import annotations

import json
import re

import optuna
import sqlalchemy
from optuna.trial import TrialState

from sweep.queue import claims
from sweep.queue import tables as tb
from sweep.queue.attrs import MAX_HOST, WORKER_TAG, tag_host, worker_tag
from sweep.queue.status_reads import HOSTS_SHOWN, TAGS_READ, _prepared, studies
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
    got = {s.name: s.running_by_host for s in studies(open_reader(storage_url))}
    assert got == {"idle": {}, "w": {"nodeA": 2, EVIL: 1, "nodeB": 1}}  # the busiest first
    assert [list(hosts) for hosts in got.values()] == [[], ["nodeA", EVIL, "nodeB"]]
    out = main_in_process("status", "--storage", storage_url, "-f", "json")
    assert out.returncode == 0, out.stderr
    shown = {
        s["name"]: (s["running_by_host"], s["running_elsewhere"]) for s in json.loads(out.stdout)
    }
    assert shown == {name: (hosts, 0) for name, hosts in got.items()}
    out = main_in_process("status", "--storage", storage_url)
    assert "  running on: nodeA (2 trials), evil?[2Jhost (1 trial), nodeB (1 trial)\n" in out.stdout
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
        # no table walked: the one scan is of the grouped rows, for the window's total
        assert not re.search(r"SCAN (?!\(subquery)", plan), plan


def _running(url: str, tags: list[str]) -> int:
    """Study 'u' with one RUNNING trial per stored ``worker`` tag (its JSON text as another
    client may have written it: anything), by SQL; the study's id."""
    study = optuna.create_study(study_name="u", storage=open_storage(url))
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(tb.trials.insert(), [
            {"number": i, "study_id": study._study_id, "state": TrialState.RUNNING}
            for i in range(len(tags))])  # fmt: skip
        ids = conn.execute(sqlalchemy.select(tb.trials.c.trial_id).order_by(
            tb.trials.c.number)).scalars().all()  # fmt: skip
        rows = [{"trial_id": i, "key": WORKER_TAG, "value_json": t}
                for i, t in zip(ids, tags, strict=True)]  # fmt: skip
        conn.execute(tb.user_attrs.insert(), rows)
    engine.dispose()
    return study._study_id


def test_a_tag_is_written_and_read_by_one_decoder():
    for host in ("node01", "node:with:colons", "", "h\nx"):
        assert tag_host(worker_tag(host, 4242)) == host
    assert tag_host("h:²") == "h:²"  # not ASCII digits: not a pid
    assert tag_host(7) == tag_host(None) == "?" and len(tag_host("x" * 10**6)) == MAX_HOST


def test_tags_of_anyone_are_hosts_of_bounded_printable_text(storage_url):
    """A host with a line break, a tag that is not text or not JSON, a lone surrogate, a tag
    of 5 MB: each is a host of at most MAX_HOST characters, and the status is one line of
    printable text per study (and JSON that parses)."""
    huge = json.dumps("x" * (5 << 20) + ":1")
    tags = [json.dumps("node\nX:5"), "5", "not json", json.dumps("\ud800:1"), huge,
            json.dumps("y" * 300 + ":2")]  # fmt: skip
    _running(storage_url, tags)
    (row,) = studies(open_reader(storage_url))
    assert row.running_by_host == {"?": 3, "node\nX": 1, "\ud800": 1, "y" * MAX_HOST: 1}
    out = main_in_process("status", "--storage", storage_url)
    assert out.returncode == 0, out.stderr
    (line,) = [x for x in out.stdout.splitlines() if "running on" in x]
    assert line.startswith("  running on: ? (3 trials), ") and ", node?X (1 trial)" in line
    assert ", ? (1 trial)" in line and f", {'y' * 59}… (1 trial)" in line
    assert len(out.stdout) < 2000 and all(c.isprintable() for c in out.stdout.replace("\n", ""))
    out = main_in_process("status", "--storage", storage_url, "-f", "json")
    (record,) = json.loads(out.stdout)
    assert record["running_by_host"] == row.running_by_host and len(out.stdout) < 2000


def test_many_hosts_are_read_grouped_and_shown_busiest_first(tmp_path):
    """The database groups the RUNNING trials by tag and sends TAGS_READ rows at most; status
    shows the busiest HOSTS_SHOWN hosts and counts the others' trials together."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    n = TAGS_READ + 200
    tags = [json.dumps(worker_tag(f"n{i:04d}", 1)) for i in range(n)]
    tags += [json.dumps(worker_tag("busy", p)) for p in range(5)]  # one host, five workers
    sid = _running(url, tags)
    reader = open_reader(url)
    with reader.connect() as conn:
        rows = conn.execute(_prepared().running, {"sid": sid}).all()
    assert len(rows) == TAGS_READ and {r[2] for r in rows} == {n + 5}
    (row,) = studies(reader)
    assert list(row.running_by_host)[:1] == ["busy"] and row.running_by_host["busy"] == 5
    assert len(row.running_by_host) == HOSTS_SHOWN
    assert row.running_elsewhere == n + 5 - sum(row.running_by_host.values()) == n - 19
    out = main_in_process("status", "--storage", url)
    assert f"n0018 (1 trial) and {n - 19} trials on other hosts\n" in out.stdout

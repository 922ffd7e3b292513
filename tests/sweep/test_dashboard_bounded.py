"""The dashboard's bounded view of a large study (``sweep.queue.bounded``, issue #27): the
trials listed, the page's reload protocol, the refused writes and the start-up line."""

import io
import json
import shutil
import sqlite3
import sys
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard
import pytest
from optuna.trial import TrialState, create_trial

from sweep import cli, dashboard
from sweep.errors import StorageError
from sweep.queue import bounded as bd
from tests.sweep.dashboard_helpers import dump, storage

BEST, NEWEST = 3, 4
STATES = [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A study "big" (id 1) of 40 finished trials (COMPLETE, PRUNED and FAIL mixed, values in
    no order), then one RUNNING and one WAITING; and a study "small" (id 2) of 2 trials."""
    path = tmp_path_factory.mktemp("bounded") / "s.db"
    url = f"sqlite:///{path}"
    study = optuna.create_study(storage=url, study_name="big")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for i in range(40):
        state = STATES[i % 4]
        value = (i * 17) % 23 + 0.5 if state == TrialState.COMPLETE else None
        steps = {0: 1.0, 1: 0.5} if state != TrialState.FAIL else {}
        study.add_trial(create_trial(params={"x": i / 40}, distributions=dist, value=value,
                                     state=state, intermediate_values=steps,
                                     user_attrs={"seed": i}))  # fmt: skip
    study.enqueue_trial({"x": 0.5})
    study.ask()  # takes the WAITING one: trial 40 runs
    study.enqueue_trial({"x": 0.25})  # trial 41 waits
    small = optuna.create_study(storage=url, study_name="small")
    small.add_trial(create_trial(params={}, distributions={}, value=1.0))
    small.ask()
    return path


@pytest.fixture
def db(built, tmp_path):
    """A copy of ``built`` of this test's own."""
    path = tmp_path / "s.db"
    shutil.copy(built, path)  # plain optuna keeps SQLite's rollback journal: all is in the file
    return path


def expected(trials):
    """The view, worked out from every trial: best BEST COMPLETE, newest NEWEST COMPLETE or
    PRUNED, newest NEWEST FAIL and WAITING, every RUNNING."""
    of = lambda *states: [t for t in trials if t.state in states]  # noqa: E731
    best = sorted(of(TrialState.COMPLETE), key=lambda t: t.value)[:BEST]
    newest = of(TrialState.COMPLETE, TrialState.PRUNED)[-NEWEST:]
    chosen = best + newest + of(TrialState.FAIL)[-NEWEST:] + of(TrialState.WAITING)[-NEWEST:]
    return sorted({t.number for t in chosen + of(TrialState.RUNNING)})


def test_a_large_study_lists_its_best_newest_and_running_trials_whole(db):
    rdb = storage(db)
    every = rdb.get_all_trials(1)
    view = bd.BoundedStorage(rdb, threshold=10, best=BEST, newest=NEWEST).get_all_trials(1)
    assert [t.number for t in view] == expected(every) != [t.number for t in every]
    assert view == [every[t.number] for t in view]  # as optuna loads them, user attrs and all
    assert {t.state for t in view} == set(TrialState)


def test_a_small_study_lists_every_trial(db):
    rdb = storage(db)
    shown = bd.BoundedStorage(rdb, threshold=10, best=BEST, newest=NEWEST)
    assert shown.get_all_trials(2) == rdb.get_all_trials(2)
    assert shown.shown(2) is None
    everything = bd.BoundedStorage(rdb, threshold=42, best=BEST, newest=NEWEST)
    assert everything.get_all_trials(1) == rdb.get_all_trials(1)  # 42 trials: not above


def test_counts_and_the_best_trial_stay_true(db):
    rdb = storage(db)
    shown = bd.BoundedStorage(rdb, threshold=10, best=BEST, newest=NEWEST)
    assert shown.get_n_trials(1) == 42
    assert shown.get_n_trials(1, TrialState.FAIL) == 10
    assert shown.get_n_trials(1, (TrialState.COMPLETE, TrialState.PRUNED)) == 30
    assert shown.get_best_trial(1) == rdb.get_best_trial(1)


def get(app, path, query=""):
    """(status, JSON body) of one GET through the WSGI app."""
    environ = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    answer = []
    body = b"".join(app(environ, lambda status, headers, exc=None: answer.append(status)))
    return answer[0], json.loads(body)


@pytest.fixture
def app(db):
    shown = bd.BoundedStorage(storage(db), threshold=10, best=BEST, newest=NEWEST)
    return dashboard.bounded_lists(optuna_dashboard.wsgi(shown), shown)


def test_the_trial_list_of_a_large_study_begins_with_a_waiting_stand_in(db, app):
    status, detail = get(app, "/api/studies/1", "after=0")
    assert status.startswith("200")
    stand_in, *trials = detail["trials"]
    assert (stand_in["number"], stand_in["state"]) == (-1, "Waiting")
    text = bd.bounded_text(bd.Bounded("big", 42, BEST, NEWEST))
    assert stand_in["user_attrs"] == [{"key": "bounded view", "value": text}]
    assert [t["number"] for t in trials] == expected(storage(db).get_all_trials(1))
    assert detail["note"]["body"].startswith(f"**{text}.**")
    # The page asks again from its first WAITING trial: the stand-in, so the whole list.
    assert get(app, "/api/studies/1", "after=0")[1]["trials"] == [stand_in, *trials]
    assert get(app, "/api/studies/1", "after=3")[1]["trials"] == trials[2:]
    assert get(app, "/api/studies/1", "after=-1")[0].startswith("400")  # the dashboard's own
    studies = get(app, "/api/studies")[1]["study_summaries"]
    assert [s["study_name"] for s in studies] == ["big", "small"]


def test_the_trial_list_of_a_small_study_is_todays(db, app):
    status, detail = get(app, "/api/studies/2", "after=0")
    assert status.startswith("200")
    listed = [(t["number"], t["state"]) for t in detail["trials"]]
    assert listed == [(0, "Complete"), (1, "Running")]
    assert detail["note"]["body"] == ""
    assert [t["number"] for t in get(app, "/api/studies/2", "after=1")[1]["trials"]] == [1]


WRITES = [
    ("create_new_study", ([optuna.study.StudyDirection.MINIMIZE], "new")),
    ("delete_study", (1,)),
    ("set_study_user_attr", (1, "k", 1)),
    ("set_study_system_attr", (1, "dashboard:note_ver", 1)),
    ("create_new_trial", (1,)),
    ("set_trial_param", (41, "x", 0.5, optuna.distributions.FloatDistribution(0, 1))),
    ("set_trial_state_values", (41, TrialState.COMPLETE, [1.0])),
    ("set_trial_intermediate_value", (41, 0, 1.0)),
    ("set_trial_user_attr", (41, "k", 1)),
    ("set_trial_system_attr", (41, "k", 1)),
]


@pytest.mark.parametrize(("method", "args"), WRITES, ids=[w[0] for w in WRITES])
def test_every_write_is_refused_and_nothing_written(db, method, args):
    before = dump(db)
    shown = bd.BoundedStorage(storage(db), threshold=10)
    with pytest.raises(StorageError, match="read-only"):
        getattr(shown, method)(*args)
    assert dump(db) == before


def test_listing_writes_nothing(db, app):
    before = dump(db)
    get(app, "/api/studies/1")
    get(app, "/api/studies")
    assert dump(db) == before


def started(db, monkeypatch, *flags):
    """What ``sweep dashboard`` prints before serving (serve replaced by its on_ready)."""
    monkeypatch.setattr(bd, "THRESHOLD", 10)
    monkeypatch.setattr(bd, "BEST", BEST)
    monkeypatch.setattr(bd, "NEWEST", NEWEST)
    served = {}

    def serve(storage, *, on_ready, **kw):
        served["storage"] = storage
        on_ready("http://127.0.0.1:1/")

    monkeypatch.setattr(dashboard, "serve", serve)
    monkeypatch.setattr(sys, "stderr", err := io.StringIO())
    assert cli.main(["dashboard", "--storage", f"sqlite:///{db}", *flags]) == 0
    return err.getvalue().splitlines(), served["storage"]


def test_the_start_up_line_says_which_studies_are_bounded(db, monkeypatch):
    lines, shown = started(db, monkeypatch)
    text = bd.bounded_text(bd.Bounded("big", 42, BEST, NEWEST))
    assert lines[1:] == [text]
    assert text == (
        "study 'big' shows its best 3, newest 4 (and newest 4 failed and waiting) and running "
        "trials of 42; the whole study is in `sweep report` and SQL"
    )
    assert isinstance(shown, bd.BoundedStorage)


def test_with_writes_allowed_large_studies_are_shown_whole_and_said_so(db, monkeypatch):
    lines, shown = started(db, monkeypatch, "--allow-writes")
    assert lines[1:] == ["study 'big' has 42 trials: shown whole, slowly, as writes are allowed"]
    assert not isinstance(shown, bd.BoundedStorage)


def test_a_study_gone_between_the_checks_is_the_dashboards_own_answer(db, monkeypatch):
    # Bounded when the request came in, gone when its list was read: the app's 404 is passed
    # on, not read as a trial list.
    shown = bd.BoundedStorage(storage(db), threshold=10, best=BEST, newest=NEWEST)
    answers = iter([bd.Bounded("big", 42, BEST, NEWEST), None])
    monkeypatch.setattr(shown, "shown", lambda study_id: next(answers))
    app = dashboard.bounded_lists(optuna_dashboard.wsgi(shown), shown)
    status, body = get(app, "/api/studies/999", "after=3")
    assert status.startswith("404"), (status, body)


def test_a_large_study_without_stored_directions_is_listed_not_a_traceback(db):
    # Another client's SQL may leave a study without directions; the view is still read.
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM study_directions WHERE study_id = 1")
    view = bd.BoundedStorage(storage(db), threshold=10, best=BEST, newest=NEWEST).get_all_trials(1)
    assert [t.number for t in view] == expected(storage(db).get_all_trials(1))

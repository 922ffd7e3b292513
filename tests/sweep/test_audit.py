"""Trials outside the study's budget, from any client, are flagged by ``sweep status`` and the
report: optuna's own optimize with an objective of its own drew 768x1024 (1,400,586
parameters) in a study of 500,000 < parameters < 1,000,000, and nothing said so (issue 28)."""

import csv
import json

import optuna
import pytest

import sweep
from mlp.sizes import parameter_count
from sweep.queue import audit_reads
from sweep.queue.storage import open_storage
from sweep.queue.topup import top_up
from sweep.report import digest, parts
from sweep.report.writer import write_report
from sweep.study.audit import Audit, outside_budget, trial_widths
from sweep.study.joining import open_study
from sweep.study.spec import parse_spec
from tests.sweep.helpers import main_in_process


def _raw(space, train=None):
    return {
        "study": {"name": "t", "sampler": "tpe", "trials": 4},
        "budget": {"min_params": 500_000, "max_params": 1_000_000},
        "data": {"train_size": 300},
        "train": {"epochs": 1, "batch_size": 100, **(train or {})},
        "space": space,
    }


def _spec(space, train=None):
    return parse_spec(_raw(space, train))


RANGES = {"hidden_1": {"low": 300, "high": 1024}, "hidden_2": {"low": 100, "high": 1024}}


@pytest.mark.parametrize(
    ("space", "train", "params", "widths"),
    [
        (RANGES, None, {"hidden_1": 768, "hidden_2": 1024}, (768, 1024)),
        (RANGES, None, {"hidden_1": 768.0, "hidden_2": 1024}, (768, 1024)),  # a float's
        (RANGES, None, {"hidden_1": 768}, None),  # a searched width it lacks: not yet sampled
        (RANGES, None, {}, None),
        ({"hidden_1": RANGES["hidden_1"]}, {"hidden_2": 512}, {"hidden_1": 768}, (768, 512)),
        (RANGES, None, {"hidden_1": 0, "hidden_2": 8}, None),
        (RANGES, None, {"hidden_1": True, "hidden_2": 8}, None),
        ({"hidden_1": [512, 1024], "hidden_2": [256, 1024]}, None,
         {"architecture": "1024x256"}, (1024, 256)),  # the joint parameter of lists
        ({"depth": [1, 2], **RANGES}, None, {"hidden_1": 700}, None),  # its depth unsaid
        ({"depth": [1, 2], **RANGES}, None, {"depth": 1, "hidden_1": 700}, (700,)),
        ({"depth": [1, 2], "hidden_1": [512, 1024], "hidden_2": [256, 1024]}, None,
         {"depth": 2, "architecture_2": "512x1024"}, (512, 1024)),
        ({"depth": [1, 2], **RANGES}, None, {"depth": 9, "hidden_1": 700}, None),
        # another client's depth: a float distribution's, a categorical of text
        ({"depth": [1, 2], **RANGES}, None,
         {"depth": 2.0, "hidden_1": 768, "hidden_2": 1024}, (768, 1024)),
        ({"depth": [1, 2], **RANGES}, None,
         {"depth": "2", "hidden_1": 768, "hidden_2": 1024}, (768, 1024)),
        ({"depth": [1, 2], **RANGES}, None, {"depth": 1.5, "hidden_1": 700}, None),
        ({"depth": [1, 2], **RANGES}, None, {"depth": "two", "hidden_1": 700}, None),
        ({"depth": [1, 2], **RANGES}, None, {"depth": True, "hidden_1": 700}, None),
        ({"depth": [1, 2], **RANGES}, None, {"depth": 0, "hidden_1": 700}, None),
        ({"depth": [1, 2], **RANGES}, None, {"depth": 9.0, "hidden_1": 700}, None),
        # another client's text: digits int() refuses, or too many for it
        (RANGES, None, {"hidden_1": "\u00b2", "hidden_2": 8}, None),
        (RANGES, None, {"hidden_1": "9" * 5000, "hidden_2": 8}, None),
        (RANGES, None, {"hidden_1": "768", "hidden_2": 8}, (768, 8)),
    ],
)  # fmt: skip
def test_a_trials_network_is_read_from_its_parameters_as_the_objective_reads_them(
    space, train, params, widths
):
    assert trial_widths(params, _spec(space, train)) == widths


def test_a_network_outside_the_budget_is_flagged_and_one_inside_is_not():
    spec = _spec(RANGES)
    assert outside_budget({"hidden_1": 768, "hidden_2": 1024}, spec) == (
        "outside the budget: 768x1024, 1,400,586 parameters"
    )
    assert parameter_count(768, 1024) == 1_400_586
    assert outside_budget({"hidden_1": 512, "hidden_2": 768}, spec) is None
    assert outside_budget({}, spec) is None  # nothing to judge


def _theirs(tmp_path, trials, url=None):
    """A sweep study whose ``trials`` ((hidden_1, hidden_2, value) each) optuna's own ask and
    tell made, as another client's objective would (in a database at ``url``, else SQLite's
    in ``tmp_path``)."""
    url = url or f"sqlite:///{tmp_path / 'db.sqlite'}"
    open_study(_spec(RANGES), open_storage(url))
    theirs = optuna.load_study(study_name="t", storage=url)
    for h1, h2, value in trials:
        t = theirs.ask({"hidden_1": optuna.distributions.IntDistribution(h1, h1),
                        "hidden_2": optuna.distributions.IntDistribution(h2, h2)})  # fmt: skip
        theirs.tell(t, value)
    return url


def test_status_flags_a_best_trial_outside_the_budget(tmp_path):
    url = _theirs(tmp_path, [(512, 768, 97.0), (768, 1024, 98.5)])
    [status] = sweep.status(url)
    flag = "outside the budget: 768x1024, 1,400,586 parameters"
    assert status.best.number == 1 and status.best_outside == flag
    out = main_in_process("status", "--storage", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == (
        f"  best: trial 1, 98.50% (hidden_1=768, hidden_2=1024): {flag}"
    )
    out = main_in_process("status", "--storage", url, "--format", "json")
    assert json.loads(out.stdout)[0]["best_trial"]["outside_budget"] == flag
    (tmp_path / "in").mkdir()
    inside = _theirs(tmp_path / "in", [(512, 768, 97.0)])
    assert sweep.status(inside)[0].best_outside is None


def _outside_column(path):
    """trials.csv's ``outside_budget`` column, by trial number."""
    with path.open(newline="") as f:
        return {int(r["number"]): r["outside_budget"] for r in csv.DictReader(f)}


def test_status_counts_every_trial_outside_the_budget_not_only_the_best(tmp_path):
    url = _theirs(tmp_path, [(768, 1024, 90.0), (512, 768, 97.0), (1024, 1024, 91.0)])
    [status] = sweep.status(url)
    assert status.best.number == 1 and status.best_outside is None  # the best is inside
    assert (status.audit.judged, status.audit.every, status.audit.outside) == (3, True, [0, 2])
    out = main_in_process("status", "--storage", url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[2] == "  2 trial(s) outside the budget: #0, #2"
    out = main_in_process("status", "--storage", url, "--format", "json")
    assert json.loads(out.stdout)[0]["outside_budget_trials"] == {
        "judged": 3, "all_judged": True, "numbers": [0, 2]}  # fmt: skip


def test_status_judges_the_newest_trials_of_a_large_study_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_reads, "JUDGED", 2)
    monkeypatch.setattr(audit_reads, "EACH", 1)
    url = _theirs(tmp_path, [(768, 1024, 90.0), (512, 768, 97.0), (1024, 1024, 91.0)])
    [status] = sweep.status(url)
    assert (status.audit.judged, status.audit.every, status.audit.outside) == (2, False, [2])
    out = main_in_process("status", "--storage", url)
    assert out.stdout.splitlines()[2] == (
        "  1 trial(s) outside the budget among its newest 2 (a report judges all): #2"
    )


def test_a_partial_check_that_finds_nothing_says_how_many_it_judged(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_reads, "JUDGED", 2)
    monkeypatch.setattr(audit_reads, "EACH", 1)
    url = _theirs(tmp_path, [(768, 1024, 90.0), (512, 768, 97.0), (512, 700, 91.0)])
    out = main_in_process("status", "--storage", url)
    assert out.stdout.splitlines()[2] == (
        "  no trial outside the budget among its newest 2 (a report judges all)"
    )
    monkeypatch.setattr(audit_reads, "JUDGED", 3)  # every trial: the one it did not judge
    out = main_in_process("status", "--storage", url)
    assert out.stdout.splitlines()[2] == "  1 trial(s) outside the budget: #0"
    assert Audit(3, True, []).text() is None  # every trial judged, none outside: nothing


def test_the_bound_is_shared_among_the_studies_of_the_database(monkeypatch):
    monkeypatch.setattr(audit_reads, "JUDGED", 1_000)
    monkeypatch.setattr(audit_reads, "EACH", 10)
    # a small study is judged whole, and what it leaves goes to the others
    assert audit_reads.shares({1: 3, 2: 10**6, 3: 10**6}) == {1: 3, 2: 498, 3: 499}
    # 200 large studies: at least EACH each, however many share the bound
    many = audit_reads.shares(dict.fromkeys(range(200), 10**6))
    assert set(many.values()) == {10}
    assert audit_reads.shares({1: 0, 2: 5}) == {1: 0, 2: 5}


def test_status_judges_a_bound_for_all_studies_not_one_each(storage_url, monkeypatch):
    monkeypatch.setattr(audit_reads, "JUDGED", 4)
    monkeypatch.setattr(audit_reads, "EACH", 1)
    url = storage_url
    for name in ("a", "b", "c"):
        raw = _raw(RANGES)
        raw["study"]["name"] = name
        open_study(parse_spec(raw), open_storage(url))
        theirs = optuna.load_study(study_name=name, storage=url)
        for h1, h2 in [(768, 1024), (512, 768), (1024, 1024)]:
            t = theirs.ask({"hidden_1": optuna.distributions.IntDistribution(h1, h1),
                            "hidden_2": optuna.distributions.IntDistribution(h2, h2)})  # fmt: skip
            theirs.tell(t, 90.0)
    judged = [(s.audit.judged, s.audit.every, s.audit.outside) for s in sweep.status(url)]
    assert judged == [(1, False, [2]), (1, False, [2]), (2, False, [2])], judged
    out = main_in_process("status", "--storage", url)
    assert out.stdout.splitlines()[-1] == (
        "  1 trial(s) outside the budget among its newest 2 (a report judges all): #2"
    )


def test_status_passes_over_the_slots_a_lowered_cap_skipped(tmp_path, storage_url, monkeypatch):
    # a run's cap queued slots and a lower one skipped them (FAIL, never ran, no parameters):
    # they are not trials that ran, and the check judges the trials that did
    monkeypatch.setattr(audit_reads, "JUDGED", 20)
    url = _theirs(tmp_path, [(768, 1024, 90.0), (512, 768, 97.0), (512, 768, 91.0)],
                  storage_url)  # fmt: skip
    storage = open_storage(url, heartbeat_interval=None, grace_period=None)
    study_id = storage.get_study_id_from_name("t")
    top_up(storage, study_id, cap=60)
    top_up(storage, study_id, cap=3)
    odd = {}
    if url.startswith("sqlite"):  # another client's state sweep does not know (PostgreSQL's
        odd = {"odd": 1}  # column is an enum of optuna's states)
        with storage.engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO trials (number, study_id, state, datetime_start) "
                                 f"VALUES (60, {study_id}, 'ODD', '2026-01-01')")  # fmt: skip
    [status] = sweep.status(url)
    assert status.counts == {"complete": 3, "skipped": 57, **odd}
    assert (status.audit.judged, status.audit.every, status.audit.outside) == (3, True, [0])


def test_the_report_flags_every_trial_outside_the_budget(tmp_path):
    url = _theirs(tmp_path, [(512, 768, 97.0), (768, 1024, 98.5), (1024, 1024, 98.0)])
    storage = open_storage(url, heartbeat_interval=None, grace_period=None, read_only=True)
    report = write_report(storage, "t", out_dir=tmp_path / "r")
    text = (tmp_path / "r" / "report.md").read_text()
    assert report.best_text == (
        "best trial 1: 98.50% (outside the budget: 768x1024, 1,400,586 parameters)"
    )
    assert "**outside the budget: 768x1024, 1,400,586 parameters**" in text  # the best line
    assert "- **2 trial(s) outside the budget** (#1, #2): another client's" in text
    rows = [r for r in text.splitlines() if r.startswith("| ") and r.endswith("parameters |")]
    assert [r.split(" | ")[0] for r in rows] == ["| 1", "| 2"]  # each in the trials table
    assert "| 0 |" in text and "outside the budget: 512x768" not in text
    assert _outside_column(tmp_path / "r" / "trials.csv") == {
        0: "", 1: "outside the budget: 768x1024, 1,400,586 parameters",
        2: "outside the budget: 1024x1024, 1,863,690 parameters"}  # fmt: skip


@pytest.mark.parametrize("cores", [1, 2], ids=["one-process", "in-parts"])
def test_a_large_report_counts_every_trial_outside_the_budget(tmp_path, monkeypatch, cores):
    monkeypatch.setattr(digest, "LARGE", 3)
    monkeypatch.setattr(parts, "PART", 2)
    monkeypatch.setattr(parts, "_cores", lambda: cores)
    monkeypatch.setattr(parts, "_may_fork", lambda: True)  # earlier tests' idle threads
    url = _theirs(tmp_path, [(512, 768, 97.0), (768, 1024, 98.5), (400, 400, 90.0),
                             (1024, 1024, 98.0), (512, 700, 96.0)])  # fmt: skip
    storage = open_storage(url, heartbeat_interval=None, grace_period=None, read_only=True)
    write_report(storage, "t", out_dir=tmp_path / "r")
    text = (tmp_path / "r" / "report.md").read_text()
    assert "this report shows the" in text  # the large path
    assert "- **3 trial(s) outside the budget** (#1, #2, #3): another client's" in text
    flagged = _outside_column(tmp_path / "r" / "trials.csv")
    assert [n for n, flag in sorted(flagged.items()) if flag] == [1, 2, 3]
    assert flagged[1] == "outside the budget: 768x1024, 1,400,586 parameters"


def test_the_report_of_several_objectives_flags_them_too(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec = parse_spec({**_raw(RANGES), "study": {"name": "t", "sampler": "tpe", "trials": 4,
                                                "objectives": ["accuracy", "params"]}})  # fmt: skip
    open_study(spec, open_storage(url))
    theirs = optuna.load_study(study_name="t", storage=url)
    for h1, h2, value in [(512, 768, 97.0), (768, 1024, 98.5)]:
        t = theirs.ask({"hidden_1": optuna.distributions.IntDistribution(h1, h1),
                        "hidden_2": optuna.distributions.IntDistribution(h2, h2)})  # fmt: skip
        theirs.tell(t, [value, parameter_count(h1, h2)])
    storage = open_storage(url, heartbeat_interval=None, grace_period=None, read_only=True)
    write_report(storage, "t", out_dir=tmp_path / "r")
    text = (tmp_path / "r" / "report.md").read_text()
    assert "- **1 trial(s) outside the budget** (#1): another client's" in text
    assert "| Pareto front; outside the budget: 768x1024, 1,400,586 parameters |" in text
    assert _outside_column(tmp_path / "r" / "trials.csv") == {
        0: "", 1: "outside the budget: 768x1024, 1,400,586 parameters"}  # fmt: skip

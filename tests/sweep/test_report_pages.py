"""A large study's report read a page at a time (``sweep.report.large``): it writes what the
record path writes, and never holds every trial.

The oracle is the record path (``report_reads.read``: every trial as a record), with the
functions the summarising report used on records before issue 27: ``write_csv``,
``digest.quantile_rows``, ``parameter_rows``, ``note_rows`` and the best trials' table. The
threshold and page size are made small, so a study of 60 trials is large and its pages end
mid-study. Speed and memory at 10⁶ are measured in tests/bench, not here.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import weakref

import optuna
import pytest
from optuna.trial import TrialState

from sweep.errors import SweepError
from sweep.queue import report_pages, report_reads
from sweep.queue.storage import open_storage
from sweep.report import columns, digest, parts, shown, writer
from sweep.report.shown import finished, md_table, network, param_names, reason
from sweep.report.stored import count, number, series_of, study_kind
from sweep.report.summary import fmt, ordered

N = 60
PAGE = 7  # a page boundary falls mid-study (60 = 8 × 7 + 4)


@pytest.fixture(params=["sqlite", "postgresql"])
def odd_study(request, tmp_path) -> tuple[str, int]:
    """A plain optuna study of ``N`` trials with what another client may store: ties, ±inf,
    a complete trial without a value, pruned and failed trials, a categorical parameter, a
    parameter some trials lack, one stored badly, a series that is no series."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        from tests.postgres import fresh_database

        url = fresh_database(request.getfixturevalue("postgres_server"))
    study = optuna.create_study(study_name="s", storage=url, direction="minimize")
    x = optuna.distributions.FloatDistribution(0, 1)
    c = optuna.distributions.CategoricalDistribution(["a", "b", True])
    k = optuna.distributions.IntDistribution(1, 9)
    for i in range(N):
        params, dists = {"x": (i * 7 % 13) / 13, "c": ["a", "b", True][i % 3]}, {"x": x, "c": c}
        if i % 4:
            params["k"], dists["k"] = i % 9 + 1, k
        # as many failed as pruned, the first failure first: the notes tie, and the table
        # keeps the order of their first trials, not the order trials.csv lists them in
        state = [TrialState.COMPLETE] * 5 + [TrialState.FAIL, TrialState.PRUNED]
        st = state[i % 7]
        value = [0.5, float(i % 5), math.inf, -math.inf, i / 7][i % 5] if st.is_finished() else None
        attrs = {"n_params": 100 + i, "seconds": i / 3, "valid_loss": [1.0, 0.5 + i / 100]}
        if st == TrialState.FAIL:
            attrs["fail_reason"] = "oom"
            value = None
        if i == 11:
            attrs["valid_loss"] = [1.0, "x"]
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=value if st == TrialState.COMPLETE else None,
            state=st, user_attrs=attrs,
            intermediate_values={1: 0.9, 2: 0.8} if st == TrialState.PRUNED else {}))  # fmt: skip
    engine = open_storage(url).engine
    with engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("DELETE FROM trial_values WHERE trial_id = 2"))  # complete, no value
        conn.execute(text("UPDATE trial_params SET distribution_json = '{' WHERE trial_id = 5 "
                          "AND param_name = 'x'"))  # fmt: skip
        conn.execute(
            text(
                "UPDATE trial_params SET distribution_json = '{' WHERE trial_id = 1 "
                "AND param_name = 'x'"
            )
        )  # trial 0's x is unreadable: x comes after c
        conn.execute(
            text(
                "UPDATE trial_user_attributes SET value_json = 'oom' "
                "WHERE trial_id = 13 AND key = 'fail_reason'"
            )
        )  # not JSON: absent (trial 12 failed for no reason stored)
        conn.execute(
            text(
                "UPDATE trial_user_attributes SET value_json = :long "
                "WHERE trial_id = 21 AND key = 'valid_loss'"
            ),
            {"long": "[" + "1.0, " * 20_000 + "1.0]"},
        )  # too long: absent, told
    return url, study._study_id


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(digest, "LARGE", 10)
    monkeypatch.setattr(digest, "TOP", 5)
    monkeypatch.setattr(report_pages, "PAGE", PAGE)


def _old_digest(records, kind, names) -> list[str]:
    """What the record path's report printed of a large study (its ``_digest_sections``)."""
    done = finished(records)

    def shown(v: float) -> str:
        return f"{v:.2f}" if kind.sweep else f"{v:.6g}"

    columns = {kind.metric: [t.value for t in done]}
    if kind.sweep:
        columns["parameters"] = [n for t in done if (n := count(t, "n_params")) is not None]
        seconds = (number(t.user_attrs.get("seconds")) for t in done)
        columns["seconds"] = [s for s in seconds if s is not None]
    text = [f"## Values of the {len(done):,} complete trials", "",
            md_table(*digest.quantile_rows(columns, shown)), "", "## Parameters", "",
            f"Each parameter's values in buckets of about equal counts, with the {kind.metric} "
            "of their complete trials.", "",
            md_table(*digest.parameter_rows(done, names, maximize=kind.maximize, shown=shown)),
            ""]  # fmt: skip
    notes = [reason(t) for t in records if t.state in (TrialState.PRUNED, TrialState.FAIL)]
    if any(notes):
        text += ["## Pruned and failed trials", "", md_table(*digest.note_rows(notes)), ""]
    return text


# 2: more parameter names than one statement joins (SQLite's 64 tables), each page filled by id;
# 3 parts: the trials read by three processes, merged
@pytest.mark.parametrize(
    ("joined", "cores"), [(report_pages.MAX_JOINED, 1), (2, 1), (report_pages.MAX_JOINED, 3)],
    ids=["joined", "by-id", "in-parts"],
)  # fmt: skip
def test_a_large_report_writes_what_the_record_path_wrote(
    odd_study, small, tmp_path, caplog, monkeypatch, joined, cores
):
    monkeypatch.setattr(report_pages, "MAX_JOINED", joined)
    monkeypatch.setattr(parts, "PART", 15)
    monkeypatch.setattr(parts, "_cores", lambda: cores)
    monkeypatch.setattr(parts, "_may_fork", lambda: True)  # earlier tests' idle threads
    forked = []  # the parts read by forked children
    real_children = parts._in_children
    monkeypatch.setattr(
        parts, "_in_children", lambda *a: forked.append(len(a[1])) or real_children(*a)
    )
    url, sid = odd_study
    storage = open_storage(url, read_only=True)
    records = report_reads.read(storage.engine, sid)
    report_reads.read_curves(storage.engine, records)
    kind = study_kind({}, [optuna.study.StudyDirection.MINIMIZE], None)
    writer.write_csv(records, tmp_path / "old.csv", maximize=False)
    caplog.clear()
    writer.write_report(storage, "s", out_dir=tmp_path / "out")
    assert "1 trial attribute(s) longer than 65,536 characters left unread, as if absent " \
        "(the first: trial 20's 'valid_loss')" in caplog.text  # fmt: skip
    assert (tmp_path / "out" / "trials.csv").read_text() == (tmp_path / "old.csv").read_text()
    md = (tmp_path / "out" / "report.md").read_text()
    names = param_names(records)
    assert names == ["c", "x", "k"]  # first appearance, a bad row not counted
    assert "\n".join(_old_digest(records, kind, names)) in md
    top = digest.best(finished(records), digest.TOP, maximize=False)
    table = md_table(["#", "state", *names, "value", "note"],
                     writer._trial_rows(top, kind, names))  # fmt: skip
    assert f"## The {digest.TOP} best trials\n\n{table}\n" in md
    assert f"- {N:,} trials: this report shows the {digest.TOP} best" in md
    assert "## Trials\n" not in md
    for name in (
        "parallel_coordinates.png",
        "slice.png",
        "contour.png",
        "edf.png",
        "timeline.png",
    ):  # the standard plots, from the even sample
        assert f"]({name})" in md and (tmp_path / "out" / name).stat().st_size, name
    assert forked == ([] if cores == 1 else [cores])


def test_a_large_study_is_read_in_pages_never_whole(odd_study, small, tmp_path, monkeypatch):
    url, _ = odd_study
    monkeypatch.setattr(digest, "CURVES", 4)
    monkeypatch.setattr(digest, "IMPORTANCE_TRIALS", 6)
    monkeypatch.setattr(report_reads, "read", None)  # the record path is not taken
    pages: list[int] = []
    real_pages = report_pages.pages

    def paged(*args, **kw):
        for page in real_pages(*args, **kw):
            pages.append(len(page))
            yield page

    alive, most = [0], [0]
    real_record = report_pages._record

    def record(row):
        r = real_record(row)
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        weakref.finalize(r, lambda: alive.__setitem__(0, alive[0] - 1))
        return r

    monkeypatch.setattr(report_pages, "pages", paged)
    monkeypatch.setattr(report_pages, "_record", record)
    writer.write_report(open_storage(url, read_only=True), "s", out_dir=tmp_path)
    assert pages[: math.ceil(N / PAGE)] == [PAGE] * (N // PAGE) + [N % PAGE]
    # two pages at most (the one folded, the next being read), the best, the samples
    assert most[0] <= 2 * PAGE + digest.TOP + digest.IMPORTANCE_TRIALS < N, most


def test_a_large_study_of_several_objectives_is_refused_past_what_optuna_may_read(
    tmp_path, monkeypatch
):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="m", storage=url, directions=["minimize"] * 2)
    for i in range(3):
        study.add_trial(optuna.trial.create_trial(values=[i, -i]))
    study.enqueue_trial({})  # a queued trial is not read: not counted
    monkeypatch.setattr(writer, "MAX_OPTUNA_TRIALS", 3)
    writer.write_report(open_storage(url, read_only=True), "m", out_dir=tmp_path / "ok")
    monkeypatch.setattr(writer, "MAX_OPTUNA_TRIALS", 2)
    with pytest.raises(SweepError, match=r"^study 'm' has several objectives and 3 trials; .* "
                       r"reads every trial whole, at most 2$"):  # fmt: skip
        writer.write_report(open_storage(url, read_only=True), "m", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_trials_csv_lists_the_trials_in_the_order_ordered_gives(tmp_path, small):
    # ties, each infinity and a missing value (a SQL client's), in both directions; the pages
    # come unordered, the report orders them
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    for direction in ("maximize", "minimize"):
        study = optuna.create_study(study_name=direction, storage=url, direction=direction)
        values = [1.0, math.inf, None, -math.inf, 1.0, 2.0, math.inf, None, -math.inf] * 2
        for v in values:
            study.add_trial(optuna.trial.create_trial(value=0.0 if v is None else v))
        missing = [t._trial_id for t, v in zip(study.trials, values, strict=True) if v is None]
        with sqlite3.connect(tmp_path / "db.sqlite") as conn:
            conn.executemany("DELETE FROM trial_values WHERE trial_id = ?",
                             [(i,) for i in missing])  # fmt: skip
        storage = open_storage(url, read_only=True)
        writer.write_report(storage, direction, out_dir=tmp_path / direction)
        with (tmp_path / direction / "trials.csv").open() as f:
            got = [int(row["number"]) for row in csv.DictReader(f)]
        want = ordered(report_reads.read(storage.engine, study._study_id),
                       maximize=direction == "maximize")  # fmt: skip
        assert got == [r.number for r in want], direction


@pytest.mark.parametrize(
    "text",
    ["1", "-0", "[1.0, 2.5]", '{"a": [1, null]}', " 1", "1 ", "\ufeff1", "NaN", "1e999",
     "[1,]", "01", "12a", "[1] x", '"x', '"a\x01"', "", None, b"[1]", "[" * 100_000],
)  # fmt: skip
def test_stored_json_decodes_as_json_loads_decodes_it(text):
    # the scanner's shortcut (report_reads.decoded) reads what loads reads, and nothing else
    try:
        want = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        want = report_reads.ABSENT
    got = report_reads.decoded(text)
    assert got is want or repr(got) == repr(want)


def test_a_network_is_cached_by_the_type_and_value_of_each_field_it_reads():
    # 1 and True are equal and hash alike, 64 and 64.0 too: a study file holds neither
    # True nor 64.0 as a width, so each trial gets its own answer, in any order
    configs = [{"hidden_1": 1, "hidden_2": 8}, {"hidden_1": True, "hidden_2": 8},
               {"hidden_1": 64, "hidden_2": 8}, {"hidden_1": 64.0, "hidden_2": 8},
               {"hidden_1": [64], "hidden_2": 8}, {"depth": 3, "hidden_1": 64, "hidden_2": 8},
               {"depth": 3, "hidden_1": 64, "hidden_2": 8, "hidden_3": 4}]  # fmt: skip
    done = TrialState.COMPLETE
    trials = [report_reads.Record(i, i, done, None, None, None, user_attrs={"config": c})
              for i, c in enumerate(configs)]  # fmt: skip
    want = ["784-1-8-10", "?", "784-64-8-10", "?", "?", "", "784-64-8-4-10"]
    for order in (trials, trials[::-1]):
        shown._network.cache_clear()
        assert [network(t) for t in order] == (want if order is trials else want[::-1])


@pytest.mark.parametrize(
    ("values", "want"),
    [([1.0, 0.5], [1.0, 0.5]), ([1.0, math.inf], []), ([math.nan, 1.0], []),
     ([math.inf, -math.inf, 1.0], []), ([1e308, 1e308], [1e308, 1e308]), ([1, 2.0], [1.0, 2.0]),
     ([True, 1.0], []), ([], []), ("1.0", [])],
)  # fmt: skip
def test_a_series_is_finite_numbers_only(values, want):
    # the fast path (floats with a finite sum) decides as the check of each value: a sum that
    # overflows is no infinity among them
    assert series_of(values) == want


def test_a_parameter_column_takes_finite_numbers_only_as_numbers():
    # the float shortcut of _Param.add decides as ``number``: an infinity or NaN is a value
    # shown by its text, True is no 1, an int keeps its type
    p = columns._Param()
    for v in [0.5, math.inf, -math.inf, math.nan, 2, True, "a"]:
        p.add(v, True)
    p.add(None, False)
    num = columns._NUMBER
    assert list(p.code) == [num, 0, 1, 2, num, 3, 4, columns._ABSENT]
    assert list(p.isint) == [0, 0, 0, 0, 1, 0, 0, 0]
    assert p.shown[:3] == [fmt(math.inf), fmt(-math.inf), fmt(math.nan)]


POOL = [0.5, 0.25, 2, 2.0, "a", "b", True, None, math.inf]  # None: the parameter absent


@pytest.mark.parametrize("seed", range(40))
def test_the_columns_find_the_varying_parameters_as_shown_does(seed):
    import random

    rng = random.Random(seed)
    done = []
    for i in range(rng.randint(1, 5)):
        params = {n: v for n in ("p", "q") if (v := rng.choice(POOL[: rng.randint(1, 9)]))
                  is not None}  # fmt: skip
        done.append(report_reads.Record(i, i, TrialState.COMPLETE, 1.0, None, None,
                                        params=params))  # fmt: skip
    cols = columns.Columns(shown.param_names(done), grid=False)  # as report_pages names them
    for t in done:
        cols.add(t)
    cols.finish()
    assert cols.varying() == shown.varying(done), [t.params for t in done]


@pytest.mark.parametrize(
    ("values", "varies"),
    [([2, 2.0], True), ([2, 2], False), ([2.0, 2.0], False), (["a", None], True),
     (["a", "a"], False), ([0.5, "a"], True), ([None, 1], True), ([True, 1], True)],
)  # fmt: skip
def test_a_parameter_varies_by_its_shown_value_an_int_apart_from_its_float(values, varies):
    done = [report_reads.Record(i, i, TrialState.COMPLETE, 1.0, None, None,
                                params={} if v is None else {"p": v})
            for i, v in enumerate(values)]  # fmt: skip
    cols = columns.Columns(["p"], grid=False)
    for t in done:
        cols.add(t)
    cols.finish()
    assert cols.varying() == shown.varying(done) == (["p"] if varies else [])

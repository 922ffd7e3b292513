"""Reports of large studies: summarised above ``digest.LARGE`` finished trials, read narrowly.

A study of 1,500 trials (8 real, the rest copied in SQL by ``tests/bench/bigstudy.py``) is just
above the threshold: its report lists the 50 best, aggregates the rest, draws the summarising
figures, and reads learning curves for the drawn trials only (counted from the statements the
database receives). Speed is measured in ``tests/bench``, not here.
"""

from __future__ import annotations

import csv
import json
import sqlite3

import matplotlib.axes
import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from sweep.errors import SweepError
from sweep.queue import report_reads
from sweep.queue.storage import open_storage
from sweep.report import digest, digest_figures, figures, writer
from tests.bench.bigstudy import build
from tests.sweep.helpers import run_cli

N = 1_500  # above digest.LARGE (1,000), small enough to build in seconds


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def big(request, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("big")
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'big.db'}"
    else:
        from tests.postgres import fresh_database

        url = fresh_database(request.getfixturevalue("postgres_server"))
    build(url, folder, N)
    return url


def _read_only(url: str) -> optuna.storages.RDBStorage:
    return open_storage(url, heartbeat_interval=None, grace_period=None, read_only=True)


def _curve_reads(engine: sqlalchemy.engine.Engine) -> list[tuple[str, object]]:
    """Every statement that reads stored intermediate values, with its parameters."""
    seen: list[tuple[str, object]] = []

    @sqlalchemy.event.listens_for(engine, "before_cursor_execute")
    def _spy(conn, cursor, statement, parameters, context, executemany):
        if "trial_intermediate_values.intermediate_value" in statement:
            seen.append((statement, parameters))

    return seen


@pytest.mark.slow
def test_a_large_study_is_summarised_and_trials_csv_holds_every_trial(big, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    drawn: dict[str, int] = {}
    spied = [(digest_figures, "binned"), (digest_figures, "curve_bands"),
             (digest_figures, "accuracy_hexbin"), (figures, "history"),
             (figures, "learning_curves"), (figures, "accuracy_vs_params")]  # fmt: skip
    for module, name in spied:
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            drawn[_name] = drawn.get(_name, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    written = writer.write_report(_read_only(big), "big", out_dir=tmp_path)
    # the summarising figures, and none of the per-trial ones
    assert drawn == {"binned": 2, "curve_bands": 1, "accuracy_hexbin": 1}, drawn
    assert {"history.png", "learning_curves.png", "accuracy_vs_params.png",
            "accuracy_over_time.png", "importances.png"} <= set(written.files)  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert len(rows) == N and len({r["number"] for r in rows}) == N
    md = (tmp_path / "report.md").read_text()
    assert f"- trials: {N:,} complete" in md
    assert "every trial is in [trials.csv](trials.csv)" in md
    assert "## Trials\n" not in md  # no table of every trial
    top = md.split(f"## The {digest.TOP} best trials")[1]
    top_rows = [ln for ln in top.splitlines() if ln.startswith("| ") and
                ln.split("|")[1].strip().isdigit()]  # fmt: skip
    assert len(top_rows) == digest.TOP
    best_values = [float(ln.split("|")[8]) for ln in top_rows]  # after the network
    assert best_values == sorted(best_values, reverse=True)
    assert best_values[0] == pytest.approx(written.best_value, abs=0.005)
    # the aggregates: quantiles of the value, each parameter's buckets
    values = md.split(f"## Values of the {N:,} complete trials")[1].split("##")[0]
    assert "| min | 10% | 25% | median | 75% | 90% | max |" in values
    assert f"| validation accuracy [%] | {N:,} |" in values
    params = md.split("## Parameters")[1].split("##")[0]
    for name in ("hidden_1", "hidden_2", "learning_rate"):
        assert f"| {name} |" in params
    assert params.count("best median") == 3


@pytest.mark.slow
def test_curves_are_read_only_for_the_trials_drawn(big, tmp_path):
    storage = _read_only(big)
    reads = _curve_reads(storage.engine)
    writer.write_report(storage, "big", out_dir=tmp_path)
    assert reads, "no learning curve was read"
    ours = [r for r in reads if " IN " in r[0].upper()]
    ids = [i for _, params in ours for i in _ids(params)]
    assert len(ids) == len(set(ids)) <= digest.CURVES + digest.BEST_CURVES < N
    # and optuna's ``best_trial``, which reads that one trial whole
    assert len(reads) - len(ours) <= 1


def _ids(parameters: object) -> list[int]:
    """The trial ids bound to a statement (a tuple on SQLite, a dict on psycopg)."""
    if isinstance(parameters, dict):
        return [v for k, v in parameters.items() if k.startswith("ids")]
    return list(parameters)


def test_a_small_study_reads_every_curve(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for i in range(30):
        study.add_trial(optuna.trial.create_trial(
            params={"x": i / 30}, distributions=dist, value=float(i),
            intermediate_values={1: i / 2, 2: float(i)}))  # fmt: skip
    storage = _read_only(url)
    reads = _curve_reads(storage.engine)
    writer.write_report(storage, "s", out_dir=tmp_path / "out")
    ours = [r for r in reads if " IN " in r[0].upper()]
    assert sorted(i for _, p in ours for i in _ids(p)) == list(range(1, 31))
    assert "## Trials" in (tmp_path / "out" / "report.md").read_text()


def test_unreadable_attributes_and_parameters_read_as_absent(tmp_path):
    # Another client may write any text: non-JSON attributes, a distribution that does not
    # parse, a parameter that is no number, infinite values. None of it stops the read; each
    # reads as absent or as optuna decodes it.
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for v in (0.5, float("inf"), float("-inf")):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.2}, distributions=dist, value=v,
                                                  user_attrs={"n_params": 7}))  # fmt: skip
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    conn.execute("UPDATE trial_user_attributes SET value_json = 'not json' WHERE trial_id = 1")
    conn.execute("UPDATE trial_params SET distribution_json = '{' WHERE trial_id = 2")
    conn.execute("UPDATE trial_params SET param_value = NULL WHERE trial_id = 3")
    conn.execute("INSERT INTO trial_user_attributes (trial_id, key, value_json) "
                 "VALUES (3, 'seconds', ?)", (json.dumps([1, 2]),))  # fmt: skip
    conn.commit()
    conn.close()
    read = report_reads.read(_read_only(url).engine, study._study_id)
    assert [r.value for r in read] == [0.5, float("inf"), float("-inf")]
    assert read[0].user_attrs == {} and read[0].params == {"x": 0.2}
    assert read[1].params == {} and read[1].user_attrs == {"n_params": 7}
    assert read[2].user_attrs == {"n_params": 7, "seconds": [1, 2]} and read[2].params == {}
    assert all(r.state == TrialState.COMPLETE for r in read)


def test_a_complete_trial_without_a_value_is_listed_not_drawn(tmp_path):
    # A client's SQL may complete a trial without a value row (or delete it): the report lists
    # the trial with no value and places only the others.
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for v in (0.5, 0.9, 0.1):
        study.add_trial(optuna.trial.create_trial(params={"x": v}, distributions=dist, value=v))
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    conn.execute("DELETE FROM trial_values WHERE trial_id = 1")
    conn.commit()
    conn.close()
    written = writer.write_report(_read_only(url), "s", out_dir=tmp_path / "out")
    assert (written.best_number, written.best_value) == (1, 0.9)
    rows = {r["number"]: r for r in csv.DictReader((tmp_path / "out" / "trials.csv").open())}
    assert rows["0"]["value"] == "" and rows["1"]["value"] == "0.9"


def test_a_heatmap_of_many_cells_carries_no_per_cell_text(tmp_path, monkeypatch):
    texts = []
    real = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text",
                        lambda self, *a, **k: texts.append(a) or real(self, *a, **k))  # fmt: skip

    def draw(n: int) -> int:
        texts.clear()
        cells = {(r, c): 90.0 + r / n for r in range(n) for c in range(n)}
        figures.grid_heatmap("t", list(range(n)), list(range(n)), cells, tmp_path / "h.png")
        return len(texts)

    assert draw(10) == 100  # 100 cells: every one labelled
    assert draw(11) == 0  # 121 cells: colours only


def test_buckets_mark_the_best_median_and_evenly_spreads_its_picks():
    class T:
        def __init__(self, x, value):
            self.params, self.value = {"x": x}, value

    done = [T(x, float(x)) for x in range(100)]
    _, rows = digest.parameter_rows(done, ["x"], maximize=True, shown=str)
    assert len(rows) == digest.BUCKETS and rows[-1][-1] == "best median"
    assert [r[-1] for r in rows[:-1]] == [""] * (digest.BUCKETS - 1)
    _, low = digest.parameter_rows(done, ["x"], maximize=False, shown=str)
    assert low[0][-1] == "best median"
    assert digest.evenly(list(range(11)), 3) == [0, 5, 10]
    assert digest.evenly([1, 2], 5) == [1, 2]


def test_the_threshold_counts_finished_trials(monkeypatch):
    monkeypatch.setattr(digest, "LARGE", 10)

    def trials(state: TrialState, n: int) -> list:
        return [type("T", (), {"state": state})()] * n

    assert not digest.is_large(trials(TrialState.COMPLETE, digest.LARGE))
    assert digest.is_large(trials(TrialState.PRUNED, digest.LARGE + 1))
    assert not digest.is_large(trials(TrialState.RUNNING, digest.LARGE + 1))


def _one_trial_with(tmp_path, value_chars: int, directions=("maximize",)) -> tuple[str, int]:
    """A study of one trial whose ``config`` attribute is a string of ``value_chars``
    characters (written in SQL: through optuna it would take the memory the test watches)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="s", storage=url, directions=list(directions))
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(optuna.trial.create_trial(
        params={"x": 0.2}, distributions=dist, values=[0.5] * len(directions),
        user_attrs={"config": {}, "n_params": 7}))  # fmt: skip
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    conn.execute("UPDATE trial_user_attributes SET value_json = '\"' || "
                 "replace(hex(zeroblob(?)), '00', 'xx') || '\"' WHERE key = 'config'",
                 (value_chars // 2,))  # fmt: skip
    conn.commit()
    conn.close()
    return url, study._study_id


def test_an_attribute_of_50_mb_is_measured_not_read(tmp_path, caplog):
    # Any client may write a trial attribute of any size: 2,000 trials of 1 MB each took a
    # report to 2.1 GB (issue 22). The database measures the value; Python never holds it.
    import tracemalloc

    url, study_id = _one_trial_with(tmp_path, 50_000_000)
    storage = _read_only(url)
    tracemalloc.start()
    try:
        read = report_reads.read(storage.engine, study_id)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, f"{peak:,} bytes held while reading"
    assert read[0].user_attrs == {"n_params": 7}  # the long one reads as absent
    assert "1 trial attribute(s) longer than 65,536 characters left unread" in caplog.text
    assert "trial 0's 'config'" in caplog.text


def test_an_attribute_just_under_the_limit_is_read(tmp_path):
    url, study_id = _one_trial_with(tmp_path, report_reads.MAX_VALUE_CHARS - 2)  # and its quotes
    (read,) = report_reads.read(_read_only(url).engine, study_id)
    assert len(read.user_attrs["config"]) == report_reads.MAX_VALUE_CHARS - 2


@pytest.mark.slow
def test_a_study_of_several_objectives_is_refused_past_what_optuna_would_read(
    tmp_path, monkeypatch
):
    # Its report reads through optuna's get_trials, which builds every attribute whole.
    monkeypatch.setattr(writer, "MAX_OPTUNA_READ", 1_000_000)
    url, _ = _one_trial_with(tmp_path, 1_000_000, directions=("minimize", "maximize"))
    out = run_cli("report", "s", "--storage", url, "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr  # the CLI's own limit: 200 MB
    with pytest.raises(
        SweepError,
        match=r"study 's' has several objectives and its "
        r"trials hold 1,000,0\d\d characters of attributes; .* at most 1,000,000",
    ):
        writer.write_report(_read_only(url), "s", out_dir=tmp_path / "out2")
    assert not (tmp_path / "out2").exists()

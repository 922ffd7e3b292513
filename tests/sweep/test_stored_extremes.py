"""Values another client stored past what Python reads by default: an attribute nested
thousands deep (optuna's own ``json.loads`` exhausts the stack on it), a count of 400 digits
(``float`` overflows on it), and a ``--set`` value thousands of characters long. Each is one
line, or read as absent, never a traceback or a message as long as the input."""

import csv
import re

import optuna
import pytest

from sweep.errors import SpecError, StorageError
from sweep.report import summary
from sweep.report.stored import count, number
from sweep.study.overrides import parse_override
from tests.sweep.helpers import grid_study, main_in_process, run_sql

DEEP = "[" * 5_000 + "]" * 5_000


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Study 'g' of three trials, run by ``sweep run``, then written to by another client."""
    tmp = tmp_path_factory.mktemp("extremes")
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    study_file = grid_study(tmp, epochs=1, train_size=1000)
    done = main_in_process("run", str(study_file), "--storage", url, "--jobs", "1",
                           "--trials", "3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return tmp, url, study_file


def test_an_attribute_nested_past_the_stack_is_one_line_at_the_end_of_run(ran):
    tmp, url, study_file = ran
    best = optuna.load_study(study_name="g", storage=url).best_trial  # the report reads it too
    run_sql(url, "INSERT INTO trial_user_attributes (trial_id, key, value_json) "
                 f"VALUES ({best._trial_id}, 'deep', '{DEEP}')")  # fmt: skip
    try:
        for extra in ([], ["--all", "--format", "json"]):
            out = main_in_process("run", str(study_file), "--storage", url, "--jobs", "1",
                                  "--trials", "3", *extra)  # fmt: skip
            assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
            assert out.stderr.splitlines()[-1] == (
                "sweep: error: study 'g': a trial holds an attribute nested too deeply for "
                "optuna to read (another client wrote it); `sweep report` reads the study "
                "around it"
            )
        report = main_in_process("report", "g", "--storage", url, "--out", str(tmp / "r"))
        assert report.returncode == 0, report.stderr  # as the message says
        assert f"- best: trial {best.number}, validation accuracy **{best.value:.2f}%**" in (
            tmp / "r" / "report.md").read_text()  # fmt: skip
    finally:
        run_sql(url, "DELETE FROM trial_user_attributes WHERE key = 'deep'")


def test_an_attribute_nested_past_the_stack_in_a_study_of_several_objectives(tmp_path):
    # its report reads every trial through optuna: one line, and the table of `sweep run`
    # (``summary.trial_table``) names what does read around it, `sweep status`
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = optuna.create_study(study_name="m", storage=url, directions=["minimize", "maximize"])
    x = optuna.distributions.FloatDistribution(0, 1)
    study.add_trials([
        optuna.trial.create_trial(params={"x": i / 5}, distributions={"x": x}, values=[i, i % 3])
        for i in range(5)
    ])  # fmt: skip
    run_sql(url, "INSERT INTO trial_user_attributes (trial_id, key, value_json) "
                 f"VALUES (1, 'deep', '{DEEP}')")  # fmt: skip
    out = main_in_process("report", "m", "--storage", url, "--out", str(tmp_path / "r"))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.splitlines() == [
        "sweep: error: study 'm' has several objectives and a trial holds an attribute nested "
        "too deeply for optuna to read (another client wrote it); a report of such a study "
        "reads every trial through optuna, an attribute nested at most about 900 deep"
    ]
    assert not (tmp_path / "r").exists()
    with pytest.raises(StorageError, match=r"\); `sweep status` reads the study around it$"):
        summary.trial_table(study, limit=3)
    status = main_in_process("status", "--storage", url)
    assert status.returncode == 0 and status.stdout.startswith("m: 5 complete"), status.stderr


def test_a_count_of_400_digits_reads_as_no_count_in_the_report(ran):
    tmp, url, _ = ran
    run_sql(url, f"UPDATE trial_user_attributes SET value_json = '{'9' * 400}' "
                 "WHERE trial_id = 2 AND key = 'n_params'")  # fmt: skip
    out = main_in_process("report", "g", "--storage", url, "--out", str(tmp / "big"))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    with (tmp / "big" / "trials.csv").open(newline="") as f:
        rows = {int(r["number"]): r for r in csv.DictReader(f)}
    assert rows[1]["n_params"] == "" and rows[0]["n_params"].isdigit()


class _Trial:
    def __init__(self, **user_attrs):
        self.user_attrs = user_attrs


@pytest.mark.parametrize(
    ("stored", "counted", "numbered"),
    [(10**400, None, None), (2**63, None, 9.223372036854776e18), (2**63 - 1, 2**63 - 1, 2.0**63),
     (-(2**63), -(2**63), -(2.0**63)), (802_314, 802_314, 802_314.0), (True, None, None)],
)  # fmt: skip
def test_a_count_is_a_64_bit_integer_and_a_number_a_float(stored, counted, numbered):
    assert count(_Trial(n=stored), "n") == counted
    assert number(stored) == numbered


def test_a_set_value_thousands_of_characters_long_is_quoted_cut(tmp_path):
    for text in ["train.epochs=" + "x" * 3_000, "study.name=" + "x" * 3_000,
                 "train.epochs=" + "9" * 5_000]:  # fmt: skip
        with pytest.raises(SpecError) as e:
            parse_override(text)
        message = str(e.value)
        assert len(message) < 600 and re.match(r"--set \S{200}… ?: \[", message), message
    out = main_in_process("run", str(grid_study(tmp_path)), "--set", "train.epochs=" + "x" * 3_000)
    assert out.returncode == 2 and len(out.stderr) < 600, out.stderr

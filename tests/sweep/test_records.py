"""``--format json`` (sweep.records) and ``-v``/``-q`` after any command: each command's JSON
parsed as a script would parse it, shaped as the optuna CLI's ``-f json`` where they show the
same thing, alone on stdout; errors one line on stderr as without it."""

import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweep import commands
from sweep.cli import COMMANDS, build_parser
from sweep.records import MAX_DEPTH, epoch, plain
from tests.sweep.helpers import grid_study, main_in_process, run_cli

#: What ``optuna trials -f json`` writes of each trial (optuna.cli._Trials).
OPTUNA_TRIAL = {"number", "value", "datetime_start", "datetime_complete", "duration", "params",
                "user_attrs", "state"}  # fmt: skip


def strict(text: str):
    """``text`` parsed as strict JSON: ``NaN`` and ``Infinity`` refused, as ``jq`` refuses them."""

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A study 'g' of three trials run by `sweep run --format json` in this process (one worker;
    what it wrote), beside two studies another optuna client made: 'm' of two objectives and
    'i\\tnf', whose best value is -inf."""
    tmp = tmp_path_factory.mktemp("records")
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    study_file = grid_study(tmp, epochs=1, train_size=1000)
    ran = main_in_process("run", str(study_file), "--storage", url, "--jobs", "1",
                          "--trials", "3", "--format", "json")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    m = optuna.create_study(study_name="m", storage=url, directions=["maximize", "minimize"])
    for values in [(1.0, 5.0), (2.0, 9.0), (0.5, 7.0)]:  # the first two are the front
        m.tell(m.ask(), values)
    inf = optuna.create_study(study_name="i\tnf", storage=url)
    inf.tell(inf.ask(), -math.inf)
    return tmp, url, study_file, ran


def test_run_lists_the_tables_trials_as_the_optuna_cli_does(db):
    _, url, _, ran = db
    trials = strict(ran.stdout)
    assert ran.stdout.count("\n") == 1  # the JSON alone: its progress went to stderr
    assert "3/3 trials" in ran.stderr
    assert [t["number"] for t in trials] == [
        t.number
        for t in sorted(
            optuna.load_study(study_name="g", storage=url).trials, key=lambda t: -t.value
        )
    ]
    optuna_cli = Path(sys.executable).with_name("optuna")
    theirs = subprocess.run([str(optuna_cli), "trials", "--study-name", "g", "--storage", url,
                             "-f", "json"], capture_output=True, text=True)  # fmt: skip
    assert theirs.returncode == 0, theirs.stderr
    by_number = {t["number"]: t for t in json.loads(theirs.stdout)}
    for ours in trials:
        assert set(ours) == OPTUNA_TRIAL
        them = by_number[ours["number"]]
        # optuna's CLI nests the value under the study's metric name; ours is the number
        assert them.pop("value") == {"validation accuracy [%]": ours.pop("value")}
        assert ours == {k: them[k] for k in ours}, ours["number"]
        assert ours["state"] == "COMPLETE" and ours["user_attrs"]["n_params"] > 0


def test_the_notes_of_run_go_to_stderr_and_quiet_leaves_it_to_errors(db, monkeypatch):
    _, url, study_file, _ = db
    monkeypatch.setattr(commands, "TOP_TRIALS", 2)
    args = ("run", str(study_file), "--storage", url, "--jobs", "1", "--trials", "3", "-f", "json")
    out = main_in_process(*args)
    assert out.returncode == 0, out.stderr
    assert len(strict(out.stdout)) == 2
    assert "… and 1 more trials (sweep report, or --all)" in out.stderr
    assert "study 'g' (grid)" in out.stderr  # the progress line's header
    for quiet in (["-q"], ["--quiet"]):
        out = main_in_process(*args, *quiet)
        assert (out.returncode, out.stderr) == (0, ""), out.stderr
        assert len(strict(out.stdout)) == 2


def test_status_is_every_study_with_optunas_names(db):
    _, url, _, _ = db
    out = main_in_process("status", "--storage", url, "-f", "json")
    assert out.returncode == 0, out.stderr
    assert "\t" not in out.stdout  # a control character in a name is escaped, never shown
    g, m, inf = strict(out.stdout)
    best = optuna.load_study(study_name="g", storage=url).best_trial
    assert g == {
        "name": "g", "direction": ["MAXIMIZE"], "n_trials": 3,
        "metric_names": ["validation accuracy [%]"], "counts": {"complete": 3},
        "best_trial": {"number": best.number, "value": best.value, "params": best.params,
                       "outside_budget": None},
        "best_trials": [{"number": best.number, "values": [best.value]}], "running_by_host": {},
        "running_elsewhere": 0,
    }  # fmt: skip
    assert (m["name"], m["direction"], m["best_trial"]) == ("m", ["MAXIMIZE", "MINIMIZE"], None)
    assert m["best_trials"] == [{"number": 1, "values": [2.0, 9.0]},
                                {"number": 0, "values": [1.0, 5.0]}]  # fmt: skip
    assert inf["name"] == "i\tnf" and inf["best_trial"]["value"] is None  # -inf: not JSON


def test_report_says_what_it_wrote_and_the_best_or_the_front(db):
    tmp, url, _, _ = db
    out = main_in_process("report", "g", "--storage", url, "--out", str(tmp / "g"), "-f", "json")
    assert out.returncode == 0, out.stderr
    g = strict(out.stdout)
    best = optuna.load_study(study_name="g", storage=url).best_trial
    assert (g["name"], g["report"], g["out_dir"]) == ("g", str(tmp / "g/report.md"), str(tmp / "g"))
    assert all((tmp / "g" / f).is_file() for f in g["files"]) and "trials.csv" in g["files"]
    assert (g["best_trial"]["number"], g["best_trial"]["value"]) == (best.number, best.value)
    assert g["best_trial"]["config"]["hidden_1"] == best.params["hidden_1"]


def test_report_all_names_each_report_by_its_study(db):
    tmp, url, _, _ = db
    best = optuna.load_study(study_name="g", storage=url).best_trial
    out = main_in_process("report", "all", "--storage", url, "--out", str(tmp / "all"),
                          "--format", "json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    every = {r["name"]: r for r in strict(out.stdout)}
    assert sorted(every) == ["g", "i\tnf", "m"]
    for name, r in every.items():  # each study's own folder, whatever its name made of it
        assert Path(r["report"]).read_text().startswith("# Study `" + name.replace("\t", "?"))
    assert every["m"]["best_trial"] is None
    assert [t["number"] for t in every["m"]["best_trials"]] == [1, 0]
    assert every["g"]["best_trial"]["number"] == best.number


def test_export_and_evaluate_say_what_they_wrote(db):
    tmp, url, study_file, _ = db
    best = optuna.load_study(study_name="g", storage=url).best_trial
    out = main_in_process("export", "g", "--storage", url, "--out", str(tmp / "best.npz"),
                          "-f", "json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert strict(out.stdout) == {"study": "g", "trial": best.number, "chosen": None,
                                  "weights": str(tmp / "best.npz"),
                                  "sidecar": str(tmp / "best.json")}  # fmt: skip
    assert (tmp / "best.npz").is_file() and (tmp / "best.json").is_file()

    out = main_in_process("evaluate", str(study_file), "--storage", url, "-f", "json")
    assert out.returncode == 0, out.stderr
    e = strict(out.stdout)
    assert (e["study"], e["trial"], e["chosen"]) == ("g", best.number, None)
    assert e["valid_accuracy"] == pytest.approx(best.value) and 0 < e["test_accuracy"] <= 100
    assert e["artifact_store"] == str(tmp / "artifacts")
    assert all((tmp / "artifacts" / e[k]).is_file() for k in ("artifact_id", "sidecar_id"))
    assert e["weights_path"] == str(tmp / "artifacts" / e["artifact_id"])
    assert e["sidecar_path"] == str(tmp / "artifacts" / e["sidecar_id"])


def test_an_error_is_one_line_on_stderr_and_no_json(db):
    _, url, _, _ = db
    out = main_in_process("export", "g", "--trial", "99", "--out", "x.npz", "--storage", url,
                          "--format", "json")  # fmt: skip
    assert (out.returncode, out.stdout) == (1, "")
    assert (
        out.stderr == "sweep: error: study 'g' has no trial 99 (its trials are numbered 0 to 2)\n"
    )


def test_train_writes_a_json_object_per_epoch():
    out = run_cli("train", "--hidden-1", "32", "--hidden-2", "16", "--epochs", "2",
                  "--train-size", "1000", "--format", "json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [strict(line) for line in out.stdout.splitlines()]
    assert [e["epoch"] for e in lines] == [1, 2]
    assert all(set(e) == {"epoch", "train_loss", "train_accuracy", "valid_loss",
                          "valid_accuracy", "seconds"} for e in lines)  # fmt: skip
    assert all(10 < e["valid_accuracy"] <= 100 for e in lines)  # percent, not a fraction
    assert out.stderr.startswith("784-32-16-10 (25,818 parameters)")  # the header, not stdout


def test_an_epochs_accuracy_is_a_percentage_without_float_noise():
    from mlp.state import EpochMetrics

    got = epoch(EpochMetrics(3, 0.1, 0.9757, 0.2, 0.3252, 1.5))
    assert (got["train_accuracy"], got["valid_accuracy"], got["epoch"]) == (97.57, 32.52, 3)


def test_plain_makes_any_value_strict_json():
    value = {1: (math.inf, -math.inf, math.nan, 2.5), "p": Path("a/b"), "ok": [True, None]}
    assert plain(value) == {"1": [None, None, None, 2.5], "p": "a/b", "ok": [True, None]}
    deep: list = []
    for _ in range(5_000):  # another client's attribute, nested past Python's stack
        deep = [deep]
    shallow = plain(deep)
    for _ in range(MAX_DEPTH):
        shallow = shallow[0]
    assert shallow == [None]


#: The fewest arguments each command parses with.
REQUIRED = {"data": [], "train": [], "run": ["x.toml"], "worker": [], "report": ["all"],
            "evaluate": ["x.toml"], "export": ["g", "--out", "b.npz"], "gradcheck": [],
            "status": [], "dashboard": [], "submit": ["x.toml", "--workers", "1"]}  # fmt: skip


@pytest.mark.parametrize("command", list(COMMANDS))
def test_v_and_q_before_or_after_any_command_the_last_one_given(command):
    parse = build_parser().parse_args
    args = [command, *REQUIRED[command]]
    assert parse(args).verbosity == "normal"
    assert parse([*args, "-v"]).verbosity == "verbose"  # `sweep status -v` exited 2
    assert parse(["-v", *args]).verbosity == "verbose"  # the subcommand keeps what came before
    assert parse([*args, "--quiet"]).verbosity == "quiet"
    assert parse(["-q", *args, "--verbose"]).verbosity == "verbose"
    assert parse(["-v", *args, "-q"]).verbosity == "quiet"


def test_status_v_runs(db):
    out = main_in_process("status", "-v", "--storage", db[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("g: 3 complete\n")


# A status whose read warns and logs a warning, as a library may.
WARNS = """
import logging, sys, warnings
import sweep.api
from sweep.cli import main

def status(storage):
    warnings.warn("a library's warning")
    logging.getLogger("sweep.queue").warning("a logged warning")
    return []

sweep.api.status = status
sys.exit(main(["status", *sys.argv[1:]]))
"""


def test_quiet_hides_warnings_and_logged_warnings():
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", WARNS, *args], capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    loud = run("-f", "json")
    assert (loud.returncode, loud.stdout) == (0, "[]\n")
    assert "a library's warning" in loud.stderr and "a logged warning" in loud.stderr
    quiet = run("-f", "json", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "[]\n", "")


@pytest.mark.slow
def test_a_run_with_worker_processes_writes_its_json_alone_on_stdout(tmp_path):
    # The worker processes share the launcher's stdout: nothing of theirs may land in it.
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    out = run_cli("run", str(grid_study(tmp_path, epochs=1, train_size=1000)), "--storage", url,
                  "--jobs", "2", "--format", "json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert [t["state"] for t in strict(out.stdout)] == ["COMPLETE"] * 8
    assert "8/8 trials" in out.stderr
    status = run_cli("status", "--storage", url, "-f", "json", "-v")
    assert status.returncode == 0, status.stderr
    assert strict(status.stdout)[0]["counts"] == {"complete": 8}

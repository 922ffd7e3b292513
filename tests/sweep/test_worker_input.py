"""What another client puts in a study's queue is input: a trial enqueued with parameters the
study's space would never suggest is FAIL with a ``fail_reason`` naming the parameter, its
value and the space, in one warning line, and the worker goes on (#22: it printed a 28-line
traceback and the trial's fate was unstated; a range took any value optuna was handed). A
trial too large for the host's memory is refused before anything of it is allocated."""

import re
import resource

import optuna
import pytest
from optuna.trial import TrialState

from sweep.queue.storage import open_storage
from sweep.study.joining import open_study
from sweep.study.spec import load_spec
from tests.sweep.helpers import grid_study, load, run_cli, states

TPE = """
[study]
name = "t"
sampler = "tpe"
trials = {trials}
[budget]
min_params = 50_000
max_params = 200_000
[data]
train_size = 1000
[train]
epochs = 1
batch_size = 100
[space]
hidden_1 = {{ low = 16, high = 200 }}
hidden_2 = {{ low = 16, high = 200 }}
learning_rate = {{ low = 0.01, high = 0.5, log = true }}
"""


def _enqueue(url: str, name: str, *params: dict) -> None:
    study = optuna.load_study(study_name=name, storage=url)
    for p in params:
        study.enqueue_trial(p)


def _reasons(url: str, name: str) -> dict[int, str]:
    return {
        t.number: t.user_attrs.get("fail_reason")
        for t in load(url, name).get_trials(deepcopy=False)
        if t.state == TrialState.FAIL
    }


def _warnings(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if " failed: " in line]


@pytest.mark.slow
def test_a_worker_fails_foreign_trials_outside_a_grid_and_runs_the_rest(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study_file = grid_study(tmp_path, epochs=1, train_size=1000)
    open_study(load_spec(study_file), open_storage(url))  # sweep's study, its queue still empty
    # Enqueued before the grid (so claimed first): hidden_1 is one of 64, 128, 16.
    _enqueue(
        url, "g",
        {"hidden_1": 10**7, "hidden_2": 64, "learning_rate": 0.1},  # not in the list
        {"hidden_1": 64, "hidden_2": 64, "learning_rate": 0.1, "momentum": 0.5},  # not searched
        {"hidden_1": 16, "hidden_2": 32, "learning_rate": 0.1},  # 13,434 parameters
        {"hidden_1": True, "hidden_2": 64, "learning_rate": 0.1},  # a boolean is no size
    )  # fmt: skip
    out = run_cli("worker", "--study", "g", "--storage", url)
    assert out.returncode == 0, out.stderr
    reasons = {
        0: "parameter 'hidden_1' = 10000000 is outside the study's space (hidden_1: one of "
        "64, 128, 16)",
        1: "parameter 'momentum' = 0.5 is not in the study's space (it searches hidden_1, "
        "hidden_2, learning_rate)",
        2: "architecture 16x32 has 13,434 parameters, outside the study's budget (50,000 < "
        "parameters < 200,000)",
        3: "parameter 'hidden_1' = True is outside the study's space (hidden_1: one of 64, "
        "128, 16)",
    }
    assert _reasons(url, "g") == reasons
    assert _warnings(out.stderr) == [
        f"WARNING sweep.trial.objective: trial {n} failed: {why}" for n, why in reasons.items()
    ]
    # and it went on: the whole grid ran
    assert states(load(url, "g")) == {TrialState.FAIL: 4, TrialState.COMPLETE: 8}
    assert out.stdout == "worker ran 12 trial(s); study 'g' has nothing left to claim\n"


@pytest.mark.slow
def test_a_run_fails_foreign_trials_outside_a_range_before_they_train(tmp_path):
    # optuna warns of a fixed value outside a range and trains it: hidden_1 = 10**7 would have
    # taken 50 GB (the memory check would then have stopped every worker instead).
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    (tmp_path / "t.toml").write_text(TPE.format(trials=5))
    open_study(load_spec(tmp_path / "t.toml"), open_storage(url))
    _enqueue(
        url, "t",
        {"hidden_1": 10**7, "hidden_2": 64, "learning_rate": 0.1},
        {"hidden_1": 64, "hidden_2": 64, "learning_rate": 50.0},
        {"hidden_1": 64, "hidden_2": 10**7, "learning_rate": 0.1},
    )  # fmt: skip
    out = run_cli("run", str(tmp_path / "t.toml"), "--storage", url, "--jobs", "1")
    assert out.returncode == 0, out.stderr
    reasons = {
        0: "parameter 'hidden_1' = 10000000 is outside the study's space (hidden_1: an integer "
        "in [49, 200])",
        1: "parameter 'learning_rate' = 50.0 is outside the study's space (learning_rate: a "
        "float in [0.01, 0.5])",
        2: "parameter 'hidden_2' = 10000000 is outside the study's space (hidden_2: an integer "
        "in [16, 200])",
    }
    assert _reasons(url, "t") == reasons
    # (a warning logged in a worker process reaches the terminal without its level)
    assert [w.removeprefix("WARNING sweep.trial.objective: ") for w in _warnings(out.stderr)] == [
        f"trial {n} failed: {why}" for n, why in reasons.items()
    ]
    assert states(load(url, "t")) == {TrialState.FAIL: 3, TrialState.COMPLETE: 2}
    assert all(not t.params or max(t.params.get("hidden_1", 0), t.params.get("hidden_2", 0))
               <= 200 for t in load(url, "t").trials)  # fmt: skip


BIG = """
[study]
name = "big"
sampler = "grid"
[budget]
min_params = 50_000
max_params = 100_000_000
[data]
train_size = 1000
[train]
epochs = 1
batch_size = 64
[space]
hidden_1 = [1]
hidden_2 = [7_000_000]
"""
#: The workers' address space in the memory test: a check that failed would meet MemoryError
#: here (and a different message), not take the machine's memory.
ADDRESS_SPACE = 8 << 30


def _bounded() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


@pytest.mark.slow
def test_a_trial_too_large_for_the_memory_goes_back_to_the_queue_unallocated(tmp_path):
    # Inside its budget (84,000,795 < 10^8 parameters) and its space, yet an evaluation batch
    # of 5,000 × 7,000,000 units alone is 140 GB: the budget bounds the weights, not the
    # activations. Refused before the model is built: the trial waits for a larger host.
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    (tmp_path / "big.toml").write_text(BIG)
    pattern = (
        r"stopped: InsufficientMemory: trial 0: training 784-1-7000000-10 \(84,000,795 "
        r"parameters\) in float32 with batches of 64 needs about [\d,.]+ GiB of memory, more than "
        r"the [\d,.]+ [GM]iB available; its trial went back to the queue"
    )
    for command in (
        ["run", str(tmp_path / "big.toml"), "--jobs", "1"],
        ["worker", "--study", "big"],
    ):
        out = run_cli(*command, "--storage", url, preexec_fn=_bounded)
        assert out.returncode == 1, out.stderr
        lines = [ln for ln in out.stderr.splitlines() if ln.startswith("sweep: error: ")]
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
        assert re.search(pattern, lines[0]), lines[0]
        assert states(load(url, "big")) == {TrialState.WAITING: 1}


def test_initial_weights_past_the_dtypes_range_fail_the_trial_in_one_line(tmp_path):
    # A study may ask for any positive init_std; 1e308 overflows float32 when drawn, and numpy
    # warned of it on the worker's terminal before the trial diverged (#22).
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study_file = grid_study(tmp_path, epochs=1, train_size=1000,
                            extra_train='init = "normal"\ninit_std = 1e308\n')  # fmt: skip
    out = run_cli("run", str(study_file), "--storage", url, "--jobs", "1")
    assert out.returncode == 0, out.stderr
    why = ("init 'normal' with init_std 1e+308 drew W1 weights that are not finite in float32 "
           "(largest finite: 3.4e+38)")  # fmt: skip
    assert set(_reasons(url, "g").values()) == {why}
    assert states(load(url, "g")) == {TrialState.FAIL: 8}
    assert "Warning" not in out.stderr and len(_warnings(out.stderr)) == 8, out.stderr

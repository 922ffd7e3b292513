"""Progress that moves (#28): a line per running trial's epoch on a terminal, a plain line per
event elsewhere, a bar in notebooks without optuna's INFO line or tqdm's warning, the epochs of
``evaluate``, the claims and ends of ``worker``; all on stderr, and none with ``-q``."""

import io
import math
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from sweep import runner
from sweep.errors import SweepError
from sweep.progress import ProgressLine, TrialLines
from sweep.queue.progress import Epoch, latest_epochs
from sweep.queue.storage import open_storage
from sweep.queue.writeback import WriteBackStorage
from sweep.study.joining import open_study, top_up
from sweep.study.spec import load_spec
from tests.sweep.helpers import WORKER_TAGS, grid_study, main_in_process


def _progress(done: int, *epochs: Epoch, waiting_for: str | None = None) -> runner.Progress:
    return runner.Progress(done=done, total=8, running=len(epochs), workers=1, here=len(epochs),
                           best=None, elapsed=3.0, waiting_for=waiting_for, epochs=epochs,
                           epochs_per_trial=5)  # fmt: skip


def test_elsewhere_each_epoch_and_each_finished_trial_is_a_line_of_its_own():
    out = io.StringIO()
    line = ProgressLine("study 'g'", stream=out, tty=False)
    line(_progress(0, Epoch(3, None, None)))  # claimed, no epoch yet: nothing to say of it
    line(_progress(0, Epoch(3, 1, 91.5)))
    line(_progress(0, Epoch(3, 1, 91.5)))  # polled again, nothing new
    line(_progress(0, Epoch(3, 3, 96.2), Epoch(4, 1, math.nan)))  # a poll may skip an epoch
    line(_progress(1, Epoch(4, 2, 95.0)))
    line.close()
    assert out.getvalue().splitlines() == [
        "study 'g'",
        "0/8 trials  1 running  best —  3s",
        "trial 3 epoch 1/5 91.50%",
        "trial 3 epoch 3/5 96.20%",
        "trial 4 epoch 1/5 nan%",
        "trial 4 epoch 2/5 95.00%",
        "1/8 trials  1 running  best —  3s  ETA 21s",
    ]


def test_on_a_terminal_each_running_trial_has_a_line_redrawn_in_place():
    out = io.StringIO()
    line = ProgressLine("study 'g'", stream=out, tty=True)
    line(_progress(0, Epoch(3, 1, 91.5), Epoch(4, None, None)))
    line(_progress(1, Epoch(4, 2, 95.0)))
    line.close()
    header, first, second = out.getvalue().split("\r")
    assert header == "study 'g'\n"
    assert first == ("\x1b[J0/8 trials  2 running  best —  3s\n"
                     "  trial 3 epoch 1/5 91.50%\n  trial 4 starting")  # fmt: skip
    # up over the two trial lines drawn, cleared, drawn again; a new line at the end
    assert second == "\x1b[2A\x1b[J1/8 trials  1 running  best —  3s  ETA 21s\n" \
                     "  trial 4 epoch 2/5 95.00%\n"  # fmt: skip


def test_a_workers_lines_say_how_each_trial_ended():
    lines = []
    shown = TrialLines(lines.append, epochs=None)
    shown.claimed(7)
    shown.epoch(7, 2, 93.125)
    shown.ended(create_trial(state=TrialState.PRUNED, user_attrs={"pruned_at": 2}))
    shown.ended(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "x\x1b[2Jy"}))
    assert lines == ["trial 7 claimed", "trial 7 epoch 2 93.12%", "trial -1 pruned: at epoch 2",
                     "trial -1 fail: x?[2Jy"]  # fmt: skip


def test_the_launcher_reads_each_running_trials_last_epoch(tmp_path, storage_url):
    spec = load_spec(grid_study(tmp_path, epochs=5))
    study = open_study(spec, open_storage(storage_url))
    top_up(study, spec)
    rdb = study._storage._backend
    claims = WriteBackStorage(rdb)
    ids = [claims.claim(study._study_id, WORKER_TAGS) for _ in range(3)]
    for step, value in ((1, 90.0), (3, 96.5), (2, 95.0)):
        rdb.set_trial_intermediate_value(ids[0], step, value)
    rdb.set_trial_intermediate_value(ids[1], 1, float("nan"))
    rdb.set_trial_intermediate_value(ids[2], 1, 91.0)
    rdb.set_trial_state_values(ids[2], TrialState.COMPLETE, [91.0])  # finished: not running
    numbers = [rdb.get_trial_number_from_id(i) for i in ids]
    assert latest_epochs(rdb, study._study_id, numbers) == (
        Epoch(numbers[0], 3, 96.5), Epoch(numbers[1], 1, None)
    )  # fmt: skip
    # what the launcher's progress carries, with the epochs each trial trains
    p = runner._progress(study, spec, 8, time.monotonic(), "r")
    assert p.epochs == (Epoch(numbers[0], 3, 96.5), Epoch(numbers[1], 1, None))
    assert p.epochs_per_trial == 5


def _study(tmp_path) -> tuple[str, str]:
    """A grid study of two tiny trials, queued: (its file, its URL)."""
    study_file = grid_study(tmp_path, extra_study="trials = 2")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec = load_spec(study_file)
    top_up(open_study(spec, open_storage(url)), spec)
    return str(study_file), url


def test_a_worker_shows_what_it_claims_each_epoch_and_how_each_ended(tmp_path):
    study_file, url = _study(tmp_path)
    out = main_in_process("worker", "--study", "g", "--storage", url)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    for n in (0, 1):
        assert lines[4 * n : 4 * n + 3] == [f"trial {n} claimed", *(
            f"trial {n} epoch {e}/2 {percent}" for e, percent in
            zip((1, 2), (lines[4 * n + 1][-6:], lines[4 * n + 2][-6:]), strict=True))]  # fmt: skip
        assert lines[4 * n + 3] == f"trial {n} complete: {lines[4 * n + 2][-6:]}"
    assert len(lines) == 8 and out.stdout.startswith("worker ran 2 trial(s)")

    out = main_in_process("evaluate", study_file, "--storage", url)
    assert out.returncode == 0, out.stderr
    epochs = out.stderr.splitlines()
    assert [e.split()[1] for e in epochs] == ["1/2", "2/2"] and "valid acc" in epochs[0]
    assert out.stdout.startswith("trial ")

    out = main_in_process("evaluate", study_file, "--storage", url, "-q")
    assert (out.returncode, out.stderr) == (0, "")


def test_quiet_leaves_stderr_empty(tmp_path):
    study_file, url = _study(tmp_path)
    out = main_in_process("worker", "--study", "g", "--storage", url, "-q")
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    out = main_in_process("run", study_file, "--storage", url, "--trials", "3", "--jobs", "1",
                          "-q")  # fmt: skip
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    assert len(optuna.load_study(study_name="g", storage=url).trials) == 3


#: ``sweep.run`` as a Jupyter kernel runs it, without ipywidgets (tqdm tells a notebook by
#: ``ipykernel.zmqshell`` in ``sys.modules``): every warning shown, optuna's logging as it comes.
NOTEBOOK = textwrap.dedent("""
    import sys, types
    class ZMQInteractiveShell: pass
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = ZMQInteractiveShell
    sys.modules.update({"ipykernel": types.ModuleType("ipykernel"), "IPython": ipython,
                        "ipykernel.zmqshell": types.ModuleType("ipykernel.zmqshell")})
    import sweep
    sweep.run(sweep.load_spec(sys.argv[1]), storage=sys.argv[2], jobs=1, trials=2)
    print(__import__("optuna").logging.get_verbosity())
""")


def test_a_notebook_gets_a_bar_and_neither_optunas_info_nor_tqdms_warning(tmp_path):
    study_file = grid_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    out = subprocess.run([sys.executable, "-W", "default", "-c", NOTEBOOK, str(study_file), url],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr and "[I " not in out.stderr, out.stderr
    assert "2/2 [" in out.stderr and "best " in out.stderr  # tqdm's text bar, with our postfix
    assert out.stdout == f"{optuna.logging.INFO}\n"  # optuna's verbosity put back


@pytest.mark.parametrize(
    ("backend", "said"),
    [(["--jobs", "3"], "3 local worker(s) × 1 BLAS thread(s)"),
     (["--backend", "dask", "--scheduler", "tcp://10.0.0.5:8786"],
      "the workers of the dask scheduler tcp://10.0.0.5:8786 × 1 BLAS thread(s)")],
    ids=["local", "dask"],
)  # fmt: skip
def test_the_run_header_says_whose_workers_run_it(monkeypatch, backend, said):
    import sweep.api
    import sweep.progress

    headers = []

    class Recorded:
        def __init__(self, header):
            headers.append(header)

        def close(self):
            pass

    def run(*args, **kw):
        raise SweepError("stopped before any trial")

    monkeypatch.setattr(sweep.progress, "ProgressLine", Recorded)
    monkeypatch.setattr(sweep.api, "run", run)
    out = main_in_process("run", "studies/quick.toml", *backend)
    assert out.returncode == 1 and "stopped before any trial" in out.stderr
    assert len(headers) == 1 and headers[0].endswith(said), headers

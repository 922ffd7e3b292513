"""sweep on a real SLURM (#29): a one-node cluster on loopback that the tests start and stop
(tests/slurm.py), workers sent to it by `sweep submit` as arrays, and what SLURM does to them:
its time limit, `scancel`, `scontrol requeue`.

The trials sleep a set time at the end of each epoch (``SWEEP_TEST_EPOCH_SECONDS``,
tests/sweep/stall), so that they last long enough for SLURM's signals to land in them without
burning the two cores the whole array shares; the submit script carries ``PYTHONPATH`` (with
that folder first) and the worker settings to its tasks, as on a real cluster, and the pace is
the one variable sbatch exports besides SLURM's own (``SBATCH_EXPORT``): what a worker needs
comes from the script, as under ``--export=NONE``. What a task's
worker did is read from its log (``runs/slurm/STEM-JOB_TASK.log``): each claim's ``trial N
claimed`` and ``trial N epoch K/E`` lines, and how the trial ended.
"""

import collections
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from mlp.data import cache_dir
from sweep.queue.attrs import CHECKPOINT, RESUME_FROM
from tests.slurm import CPUS, cluster
from tests.sweep.helpers import (
    alive,
    completed_points,
    grid_study,
    load,
    states,
    sweep_cmd,
    wait_for,
)

pytestmark = pytest.mark.slow

STALL = Path(__file__).with_name("stall")
README = Path(__file__).parents[2] / "README.md"
GRID_POINTS = 8  # tests.sweep.helpers.GRID's points in budget


def test_the_cluster_runs_an_array_at_once_and_leaves_nothing_running(tmp_path):
    with contextlib.closing(cluster()) as own:  # closed (torn down) even when a check fails
        slurm = next(own)
        daemons = list(slurm.daemons)
        assert len(daemons) == 3 and all(alive(pid) for pid in daemons)
        script = tmp_path / "sleep.sh"
        script.write_text(f"#!/bin/sh\n#SBATCH --array=0-{CPUS - 1}\necho $$ >> {tmp_path}/pids\n"
                          "exec sleep 600\n")  # fmt: skip
        job = slurm.run("sbatch", "--parsable", f"--chdir={tmp_path}", str(script)).stdout.strip()
        slurm.wait_running(job, CPUS)
        pids = wait_for(lambda: len(_pids(tmp_path)) == CPUS and _pids(tmp_path))
        assert all(alive(pid) for pid in pids)
    # The fixture's end: its jobs, daemons and folder go.
    assert not any(alive(pid) for pid in pids + daemons)
    assert not slurm.root.exists()


def _pids(folder: Path) -> list[int]:
    path = folder / "pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


#: Heartbeats every second, as FAST_STALE, but a grace of 20 s: these tests check that a
#: signalled worker gives its trial back, not that a silent one is recovered; 3 s on two busy
#: cores could fail a live trial as stale.
HEARTBEATS = {"SWEEP_HEARTBEAT_INTERVAL": "1", "SWEEP_GRACE_PERIOD": "20"}


def _env(slurm, pace: float) -> dict[str, str]:
    """The cluster's client environment, with the worker settings a submit carries to its
    tasks: heartbeats, a checkpoint every epoch, the dataset's cache and ``PYTHONPATH`` (the
    pace's ``sitecustomize`` first). Jobs get only the pace and SLURM's own variables from it
    (``SBATCH_EXPORT``, as ``--export``): what else a worker needs comes from the script."""
    path = [str(STALL), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {
        **slurm.env,
        **HEARTBEATS,
        "SWEEP_CHECKPOINT_OVERHEAD": "inf",
        "MLP_SWEEP_CACHE": str(cache_dir()),
        "SWEEP_TEST_EPOCH_SECONDS": str(pace),
        "SBATCH_EXPORT": "SWEEP_TEST_EPOCH_SECONDS",
        "PYTHONPATH": os.pathsep.join(path),
    }


def _submit(cwd: Path, env: dict[str, str], *args: str) -> str:
    """`sweep submit ARGS --format json` run in ``cwd``; the job's id."""
    done = subprocess.run(sweep_cmd("submit", *args, "--format", "json"), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["job_id"]


def _checkpointed(url: str, name: str, epoch: int) -> bool:
    """Whether a RUNNING trial of the study has a checkpoint of ``epoch`` or later: a worker is
    mid-trial, and a cut there that did not keep its checkpoint would lose more than one epoch."""
    running = load(url, name).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return any(t.system_attrs.get(CHECKPOINT, {}).get("epoch", 0) >= epoch for t in running)


Claim = collections.namedtuple("Claim", "log trial epoch ended")


def _claims(cwd: Path) -> list[Claim]:
    """Each claim in the tasks' logs: its log, the trial, the last epoch it reported (a resumed
    claim reports the epochs it took over first) and whether the trial ended in it."""
    found: list[Claim] = []
    for log in sorted((cwd / "runs" / "slurm").glob("*.log")):
        for line in log.read_text().splitlines():
            if m := re.fullmatch(r"trial (\d+) claimed", line):
                found.append(Claim(log.name, int(m[1]), 0, False))
            elif m := re.match(r"trial (\d+) (epoch (\d+)/|complete|pruned|fail)", line):
                assert found and found[-1].trial == int(m[1]), f"{log.name}: {line}"
                found[-1] = found[-1]._replace(
                    epoch=max(found[-1].epoch, int(m[3] or 0)), ended=m[3] is None
                )
    return found


def _in_epoch(log: Path) -> int:
    """The last epoch the claim a task's log ends with reported (0 if it ended or none)."""
    claims = [c for c in _claims(log.parents[2]) if c.log == log.name]
    return claims[-1].epoch if claims and not claims[-1].ended else 0


def _assert_at_most_one_epoch_lost(url: str, name: str, claims: list[Claim]) -> int:
    """Every finished trial whose claims were cut short went on from no earlier than one epoch
    before the last one they reported (the epoch under way when the signal came is the most a
    cut loses; with the report before the checkpoint, one reported but not yet saved); the
    number of cut claims that had reported an epoch."""
    cut = collections.defaultdict(int)
    for c in claims:
        if not c.ended:
            cut[c.trial] = max(cut[c.trial], c.epoch)
    for trial in load(url, name).get_trials(deepcopy=False):
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        before = [cut[n] for n in (trial.number, trial.user_attrs.get("resumed_from_trial"))
                  if n in cut]  # fmt: skip
        if before:
            resumed = trial.user_attrs.get("resumed_from_epoch", 0)
            assert resumed >= max(before) - 1, (trial.number, resumed, before)
    return sum(epoch > 0 for epoch in cut.values())


def _assert_grid_done_once(url: str) -> None:
    study = load(url, "g")
    done = completed_points(study)
    assert len(done) == GRID_POINTS and set(done.values()) == {1}, done
    left = states(study)
    assert not (left[TrialState.RUNNING] or left[TrialState.WAITING]), left


def test_an_array_finishes_a_grid_exactly_once_and_a_requeued_task_rejoins(slurm, tmp_path):
    study, url = grid_study(tmp_path, train_size=500, epochs=8), f"sqlite:///{tmp_path}/db.sqlite"
    env = _env(slurm, pace=1.0)
    job = _submit(tmp_path, env, str(study), "--storage", url, "--workers", "3", "--requeue")
    slurm.wait_running(job, 3)
    log = tmp_path / "runs" / "slurm" / f"g-{job}_1.log"
    assert wait_for(lambda: log.exists() and _in_epoch(log) >= 2)  # reported epoch 2 of 8
    slurm.run("scontrol", "requeue", f"{job}_1")  # SIGTERM now, the same task again later
    slurm.wait_ended(job)
    assert set(slurm.states(job).values()) == {"COMPLETED"}, slurm.states(job)  # all exit 0
    text = log.read_text()
    assert "sweep: terminated; rerun to resume" in text  # the requeue's SIGTERM ...
    assert text.index("terminated") < text.index("worker ran")  # ... then the rerun's worker
    _assert_grid_done_once(url)
    assert set(states(load(url, "g"))) == {TrialState.COMPLETE}  # given back, not died
    assert _assert_at_most_one_epoch_lost(url, "g", _claims(tmp_path)) == 1


def _section_blocks() -> list[str]:
    """The ``sh`` blocks of the README's section "On a SLURM cluster", continuations joined."""
    readme = README.read_text()
    section = readme[readme.index("## On a SLURM cluster") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"^```sh\n(.*?)^```$", section, flags=re.S | re.M)
    return [block.replace("\\\n", " ") for block in blocks]


def _tpe_budget(trials: int, epochs: int) -> str:
    """The shipped tpe-budget study, cut down: its name, sampler, budget and space as shipped."""
    text = (README.parent / "studies" / "tpe-budget.toml").read_text()
    text, n = re.subn(r"(?m)^trials = \d+$", f"trials = {trials}", text)
    text, m = re.subn(r"(?m)^epochs = \d+$", f"epochs = {epochs}", text)
    assert n == m == 1, "studies/tpe-budget.toml changed shape: update this test"
    return text + "\n[data]\ntrain_size = 1_000\n"


def test_the_readme_section_runs_as_written_and_a_cancelled_array_resubmitted_finishes(
    slurm, tmp_path
):
    # The section's first block submits 4 workers; the test waits until they are mid-trial;
    # its second block, in the same shell, cancels the array, submits 2 workers and waits for
    # them to end.
    first, second = _section_blocks()
    assert "scancel" in second and "sweep submit" in second, second
    home, trials = tmp_path / "home", 6
    clone = home / "mlp-sweep"
    (clone / "studies").mkdir(parents=True)
    (clone / "studies" / "tpe-budget.toml").write_text(_tpe_budget(trials, epochs=6))
    (clone / ".venv").symlink_to(Path(sys.prefix))  # the package in a venv on a shared home
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"  # one node: SQLite is fine, as the README says
    (home / "sweep.env").write_text(f"export SWEEP_STORAGE={url}\n"
                                    f"export ARTIFACTS={tmp_path / 'shared'}\n")  # fmt: skip
    # Without the environment under test on PATH, so the section's activation is what finds it.
    bare = [d for d in os.environ["PATH"].split(":") if d and not (Path(d) / "sweep").exists()]
    env = {k: v for k, v in _env(slurm, pace=1.5).items()
           if k not in ("VIRTUAL_ENV", "SWEEP_STORAGE")}  # fmt: skip
    env |= {"HOME": str(home), "PATH": ":".join(bare), "MLP_SWEEP_CACHE": str(cache_dir())}

    def run(block: str) -> str:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        return done.stdout

    out = run(first)
    job = re.search(r"^submitted job (\d+): 4 workers of study tpe-budget \(script "
                    r"runs/slurm/tpe-budget.sbatch\)$", out, flags=re.M)[1]  # fmt: skip
    assert "#SBATCH --array=0-3" in out and "SWEEP_STORAGE=sqlite:///" in out  # the dry run
    logs = clone / "runs" / "slurm"
    # Every task has claimed a trial (none found the study done), and one is 2 epochs in.
    assert wait_for(lambda: len([p for p in logs.glob(f"*-{job}_*.log")
                                 if "claimed" in p.read_text()]) == 4, timeout=120)  # fmt: skip
    assert wait_for(lambda: _checkpointed(url, "tpe-budget", epoch=2))  # mid-study
    # The same shell as the first block's: its set-up (activate, sweep.env, cd) holds.
    setup = first[: first.index("\nsweep ")]
    run(f"{setup}\n{second}")
    assert set(slurm.states(job).values()) == {"CANCELLED"}, slurm.states(job)
    left = states(load(url, "tpe-budget"))
    assert left[TrialState.COMPLETE] + left[TrialState.PRUNED] == trials, left
    assert set(left) <= {TrialState.COMPLETE, TrialState.PRUNED}, left  # given back, not died
    cancelled = [p.read_text() for p in (clone / "runs" / "slurm").glob(f"*-{job}_*.log")]
    assert len(cancelled) == 4
    assert all("sweep: terminated; rerun to resume" in log for log in cancelled), cancelled
    claims = _claims(clone)
    assert _assert_at_most_one_epoch_lost(url, "tpe-budget", claims) >= 1  # cut mid-trial


#: Four points whose trials outlast a time limit of one minute.
LONG = """
[study]
name = "long"
sampler = "grid"
[budget]
min_params = 0
max_params = 200_000
[data]
train_size = 500
[train]
epochs = 60
batch_size = 64
[space]
hidden_1 = [64, 128]
hidden_2 = [32]
learning_rate = [0.1, 0.05]
"""


def test_a_time_limit_shorter_than_the_study_then_a_new_submit_finishes_it_losing_an_epoch_at_most(
    slurm, tmp_path
):
    # 4 workers on 4 points of 60 epochs of 2 s: about 125 s each. SLURM ends a job past its
    # time limit (1 minute, its least) at its next periodic check, within 30 s: every worker
    # is in the middle of its trial then, some 30 to 45 epochs in.
    study, url = tmp_path / "long.toml", f"sqlite:///{tmp_path / 'db.sqlite'}"
    study.write_text(LONG)
    env = _env(slurm, pace=2.0)
    job = _submit(tmp_path, env, str(study), "--storage", url, "--workers", "4", "--time", "1")
    slurm.wait_ended(job)
    assert set(slurm.states(job).values()) == {"TIMEOUT"}, slurm.states(job)
    logs = [(tmp_path / "runs" / "slurm" / f"long-{job}_{i}.log").read_text() for i in range(4)]
    assert all("sweep: terminated; rerun to resume" in log for log in logs), logs
    assert not states(load(url, "long"))[TrialState.COMPLETE]

    again = _submit(tmp_path, env, str(study), "--storage", url, "--workers", "4")
    slurm.wait_ended(again)
    assert set(slurm.states(again).values()) == {"COMPLETED"}, slurm.states(again)
    finished = load(url, "long")
    done = completed_points(finished)
    assert len(done) == 4 and set(done.values()) == {1}, done
    assert set(states(finished)) == {TrialState.COMPLETE}, states(finished)
    claims = _claims(tmp_path)
    cut = [c for c in claims if c.log.startswith(f"long-{job}_") and not c.ended]
    assert len(cut) == 4 and all(c.epoch >= 1 for c in cut), claims  # all cut mid-trial
    assert _assert_at_most_one_epoch_lost(url, "long", claims) == 4
    for trial in finished.trials:  # and each went on from its own checkpoint
        assert trial.user_attrs["epochs_run"] == 60 - trial.user_attrs["resumed_from_epoch"]


def test_a_warning_signal_before_the_time_limit_gives_the_trial_back(slurm, tmp_path):
    # submitit's cue, SIGUSR2 before the limit, sent to the batch shell (B:): the task's shell
    # is the worker itself (the script execs it); a plain --signal=USR2@N goes to job steps
    # only, which the script has none of. SLURM sends it at a periodic check (every 30 s, so
    # up to 60 s early by its manual): with 2 minutes and @60, 0 to 60 s after the start,
    # and, as checks go 30 s apart, in practice 30 s or more in, after the worker claimed.
    study, url = tmp_path / "long.toml", f"sqlite:///{tmp_path / 'db.sqlite'}"
    study.write_text(LONG.replace("hidden_1 = [64, 128]", "hidden_1 = [64]"))
    env = _env(slurm, pace=2.0)
    job = _submit(tmp_path, env, str(study), "--storage", url, "--workers", "1", "--time", "2",
                  "--sbatch=--signal=B:USR2@60")  # fmt: skip
    slurm.wait_ended(job)
    assert set(slurm.states(job).values()) == {"FAILED"}, slurm.states(job)  # exit 140
    log = next((tmp_path / "runs" / "slurm").glob(f"*-{job}_0.log")).read_text()
    assert "sweep: terminated by SIGUSR2; rerun to resume" in log, log
    assert "TIME LIMIT" not in log  # the warning, not the limit, ended it
    [cut] = _claims(tmp_path)
    assert not cut.ended and cut.epoch >= 1
    trials = load(url, "long").trials
    assert [t.state for t in trials] == [TrialState.WAITING, TrialState.WAITING]
    assert trials[cut.trial].system_attrs[RESUME_FROM]["epoch"] >= cut.epoch - 1

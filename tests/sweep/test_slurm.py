"""sweep on a real SLURM (#29): a one-node cluster on loopback that the tests start and stop
(tests/slurm.py)."""

import pytest

from tests.slurm import CPUS, cluster
from tests.sweep.helpers import alive, wait_for

pytestmark = pytest.mark.slow


def test_the_cluster_runs_an_array_at_once_and_leaves_nothing_running(tmp_path):
    own = cluster()
    slurm = next(own)
    script = tmp_path / "sleep.sh"
    script.write_text(f"#!/bin/sh\n#SBATCH --array=0-{CPUS - 1}\necho $$ >> {tmp_path}/pids\n"
                      "exec sleep 600\n")  # fmt: skip
    job = slurm.run("sbatch", "--parsable", f"--chdir={tmp_path}", str(script)).stdout.strip()
    slurm.wait_running(job, CPUS)
    pids = wait_for(lambda: len(_pids(tmp_path)) == CPUS and _pids(tmp_path))
    assert all(alive(pid) for pid in pids)
    own.close()  # the fixture's end: its jobs, daemons and folder go
    assert not any(alive(pid) for pid in pids)
    assert not slurm.root.exists()


def _pids(folder):
    path = folder / "pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []

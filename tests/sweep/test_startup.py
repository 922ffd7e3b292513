"""``sweep status`` starts with what it reads with (optuna, SQLAlchemy, the database driver), not
with the training code, the dataset reader, the artifact store's boto3, alembic or matplotlib:
each of those is a tenth of a second of a command that should answer at once, 1.08 s at 10^5
trials before (#14). Pinned as the modules a real run imports, in a fresh interpreter, through
the console script's own entry point (``sweep.cli:main``, pyproject.toml) and the Python
function; speed is for tests/bench.

Note: numpy is loaded all the same, by optuna itself (``import optuna`` imports its samplers).
"""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

from sweep.queue.attrs import SPEC
from sweep.queue.storage import open_storage
from sweep.study.spec import load_spec
from tests.sweep.helpers import grid_study

#: Modules ``sweep status`` must not import (a package stands for all of its modules).
NOT_IMPORTED = (
    "alembic",  # optuna's storage object checks the schema with it: sweep.queue.schema reads it
    "boto3", "botocore", "optuna.artifacts",  # the artifact store, for checkpoints
    "matplotlib", "joblib", "threadpoolctl",  # reports and training
    "sweep.trial", "sweep.runner", "sweep.worker",  # a trial's work and the processes running it
    "sweep.study.joining", "sweep.study.sampler", "sweep.queue.writeback", "sweep.report.writer",
    # mlp's model, training, dataset reader and checkpoints: the CLI names their errors (mlp.errors)
    # and status checks a stored spec's sizes (mlp.sizes), nothing more (#27)
    "mlp.train", "mlp.data", "mlp.checkpoint", "mlp.gradcheck", "mlp.memory", "mlp.state",
    "mlp.distort", "mlp.mapped", "mlp.model",
)  # fmt: skip

#: Run in a fresh interpreter: ``sweep status`` (the command's own ``main``) or the Python
#: function it is made of, then every module it imported, as JSON on the last line.
SCRIPT = """
import json, sys
url, entry = sys.argv[1:]
if entry == "cli":
    from sweep.cli import main
    assert main(["status", "--storage", url]) == 0
else:
    import sweep
    [s] = sweep.status(url)
    print(s.name, s.counts, s.best_value())
print(json.dumps(sorted(sys.modules)))
"""


def _a_study(url: str, tmp_path) -> None:
    """Sweep's own study with a finished trial: status validates its stored spec, reads its
    counts and the best trial's parameters, every step of its path."""
    storage = open_storage(url, heartbeat_interval=None, grace_period=None)
    study = optuna.create_study(study_name="g", storage=storage, direction="maximize")
    study.set_user_attr(SPEC, load_spec(grid_study(tmp_path)).to_dict())
    study.add_trial(create_trial(value=97.5, params={"hidden_1": 32},
                                 distributions={"hidden_1": IntDistribution(16, 64)}))  # fmt: skip
    storage.engine.dispose()


def _imported(*args: str) -> tuple[str, set[str]]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    *shown, modules = done.stdout.splitlines()
    return "\n".join(shown), set(json.loads(modules))


def _package_of(module: str, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if module == n or module.startswith(n + ".")), None)


@pytest.mark.parametrize("entry", ["cli", "api"])
def test_status_imports_only_what_it_reads_with(tmp_path, storage_url, entry):
    _a_study(storage_url, tmp_path)
    shown, modules = _imported(storage_url, entry)
    assert "97.50%" in shown  # it read the study: the path below was the whole path
    unwanted = sorted(m for m in modules if _package_of(m, NOT_IMPORTED))
    assert unwanted == [], unwanted
    driver = "psycopg" if storage_url.startswith("postgresql") else "sqlite3"
    assert {"sweep.report.summary", "sweep.queue.schema", driver} <= modules

"""The dashboard as a user sees it: a headless Chromium loads a study of two objectives from
``serve`` and its page names both objectives as the study file declares them.

The page is optuna-dashboard's JavaScript application, so only a browser can tell what it
shows; CI installs Chromium (``.ci/run``), and there a missing browser is a failure."""

import os
import shutil
import subprocess

import optuna
import pytest

from sweep.study.joining import open_study
from sweep.study.objectives import ACCURACY, PARAMS
from sweep.study.spec import parse_spec
from tests.sweep.dashboard_helpers import serving

pytestmark = pytest.mark.slow

SPEC = {
    "study": {"name": "front", "sampler": "nsga2", "trials": 3,
              "objectives": [ACCURACY.name, PARAMS.name]},
    "budget": {"min_params": 20_000, "max_params": 60_000},
    "train": {"depth": 1},
    "space": {"hidden_1": {"low": 26, "high": 75}},
}  # fmt: skip


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed; .ci/run installs it")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


def rendered(chromium: str, url: str) -> str:
    """The page's DOM once its scripts have run (virtual time: no fixed sleep)."""
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
            "--virtual-time-budget=20000", url]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout


def test_the_dashboard_shows_both_objectives_by_name(tmp_path):
    chromium = browser()
    db = tmp_path / "s.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    study = open_study(parse_spec(SPEC), storage)
    distribution = optuna.distributions.IntDistribution(26, 75)
    for width, values in [(30, [90.0, 24_000]), (60, [93.0, 48_000]), (50, [91.0, 40_000])]:
        study.add_trial(optuna.trial.create_trial(
            params={"hidden_1": width}, distributions={"hidden_1": distribution}, values=values,
        ))  # fmt: skip
    page, _ = serving(db, lambda url: rendered(chromium, url + "dashboard/studies/1"))
    assert "Pareto Front" in page
    for label in (ACCURACY.label, PARAMS.label):
        # the axis pickers of the Pareto front and the axis titles of its plot
        assert f">{label}<" in page, label
    assert "Objective 0" not in page and "Objective 1" not in page

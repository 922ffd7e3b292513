"""The lock, pyproject.toml's ranges and the optuna releases sweep knows agree, and the
environment under test is the lock's."""

from __future__ import annotations

import importlib.metadata
import logging
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from sweep.queue import tables
from tests.newer import installed_pins, pins

ROOT = Path(__file__).parents[1]
LOCK = pins((ROOT / ".ci" / "constraints.txt").read_text().splitlines())


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for name, reqs in project["optional-dependencies"].items() if name != "bench"
              for r in reqs]  # fmt: skip
    return [Requirement(r) for r in (*project["dependencies"], *extras)]


@pytest.mark.parametrize("requirement", _requirements(), ids=str)
def test_every_range_admits_its_locked_version_and_has_an_upper_bound(requirement):
    locked = LOCK[canonicalize_name(requirement.name)]
    assert requirement.specifier.contains(locked), f"the lock's {locked} is outside the range"
    assert any(s.operator in ("<", "==") for s in requirement.specifier), "no upper bound"


def test_optunas_upper_bound_is_the_release_after_the_last_tested():
    [optuna] = [r for r in _requirements() if r.name == "optuna"]
    [upper] = [s.version for s in optuna.specifier if s.operator == "<"]
    major, minor = map(int, tables.TESTED_OPTUNA[-1].split("."))
    assert Version(upper) == Version(f"{major}.{minor + 1}")
    assert ".".join(LOCK["optuna"].split(".")[:2]) in tables.TESTED_OPTUNA


def test_the_environment_under_test_is_the_lock():
    # make test installs from the lock; a package at another version means it did not.
    locked = installed_pins(ROOT / ".ci" / "constraints.txt")
    installed = {canonicalize_name(d.metadata["Name"]): d.version
                 for d in importlib.metadata.distributions()}  # fmt: skip
    moved = {
        n: (installed[n], v) for n, v in locked.items() if n in installed and installed[n] != v
    }
    assert moved == {}


@pytest.mark.parametrize("version", ["5.0.0", "5.1.0", "5.1.3"])
def test_a_tested_optuna_says_nothing(version):
    assert tables.untested_optuna(version) is None


@pytest.mark.parametrize("version", ["5.2.0", "4.9.1", "6.0.0.dev0"])
def test_an_untested_optuna_is_one_line_when_a_study_opens(version, monkeypatch, caplog, tmp_path):
    from sweep.queue.storage import open_storage
    from sweep.study.joining import open_study
    from sweep.study.spec import load_spec

    assert "\n" not in tables.untested_optuna(version)
    monkeypatch.setattr(tables, "optuna_version", version)
    spec = load_spec(ROOT / "studies" / "quick.toml")
    with caplog.at_level(logging.WARNING, logger="sweep.study.joining"):
        open_study(spec, open_storage(f"sqlite:///{tmp_path}/s.db"))
    [line] = [r.getMessage() for r in caplog.records if "optuna" in r.getMessage()]
    assert line.startswith(f"optuna {version} is not a release sweep was tested with (5.0, 5.1)")

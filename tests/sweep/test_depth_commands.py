"""`sweep train` and `sweep gradcheck` at any depth (#25): the flags --depth and --hidden-1 …
--hidden-4, derived from the declaration, build the network they name and print it."""

import csv

import pytest

from tests.sweep.helpers import main_in_process, run_cli


@pytest.mark.parametrize(
    ("flags", "network"),
    [(["--depth", "1", "--hidden-1", "800"], "784-800-10 (636,010 parameters)"),
     (["--depth", "3", "--hidden-1", "32", "--hidden-2", "16", "--hidden-3", "8"],
      "784-32-16-8-10 (25,874 parameters)")],
    ids=["Simard's 784-800-10", "depth 3"],
)  # fmt: skip
def test_train_builds_and_prints_the_depth_its_flags_give(flags, network):
    out = run_cli("train", *flags, "--epochs", "1", "--train-size", "2000")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{network}, glorot init")
    assert 20 < float(lines[-1].split()[-1].rstrip("%")) <= 100  # it learns: chance is 10%


def test_gradcheck_checks_the_depth_its_flags_give(tmp_path):
    flags = ["--depth", "4", "--hidden-1", "12", "--hidden-2", "9", "--hidden-3", "7",
             "--hidden-4", "5", "--examples", "4"]  # fmt: skip
    out = main_in_process("gradcheck", *flags, "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    network = "784-12-9-7-5-10 (9,707 parameters) in float64 on 4 examples"
    assert out.stdout.splitlines()[0] == f"gradient check of {network}"
    assert f"{network}." in (tmp_path / "gradcheck.md").read_text()
    diffs = [float(r["max_abs_diff"]) for r in csv.DictReader((tmp_path / "gradcheck.csv").open())]
    assert min(diffs) < 1e-9  # backprop agrees with the derivative at every depth's layers

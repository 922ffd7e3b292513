"""The real `sweep` entry point, run as a user runs it: exit codes and one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlp import data as data_mod


def sweep(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("sweep")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sweep.cli"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_help_shows_an_example():
    out = sweep("--help")
    assert out.returncode == 0
    assert "example:" in out.stdout


def test_data_prints_the_cache_path():
    out = sweep("data")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == data_mod.cache_dir() / data_mod.CACHE_NAME


def test_train_prints_a_line_per_epoch_and_the_accuracy():
    out = sweep(
        "train", "--hidden-1", "32", "--hidden-2", "16", "--epochs", "2", "--train-size", "2000"
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("784-32-16-10 (25,818 parameters)")
    assert [ln.split()[1] for ln in lines if ln.startswith("epoch")] == ["1", "2"]
    assert lines[-1].startswith("validation accuracy: ")
    assert 50 < float(lines[-1].split()[-1].rstrip("%")) <= 100


def test_missing_dataset_is_one_line_and_exit_1(tmp_path):
    out = sweep("train", "--data", str(tmp_path / "missing.pkl.gz"))
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("sweep: error: ") and "missing.pkl.gz: no such file" in out.stderr


def test_corrupt_cache_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"garbage")
    out = sweep("data", env={data_mod.CACHE_ENV: str(tmp_path)})
    assert out.returncode == 1
    assert (
        out.stderr
        == f"sweep: error: {tmp_path / 'mnist.npz'}: corrupt dataset cache"
        + out.stderr.split("corrupt dataset cache", 1)[1]
    )
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_divergence_is_one_line_and_exit_1():
    out = sweep(
        "train",
        "--hidden-1",
        "64",
        "--hidden-2",
        "64",
        "--epochs",
        "3",
        "--train-size",
        "2000",
        "--init",
        "normal",
        "--init-std",
        "100",
        "--lr",
        "1e6",
    )
    assert out.returncode == 1
    assert out.stderr.startswith("sweep: error: training diverged")


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--init", "he"], ["--lr", "-1"]])
def test_bad_options_exit_2(bad):
    out = sweep("train", *bad)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr

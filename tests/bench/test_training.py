"""The benchmark's arithmetic, and a smoke run so `make bench` cannot rot unnoticed.

Nothing here asserts a speed: speed is what `make bench` reports.
"""

import pytest

from tests.bench import checkpoints, distortions
from tests.bench import training as bench


def test_flops_per_epoch_by_hand():
    # forward per example: 2·(784·512 + 512·768 + 768·10) = 1,604,608
    # backward: twice that, less the input layer's dX (2·784·512): 2,406,400
    per_example = 1_604_608 + 2_406_400
    assert (
        bench.flops_per_epoch(100, full_eval=False, n_valid=10)
        == 100 * per_example + 10 * 1_604_608
    )
    assert (
        bench.flops_per_epoch(100, full_eval=True, n_valid=10)
        == 100 * per_example + 110 * 1_604_608
    )


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end(capsys):
    bench.main(["--quick", "--epochs", "1", "--repeats", "1", "--skip-grid"])
    out = capsys.readouterr().out
    headings = ["## sgemm", "## training", "GEMMs alone:", "numpy MLP:", "PyTorch:",
                "## framework overhead", "trials/s, 2 workers on one SQLite queue:",
                "## checkpoints, one after each of 1 epoch(s)", "epoch, no checkpoints:",
                "checkpoint:", "wall per epoch:", "## distortions of the training digits",
                "training step 784-800-10:", "all together:"]  # fmt: skip
    for heading in headings:
        assert heading in out
    (overhead,) = [line for line in out.splitlines() if line.startswith("overhead:")]
    assert "of an epoch   target ≤ 5%" in overhead
    assert overhead.endswith((" ok", " MISSED"))


@pytest.mark.slow
def test_only_runs_the_sections_named(capsys):
    bench.main(["--quick", "--repeats", "1", "--only", "sgemm"])
    out = capsys.readouterr().out
    assert "## sgemm" in out
    for other in ("## training", "## seed grid", "## framework overhead", "## checkpoints",
                  "## distortions"):  # fmt: skip
        assert other not in out


def test_the_distortion_rows_time_each_kind_and_the_step_alike(mnist, monkeypatch):
    ran = []  # what ran, in order: the step or a kind's configuration
    real_stepper, real_distort = distortions._stepper, distortions.distort

    def stepper(x, y):
        step = real_stepper(x, y)
        return lambda: (ran.append(distortions.STEP), step())

    def distort(x, rng, config, *, out):
        assert x.shape == out.shape == (distortions.BATCH, 784)
        ran.append(next(name for name, c in distortions.KINDS.items() if c == config))
        return real_distort(x, rng, config, out=out)

    monkeypatch.setattr(distortions, "_stepper", stepper)
    monkeypatch.setattr(distortions, "distort", distort)
    found = distortions.samples(mnist.head(600), rounds=2, batches=3)
    assert list(found) == [distortions.STEP, *distortions.KINDS]
    assert all(len(seconds) == 2 and min(seconds) > 0 for seconds in found.values())
    # Three rounds (the first a warm-up), each timing 3 batches of every row in turn.
    assert ran == [name for name in found for _ in range(3)] * 3


def test_each_distortion_row_is_its_median_over_the_steps():
    step = [0.004, 0.002, 0.003]  # median 3 ms
    found = {distortions.STEP: step, "shift ±2 px": [0.0018, 0.0003, 0.0006]}
    found |= {name: [0.0015] * 3 for name in distortions.KINDS if name != "shift ±2 px"}
    found["all together"] = [0.0036] * 3
    rows = distortions.lines(found)
    assert rows[0].startswith("training step 784-800-10: median 3.000  (min 2.000, max 4.000)")
    assert rows[1].endswith("0.20× the step   target ≤ 0.2×   ok")  # median 0.6 ms: on target
    assert rows[2].endswith("median 1.500  (min 1.500, max 1.500)   0.50× the step")
    assert rows[4].endswith("1.20× the step   target ≤ 1×   MISSED")


def _tiny():
    from mlp import load_mnist

    return load_mnist().head(300)


def test_checkpointed_trials_upload_every_epoch_through_the_sweeps_code(monkeypatch):
    import sweep.trial.checkpoint

    uploads = []
    real = sweep.trial.checkpoint.upload

    def counted(store, storage, path, **kwargs):
        uploads.append(storage.get_trial(kwargs["trial_id"]).number)
        return real(store, storage, path, **kwargs)

    monkeypatch.setattr(sweep.trial.checkpoint, "upload", counted)
    done = checkpoints.runs(_tiny(), epochs=2, repeats=2)
    assert [r.checkpointed for r in done] == [False, True, True, False]  # ABBA
    assert uploads == [1, 1, 2, 2]  # one per epoch of each checkpointed trial
    for r in done:
        assert len(r.epochs) == 2 and r.wall > 0
        assert (len(r.build), len(r.write)) == ((2, 2) if r.checkpointed else (0, 0))


def test_a_checkpoint_that_fails_stops_the_benchmark(monkeypatch):
    import sweep.trial.checkpoint

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sweep.trial.checkpoint, "upload", broken)
    with pytest.raises(RuntimeError, match="2 checkpoint run"):
        checkpoints.runs(_tiny(), epochs=1, repeats=2)


def test_overhead_is_the_median_checkpoint_over_the_median_epoch():
    off = checkpoints.Run(False, epochs=[1.0, 2.0, 9.0], wall=12.0)
    on = checkpoints.Run(True, epochs=[1.0, 1.0], wall=4.0, build=[0.01, 0.02], write=[0.03, 0.5])
    # epoch median 2.0; checkpoint costs 0.04 and 0.52, median 0.28: 14% of an epoch
    lines = checkpoints.lines([off, on], 0.05)
    assert lines[0].startswith("epoch, no checkpoints:  median 2.000")
    assert lines[1].startswith("checkpoint:             median 0.280")
    assert lines[2] == "overhead:               14.0% of an epoch   target ≤ 5%   MISSED"
    assert "median 4.000 without, 2.000 with (-50.0%" in lines[3]
    assert checkpoints.lines([off, on], 0.15)[2].endswith("target ≤ 15%   ok")

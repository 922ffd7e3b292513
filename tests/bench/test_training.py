"""The benchmark's arithmetic, and a smoke run so `make bench` cannot rot unnoticed.

Nothing here asserts a speed: speed is what `make bench` reports.
"""

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


def test_the_benchmark_runs_end_to_end(capsys):
    bench.main(["--quick", "--epochs", "1", "--repeats", "1", "--skip-grid"])
    out = capsys.readouterr().out
    headings = ["## sgemm", "## training", "GEMMs alone:", "numpy MLP:", "PyTorch:",
                "## framework overhead", "trials/s, 2 workers on one SQLite queue:"]  # fmt: skip
    for heading in headings:
        assert heading in out

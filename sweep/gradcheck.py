"""The gradient check as a command: finite differences against backprop on a network of any
depth (the reference one by default), in float64, written as a table, a log-log figure and a
reading of the curve.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from mlp import MLP, load_mnist
from mlp.gradcheck import gradcheck
from mlp.memory import gradcheck_bytes, require
from mlp.model import described
from sweep.report import figures
from sweep.report.writer import md_table


@dataclasses.dataclass(frozen=True)
class GradcheckReport:
    """What ``check_gradients`` measured and where it wrote it."""

    # What was checked: ``784-512-768-10 (803,594 parameters) in float64 on 10 examples``.
    network: str
    ns: tuple[int, ...]  # N, with ε = 1/N
    max_abs_diff: tuple[float, ...]  # the largest |finite difference − backprop| at each N
    reading: str  # the curve in words (``describe``)
    out_dir: Path  # holds gradcheck.csv, gradcheck.md and gradcheck.png


def check_gradients(
    *, hidden: tuple[int, ...], examples: int, seed: int, out_dir: Path,
    data_path: str | None = None,
) -> GradcheckReport:  # fmt: skip
    """Check the backprop of a 784-hidden-10 network (``hidden``: 1 to 4 widths) on its first
    ``examples`` training examples against central differences at every ε of
    ``mlp.gradcheck``; write the report. InsufficientMemory, before the network is built, if
    it would not fit."""
    data = load_mnist(data_path)
    network = f"{described(*hidden)} in float64 on {examples} examples"
    require(gradcheck_bytes(*hidden, examples=examples), f"a gradient check of {network}")
    model = MLP(*hidden, dtype="float64", seed=seed)
    x = data.train.x[:examples].astype("float64")
    result = gradcheck(model, x, data.train.y[:examples], seed=seed)
    write(result.ns, result.max_abs_diff, out_dir=out_dir, network=network)
    return GradcheckReport(network, result.ns, result.max_abs_diff,
                           describe(result.ns, result.max_abs_diff), out_dir)  # fmt: skip


def describe(ns: tuple[int, ...], diffs: tuple[float, ...]) -> str:
    """A short reading of a gradient check: where the difference is smallest, and why."""
    best = min(range(len(ns)), key=lambda i: diffs[i])
    falls = all(diffs[i] >= diffs[i + 1] for i in range(best))
    text = (
        f"The largest difference falls from {diffs[0]:.2e} at N = {ns[0]} to {diffs[best]:.2e} at "
        f"N = {ns[best]} (ε = {1 / ns[best]:.0e})" + ("" if falls else ", not monotonically") + "."
    )
    if best < len(ns) - 1:
        text += (
            f" Beyond it, it rises again to {diffs[-1]:.2e} at N = {ns[-1]}: float64 round-off in "
            "L(θ ± ε), divided by 2ε, takes over."
        )
    return text


def write(ns: tuple[int, ...], diffs: tuple[float, ...], *, out_dir: Path, network: str) -> Path:
    """gradcheck.csv, gradcheck.md (the ``network`` checked, table and reading) and the log-log
    gradcheck.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "gradcheck.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["N", "epsilon", "max_abs_diff"])
        w.writerows([n, 1 / n, d] for n, d in zip(ns, diffs, strict=True))
    figures.gradcheck(ns, diffs, out_dir / "gradcheck.png")
    rows = [[n, f"{1 / n:.0e}", f"{d:.3e}"] for n, d in zip(ns, diffs, strict=True)]
    table = md_table(["N", "ε", "max \\|difference\\|"], rows)
    (out_dir / "gradcheck.md").write_text(
        f"# Gradient check\n\n{network}.\n\n![max difference against N](gradcheck.png)\n\n"
        f"{table}\n\n{describe(ns, diffs)}\n"
    )
    return out_dir

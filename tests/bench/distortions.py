"""The ``## distortions`` section of ``make bench``: what distorting a batch of training digits
costs against the training step it feeds (#25).

``fit`` distorts every training minibatch before its forward pass (``mlp.distort``), so the
cost that matters is the distortion's against the step: the issue's targets are ≤ 0.2× the
step for integer shifts alone and ≤ 1× for every kind together (its prototype paid 1.4×, most
of it the bilinear gather). The step is Simard's 784-800-10 at batch 128 (float32, plain SGD
at the training rows' learning rate), as ``fit`` runs it: forward, softmax cross-entropy,
backward, update. The strengths are the issue's recipe: shifts of ±2 px, rotations of ±10°,
scales of ±10%, shears of ±0.15, elastic α 34 and σ 4. Everything runs on one BLAS thread, a
sweep worker's setting (``make bench``'s other rows use all the cores), in rounds that time
each row in turn on the same batches, so that a slow spell of a shared machine weighs on all
alike; the rows give the median of the rounds' milliseconds per batch.

Run alone with ``python -m tests.bench.training --only distortions``.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from mlp import MLP, TrainConfig
from mlp.distort import distort
from mlp.functions import cross_entropy
from mlp.optim import SGD
from tests.bench.training import BATCH, LR, _stats

HIDDEN = 800  # Simard, Steinkraus and Platt 2003: 784-800-10
#: Each row's distortions, with the issue's strengths.
KINDS = {
    "shift ±2 px": TrainConfig(shift=2),
    "affine ±10°, ±10%, ±0.15": TrainConfig(rotation=10, zoom=0.1, shear=0.15),
    "elastic α 34, σ 4": TrainConfig(elastic_alpha=34, elastic_sigma=4),
    "all together": TrainConfig(
        shift=2, rotation=10, zoom=0.1, shear=0.15, elastic_alpha=34, elastic_sigma=4
    ),
}
#: The issue's targets, as a share of the training step.
TARGETS = {"shift ±2 px": 0.2, "all together": 1.0}
STEP = f"training step 784-{HIDDEN}-10"


def _stepper(x: np.ndarray, y: np.ndarray):
    """One training step on ``x, y`` as ``fit`` takes it, on a fresh 784-800-10 model."""
    model = MLP(HIDDEN, dtype="float32", seed=0)
    optimiser = SGD(model.params)
    scale, step_lr = (LR, 1.0) if optimiser.folds_learning_rate else (1.0, LR)

    def step() -> None:
        logits, cache = model.forward(x)
        _, probs = cross_entropy(logits, y)
        optimiser.step(model.backward_from_probs(probs, cache, y, scale=scale), step_lr)

    return step


def samples(data, *, rounds: int, batches: int) -> dict[str, list[float]]:
    """Seconds per batch of BATCH digits: of the training step and of each kind's ``distort``,
    ``rounds`` samples each, every sample the mean over ``batches`` consecutive batches."""
    from threadpoolctl import threadpool_limits

    x = np.asarray(data.train.x[: batches * BATCH], dtype=np.float32)
    y = data.train.y[: batches * BATCH]
    rng = np.random.default_rng(0)
    out = np.empty((BATCH, x.shape[1]), dtype=np.float32)
    timed = {STEP: None, **KINDS}
    found: dict[str, list[float]] = {name: [] for name in timed}
    with threadpool_limits(limits=1, user_api="blas"):
        steps = [_stepper(x[lo : lo + BATCH], y[lo : lo + BATCH]) for lo in range(0, len(y), BATCH)]
        for _ in range(rounds + 1):  # the first round warms up and is dropped
            for name, config in timed.items():
                start = time.perf_counter()
                for i, lo in enumerate(range(0, len(y), BATCH)):
                    if config is None:
                        steps[i]()
                    else:
                        distort(x[lo : lo + BATCH], rng, config, out=out)
                found[name].append((time.perf_counter() - start) / batches)
    return {name: values[1:] for name, values in found.items()}


def lines(found: dict[str, list[float]]) -> list[str]:
    """The rows: the step's milliseconds per batch, then each kind's and its share of the
    step, against the target where the issue sets one (ok or MISSED)."""
    ms = {name: [s * 1e3 for s in values] for name, values in found.items()}
    step = statistics.median(ms[STEP])
    width = max(map(len, ms)) + 2
    rows = [f"{STEP}:".ljust(width) + _stats(ms[STEP])]
    for name in KINDS:
        ratio = statistics.median(ms[name]) / step
        row = f"{name}:".ljust(width) + f"{_stats(ms[name])}   {ratio:.2f}× the step"
        if name in TARGETS:
            verdict = "ok" if ratio <= TARGETS[name] else "MISSED"
            row += f"   target ≤ {TARGETS[name]:g}×   {verdict}"
        rows.append(row)
    return rows


def section(data, *, quick: bool) -> list[str]:
    """The section as ``make bench`` prints it: its heading, then ``lines``."""
    rounds, batches = (2, 4) if quick else (15, 40)
    heading = (
        f"\n## distortions of the training digits, ms per batch of {BATCH} on one BLAS thread "
        f"({rounds} rounds of {batches} batches, interleaved)"
    )
    return [heading, *lines(samples(data, rounds=rounds, batches=batches))]

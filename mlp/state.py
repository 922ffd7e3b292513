"""What a training run has done, as plain values: each epoch's metrics and the state to go on from.

``mlp.train`` makes them, ``mlp.checkpoint`` writes and reads them; both import this module and
it imports neither, so that the run and its file stay one-way (#24).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch produced. Accuracies are fractions in [0, 1]."""

    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    valid_loss: float
    valid_accuracy: float
    seconds: float  # wall time of this epoch, evaluation included


def percent(fraction: float) -> float:
    """A fraction in percent, as sweep stores and shows accuracies: ``100 * fraction`` rounded
    to 10 decimals, so 0.9757 is 97.57 and not 97.57000000000001 (issue 28). An accuracy over
    n examples has at most as many decimals as n has digits, so the rounding only drops the
    float noise of the product."""
    return round(100 * fraction, 10)


@dataclass
class TrainState:
    """Everything ``fit`` needs to continue after ``epoch`` completed epochs exactly as if it had
    never stopped."""

    epoch: int  # epochs completed (1-based count)
    params: list[np.ndarray]  # the model's weights and biases, in MLP.params order
    velocity: list[np.ndarray] | None  # the optimizer's momentum buffers (None without momentum)
    rng: dict  # np.random.Generator bit_generator.state (JSON-able)
    best: float  # patience bookkeeping: best validation accuracy so far
    since_best: int  #   and epochs since it
    history: list[EpochMetrics]  # every completed epoch's metrics, in order
    # What the state was trained for, as its caller names it (opaque here; e.g. a digest of the
    # run's settings): a caller that resumes compares it with its own, since a file may come
    # from anywhere. At most MAX_FITS characters (mlp.checkpoint).
    fits: str = ""

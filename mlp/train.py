"""Minibatch SGD for the MLP, with per-epoch metrics and a callback that can stop training.

What a run does is a ``TrainConfig`` (``mlp.config``, where every field is declared). A run can
be stopped after any epoch and continued exactly: ``on_state`` hands out a ``TrainState`` (the
weights, the momentum buffers, the random generator, the patience bookkeeping, the metrics),
``mlp.checkpoint`` writes and reads it, and ``fit(..., resume=state)`` goes on from it. Both
value types are ``mlp.state``'s, so that this module and the checkpoint's never import each
other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mlp.config import TrainConfig
from mlp.data import Dataset
from mlp.distort import distort, distorts
from mlp.errors import DivergedError
from mlp.functions import cross_entropy
from mlp.model import MLP
from mlp.optim import SGD, learning_rate_at
from mlp.state import EpochMetrics, TrainState


@dataclass
class History:
    """Every epoch's metrics, in order; ``stopped_early`` when the callback asked to stop."""

    epochs: list[EpochMetrics] = field(default_factory=list)
    stopped_early: bool = False  # by the callback or by patience

    def column(self, name: str) -> list[float]:
        return [getattr(m, name) for m in self.epochs]


#: Called after every epoch; returning True stops training (exceptions propagate).
EpochCallback = Callable[[EpochMetrics], "bool | None"]
#: Called after every epoch that training continues past, with a copy of the state after it.
StateCallback = Callable[[TrainState], None]


# Overflow in a diverging run is reported once, as DivergedError, not as numpy warnings.
@np.errstate(over="ignore", invalid="ignore")
def fit(
    model: MLP,
    data: Dataset,
    config: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
    resume: TrainState | None = None,
    on_state: StateCallback | None = None,
) -> History:
    """Train ``model`` in place on ``data.train``, evaluating on ``data.valid`` every epoch.

    With any distortion on (``mlp.distort``), every training minibatch is distorted afresh
    before the forward pass, drawing from the run's generator; the evaluation passes see the
    clean digits, so only the running-mean training metrics (``full_train_eval`` off) are
    those of distorted batches.

    ``on_epoch`` sees each epoch's metrics and may stop training. ``on_state`` is then called
    (unless it stopped) with the state after the epoch and after the patience bookkeeping:
    copies, ~2 ms for the 784-512-768-10 model, which the caller may write or drop.
    ``resume``, a state of a run with the same model shape and ``config``, loads it into
    ``model``, the optimiser and the random generator and continues at ``resume.epoch + 1``:
    the weights and every later epoch's metrics are those of a run never stopped, bit for bit
    (in float32, given the same BLAS thread count). The History holds the resumed epochs too;
    ``on_epoch`` is called only for the epochs run.

    Raises DivergedError as soon as a minibatch loss is not finite, ValueError for a ``resume``
    that does not fit ``model`` or ``config``.
    """
    optimiser = SGD(
        model.params, momentum=config.momentum, nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )  # fmt: skip
    rng = np.random.default_rng(config.seed)
    best, since_best = -1.0, 0
    history = History()
    if resume is not None:
        _restore(resume, model, optimiser, rng, config)
        best, since_best = resume.best, resume.since_best
        history.epochs = list(resume.history)
        if config.patience and since_best >= config.patience:  # saved as patience ran out
            history.stopped_early = True
            return history
    dtype = model.dtype
    x_train = np.asarray(data.train.x, dtype=dtype)
    y_train = data.train.y
    x_valid = np.asarray(data.valid.x, dtype=dtype)
    n = len(y_train)
    batch = np.empty((min(config.batch_size, n), x_train.shape[1]), dtype=dtype)
    # Distortions (#25) go into a buffer of their own: x_train, which the full-train pass
    # evaluates, and the shuffle's gather buffer stay the clean digits.
    distorted = np.empty_like(batch) if distorts(config) else None
    for epoch in range(len(history.epochs) + 1, config.epochs + 1):
        start = time.perf_counter()
        lr = learning_rate_at(
            epoch, config.learning_rate, schedule=config.schedule, epochs=config.epochs,
            warmup_epochs=config.warmup_epochs, step_size=config.step_size, gamma=config.gamma,
        )  # fmt: skip
        # Shuffled batches are gathered one at a time into a reused buffer: copying the
        # whole permuted split first wrote and re-read 157 MB an epoch (#5).
        order = rng.permutation(n) if config.shuffle else None
        scale, step_lr = (lr, 1.0) if optimiser.folds_learning_rate else (1.0, lr)
        loss_sum = 0.0
        correct = 0
        for b, lo in enumerate(range(0, n, config.batch_size)):
            hi = min(lo + config.batch_size, n)
            if order is None:
                xb, yb = x_train[lo:hi], y_train[lo:hi]
            else:
                rows = order[lo:hi]
                xb = np.take(x_train, rows, axis=0, out=batch[: hi - lo])
                yb = y_train[rows]
            if distorted is not None:  # drawn from the run's generator: a resume repeats it
                xb = distort(xb, rng, config, out=distorted[: hi - lo])
            logits, cache = model.forward(xb, dropout=config.dropout, rng=rng)
            if not config.full_train_eval:
                correct += int((logits.argmax(axis=1) == yb).sum())
            loss, probs = cross_entropy(logits, yb)
            if not math.isfinite(loss):
                raise DivergedError(epoch, b, loss)
            loss_sum += loss * len(yb)
            grads = model.backward_from_probs(probs, cache, yb, scale=scale)
            optimiser.step(grads, step_lr)
        if config.full_train_eval:
            train_loss, train_acc = model.evaluate(
                x_train, y_train, batch_size=config.eval_batch_size
            )
        else:
            train_loss, train_acc = loss_sum / n, correct / n
        valid_loss, valid_acc = model.evaluate(
            x_valid, data.valid.y, batch_size=config.eval_batch_size
        )
        if not math.isfinite(train_loss) or not math.isfinite(valid_loss):
            raise DivergedError(epoch, b, train_loss)
        metrics = EpochMetrics(
            epoch, train_loss, train_acc, valid_loss, valid_acc, time.perf_counter() - start
        )
        history.epochs.append(metrics)
        if on_epoch is not None and on_epoch(metrics):
            history.stopped_early = True
            break
        best, since_best = (valid_acc, 0) if valid_acc > best else (best, since_best + 1)
        if on_state is not None:
            velocity = optimiser.velocity
            on_state(
                TrainState(
                    epoch=epoch,
                    params=[p.copy() for p in model.params],
                    velocity=None if velocity is None else [v.copy() for v in velocity],
                    rng=rng.bit_generator.state,  # a new dict each time
                    best=best,
                    since_best=since_best,
                    history=list(history.epochs),
                )
            )
        if config.patience and since_best >= config.patience:
            history.stopped_early = True
            break
    return history


def _restore(
    state: TrainState, model: MLP, optimiser: SGD, rng: np.random.Generator, config: TrainConfig
) -> None:
    """Put ``state`` into the run's objects, refusing one that cannot be from this run."""
    if not 0 <= state.epoch <= config.epochs or len(state.history) != state.epoch:
        raise ValueError(
            f"cannot resume at epoch {state.epoch} with {len(state.history)} epochs of history "
            f"in a run of {config.epochs}"
        )
    for p, q in zip(model.params, state.params, strict=True):
        if p.shape != q.shape or p.dtype != q.dtype:
            raise ValueError(f"cannot resume {q.dtype} {q.shape} weights into {p.dtype} {p.shape}")
    if state.epoch and bool(config.momentum) != (state.velocity is not None):
        raise ValueError(
            f"cannot resume a state {'without' if config.momentum else 'with'} "
            f"momentum buffers in a run with momentum {config.momentum}"
        )
    for p, q in zip(model.params, state.params, strict=True):
        p[...] = q  # in place: the optimiser holds these arrays
    optimiser.velocity = state.velocity
    rng.bit_generator.state = state.rng

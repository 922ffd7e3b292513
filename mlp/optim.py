"""SGD with momentum (classical or Nesterov) and L2 weight decay, and learning-rate schedules.

The update follows PyTorch's SGD, so results are comparable:
    g ← g + λ·w                     (weight decay, on weight matrices only, not biases)
    v ← μ·v + g                     (momentum buffer; v = g on the first step)
    w ← w − η·v                     (classical)   or   w ← w − η·(g + μ·v)   (Nesterov)
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("constant", "step", "cosine")


class SGD:
    """Holds the momentum buffers for a list of parameters; ``step`` updates them in place."""

    def __init__(
        self,
        params: list[np.ndarray],
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1); got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got {weight_decay}")
        self.params = params
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self._velocity: list[np.ndarray | None] = [None] * len(params)

    @property
    def folds_learning_rate(self) -> bool:
        """True when the update is w ← w − η·g, linear in g: the caller may then compute
        gradients already scaled by η and step with ``learning_rate=1``, saving a pass over
        every weight (``MLP.backward_from_probs(..., scale=η)``)."""
        return not self.momentum and not self.weight_decay

    @property
    def velocity(self) -> list[np.ndarray] | None:
        """The momentum buffers in the order of ``params`` (the optimiser's own arrays, updated
        in place by ``step``), or None while there are none: without momentum, before the
        first step. With them, a run stopped between steps continues exactly."""
        if any(v is None for v in self._velocity):
            return None
        return list(self._velocity)

    @velocity.setter
    def velocity(self, buffers: list[np.ndarray] | None) -> None:
        if buffers is None:
            self._velocity = [None] * len(self.params)
            return
        if not self.momentum:
            raise ValueError("momentum buffers given to an optimiser without momentum")
        for p, v in zip(self.params, buffers, strict=True):
            if v.shape != p.shape or v.dtype != p.dtype:
                raise ValueError(
                    f"a momentum buffer of {v.dtype} {v.shape} for {p.dtype} {p.shape}"
                )
        self._velocity = [v.copy() for v in buffers]

    def step(self, grads: list[np.ndarray], learning_rate: float) -> None:
        """One update; ``grads`` (in the order of ``params``) are overwritten."""
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            if self.weight_decay and p.ndim == 2:
                g += self.weight_decay * p
            if self.momentum:
                v = self._velocity[i]
                if v is None:
                    v = self._velocity[i] = g.copy()
                else:
                    v *= self.momentum
                    v += g
                if self.nesterov:
                    g += self.momentum * v
                else:
                    g[...] = v  # classical momentum steps along the buffer itself
            if learning_rate != 1.0:
                g *= learning_rate
            p -= g


def learning_rate_at(
    epoch: int,
    base: float,
    *,
    schedule: str = "constant",
    epochs: int = 1,
    warmup_epochs: int = 0,
    step_size: int = 10,
    gamma: float = 0.1,
) -> float:
    """The learning rate for ``epoch`` (1-based), constant within an epoch.

    Linear warm-up from base/warmup_epochs to base over the first ``warmup_epochs``; then
    ``constant``; ``step``: multiplied by gamma every ``step_size`` epochs; ``cosine``: from
    base down to 0 over the remaining epochs (Loshchilov & Hutter 2017, without restarts).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}; got {schedule!r}")
    if epoch <= warmup_epochs:
        return base * epoch / warmup_epochs
    e = epoch - warmup_epochs - 1  # epochs since the warm-up ended, from 0
    if schedule == "step":
        return base * gamma ** (e // step_size)
    if schedule == "cosine":
        span = max(1, epochs - warmup_epochs)
        return base * 0.5 * (1 + math.cos(math.pi * e / span))
    return base

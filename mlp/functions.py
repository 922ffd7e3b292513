"""Activations, the softmax cross-entropy loss and weight initialisers: pure array functions.

Each activation is a pair kept side by side: the forward formula, applied in place, and its
derivative written in terms of the activation's *output*, so that the forward cache needs only
the layer outputs (relu' = [a > 0], tanh' = 1 - a², sigmoid' = a(1 - a)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Activation(NamedTuple):
    """An activation: ``forward(z)`` overwrites z with f(z); ``grad(a, d)`` overwrites the
    upstream gradient d with d·f'(z), computed from a = f(z)."""

    forward: Callable[[np.ndarray], np.ndarray]
    grad: Callable[[np.ndarray, np.ndarray], np.ndarray]


def _relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0, out=z)


def _relu_grad(a: np.ndarray, d: np.ndarray) -> np.ndarray:
    # f'(z) = 1 where z > 0, else 0 (the subgradient 0 at z = 0, as the notebook used).
    # A multiply by the mask, not ``d[a <= 0] = 0``: boolean-index assignment took 620 µs on
    # a (128, 768) batch, as long as the layer's matrix product; this takes 35 µs (#5).
    return np.multiply(d, a > 0, out=d)


def _tanh(z: np.ndarray) -> np.ndarray:
    return np.tanh(z, out=z)


def _tanh_grad(a: np.ndarray, d: np.ndarray) -> np.ndarray:
    # f'(z) = 1 - tanh(z)² = 1 - a²
    d *= 1 - a * a
    return d


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # 1 / (1 + e^-z) overflows in e^-z for z ≪ 0; tanh form is stable everywhere:
    # σ(z) = (1 + tanh(z/2)) / 2.
    z *= 0.5
    np.tanh(z, out=z)
    z += 1
    z *= 0.5
    return z


def _sigmoid_grad(a: np.ndarray, d: np.ndarray) -> np.ndarray:
    # f'(z) = σ(z)(1 - σ(z)) = a(1 - a)
    d *= a * (1 - a)
    return d


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(_relu, _relu_grad),
    "tanh": Activation(_tanh, _tanh_grad),
    "sigmoid": Activation(_sigmoid, _sigmoid_grad),
}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, shifted by the row maximum so that exp never overflows.

    logits: (n, k). Returns a new (n, k) array.
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return shifted


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and the softmax probabilities.

    Computed in the log domain: the loss is finite for any finite logits (the notebook took the
    log of a probability that had underflowed to 0 and printed an infinite test loss).

    logits: (n, k); y: (n,) int labels. Returns (mean loss, probabilities (n, k)).
    """
    logp = log_softmax(logits)
    loss = -float(logp[np.arange(len(y)), y].mean(dtype=np.float64))
    return loss, np.exp(logp, out=logp)


def cross_entropy_grad(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient of the *mean* cross-entropy with respect to the logits: (softmax - onehot) / n.

    Overwrites and returns ``probs``; no one-hot matrix is built.
    """
    n = len(y)
    probs[np.arange(n), y] -= 1
    probs /= n
    return probs


def _zeros(fan_in: int, fan_out: int, rng: np.random.Generator, std: float) -> np.ndarray:
    return np.zeros((fan_in, fan_out))


def _normal(fan_in: int, fan_out: int, rng: np.random.Generator, std: float) -> np.ndarray:
    return rng.normal(0.0, std, size=(fan_in, fan_out))


def _glorot(fan_in: int, fan_out: int, rng: np.random.Generator, std: float) -> np.ndarray:
    # Glorot & Bengio (2010), uniform variant: U(-d, d) with d = sqrt(6 / (fan_in + fan_out)).
    d = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-d, d, size=(fan_in, fan_out))


#: Weight initialisers ``(fan_in, fan_out, rng, std) -> (fan_in, fan_out) float64``.
#: Biases always start at zero, as in the notebook.
INITIALISERS: dict[str, Callable[[int, int, np.random.Generator, float], np.ndarray]] = {
    "zeros": _zeros,
    "normal": _normal,
    "glorot": _glorot,
}

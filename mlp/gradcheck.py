"""Finite-difference check of the backward pass, as in the notebook.

For each N in {k·10^i : i = 0..5, k ∈ {1, 5}} and ε = 1/N, the central difference
(L(θ + ε) - L(θ - ε)) / 2ε of chosen parameters θ is compared with backprop's gradient.
The largest absolute difference should fall like ε² until float64 round-off (~1e-16/ε) takes
over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlp.model import MLP, param_names

#: The notebook's N values: 1, 5, 10, 50, …, 100000, 500000.
DEFAULT_NS: tuple[int, ...] = tuple(k * 10**i for i in range(6) for k in (1, 5))


@dataclass(frozen=True)
class GradCheck:
    """Result: for each N (ascending), ε = 1/N and max |finite difference - backprop|."""

    ns: tuple[int, ...]
    max_abs_diff: tuple[float, ...]
    checked: tuple[tuple[str, tuple[int, ...]], ...]  # (parameter name, index) of each entry

    @property
    def epsilons(self) -> tuple[float, ...]:
        return tuple(1.0 / n for n in self.ns)


def _checked_entries(model: MLP, per_tensor: int, seed: int) -> list[tuple[int, tuple[int, ...]]]:
    """The notebook's ten (W2 row 0, first 10 entries: at depth 1, the output layer's) plus a
    seeded sample of every tensor, every layer's at any depth."""
    entries = [(2, (0, j)) for j in range(min(10, model.params[2].shape[1]))]
    rng = np.random.default_rng(seed)
    for i, p in enumerate(model.params):
        for flat in rng.choice(p.size, size=min(per_tensor, p.size), replace=False):
            entries.append((i, tuple(int(v) for v in np.unravel_index(flat, p.shape))))
    return entries


def gradcheck(
    model: MLP,
    x: np.ndarray,
    y: np.ndarray,
    *,
    ns: tuple[int, ...] = DEFAULT_NS,
    per_tensor: int = 5,
    seed: int = 0,
) -> GradCheck:
    """Compare backprop with central differences on the mean loss over (x, y).

    The model must be float64 (float32 round-off would swamp every ε below ~1e-3). Its
    parameters are restored exactly after each perturbation.

    x: (n, 784) float64; y: (n,) int labels.
    """
    if model.dtype != np.float64:
        raise ValueError(f"gradcheck needs a float64 model; got {model.dtype}")
    logits, cache = model.forward(x)
    grads = model.backward(logits, cache, y)
    entries = _checked_entries(model, per_tensor, seed)
    worst = []
    for n in ns:
        eps = 1.0 / n
        diff = 0.0
        for i, idx in entries:
            p = model.params[i]
            original = p[idx]
            p[idx] = original + eps
            plus = model.loss(x, y)
            p[idx] = original - eps
            minus = model.loss(x, y)
            p[idx] = original
            diff = max(diff, abs((plus - minus) / (2 * eps) - grads[i][idx]))
        worst.append(diff)
    names = param_names(len(model.params))
    checked = tuple((names[i], idx) for i, idx in entries)
    return GradCheck(tuple(ns), tuple(worst), checked)

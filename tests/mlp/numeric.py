"""The independent oracle for backward passes: float64 central differences."""

from collections.abc import Callable

import numpy as np


def central_differences(p: np.ndarray, loss: Callable[[], float], eps: float = 1e-6) -> np.ndarray:
    """dloss/dp for every entry of ``p``, perturbing it in place and restoring it exactly."""
    numeric = np.empty_like(p)
    for idx in np.ndindex(p.shape):
        keep = p[idx]
        p[idx] = keep + eps
        plus = loss()
        p[idx] = keep - eps
        minus = loss()
        p[idx] = keep
        numeric[idx] = (plus - minus) / (2 * eps)
    return numeric


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300))

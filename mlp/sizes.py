"""A network's sizes as numbers: its inputs and classes, its parameter count and how messages
name its shape. Pure arithmetic, standard library only, kept apart from ``mlp.model`` so that
what only checks sizes (a study's space and budget, read by ``sweep status`` too) loads neither
numpy's model nor its file formats (#27).
"""

from __future__ import annotations

import itertools

N_INPUTS = 784
N_CLASSES = 10


def parameter_count(*hidden: int) -> int:
    """Exact number of weights and biases of 784 → hidden[0] → … → hidden[-1] → 10: each layer
    has (fan_in + 1)·fan_out, for two hidden layers (784+1)·h1 + (h1+1)·h2 + (h2+1)·10.

    >>> parameter_count(512, 768)
    803594
    >>> parameter_count(800)
    636010
    """
    sizes = (N_INPUTS, *hidden, N_CLASSES)
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def architecture(*hidden: int) -> str:
    """How a user reads a network's shape: ``784-800-10``, ``784-512-768-10``."""
    return "-".join(map(str, (N_INPUTS, *hidden, N_CLASSES)))


def described(*hidden: int) -> str:
    """``784-512-768-10 (803,594 parameters)``: how every message names a network."""
    return f"{architecture(*hidden)} ({parameter_count(*hidden):,} parameters)"

"""The 784 → h1 → h2 → 10 multilayer perceptron with a hand-written forward and backward pass,
and its file: a trained model on disk.

A trained model (``MLP.save``/``MLP.load``) is a .npz of its weights (no pickle) and a JSON
sidecar naming its shape, activation, dtype, the weights' SHA-256 and the caller's ``meta``;
both written atomically and read back as untrusted input (``mlp.files``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mlp import _formats
from mlp.config import DTYPES, ModelConfig
from mlp.files import (
    MARGIN,
    MEMBERS,
    CheckpointError,
    is_int,
    json_object,
    member_specs,
    reading,
    sha256,
    shown,
    write_atomically,
)
from mlp.functions import ACTIVATIONS, INITIALISERS, cross_entropy, cross_entropy_grad

N_INPUTS = 784
N_CLASSES = 10
MODEL_FORMAT = "mlp-model/1"
_SIDECAR_BYTES = 2**20  # a model's sidecar: a few hundred bytes plus the caller's meta


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


#: Names of ``MLP.params`` in order, as messages show them.
PARAM_NAMES = ("W1", "b1", "W2", "b2", "W3", "b3")


def not_finite(params: list[np.ndarray]) -> str | None:
    """The name of the first of ``params`` (``MLP.params`` order) holding a NaN or an
    infinity, else None."""
    return next(
        (name for name, p in zip(PARAM_NAMES, params, strict=True) if not np.isfinite(p).all()),
        None,
    )


class Cache(NamedTuple):
    """What backward needs from forward: the input, each hidden layer's activation output
    (before dropout) and, when dropout was applied, its mask."""

    x: np.ndarray  # (n, 784)
    h1: np.ndarray  # (n, h1)
    h2: np.ndarray  # (n, h2)
    m1: np.ndarray | None = None  # (n, h1) inverted-dropout mask: 0 or 1/(1-p)
    m2: np.ndarray | None = None  # (n, h2)


def _dropout_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator, dtype) -> np.ndarray:
    """Inverted dropout (Srivastava et al. 2014, scaled at training time): each unit is kept
    with probability 1 - p and scaled by 1/(1 - p), so evaluation needs no rescaling."""
    return (rng.random(shape, dtype=np.float32) >= p).astype(dtype) / dtype.type(1 - p)


class MLP:
    """A two-hidden-layer perceptron; owns its weights, nothing else.

    Weights are stored as (fan_in, fan_out) so a row-major batch x (n, fan_in) multiplies as
    ``x @ W``. ``params`` is the list [W1, b1, W2, b2, W3, b3]; an optimiser
    (``mlp.optim.SGD``) updates them in place.
    """

    def __init__(
        self,
        hidden_1: int,
        hidden_2: int,
        *,
        activation: str = "relu",
        init: str = "glorot",
        init_std: float = 1.0,
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}; got {activation!r}")
        if init not in INITIALISERS:
            raise ValueError(f"init must be one of {sorted(INITIALISERS)}; got {init!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}; got {dtype!r}")
        if hidden_1 < 1 or hidden_2 < 1:
            raise ValueError(f"hidden sizes must be >= 1; got ({hidden_1}, {hidden_2})")
        self.sizes = (N_INPUTS, hidden_1, hidden_2, N_CLASSES)
        self.activation = activation
        self.dtype = np.dtype(dtype)
        self._act = ACTIVATIONS[activation]
        rng = np.random.default_rng(seed)
        initialise = INITIALISERS[init]
        self.params: list[np.ndarray] = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            # Drawn in float64 then cast, so float32 and float64 models start from the same
            # numbers. A draw past the dtype's range becomes inf, refused below in one line
            # rather than as numpy's overflow warning (#22: --init-std 1e308).
            with np.errstate(over="ignore"):
                w = initialise(fan_in, fan_out, rng, init_std).astype(self.dtype)
            self.params += [w, np.zeros(fan_out, dtype=self.dtype)]
        if (bad := not_finite(self.params)) is not None:
            raise ValueError(
                f"init {init!r} with init_std {init_std:g} drew {bad} weights that are not "
                f"finite in {dtype} (largest finite: {np.finfo(self.dtype).max:.3g})"
            )

    @classmethod
    def from_config(cls, config: ModelConfig, *, seed: int = 0) -> MLP:
        """The model ``config`` describes, its weights drawn with ``seed``."""
        return cls(**dataclasses.asdict(config), seed=seed)

    @property
    def n_params(self) -> int:
        return sum(p.size for p in self.params)

    def forward(
        self, x: np.ndarray, *, dropout: float = 0.0, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, Cache]:
        """Logits and the cache for ``backward``.

        x: (n, 784) in the model's dtype. ``dropout`` > 0 (training only) drops hidden units
        with that probability, drawing masks from ``rng``. Returns logits (n, 10) and the cache.
        """
        w1, b1, w2, b2, w3, b3 = self.params
        m1 = m2 = None
        h1 = x @ w1
        h1 += b1
        self._act.forward(h1)
        if dropout > 0:
            m1 = _dropout_mask(h1.shape, dropout, rng, self.dtype)
        h2 = (h1 if m1 is None else h1 * m1) @ w2
        h2 += b2
        self._act.forward(h2)
        if dropout > 0:
            m2 = _dropout_mask(h2.shape, dropout, rng, self.dtype)
        logits = (h2 if m2 is None else h2 * m2) @ w3
        logits += b3
        return logits, Cache(x, h1, h2, m1, m2)

    def backward(self, logits: np.ndarray, cache: Cache, y: np.ndarray) -> list[np.ndarray]:
        """Gradients of the mean cross-entropy, in the order of ``params``.

        logits: (n, 10) from ``forward`` (overwritten); y: (n,) int labels.
        """
        _, probs = cross_entropy(logits, y)
        return self.backward_from_probs(probs, cache, y)

    def backward_from_probs(
        self, probs: np.ndarray, cache: Cache, y: np.ndarray, *, scale: float = 1.0
    ) -> list[np.ndarray]:
        """Like ``backward`` for callers that already computed the softmax (``probs`` is
        overwritten).

        ``scale`` multiplies every gradient. Applied to the (n, 10) output gradient, where it
        costs nothing, so that plain SGD can fold its learning rate in here instead of in a
        pass over every weight (#5).
        """
        _, w2, _, w3, _ = self.params[1:]
        x, h1, h2, m1, m2 = cache
        d3 = cross_entropy_grad(probs, y)  # dL/dlogits (n, 10)
        if scale != 1.0:
            d3 *= scale
        gw3 = (h2 if m2 is None else h2 * m2).T @ d3
        gb3 = d3.sum(axis=0)
        dh2 = d3 @ w3.T  # dL/d(dropped h2); through the mask to dL/dh2
        d2 = self._act.grad(h2, dh2 if m2 is None else np.multiply(dh2, m2, out=dh2))
        gw2 = (h1 if m1 is None else h1 * m1).T @ d2
        gb2 = d2.sum(axis=0)
        dh1 = d2 @ w2.T
        d1 = self._act.grad(h1, dh1 if m1 is None else np.multiply(dh1, m1, out=dh1))
        gw1 = x.T @ d1
        gb1 = d1.sum(axis=0)
        return [gw1, gb1, gw2, gb2, gw3, gb3]

    def loss(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy on (x, y), in one forward pass."""
        logits, _ = self.forward(x)
        return cross_entropy(logits, y)[0]

    def evaluate(
        self, x: np.ndarray, y: np.ndarray, *, batch_size: int = 5000
    ) -> tuple[float, float]:
        """(mean cross-entropy, accuracy in [0, 1]) over a whole split, in batches."""
        total_loss = 0.0
        correct = 0
        for start in range(0, len(y), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            logits, _ = self.forward(xb)
            correct += int((logits.argmax(axis=1) == yb).sum())
            total_loss += cross_entropy(logits, yb)[0] * len(yb)
        return total_loss / len(y), correct / len(y)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class per row: (n,) int64."""
        return self.forward(x)[0].argmax(axis=1)

    def save(self, path: str | os.PathLike, *, meta: dict | None = None) -> Path:
        """Write the weights to ``path`` (.npz, no pickle) and a JSON sidecar ``path`` with
        suffix ``.json`` holding the architecture (sizes), activation, dtype, the weights'
        SHA-256 and ``meta`` (e.g. the training config, validation and test accuracy); both
        atomically, the weights first. Returns the sidecar.

        Note: two files cannot be replaced at once; a save killed between them leaves new
        weights beside the old sidecar, which ``load`` refuses by the digest.
        """
        path = Path(path)
        sidecar = path.with_suffix(".json")
        if sidecar == path:
            raise ValueError(f"{path}: the weights' file cannot end in .json (the sidecar does)")
        text = json.dumps(meta, allow_nan=False)  # unserialisable meta fails before any write
        arrays = dict(zip(MEMBERS, self.params, strict=True))
        write_atomically(path, lambda f: np.savez(f, allow_pickle=False, **arrays))
        with open(path, "rb") as f:
            digest = sha256(f)
        doc = {
            "format": MODEL_FORMAT,
            "sizes": list(self.sizes),
            "activation": self.activation,
            "dtype": self.dtype.name,
            "weights": path.name,
            "sha256": digest,
            "meta": json.loads(text),
        }
        body = json.dumps(doc, indent=2, allow_nan=False).encode() + b"\n"
        write_atomically(sidecar, lambda f: f.write(body))
        return sidecar

    @classmethod
    def load(cls, path: str | os.PathLike) -> MLP:
        """The model saved by ``save`` (reads the sidecar for the architecture); raises
        CheckpointError (one line) on a missing/corrupt/mismatched file, or on weights that
        are not finite: the sidecar's digest proves only that the weights are the ones it
        describes, and a NaN model predicts class 0 for everything without a word (#22).

        The sidecar is checked first, so that no model is built from a crafted size before the
        weights' file is known to hold that many bytes.
        """
        path = Path(path)
        sidecar = path.with_suffix(".json")
        with reading(sidecar, "a model's JSON sidecar"):
            doc = json_object(_formats.read_regular(sidecar, _SIDECAR_BYTES), "the sidecar")
            if doc.get("format") != MODEL_FORMAT:
                raise _formats.Refused(f"got format {shown(doc.get('format'))}, not {MODEL_FORMAT}")
            sizes, activation, dtype = doc.get("sizes"), doc.get("activation"), doc.get("dtype")
            if not (
                isinstance(sizes, list)
                and len(sizes) == 4
                and all(is_int(s) and s >= 1 for s in sizes)
                and (sizes[0], sizes[3]) == (N_INPUTS, N_CLASSES)
            ):
                raise _formats.Refused(f"got sizes {shown(sizes)}, not [784, h1, h2, 10]")
            if activation not in ACTIVATIONS or dtype not in DTYPES:
                raise _formats.Refused(f"got activation {shown(activation)}, dtype {shown(dtype)}")
            if not isinstance(doc.get("sha256"), str):
                raise _formats.Refused("got no sha256 of the weights")
        need = parameter_count(sizes[1], sizes[2]) * np.dtype(dtype).itemsize
        with reading(path, f"the weights {sidecar.name} describes"):
            with _formats.open_npz(path, need + MARGIN) as (zf, f):
                if (size := f.seek(0, os.SEEK_END)) < need:  # before a crafted size allocates
                    raise _formats.Refused(
                        f"got {size:,} bytes, fewer than the {need:,} of weights"
                    )
                if sha256(f) != doc["sha256"]:
                    raise _formats.Refused(
                        f"got weights whose SHA-256 is not the one in {sidecar.name}"
                    )
                model = cls(sizes[1], sizes[2], activation=activation, init="zeros", dtype=dtype)
                weights = [
                    _formats.read_npy(zf, name, spec)
                    for name, spec in member_specs(model.params).items()
                ]
        for p, w in zip(model.params, weights, strict=True):
            p[...] = w
        if (bad := not_finite(model.params)) is not None:
            raise CheckpointError(f"{path}: expected a trained model; got {bad} weights that "
                                  "are not finite (NaN or infinite)")  # fmt: skip
        return model

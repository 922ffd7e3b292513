"""The 784 → h1 → … → hd → 10 multilayer perceptron (1 to ``MAX_DEPTH`` hidden layers) with a
hand-written forward and backward pass, and its file: a trained model on disk.

A trained model (``MLP.save``/``MLP.load``) is a .npz of its weights (no pickle) and a JSON
sidecar naming its shape, activation, dtype, the weights' SHA-256 and the caller's ``meta``;
both written atomically and read back as untrusted input (``mlp.files``). The format,
``mlp-model/1``, is the one of the two-layer model: its ``sizes`` always listed every layer, so a
file of any depth is one of that format, and a reader from before #25 refuses other depths in
one line (``got sizes [784, 800, 10], not [784, h1, h2, 10]``).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mlp import _formats
from mlp.config import DTYPES, MAX_DEPTH, ModelConfig
from mlp.files import (
    MARGIN,
    CheckpointError,
    check_members,
    is_int,
    json_object,
    member_names,
    member_specs,
    reading,
    sha256,
    shown,
    write_atomically,
)
from mlp.functions import ACTIVATIONS, INITIALISERS, cross_entropy, cross_entropy_grad

# the sizes are the model's too, declared apart so that checking sizes needs no numpy model
from mlp.sizes import N_CLASSES, N_INPUTS, architecture, described, parameter_count  # noqa: F401

MODEL_FORMAT = "mlp-model/1"
_SIDECAR_BYTES = 2**20  # a model's sidecar: a few hundred bytes plus the caller's meta


def param_names(count: int) -> tuple[str, ...]:
    """Names of the first ``count`` of ``MLP.params``, as messages show them: W1, b1, W2, b2,
    …; a network of d hidden layers has 2(d + 1), the last pair the output layer's."""
    return tuple(f"{kind}{k}" for k in range(1, count // 2 + 1) for kind in "Wb")


def not_finite(params: list[np.ndarray]) -> str | None:
    """The name of the first of ``params`` (``MLP.params`` order, any depth) holding a NaN or an
    infinity, else None."""
    return next(
        (
            name
            for name, p in zip(param_names(len(params)), params, strict=True)
            if not np.isfinite(p).all()
        ),
        None,
    )


class Cache(NamedTuple):
    """What backward needs from forward: the input, each hidden layer's activation output
    (before dropout) and, when dropout was applied, each one's mask."""

    x: np.ndarray  # (n, 784)
    hidden: tuple[np.ndarray, ...]  # (n, h_k) for each hidden layer k, input side first
    masks: tuple[np.ndarray | None, ...]  # each layer's inverted-dropout mask: 0 or 1/(1-p)


def _dropout_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator, dtype) -> np.ndarray:
    """Inverted dropout (Srivastava et al. 2014, scaled at training time): each unit is kept
    with probability 1 - p and scaled by 1/(1 - p), so evaluation needs no rescaling."""
    return (rng.random(shape, dtype=np.float32) >= p).astype(dtype) / dtype.type(1 - p)


def _dropped(h: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """A hidden layer's output as the next layer sees it: through its dropout mask, if any."""
    return h if m is None else h * m


class MLP:
    """A perceptron of 1 to ``MAX_DEPTH`` hidden layers; owns its weights, nothing else.

    ``MLP(800)`` is 784-800-10, ``MLP(512, 768)`` the notebook's 784-512-768-10. Weights are
    stored as (fan_in, fan_out) so a row-major batch x (n, fan_in) multiplies as ``x @ W``.
    ``params`` is the list [W1, b1, W2, b2, …], the output layer's last; an optimiser
    (``mlp.optim.SGD``) updates them in place.
    """

    def __init__(
        self,
        *hidden: int,
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
        if not 1 <= len(hidden) <= MAX_DEPTH:
            raise ValueError(f"a network has 1 to {MAX_DEPTH} hidden layers; got {len(hidden)}")
        if not all(isinstance(h, int | np.integer) and h >= 1 for h in hidden):
            raise ValueError(f"hidden sizes must be integers >= 1; got {hidden}")
        self.sizes = (N_INPUTS, *(int(h) for h in hidden), N_CLASSES)
        self.activation = activation
        self.dtype = np.dtype(dtype)
        self._act = ACTIVATIONS[activation]
        rng = np.random.default_rng(seed)
        initialise = INITIALISERS[init]
        self.params: list[np.ndarray] = []
        # Input side first, each layer's weights in turn: the two-layer code's order, so that
        # depth 2 starts from the numbers it always did (#25).
        for fan_in, fan_out in itertools.pairwise(self.sizes):
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
        """The model ``config`` describes (its ``hidden`` widths), its weights drawn with
        ``seed``."""
        return cls(*config.hidden, activation=config.activation, init=config.init,
                   init_std=config.init_std, dtype=config.dtype, seed=seed)  # fmt: skip

    @property
    def hidden(self) -> tuple[int, ...]:
        """The hidden layers' widths, input side first."""
        return self.sizes[1:-1]

    @property
    def n_params(self) -> int:
        return sum(p.size for p in self.params)

    def forward(
        self, x: np.ndarray, *, dropout: float = 0.0, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, Cache]:
        """Logits and the cache for ``backward``.

        x: (n, 784) in the model's dtype. ``dropout`` > 0 (training only) drops hidden units
        with that probability, drawing each layer's mask from ``rng`` in turn, input side first.
        Returns logits (n, 10) and the cache.
        """
        hidden, masks = [], []
        a = x  # what the next layer reads
        for w, b in zip(self.params[:-2:2], self.params[1:-2:2], strict=True):
            h = a @ w
            h += b
            self._act.forward(h)
            m = _dropout_mask(h.shape, dropout, rng, self.dtype) if dropout > 0 else None
            hidden.append(h)
            masks.append(m)
            a = _dropped(h, m)
        logits = a @ self.params[-2]
        logits += self.params[-1]
        return logits, Cache(x, tuple(hidden), tuple(masks))

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
        x, hidden, masks = cache
        d = cross_entropy_grad(probs, y)  # dL/dlogits (n, 10), then dL/dz of each layer down
        if scale != 1.0:
            d *= scale
        grads: list[np.ndarray] = [d] * len(self.params)  # each replaced below
        # From the output layer down; layer k reads hidden[k - 1] (k = 0: the input x).
        for k in range(len(hidden), -1, -1):
            a = x if k == 0 else _dropped(hidden[k - 1], masks[k - 1])
            grads[2 * k] = a.T @ d
            grads[2 * k + 1] = d.sum(axis=0)
            if k > 0:
                dh = d @ self.params[2 * k].T  # dL/d(dropped h); through the mask to dL/dh
                m = masks[k - 1]
                d = self._act.grad(hidden[k - 1], dh if m is None else np.multiply(dh, m, out=dh))
        return grads

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
        arrays = dict(zip(member_names(len(self.params)), self.params, strict=True))
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
        if not sidecar.exists() and _is_train_state(path):
            raise CheckpointError(
                f"{path}: expected a saved model (with its {sidecar.name}); got a training "
                "checkpoint, which holds no architecture: mlp.load_state(path, like=model) "
                "reads it into a model built as its trial's config says, and `sweep export "
                "STUDY --trial N --out FILE.npz` writes a model of a kept trial"
            )
        with reading(sidecar, "a model's JSON sidecar"):
            doc = json_object(_formats.read_regular(sidecar, _SIDECAR_BYTES), "the sidecar")
            if doc.get("format") != MODEL_FORMAT:
                raise _formats.Refused(f"got format {shown(doc.get('format'))}, not {MODEL_FORMAT}")
            sizes, activation, dtype = doc.get("sizes"), doc.get("activation"), doc.get("dtype")
            if not (
                isinstance(sizes, list)
                and 3 <= len(sizes) <= MAX_DEPTH + 2
                and all(is_int(s) and s >= 1 for s in sizes)
                and (sizes[0], sizes[-1]) == (N_INPUTS, N_CLASSES)
            ):
                raise _formats.Refused(
                    f"got sizes {shown(sizes)}, not [784, h1, …, hd, 10] with 1 to {MAX_DEPTH} "
                    "hidden sizes, each >= 1"
                )
            if activation not in ACTIVATIONS or dtype not in DTYPES:
                raise _formats.Refused(f"got activation {shown(activation)}, dtype {shown(dtype)}")
            if not isinstance(doc.get("sha256"), str):
                raise _formats.Refused("got no sha256 of the weights")
        hidden = sizes[1:-1]
        need = parameter_count(*hidden) * np.dtype(dtype).itemsize
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
                model = cls(*hidden, activation=activation, init="zeros", dtype=dtype)
                specs = member_specs(model.params)
                check_members(zf, specs)
                weights = [_formats.read_npy(zf, name, spec) for name, spec in specs.items()]
        for p, w in zip(model.params, weights, strict=True):
            p[...] = w
        if (bad := not_finite(model.params)) is not None:
            raise CheckpointError(f"{path}: expected a trained model; got {bad} weights that "
                                  "are not finite (NaN or infinite)")  # fmt: skip
        return model


def _is_train_state(path: Path) -> bool:
    """Whether ``path`` looks like ``mlp.checkpoint.save_state``'s file (its ``state`` and
    ``history`` members), for a useful line where a model's file was expected: the dashboard
    downloads checkpoints under their artifact id (issue 28). Reads the zip's directory only."""
    import zipfile

    try:
        if not path.is_file():  # a FIFO would block the read; anything else is not one
            return False
        with zipfile.ZipFile(path) as zf:
            return {"state.npy", "history.npy"} <= set(zf.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False

"""Training state and trained models on disk: written atomically, read as untrusted input.

A training checkpoint (``save_state``/``load_state``) is one .npz of plain arrays: the weights,
the momentum buffers, every epoch's metrics as a float64 table, and a JSON document for the
rest (epoch, patience bookkeeping, the random generator's state, what the state was trained
for) stored as UTF-8 bytes padded to a fixed size, so that its .npy header can be checked like
any other member's. The metrics
are a table, not JSON, so that they are exact and their size is known from the epoch (the
JSON of 10,000 epochs would take over 1 MiB, more than the read allows beyond the arrays).
No pickle is written or read. A trained model (``MLP.save``/``MLP.load``) is a .npz of its
weights and a JSON sidecar naming its shape, activation, dtype, the weights' SHA-256 and the
caller's ``meta``.

Reading reuses ``mlp._formats``: only regular files, a size cap checked before anything is
read, each member's dtype, shape and length checked in its header before numpy allocates it.
Anything wrong is one CheckpointError line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from mlp import _formats
from mlp.config import DTYPES, MAX_EPOCHS
from mlp.functions import ACTIVATIONS
from mlp.model import MLP, N_CLASSES, N_INPUTS, parameter_count

if TYPE_CHECKING:
    from mlp.train import EpochMetrics

STATE_FORMAT = "mlp-train-state/2"
#: The format before ``fits`` (read as ``fits = ""``: fits nothing a caller names).
_STATE_FORMAT_1 = "mlp-train-state/1"
#: At most this many characters of ``fits`` (a caller's digest takes 64).
MAX_FITS = 256
MODEL_FORMAT = "mlp-model/1"
# The JSON part of a training checkpoint, padded with spaces: a PCG64 state and the scalars
# take ~300 bytes, so 4 KiB leaves room without making the member's shape vary.
STATE_JSON_BYTES = 4096
# Beyond the arrays a checkpoint holds (weights and momentum: twice the model), a file may have
# the model's size again plus this margin (the metrics table of 10,000 epochs is 480 kB).
_MARGIN = 2**20
_SIDECAR_BYTES = 2**20  # a model's sidecar: a few hundred bytes plus the caller's meta
_MAX_REASON = 200  # characters of a wrapped exception's text in a message
_PARAM_NAMES = ("w1", "b1", "w2", "b2", "w3", "b3")  # MLP.params order
_METRIC_FIELDS = ("epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, truncated, not ours, other shapes or dtype);
    its message is one line naming the file and what is wrong."""


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
    # from anywhere. At most MAX_FITS characters.
    fits: str = ""


# --- Training state --------------------------------------------------------------------------


def save_state(state: TrainState, path: str | os.PathLike) -> None:
    """Write ``state`` as one .npz (no pickle: arrays plus a JSON string for the rest),
    atomically (a temporary file in the same folder, fsync, os.replace)."""
    doc = {
        "format": STATE_FORMAT,
        "epoch": state.epoch,
        "best": state.best,
        "since_best": state.since_best,
        "velocity": state.velocity is not None,
        "rng": state.rng,
        "fits": state.fits,
    }
    if not isinstance(state.fits, str) or len(state.fits) > MAX_FITS:
        raise ValueError(f"a training state's fits must be a string of at most {MAX_FITS} "
                         "characters")  # fmt: skip
    text = json.dumps(doc, allow_nan=False).encode()
    if len(text) > STATE_JSON_BYTES:
        raise ValueError(f"a training state's JSON of {len(text)} bytes, over {STATE_JSON_BYTES}")
    arrays = {"state": np.frombuffer(text.ljust(STATE_JSON_BYTES), np.uint8)}
    arrays |= dict(zip(_PARAM_NAMES, state.params, strict=True))
    if state.velocity is not None:
        arrays |= {f"v_{n}": v for n, v in zip(_PARAM_NAMES, state.velocity, strict=True)}
    table = [[getattr(m, f) for f in (*_METRIC_FIELDS, "seconds")] for m in state.history]
    arrays["history"] = np.array(table, dtype=np.float64).reshape(-1, 6)
    _write_atomically(Path(path), lambda f: np.savez(f, allow_pickle=False, **arrays))


def load_state(path: str | os.PathLike, *, like: MLP) -> TrainState:
    """Read a checkpoint written by save_state; raise CheckpointError unless it is well formed
    and its arrays have ``like``'s shapes and dtype. Bounded: never allocates more than the
    model's own size plus a small margin, never unpickles."""
    from mlp.train import EpochMetrics  # mlp.train builds TrainState: imported here, not above

    path = Path(path)
    limit = 3 * sum(p.nbytes for p in like.params) + _MARGIN  # weights, momentum, slack
    with _reading(path, "a training checkpoint"), _formats.open_npz(path, limit) as (zf, _):
        doc = _state_doc(
            _formats.read_npy(zf, "state", _formats.Npy(((STATE_JSON_BYTES,),), "uint8"))
        )
        specs = _param_specs(like, "") | (_param_specs(like, "v_") if doc["velocity"] else {})
        specs["history"] = _formats.Npy(((doc["epoch"], 6),), "float64")
        arrays = {name: _formats.read_npy(zf, name, spec) for name, spec in specs.items()}
        table = arrays["history"]
        if not np.array_equal(table[:, 0], np.arange(1, doc["epoch"] + 1)):
            raise _formats.Refused("got history epochs that are not 1, 2, 3, ...")
    history = [EpochMetrics(int(row[0]), *(float(v) for v in row[1:])) for row in table.tolist()]
    return TrainState(
        epoch=doc["epoch"],
        params=[arrays[n] for n in _PARAM_NAMES],
        velocity=[arrays[f"v_{n}"] for n in _PARAM_NAMES] if doc["velocity"] else None,
        rng=doc["rng"],
        best=float(doc["best"]),
        since_best=doc["since_best"],
        history=history,
        fits=doc.get("fits", ""),
    )


def _param_specs(like: MLP, prefix: str) -> dict[str, _formats.Npy]:
    return {
        prefix + n: _formats.Npy((p.shape,), p.dtype.name)
        for n, p in zip(_PARAM_NAMES, like.params, strict=True)
    }


def _state_doc(raw: np.ndarray) -> dict[str, Any]:
    """The JSON part of a checkpoint, checked to be what save_state writes."""
    doc = _json_object(raw.tobytes(), "the JSON part")
    keys = {"format", "epoch", "best", "since_best", "velocity", "rng"}
    if not (
        (doc.keys() == keys | {"fits"} and doc["format"] == STATE_FORMAT)
        or (doc.keys() == keys and doc["format"] == _STATE_FORMAT_1)
    ):
        raise _formats.Refused(f"got a JSON part that is not {STATE_FORMAT}")
    fits = doc.get("fits", "")
    if not (isinstance(fits, str) and len(fits) <= MAX_FITS):
        raise _formats.Refused(f"got fits {_shown(fits)}, not a string of at most {MAX_FITS}")
    epoch, since_best, best = doc["epoch"], doc["since_best"], doc["best"]
    if not (_is_int(epoch) and 0 <= epoch <= MAX_EPOCHS):
        raise _formats.Refused(f"got epoch {_shown(epoch)}, not an integer in 0..{MAX_EPOCHS}")
    if not (_is_int(since_best) and 0 <= since_best <= epoch):
        raise _formats.Refused(f"got since_best {_shown(since_best)}, not in 0..{epoch}")
    if not (type(best) in (int, float) and -1 <= best <= 1):
        raise _formats.Refused(f"got best {_shown(best)}, not a number in [-1, 1]")
    if type(doc["velocity"]) is not bool:
        raise _formats.Refused(f"got velocity {_shown(doc['velocity'])}, not true or false")
    _check_pcg64(doc["rng"])
    return doc


def _check_pcg64(rng: object) -> None:
    """A PCG64 state as ``bit_generator.state`` gives it (``fit`` draws from default_rng)."""
    ok = (
        isinstance(rng, dict)
        and rng.keys() == {"bit_generator", "state", "has_uint32", "uinteger"}
        and rng["bit_generator"] == "PCG64"
        and isinstance(rng["state"], dict)
        and rng["state"].keys() == {"state", "inc"}
        and all(_is_int(v) and 0 <= v < 2**128 for v in rng["state"].values())
        and rng["has_uint32"] in (0, 1)
        and _is_int(rng["has_uint32"])
        and _is_int(rng["uinteger"])
        and 0 <= rng["uinteger"] < 2**32
    )
    if not ok:
        raise _formats.Refused("got a random generator state that is not a PCG64 state")


# --- Trained models --------------------------------------------------------------------------


def save_model(model: MLP, path: str | os.PathLike, meta: dict | None) -> Path:
    """``MLP.save``: the weights, then the sidecar that names their digest."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if sidecar == path:
        raise ValueError(f"{path}: the weights' file cannot end in .json (the sidecar does)")
    text = json.dumps(meta, allow_nan=False)  # unserialisable meta fails before any write
    arrays = dict(zip(_PARAM_NAMES, model.params, strict=True))
    _write_atomically(path, lambda f: np.savez(f, allow_pickle=False, **arrays))
    doc = {
        "format": MODEL_FORMAT,
        "sizes": list(model.sizes),
        "activation": model.activation,
        "dtype": model.dtype.name,
        "weights": path.name,
        "sha256": _sha256_of(path),
        "meta": json.loads(text),
    }
    body = json.dumps(doc, indent=2, allow_nan=False).encode() + b"\n"
    _write_atomically(sidecar, lambda f: f.write(body))
    return sidecar


def load_model(path: str | os.PathLike) -> MLP:
    """``MLP.load``: the sidecar checked first, so that no model is built from a crafted size
    before the weights' file is known to hold that many bytes."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    with _reading(sidecar, "a model's JSON sidecar"):
        doc = _json_object(_formats.read_regular(sidecar, _SIDECAR_BYTES), "the sidecar")
        if doc.get("format") != MODEL_FORMAT:
            raise _formats.Refused(f"got format {_shown(doc.get('format'))}, not {MODEL_FORMAT}")
        sizes, activation, dtype = doc.get("sizes"), doc.get("activation"), doc.get("dtype")
        if not (
            isinstance(sizes, list)
            and len(sizes) == 4
            and all(_is_int(s) and s >= 1 for s in sizes)
            and (sizes[0], sizes[3]) == (N_INPUTS, N_CLASSES)
        ):
            raise _formats.Refused(f"got sizes {_shown(sizes)}, not [784, h1, h2, 10]")
        if activation not in ACTIVATIONS or dtype not in DTYPES:
            raise _formats.Refused(f"got activation {_shown(activation)}, dtype {_shown(dtype)}")
        if not isinstance(doc.get("sha256"), str):
            raise _formats.Refused("got no sha256 of the weights")
    need = parameter_count(sizes[1], sizes[2]) * np.dtype(dtype).itemsize
    with _reading(path, f"the weights {sidecar.name} describes"):
        with _formats.open_npz(path, need + _MARGIN) as (zf, f):
            if (size := f.seek(0, os.SEEK_END)) < need:  # before a crafted size allocates
                raise _formats.Refused(f"got {size:,} bytes, fewer than the {need:,} of weights")
            if _sha256(f) != doc["sha256"]:
                raise _formats.Refused(
                    f"got weights whose SHA-256 is not the one in {sidecar.name}"
                )
            model = MLP(sizes[1], sizes[2], activation=activation, init="zeros", dtype=dtype)
            weights = [
                _formats.read_npy(zf, n, spec) for n, spec in _param_specs(model, "").items()
            ]
    for p, w in zip(model.params, weights, strict=True):
        p[...] = w
    return model


# --- Files -----------------------------------------------------------------------------------


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write to a temporary file in ``path``'s folder, fsync it, rename it over ``path``: a
    reader sees the old file or the new one, and a killed writer leaves no partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); where a folder cannot be opened, skip it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return _sha256(f)


def _sha256(f: BinaryIO) -> str:
    f.seek(0)
    digest = hashlib.sha256()
    while chunk := f.read(2**20):
        digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _reading(path: Path, expected: str) -> Iterator[None]:
    """Turn any failure in the block into one CheckpointError line: ``path: expected ...; why``.

    Every Exception, as ``mlp.data`` does: a crafted file reaches errors no library documents
    (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError, ...). MemoryError passes.
    """
    try:
        yield
    except (CheckpointError, MemoryError):
        raise
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: expected {expected}; got no such file") from e
    except Exception as e:
        why = str(e) if isinstance(e, _formats.Refused) else f"{type(e).__name__}: {e}"
        why = "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(why.split()))
        if len(why) > _MAX_REASON:
            why = why[: _MAX_REASON - 1] + "…"
        raise CheckpointError(f"{path}: expected {expected}; {why}") from e


def _json_object(raw: bytes, what: str) -> dict:
    try:
        doc = json.loads(raw.decode(), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _formats.Refused(f"got {what} that is not JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise _formats.Refused(f"got {what} that is not a JSON object")
    return doc


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: json.dumps(allow_nan=False) refuses


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool


def _shown(value: object) -> str:
    """A value from the JSON for a message: cut short (the JSON was capped, so this is too)."""
    return json.dumps(value)[:40]

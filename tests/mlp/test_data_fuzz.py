"""Untrusted dataset files, fuzzed: random bytes, mutated small valid files, crafted pickles.

The property throughout: ``load_mnist(path)`` returns a valid Dataset or raises one DataError
line naming the file; never another exception. Small files and fixed seeds keep it to seconds.
"""

import gzip
import io
import pickle
import struct
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlp import DataError, load_mnist
from mlp import _formats as formats
from mlp import data as data_mod

# Deterministic (the same examples on every run, no example database) and bounded: 1,000
# examples a test take ~15 s in all; the deadline, ~1000× an example's milliseconds, catches a
# hang. Exploring with random seeds (8,000 examples a test) found nothing these miss.
FUZZ = settings(max_examples=1000, derandomize=True, database=None, deadline=timedelta(seconds=5))
TINY = {"train": 3, "valid": 2, "test": 2}  # split sizes under which a valid pickle is 15 KB


def _holds(path: Path, named: Path | None = None) -> None:
    """The property: a valid Dataset, or one DataError line that names ``named`` (the path)."""
    try:
        data = load_mnist(path)
    except DataError as e:
        message = str(e)
        assert "\n" not in message, message
        assert str(named or path) in message, message
        return
    for split, n in zip(data, data_mod.SPLIT_SIZES.values(), strict=True):
        assert split.x.shape == (n, 784) and split.x.dtype == np.float32
        assert split.y.shape == (n,) and split.y.dtype == np.int64
        assert 0 <= split.x.min() and split.x.max() < 1
        assert 0 <= split.y.min() and split.y.max() <= 9


@contextmanager
def _folder():
    with tempfile.TemporaryDirectory(prefix="mlp-fuzz-") as tmp:
        yield Path(tmp)


# --- Mutations -------------------------------------------------------------------------------

# Values that land on length and size fields: zero, sign bits, the MNIST sizes, all ones.
WORDS = [struct.pack("<I", n) for n in (0, 1, 784, 60_000, 2**31, 2**32 - 1)]
WORDS += [struct.pack(">I", n) for n in (0, 28, 10_000, 60_000, 2**31)]


@st.composite
def mutated(draw: st.DrawFn, blob: bytes) -> bytes:
    """``blob`` after one to four byte flips, overwrites, insertions, deletions or a cut."""
    data = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "word", "insert", "delete", "cut"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]) | st.integers(0, 255))
        elif op == "word":
            data[at : at + 4] = draw(st.sampled_from(WORDS))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "cut":
            del data[at:]
    return bytes(data)


# --- Random bytes ----------------------------------------------------------------------------


@FUZZ
@given(blob=st.binary(max_size=2048), name=st.sampled_from(["mnist.pkl.gz", "mnist.npz"]))
def test_random_bytes(blob, name):
    with _folder() as tmp:
        (tmp / name).write_bytes(blob)
        _holds(tmp / name)


@FUZZ
@given(
    blob=st.binary(max_size=2048),
    stem=st.sampled_from(list(data_mod.IDX_FILES)[:1]),
    gz=st.booleans(),
)
def test_random_bytes_as_idx(blob, stem, gz):
    with _folder() as tmp:
        (tmp / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(blob) if gz else blob)
        _holds(tmp)


# --- Mutated small valid files ---------------------------------------------------------------


def _tiny_pickle(protocol: int) -> bytes:
    splits = tuple(
        (np.full((n, 784), 0.5, np.float32), np.arange(n, dtype=np.int64)) for n in TINY.values()
    )
    return pickle.dumps(splits, protocol=protocol)


# Protocol 5 is left out: numpy writes arrays there with _frombuffer, which is refused.
PICKLES = [_tiny_pickle(p) for p in range(5)]


@pytest.mark.slow
@FUZZ
@given(data=st.data(), protocol=st.integers(0, 4), layer=st.sampled_from(["pickle", "gzip"]))
def test_mutated_pkl_gz(data, protocol, layer):
    raw = PICKLES[protocol]
    if layer == "pickle":
        blob = gzip.compress(data.draw(mutated(raw)), compresslevel=1)
    else:
        blob = data.draw(mutated(gzip.compress(raw, compresslevel=1)))
    with _folder() as tmp, mock.patch.dict(data_mod.SPLIT_SIZES, TINY):
        (tmp / "tiny.pkl.gz").write_bytes(blob)
        _holds(tmp / "tiny.pkl.gz")


def test_the_unmutated_tiny_pickles_load():
    # The seeds are valid, so mutations start from a file that gets all the way through.
    with _folder() as tmp, mock.patch.dict(data_mod.SPLIT_SIZES, TINY):
        for raw in PICKLES:
            (tmp / "tiny.pkl.gz").write_bytes(gzip.compress(raw))
            assert [len(s.y) for s in load_mnist(tmp / "tiny.pkl.gz")] == [3, 2, 2]


def _small_npz(save: Callable) -> bytes:
    buf = io.BytesIO()
    images, labels = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28), np.arange(2)
    save(buf, x_train=images, y_train=labels, x_test=images, y_test=labels)
    return buf.getvalue()


NPZS = [_small_npz(np.savez), _small_npz(np.savez_compressed)]


@pytest.mark.slow
@FUZZ
@given(data=st.data(), which=st.sampled_from([0, 1]))
def test_mutated_npz(data, which):
    with _folder() as tmp:
        (tmp / "mnist.npz").write_bytes(data.draw(mutated(NPZS[which])))
        _holds(tmp / "mnist.npz")


def _tiny_cache() -> dict[str, bytes]:
    """The files of a valid cache of TINY splits, by name."""
    data = data_mod.Dataset(*(data_mod.Split(np.full((n, 784), 0.5, np.float32), np.arange(n))
                              for n in TINY.values()))  # fmt: skip
    with _folder() as tmp, mock.patch.dict(data_mod.SPLIT_SIZES, TINY):
        data_mod._write_cache(data, tmp)
        return {path.name: path.read_bytes() for path in tmp.iterdir()}


CACHE = _tiny_cache()


@settings(FUZZ, max_examples=200)  # each example writes 7 files
@given(data=st.data(), name=st.sampled_from(sorted(CACHE)))
def test_mutated_cache(data, name):
    blob = data.draw(mutated(CACHE[name]))
    with _folder() as tmp, mock.patch.dict(data_mod.SPLIT_SIZES, TINY):
        for each, original in CACHE.items():
            (tmp / each).write_bytes(blob if each == name else original)
        with mock.patch.dict("os.environ", {data_mod.CACHE_ENV: str(tmp.parent)}):
            with mock.patch.object(data_mod, "CACHE_NAME", tmp.name):
                _holds(None, named=tmp)


IDX_HEADER = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (60_000, 28, 28))


@pytest.mark.slow
@FUZZ
@given(data=st.data(), gz=st.booleans())
def test_mutated_idx(data, gz):
    blob = data.draw(mutated(IDX_HEADER + bytes(range(64))))
    with _folder() as tmp:
        name = "train-images-idx3-ubyte" + (".gz" if gz else "")
        (tmp / name).write_bytes(gzip.compress(blob) if gz else blob)
        _holds(tmp)


@pytest.mark.slow
@FUZZ
@given(data=st.data(), gz=st.booleans())
def test_mutated_idx_of_a_small_shape(data, gz):
    # load_mnist wants 47 MB of images first; the reader itself is fuzzed at a size whose
    # valid files get through, under the same wrapper load_mnist uses.
    shape = (3, 2, 2)
    valid = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in shape) + bytes(12)
    blob = data.draw(mutated(valid) | st.just(valid))
    with _folder() as tmp:
        path = tmp / ("small-idx3-ubyte" + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(blob) if gz else blob)
        try:
            with data_mod._reading(f"{path}: expected an IDX file"):
                array = formats.read_idx(path, shape)
        except DataError as e:
            assert "\n" not in str(e) and str(path) in str(e)
        else:
            assert array.shape == shape and array.dtype == np.uint8


# --- Crafted pickles -------------------------------------------------------------------------


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _text(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s.encode())) + s.encode()


def _int(n: int) -> bytes:
    size = (n.bit_length() + 8) // 8
    return b"\x8a" + bytes([size]) + n.to_bytes(size, "little", signed=True)


def _array(shape: list[int], code: str, order: str, data: bytes) -> bytes:
    """The opcodes numpy writes for an array, with any shape, type code, byte order and data."""
    dtype = _global("numpy", "dtype") + _text(code) + b"\x89\x88\x87R"
    dtype += b"(K\x03" + _text(order) + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    shape_tuple = b"(" + b"".join(_int(n) for n in shape) + b"t"
    empty = _global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
    empty += b"K\x00\x85C\x01b\x87R"
    blob = b"C" + bytes([len(data)]) + data
    return empty + b"(K\x01" + shape_tuple + dtype + b"\x89" + blob + b"tb"


ARRAYS = st.builds(
    _array,
    shape=st.lists(st.integers(0, 4) | st.sampled_from([784, 2**31, 2**40, -1]), max_size=3),
    code=st.sampled_from(["f4", "f8", "u1", "i8", "b1", "O8", "S4", "V8", "1T", "<f4"]),
    order=st.sampled_from(["<", ">", "|", "=", "x", ""]),
    data=st.binary(max_size=48),
)
NAMES = [
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("os", "system"),
    ("builtins", "getattr"),
]
TOKENS = (
    st.sampled_from([bytes([c]) for c in b"()]}N\x88\x89t\x85\x86\x87leasuRb\x81012"])
    | st.sampled_from([_global(*name) for name in NAMES])
    | st.sampled_from(["f4", "O8", "1T", "latin1", "hex", "b", "<", "x"]).map(_text)
    | st.integers(0, 255).map(lambda n: b"K" + bytes([n]))
    | st.integers(-(2**70), 2**70).map(_int)
    | st.binary(max_size=16).map(lambda b: b"C" + bytes([len(b)]) + b)
    | st.integers(0, 7).map(lambda n: b"q" + bytes([n]))  # BINPUT
    | st.integers(0, 7).map(lambda n: b"h" + bytes([n]))  # BINGET
    | st.binary(min_size=4, max_size=4).map(lambda b: b"r" + b)  # LONG_BINPUT
    | ARRAYS
)


@pytest.mark.slow
@FUZZ
@given(tokens=st.lists(TOKENS, max_size=24), protocol=st.sampled_from([b"", b"\x80\x02"]))
def test_crafted_pickles(tokens, protocol):
    with _folder() as tmp, mock.patch.dict(data_mod.SPLIT_SIZES, TINY):
        (tmp / "crafted.pkl.gz").write_bytes(gzip.compress(protocol + b"".join(tokens) + b"."))
        _holds(tmp / "crafted.pkl.gz")


@pytest.mark.slow
@FUZZ
@given(arrays=st.lists(ARRAYS, min_size=6, max_size=6), nest=st.booleans())
def test_crafted_splits_of_arrays(arrays, nest):
    # Three (x, y) pairs of crafted arrays: the shape the classic pickle has.
    pairs = [b"(" + arrays[i] + arrays[i + 1] + b"t" for i in (0, 2, 4)]
    body = b"(" + b"".join(pairs) + b"t" if nest else b"".join(arrays[:3]) + b"\x87"
    with _folder() as tmp, mock.patch.dict(data_mod.SPLIT_SIZES, TINY):
        (tmp / "crafted.pkl.gz").write_bytes(gzip.compress(b"\x80\x02" + body + b"."))
        _holds(tmp / "crafted.pkl.gz")

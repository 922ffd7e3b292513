"""The dataset's file formats (gzipped pickle, .npz and .npy, IDX) read as untrusted input: only
regular files, never more than a known number of bytes, no code run, no allocation a header
asks for.

Functions here raise Refused (a reason phrased ``got ...``) or whatever the underlying library
raises on a malformed file; ``mlp.data`` turns both into one DataError line naming the file.

The pickle is read by an allow-list in ``find_class``, which alone stops code from running but
not the rest. Each further guard answers a small crafted pickle that got past it (numpy 2.4,
CPython 3.11; tests/mlp/test_data.py holds each one):

- ``numpy.dtype.__setstate__`` segfaults on a crafted state, and so does ``newbyteorder`` on
  some dtypes a type code can name (``"1T"``), so a pickled dtype is rebuilt from an allow-list
  of number type codes and a byte order, and its pickled state is never applied;
- numpy allocates and fills an object array's claimed shape before it reads the list meant to
  fill it, and ``numpy.ndarray(shape, dtype)`` allocates any shape, so arrays are only rebuilt
  the way numpy pickles them, with a number dtype;
- ``_codecs.encode`` with ``"hex"`` doubles its input per call (34 calls: 16 GiB), so only
  ``"latin1"``, which pickles use for bytes, is accepted;
- the C unpickler allocates a ``BINBYTES8`` length before reading it, grows its memo to twice a
  ``LONG_BINPUT`` index (4 bytes can ask for 32 GiB), and a flood of ``EMPTY_LIST`` opcodes
  makes 56 bytes of objects per byte; so the opcodes are walked first, building nothing;
- memo references build a tuple of 2**40 nodes in 291 bytes, and a dict or set hashes its keys
  by walking them whole (measured to 28 levels, 1.8 s, four times longer per two levels: 40
  would take two hours), so the walk refuses dict and set opcodes, which a pickle of arrays
  never needs, and nothing here compares, hashes or prints what a pickle built; an array's
  shape is checked to be a few small ints before it is multiplied (2,000 ints of 8,000 bits,
  2 MB of pickle that gzip makes a few kilobytes, took ``math.prod`` 53 s).

Note: refused although well-formed: a gzip file of several members, a zip with an archive
comment or a zip64 end record, and arrays pickled with protocol 5 (numpy writes those with
``_frombuffer``, which was never on the allow-list). No MNIST copy we know of is written so.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

# The most we read of any file, on disk or decompressed. The largest legitimate payload is the
# classic split with float64 pixels and int64 labels, 70,000 × 785 × 8 B = 440 MB (the classic
# float32 file decompresses to 220 MB); 512 MiB admits it and stops a gzip bomb, a sparse
# terabyte or /proc/self/pagemap before it fills memory.
MAX_BYTES = 512 * 2**20
# The classic mnist.pkl.gz has 151 opcodes. The budget bounds what the opcodes alone can build
# (objects, memo slots, marks) to a few megabytes, whatever the pickle's size.
MAX_OPCODES = 10_000
# zipfile spends ~460 bytes and ~50 µs per central-directory entry before we can look at
# anything (measured: a 52 MB directory of a million entries took 458 MB and 55 s); a .npz of
# six arrays has a directory of 340 bytes, so one past 64 KiB is refused before zipfile parses it.
MAX_ZIP_DIRECTORY = 64 * 2**10


class Refused(Exception):
    """A reason to refuse a file, phrased ``got ...``."""


# --- Files -----------------------------------------------------------------------------------

_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_regular(st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _NOT_REGULAR if test(st.st_mode)), "a special file")
        raise Refused(f"got {kind}, not a regular file")
    if st.st_size > limit:
        raise Refused(f"got a file of {st.st_size:,} bytes, more than {limit:,}")


def open_regular(path: Path, limit: int) -> tuple[BinaryIO, int]:
    """``path`` open for reading, and its size, if it is (or a symlink resolves to) a regular
    file of at most ``limit`` bytes: a FIFO would block, a device never end, a folder fail
    obscurely. Checked before the open too, since opening a device can act on it."""
    _check_regular(os.stat(path), limit)
    # O_NONBLOCK: a FIFO swapped in since the stat cannot block the open; the fstat refuses it.
    f = os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb")
    try:
        st = os.fstat(f.fileno())
        _check_regular(st, limit)
    except BaseException:
        f.close()
        raise
    return f, st.st_size


def read_regular(path: Path, limit: int) -> bytes:
    """All of a regular file of at most ``limit`` bytes, reading no more than its stated size
    (a /proc file states 0, a growing file less than it has: both are refused)."""
    f, size = open_regular(path, limit)
    with f:
        blob = f.read(size + 1)
    if len(blob) != size:
        more = "more" if len(blob) > size else "fewer"
        raise Refused(f"got {more} bytes than its stated size of {size:,} (is it changing?)")
    return blob


def gunzip(blob: bytes, limit: int) -> bytes:
    """One gzip stream decompressed to at most ``limit`` + 1 bytes: more means too long.

    Note: a file of several gzip members (concatenated, or bgzip's blocks) is refused: Python's
    gzip module took a minute per 200 MB of tiny members, and no MNIST copy is written so.
    """
    d = zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer, both checked by zlib
    raw = d.decompress(blob, limit + 1)
    if len(raw) <= limit and not d.eof:
        raise Refused("got a gzip stream that ends early")
    if len(raw) <= limit and d.unused_data.strip(b"\0"):
        raise Refused("got more data after the gzip stream")
    return raw


# --- IDX and .npz ----------------------------------------------------------------------------


def read_idx(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """An IDX file of unsigned bytes with the given shape, plain or gzipped (``.gz``)."""
    header = 4 + 4 * len(shape)
    size = header + math.prod(shape)  # read at most one byte more, whatever the header says
    if path.suffix == ".gz":
        raw = gunzip(read_regular(path, MAX_BYTES), size)
    else:
        raw = read_regular(path, size)
    if len(raw) < 4 or raw[:3] != b"\0\0\x08":
        raise Refused("got a bad magic number")
    dims = tuple(int.from_bytes(raw[i : i + 4], "big") for i in range(4, 4 + 4 * raw[3], 4))
    if dims != shape:
        raise Refused(f"got shape {dims} in its header")
    if len(raw) != size:
        got = f"more than {size:,}" if len(raw) > size else f"{len(raw):,}, not {size:,},"
        raise Refused(f"got {got} bytes: truncated or padded")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


class Npy(NamedTuple):
    """What one .npz member must hold, checked in its .npy header before numpy allocates it."""

    shapes: tuple[tuple[int, ...], ...]
    dtype: str  # a numpy dtype name, or "integer" for any integer type


@contextmanager
def open_npz(path: Path, limit: int = MAX_BYTES) -> Iterator[tuple[zipfile.ZipFile, BinaryIO]]:
    """``path`` opened once as a zip (and the file under it), if it is a regular file of at
    most ``limit`` bytes whose end record zipfile can parse safely; members are read with
    ``read_npy``, all from the same file even if it is replaced meanwhile."""
    f, size = open_regular(path, limit)
    with f:
        f.seek(max(size - 42, 0))
        tail = f.read(42)
        # The end record zipfile reads when there is no archive comment (np.savez writes none)
        # and no zip64 locator before it; the directory size in it is what zipfile will parse.
        if len(tail) < 22 or tail[-22:-18] != b"PK\x05\x06" or tail[-2:] != b"\0\0":
            raise Refused("got no zip end record at the end of the file")
        if tail[:4] == b"PK\x06\x07":  # zip64, needed past 65,535 members or 4 GiB
            raise Refused("got a zip64 archive")
        if struct.unpack("<L", tail[-10:-6])[0] > MAX_ZIP_DIRECTORY:
            raise Refused(f"got a zip directory larger than {MAX_ZIP_DIRECTORY:,} bytes")
        f.seek(0)
        with zipfile.ZipFile(f) as zf:
            yield zf, f


def read_npz(path: Path, members: dict[str, Npy]) -> list[np.ndarray]:
    """The named arrays of a .npz file, each checked against its Npy before it is read."""
    with open_npz(path) as (zf, _):
        return [read_npy(zf, name, spec) for name, spec in members.items()]


def read_npy(zf: zipfile.ZipFile, name: str, spec: Npy) -> np.ndarray:
    """Member ``name``, its dtype, shape and size checked in its header before it is read."""
    try:
        info = zf.getinfo(f"{name}.npy")
    except KeyError:
        raise Refused(f"got no {name}") from None
    with zf.open(info) as f:
        shape, _fortran, dtype = npy_header(f, name, spec)
        start = f.tell()
    # The zip's declared size must be exactly the header and the data: no more is read.
    if info.file_size != (size := start + math.prod(shape) * dtype.itemsize):
        raise Refused(f"got {name}.npy of {info.file_size:,} bytes, not {size:,}")
    with zf.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def npy_header(f: BinaryIO, name: str, spec: Npy) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The .npy header at ``f``'s position (shape, Fortran order, dtype), if it is what ``spec``
    allows; ``f`` is left at the first byte of data."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise Refused(f"got {name} in .npy format {version}")
    read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
    shape, fortran, dtype = read_header(f)
    ok = dtype.kind in "iu" if spec.dtype == "integer" else dtype == np.dtype(spec.dtype)
    if not ok or shape not in spec.shapes:
        want = " or ".join(map(str, spec.shapes))
        raise Refused(f"got {name} of {dtype} {shape}, not {spec.dtype} {want}")
    return shape, fortran, dtype


# --- Pickle ----------------------------------------------------------------------------------


def unpickle_gz(blob: bytes) -> object:
    """The object in a gzipped pickle, built from plain Python values and numeric arrays only.

    A malformed pickle can raise anything the C unpickler raises (KeyError, TypeError, ...).
    """
    raw = gunzip(blob, MAX_BYTES)
    if len(raw) > MAX_BYTES:
        raise Refused(f"got more than {MAX_BYTES:,} bytes after decompression")
    _walk(raw)
    return _Unpickler(io.BytesIO(raw), encoding="latin1").load()


# pickletools' codes for an argument that starts with its own length: (bytes, signed).
_LENGTH_FIRST = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_HASHING = frozenset(
    {"EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_SET", "ADDITEMS", "FROZENSET"}
)
# The type codes numpy pickles plain number dtypes under (kind and size: "f4", "i8").
_NUMBER_CODES = frozenset(
    {"b1", "f2", "f4", "f8"} | {f"{k}{n}" for k in "iu" for n in (1, 2, 4, 8)}
)


def _walk(raw: bytes) -> None:
    """Check each opcode's argument lies within ``raw`` and each memo index within the budget."""
    pos = 0
    for _ in range(MAX_OPCODES):
        op = pickletools.code2op.get(chr(raw[pos])) if pos < len(raw) else None
        if op is None:
            raise Refused(f"got no pickle opcode at byte {pos}")
        start = pos = pos + 1
        arg = op.arg
        if arg is None:
            pass
        elif arg.n >= 0:
            pos += arg.n
        elif arg.n == pickletools.UP_TO_NEWLINE:
            for _line in range(2 if arg is pickletools.stringnl_noescape_pair else 1):
                end = raw.find(b"\n", pos)
                pos = end + 1 if end >= 0 else len(raw) + 1
        else:
            width, signed = _LENGTH_FIRST[arg.n]
            size = int.from_bytes(raw[pos : pos + width], "little", signed=signed)
            pos += width + max(size, 0)  # a negative length is the unpickler's to refuse
        if pos > len(raw):
            raise Refused(f"got {op.name} at byte {start - 1} running past the end")
        if op.name in _MEMO_PUTS and _memo_index(op.name, raw[start:pos]) >= MAX_OPCODES:
            raise Refused(f"got {op.name} at byte {start - 1} with a memo index too large")
        if op.name in _HASHING:
            raise Refused(f"got {op.name} at byte {start - 1}: no dict or set is expected")
        if op.name == "STOP":
            return
    raise Refused(f"got more than {MAX_OPCODES:,} pickle opcodes")


def _memo_index(name: str, arg: bytes) -> int:
    if name == "PUT":
        try:
            return int(arg)
        except ValueError:
            return MAX_OPCODES  # not a number: refused like a large one
    return int.from_bytes(arg, "little")


class _Dtype:
    """Stands in for ``numpy.dtype``: a number type code and the byte order a pickle gives it."""

    __slots__ = ("code", "order")

    def __init__(self, code: object, align: object = False, copy: object = True) -> None:
        if not isinstance(code, str) or code not in _NUMBER_CODES:
            raise pickle.UnpicklingError(f"refusing dtype {_shown(code)}: not a number type")
        self.code, self.order = code, "="

    def __setstate__(self, state: tuple) -> None:
        self.order = state[1]  # numpy writes (3, byte order, ...); the rest is not applied

    def resolve(self) -> np.dtype:
        return np.dtype(self.code).newbyteorder(self.order)


class _Array(np.ndarray):
    """What a pickled ``numpy.ndarray`` becomes: filled by numpy's ``__setstate__`` only once
    its data matches its shape (for a shape whose size overflows, numpy raises MemoryError)."""

    def __new__(cls, *args: object, **kwargs: object) -> _Array:
        raise pickle.UnpicklingError("refusing to call numpy.ndarray")  # it allocates any shape

    def __setstate__(self, state: tuple) -> None:
        version, shape, dtype, fortran, data = state
        dtype = dtype.resolve()
        if not (
            isinstance(shape, tuple)
            and len(shape) <= 32
            and all(type(n) is int and 0 <= n < 2**63 for n in shape)
        ):
            raise pickle.UnpicklingError("refusing an array shape that is not a few sizes")
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise pickle.UnpicklingError(f"refusing {len(data)} bytes for shape {shape}")
        # An empty shape can still overflow numpy's size (2**31 × 2**40 × 0): a MemoryError,
        # which a full machine raises too, so it is refused here as the file's fault.
        if math.prod(n for n in shape if n) * dtype.itemsize > MAX_BYTES:
            raise pickle.UnpicklingError(f"refusing an array shape of over {MAX_BYTES:,} bytes")
        super().__setstate__((version, shape, dtype, fortran, data))


def _reconstruct(*args: object) -> _Array:
    """numpy's ``_reconstruct`` as pickled arrays call it, ``(ndarray, (0,), b"b")``: an empty
    array for BUILD to fill. Its arguments could only ask for more, so they are not read."""
    return np.ndarray.__new__(_Array, (0,), np.uint8)


def _latin1(text: object, encoding: object) -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 call it for bytes."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {_shown(encoding)}")
    return text.encode("latin-1")


def _shown(value: object) -> str:
    """A pickled value for a message: a short string's repr, else only its type (the repr of
    what a pickle built can take exponential time)."""
    return repr(value[:40]) if isinstance(value, str) else type(value).__name__


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _Array,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _latin1,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[module, name]
        except KeyError:
            # The names come from the file: cut, so that no message or traceback runs long.
            raise pickle.UnpicklingError(f"refusing to load {module:.80}.{name:.80}") from None

"""Arrays kept as .npy files that a process maps rather than reads: the dataset cache.

Every process that trains spent ~0.9 s decompressing the cached ``mnist.npz`` (#24). A mapped
file costs nothing until its pages are touched, and one copy of its pages in the page cache
serves every process on the machine: ``load_mnist()`` in a fresh process took 0.15 s against
the npz's 1.08 s (medians of 5, interleaved, on the shared 2-core machine under load), most of
it the CRC-32 and the range checks reading every page once.

What the zip gave for free is kept: ``write`` records each file's CRC-32 (zip's checksum, as
before) in an index written last, and ``read`` checks the index, each file's .npy header and
size (before mapping) and its CRC-32 (before any array is returned). An index absent means no
cache: a write killed part way leaves none.

Functions here raise ``mlp._formats.Refused`` or what the underlying library raises on a
malformed file; ``mlp.data`` turns both into one DataError line naming the cache.

Note: a mapped file is read where it lies. Replacing a file by a rename (all that ``write`` does)
leaves a process's mapping as it was; a file changed in place after the check (by hand: nothing
here does) changes the arrays under the process, and one truncated in place makes the next
read of a lost page a SIGBUS.
"""

from __future__ import annotations

import functools
import json
import math
import mmap
import zlib
from pathlib import Path

import numpy as np

from mlp import _formats
from mlp.files import is_int, json_object, shown, write_atomically

INDEX = "index.json"
FORMAT = "mlp-npy/1"
_INDEX_BYTES = 2**16  # a few names and numbers


def write(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write each array to ``folder/<name>.npy``, then the index of their CRC-32s; each file
    atomically (``mlp.files.write_atomically``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX).unlink(missing_ok=True)  # the old files stop counting before one changes
    files = {}
    for name, array in arrays.items():
        summed = _Summing()
        write_atomically(folder / f"{name}.npy", functools.partial(summed.save, array=array))
        files[name] = summed.crc
    index = json.dumps({"format": FORMAT, "files": files}, indent=1).encode()
    write_atomically(folder / INDEX, lambda f: f.write(index))


def read(folder: Path, specs: dict[str, _formats.Npy]) -> list[np.ndarray]:
    """The arrays ``specs`` names, mapped read-only from ``folder``, each checked against its
    Npy and against the index's CRC-32 before it is returned."""
    doc = json_object(_formats.read_regular(folder / INDEX, _INDEX_BYTES), INDEX)
    files = doc.get("files")
    if doc.get("format") != FORMAT or not isinstance(files, dict) or files.keys() != specs.keys():
        raise _formats.Refused(f"got an {INDEX} that is not {FORMAT} of {', '.join(specs)}")
    return [_mapped(folder / f"{name}.npy", spec, files[name]) for name, spec in specs.items()]


def _mapped(path: Path, spec: _formats.Npy, crc32: object) -> np.ndarray:
    if not (is_int(crc32) and 0 <= crc32 < 2**32):
        raise _formats.Refused(f"got {shown(crc32)} as the CRC-32 of {path.name} in {INDEX}")
    f, size = _formats.open_regular(path, _formats.MAX_BYTES)
    with f:
        shape, fortran, dtype = _formats.npy_header(f, path.stem, spec)
        if fortran:
            raise _formats.Refused(f"got {path.name} in Fortran order")
        offset = f.tell()
        if size != (expected := offset + math.prod(shape) * dtype.itemsize):
            raise _formats.Refused(f"got {path.name} of {size:,} bytes, not {expected:,}")
        pages = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    if zlib.crc32(pages) != crc32:
        raise _formats.Refused(f"got {path.name} whose CRC-32 is not the one in {INDEX}")
    return np.frombuffer(pages, dtype, math.prod(shape), offset).reshape(shape)


class _Summing:
    """``np.save`` through a file, summing the CRC-32 of what it writes."""

    def __init__(self) -> None:
        self.crc = 0

    def save(self, f: object, array: np.ndarray) -> None:
        self._f = f
        np.save(self, array, allow_pickle=False)  # not a real file: numpy calls write

    def write(self, chunk: bytes) -> int:
        self.crc = zlib.crc32(chunk, self.crc)
        return self._f.write(chunk)

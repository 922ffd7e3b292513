"""The dashboard's artifact downloads, served like a careful file server.

optuna-dashboard serves ``/artifacts/<study>[/<trial>]/<id>`` itself with the ``Content-Type``
of the stored ``artifacts:<id>`` record and ``Access-Control-Allow-Origin: *``, opens the file
through the store (following symlinks) and answers a record that is not JSON with a 500 and a
traceback. Any client of a shared database writes those records (issue 22), so
:func:`artifact_files` answers those routes before the dashboard sees them:

- the id must be one plain file name (:data:`ARTIFACT_ID`): no ``/``, NUL, leading dot
  (``..``, an upload's temporary file) or absolute path;
- in a folder store, only a regular file directly in the folder is opened, without following
  a symlink (``O_NOFOLLOW`` relative to the folder's descriptor, then ``fstat``); a FIFO or
  device is not even waited on (``O_NONBLOCK``);
- the response is always ``application/octet-stream``, ``Content-Disposition: attachment``,
  ``X-Content-Type-Options: nosniff`` and a sandboxing ``Content-Security-Policy``, whatever
  the record says, so stored bytes never run as a page of the dashboard's origin;
- a record that is not JSON, or not an object, is a 404 and one log line.

Note: a hard link in the folder is a regular file in the folder and is served; making one
needs write access to the folder, which can write any bytes there anyway.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sweep.text import printable

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from optuna.artifacts._protocol import ArtifactStore
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

logger = logging.getLogger(__name__)

#: An artifact id the dashboard serves: one file name, as sweep and optuna make them (uuid4).
ARTIFACT_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")
_ROUTE = re.compile(r"/artifacts/(\d+)/(?:(\d+)/)?([^/]*)")
# optuna-dashboard < 0.13 kept a trial's artifact records on its study under this prefix.
_OLD_TRIAL_PREFIX = "dashboard:artifacts:{trial}:"
_CHUNK = 1 << 16
_FIXED_HEADERS = [
    ("Content-Type", "application/octet-stream"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'none'; sandbox"),
]


class NotServed(Exception):
    """An artifact that is not served: missing, or not a regular file inside the store."""


class _BadRecord(ValueError):
    """An ``artifacts:<id>`` record that is not optuna's ArtifactMeta as JSON."""


def artifact_files(
    app: WSGIApplication, storage: BaseStorage, store: ArtifactStore
) -> WSGIApplication:
    """``app`` with its GET and HEAD ``/artifacts/...`` routes answered from ``store`` as the
    module says; every other request goes to ``app``."""

    def served(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if not path.startswith("/artifacts/") or method not in ("GET", "HEAD"):
            return app(environ, start_response)
        route = _ROUTE.fullmatch(path)
        if route is None or not ARTIFACT_ID.fullmatch(route[3]):
            return text_response(start_response, method, "404 Not Found", "no such artifact")
        study_id, artifact_id = int(route[1]), route[3]
        trial_id = None if route[2] is None else int(route[2])
        owner = f"study {study_id}" if trial_id is None else f"trial {trial_id}"
        try:
            record = _record(storage, study_id, trial_id, artifact_id)
        except _BadRecord as e:
            logger.warning(
                "artifact record %r of %s is %s, not optuna's ArtifactMeta as JSON; answered 404",
                artifact_id, owner, e,
            )  # fmt: skip
            record = None
        if record is None:
            return text_response(start_response, method, "404 Not Found", "no such artifact")
        try:
            body, size = open_artifact(store, artifact_id)
        except NotServed as e:
            if e.args:
                logger.warning("artifact %r of %s not served: %s", artifact_id, owner, e)
            text = "this artifact was deleted (a replaced checkpoint?)"
            return text_response(start_response, method, "404 Not Found", text)
        headers = [*_FIXED_HEADERS, ("Content-Disposition", _attachment(record, artifact_id))]
        if size is not None:
            headers.append(("Content-Length", str(size)))
        start_response("200 OK", headers)
        if method == "HEAD":
            body.close()
            return []
        wrapper = environ.get("wsgi.file_wrapper")  # waitress streams it, freeing the thread
        return wrapper(body, _CHUNK) if wrapper is not None else _chunks(body)

    return served


def open_artifact(store: ArtifactStore, artifact_id: str) -> tuple[BinaryIO, int | None]:
    """The artifact's bytes and size (None if unknown). In a folder store, only a regular
    file directly in the folder, reached without following a symlink; raises NotServed (with
    a reason when the file exists but is not served, without one when it is missing)."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna.artifacts.exceptions import ArtifactNotFound

    if not ARTIFACT_ID.fullmatch(artifact_id):
        raise NotServed("not an artifact id (one file name)")
    if isinstance(store, FileSystemArtifactStore):
        return _open_in(Path(store._base_path), artifact_id)  # optuna's folder, as it writes
    try:
        return store.open_reader(artifact_id), None
    except ArtifactNotFound:
        raise NotServed() from None


def _open_in(folder: Path, name: str) -> tuple[BinaryIO, int]:
    """``folder/name`` if it is a regular file; ``name`` is one component, so the folder's
    descriptor is its only parent and O_NOFOLLOW covers the rest."""
    cloexec = getattr(os, "O_CLOEXEC", 0)
    try:
        root = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | cloexec)
    except FileNotFoundError:  # a read-only dashboard does not make the folder
        raise NotServed() from None
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | cloexec
        fd = os.open(name, flags, dir_fd=root)
    except FileNotFoundError:
        raise NotServed() from None
    except OSError as e:  # ELOOP: a symlink; EACCES, ENXIO (a socket) ...
        raise NotServed(f"cannot open it without following a link ({e.strerror})") from None
    finally:
        os.close(root)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotServed("not a regular file")
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _record(
    storage: BaseStorage, study_id: int, trial_id: int | None, artifact_id: str
) -> dict | None:
    """The ``artifacts:<id>`` record (ArtifactMeta) that the study or trial holds; None if it
    holds none (or one deleted through the dashboard, JSON ``null``); _BadRecord saying what
    is wrong with one that is not JSON or not an object."""
    from sweep.queue.attrs import ARTIFACT_PREFIX

    try:
        study_attrs = storage.get_study_system_attrs(study_id)
        if trial_id is None:
            raw = study_attrs.get(ARTIFACT_PREFIX + artifact_id)
        else:
            raw = study_attrs.get(_OLD_TRIAL_PREFIX.format(trial=trial_id) + artifact_id)
            if raw is None and _in_study(storage, study_id, trial_id):
                raw = storage.get_trial_system_attrs(trial_id).get(ARTIFACT_PREFIX + artifact_id)
    except KeyError:  # no such study or trial
        return None
    return None if raw is None else _decoded(raw)


def _decoded(raw: object) -> dict | None:
    """An ``artifacts:<id>`` record's ArtifactMeta; None for JSON ``null`` (deleted through the
    dashboard); _BadRecord saying what is wrong with one that is not JSON or not an object."""
    if not isinstance(raw, str):
        raise _BadRecord(f"a {type(raw).__name__}")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise _BadRecord("not JSON") from None
    if meta is not None and not isinstance(meta, dict):
        raise _BadRecord(f"JSON {type(meta).__name__}")
    return meta


def tolerant_listings() -> None:
    """Make optuna-dashboard list a study's and a trial's artifacts without the records that are
    not ArtifactMeta as JSON, one log line each, in this process.

    Its own listings (``optuna_dashboard.artifact._backend``, 0.21) decode every record of a
    study for each of its pages, so one bad record from another client of the database made
    the study's page a 500 and a traceback per request. Only the names the dashboard calls
    them by are replaced, with functions of the same signature and result."""
    from optuna_dashboard import _serializer
    from optuna_dashboard.artifact import _backend

    for module in (_serializer, _backend):
        module.list_study_artifacts = _study_artifacts  # type: ignore[assignment]
        module.list_trial_artifacts = _trial_artifacts  # type: ignore[assignment]


def _study_artifacts(study_system_attrs: dict[str, Any]) -> list[dict]:
    from sweep.queue.attrs import ARTIFACT_PREFIX

    records = [(k, v) for k, v in study_system_attrs.items() if k.startswith(ARTIFACT_PREFIX)]
    return _listed(records, "a study")


def _trial_artifacts(
    study_system_attrs: dict[str, Any], trial_system_attrs: dict[str, Any], trial: FrozenTrial
) -> list[dict]:
    from sweep.queue.attrs import ARTIFACT_PREFIX

    old = _OLD_TRIAL_PREFIX.format(trial=trial._trial_id)
    records = [(k, v) for k, v in study_system_attrs.items() if k.startswith(old)]
    records += [(k, v) for k, v in trial_system_attrs.items() if k.startswith(ARTIFACT_PREFIX)]
    return _listed(records, f"trial {trial._trial_id}")


def _listed(records: list[tuple[str, Any]], owner: str) -> list[dict]:
    """The ArtifactMeta of ``records`` ((key, raw value) pairs) that decode, in their order."""
    metas = []
    for key, raw in records:
        try:
            meta = _decoded(raw)
        except _BadRecord as e:
            logger.warning(
                "artifact record %r of %s is %s, not optuna's ArtifactMeta as JSON; not listed",
                printable(key.rsplit(":", 1)[-1], 100), owner, e,
            )  # fmt: skip
            continue
        if meta is not None:
            metas.append(meta)
    return metas


def _in_study(storage: BaseStorage, study_id: int, trial_id: int) -> bool:
    """Whether the trial belongs to the study the URL names (KeyError if there is none)."""
    number = storage.get_trial(trial_id).number
    return storage.get_trial_id_from_study_id_trial_number(study_id, number) == trial_id


def _attachment(record: dict, artifact_id: str) -> str:
    """``attachment; filename="..."``: the record's file name reduced to letters, digits,
    ``.``, ``_`` and ``-`` (a stored name is untrusted text), else the artifact id."""
    name = record.get("filename")
    name = re.split(r"[/\\]", name)[-1] if isinstance(name, str) else ""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:150] or artifact_id
    return f'attachment; filename="{name}"'


def _chunks(body: BinaryIO) -> Iterator[bytes]:
    with body:
        while chunk := body.read(_CHUNK):
            yield chunk


def text_response(
    start_response: StartResponse, method: str, status: str, text: str, headers: Iterable = ()
) -> list[bytes]:
    """A one-line plain-text answer (``405 Method Not Allowed: the dashboard is read-only``)."""
    body = f"{status}: {text}\n".encode()
    plain = [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")]
    start_response(status, [*plain, ("Content-Length", str(len(body))), *headers])
    return [] if method == "HEAD" else [body]

"""The files mlp writes: each written atomically, and read back as untrusted input.

``write_atomically`` is the one atomic file write of mlp and sweep (training checkpoints and
trained models here, the dataset cache in ``mlp.data``, the artifact folder in
``sweep.trial.artifacts``). The rest is what reading a checkpoint or a trained model back shares
(``mlp.checkpoint``, ``mlp.model``): the .npz member names of the weights of any depth, and one
CheckpointError line naming the file for anything wrong with one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mlp import _formats

#: The temporary file ``write_atomically`` writes ``name`` through: ``.<name>.<32 hex>.tmp``.
#: A writer killed mid-write leaves it; whoever cleans up recognises it by this exact form.
TEMPORARY = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{32}\.tmp")
#: What a .npz of ours may hold beyond the arrays a reader expects: the .npy headers and zip
#: records, and a training state's metrics table (480 kB for 10,000 epochs).
MARGIN = 2**20
_MAX_REASON = 200  # characters of a wrapped exception's text in a message


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, truncated, not ours, other shapes or dtype);
    its message is one line naming the file and what is wrong."""


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` by what ``write`` writes, so that a reader sees the old file or the
    whole new one, and a writer killed or out of disk leaves no part of one under ``path``.

    ``write`` fills a new temporary file in ``path``'s folder (TEMPORARY's form; ``O_EXCL``, so
    never another writer's file nor what a symbolic link there points to; mode 0o666 less the
    umask, as ``open`` gives), which is flushed and fsynced, then renamed over ``path``
    (``os.replace``: atomic on POSIX; a symbolic link at ``path`` is replaced, not followed).
    The folder is fsynced after the rename, so that the rename survives a crash, where the
    file system allows it (some network ones do not; the file is whole all the same). If
    anything fails, the temporary file is removed.
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise
    with suppress(OSError):
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def member_names(count: int, prefix: str = "") -> tuple[str, ...]:
    """The .npz member names of ``count`` weights and biases in ``MLP.params`` order: w1, b1,
    w2, b2, … (a network of any depth; the two-layer one's files hold w1 … b3)."""
    return tuple(f"{prefix}{kind}{k}" for k in range(1, count // 2 + 1) for kind in "wb")


def member_specs(params: list[np.ndarray], prefix: str = "") -> dict[str, _formats.Npy]:
    """What each weight's .npz member must hold: ``params``' shapes and dtype, by their
    ``member_names``."""
    return {
        name: _formats.Npy((p.shape,), p.dtype.name)
        for name, p in zip(member_names(len(params), prefix), params, strict=True)
    }


def check_members(zf: zipfile.ZipFile, expected: Iterable[str]) -> None:
    """Refuse a .npz holding members beyond ``expected`` (names without ``.npy``): the weights
    of a deeper network whose first layers have the expected shapes must not pass as the
    shallower one."""
    extra = sorted({n.removesuffix(".npy") for n in zf.namelist()} - set(expected))
    if extra:
        raise _formats.Refused(f"got {len(extra)} member(s) not expected: {shown(extra)}")


def sha256(f: BinaryIO) -> str:
    """The SHA-256 of an open file, from its start."""
    f.seek(0)
    digest = hashlib.sha256()
    while chunk := f.read(2**20):
        digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def reading(path: Path, expected: str) -> Iterator[None]:
    """Turn any failure in the block into one CheckpointError line: ``path: expected ...; why``.

    Every Exception, as ``mlp.data`` does: a crafted file reaches errors no library documents
    (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError, ...). MemoryError passes.
    """
    try:
        yield
    except (CheckpointError, MemoryError):
        raise
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: expected {expected}; got no such file") from e
    except Exception as e:
        why = str(e) if isinstance(e, _formats.Refused) else f"{type(e).__name__}: {e}"
        why = "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(why.split()))
        if len(why) > _MAX_REASON:
            why = why[: _MAX_REASON - 1] + "…"
        raise CheckpointError(f"{path}: expected {expected}; {why}") from e


def json_object(raw: bytes, what: str) -> dict:
    """``raw`` as a JSON object (no NaN or Infinity, which ``json.dumps(allow_nan=False)``
    never writes), else Refused naming ``what``."""
    try:
        doc = json.loads(raw.decode(), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _formats.Refused(f"got {what} that is not JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise _formats.Refused(f"got {what} that is not a JSON object")
    return doc


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def is_int(value: object) -> bool:
    return type(value) is int  # not bool


def shown(value: object) -> str:
    """A value from the JSON for a message: cut short (the JSON was capped, so this is too)."""
    return json.dumps(value)[:40]

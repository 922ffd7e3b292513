"""A study file's text: the bytes of a regular file of bounded size, as UTF-8 TOML.

Every way a file can fail to be one (a FIFO, a folder, too large, not UTF-8, not TOML) is one
line naming the file; what the TOML says is checked by ``sweep.study.spec``.
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any

from sweep.errors import SpecError
from sweep.study.rules import MAX_STUDY_FILE_BYTES


def read_study(path: Path) -> dict[str, Any]:
    """The TOML document of the study file at ``path``; SpecError (one line) if it is not a
    readable regular file of UTF-8 TOML."""
    data = _read_study_file(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise SpecError(
            f"{path}: not valid UTF-8: byte 0x{data[e.start]:02x} at line {line}, column {column}"
        ) from e
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from e
    except ValueError as e:  # Python's limit on the digits of an int (sys.set_int_max_str_digits)
        limit = sys.get_int_max_str_digits()
        raise SpecError(f"{path}: not valid TOML: an integer of more than {limit} digits") from e
    except RecursionError as e:  # tomllib recurses into nested arrays and inline tables
        raise SpecError(f"{path}: not valid TOML: arrays or tables nested too deeply") from e


_FILE_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
               stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}  # fmt: skip


def missing(path: Path) -> SpecError:
    """The line for a study file that does not exist, with a guess where one is near: the
    shipped study of the closest name (``studies/*.toml`` here), or the same relative path one
    or two folders up (a notebook runs in a folder of its own: ``studies/quick.toml`` from
    ``notebooks/`` is ``../studies/quick.toml``)."""
    shipped = {p.stem: p for p in sorted(Path("studies").glob("*.toml"))}
    close = difflib.get_close_matches(path.stem, shipped, n=1, cutoff=0.6)
    hint = f"; did you mean {shipped[close[0]]}?" if close else ""
    if not close and not path.is_absolute():
        for up in (Path(".."), Path("..", "..")):
            try:
                near = (up / path).is_file()
            except (OSError, ValueError):  # too long a name, a folder we may not search
                continue
            if near:
                hint = f"; did you mean {up / path}? (a relative path is read from {Path.cwd()})"
                break
    return SpecError(f"{path}: no such study file{hint}")


def _unread(path: Path, e: BaseException) -> SpecError:
    return SpecError(f"{path}: cannot read study file: {getattr(e, 'strerror', 0) or e}")


def _read_study_file(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_STUDY_FILE_BYTES. Anything else is refused
    before it is opened: a FIFO would block the open until some writer came, for ever."""
    limit = MAX_STUDY_FILE_BYTES
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "a special file")
            raise SpecError(f"{path}: cannot read study file: {kind}, not a regular file")
        if st.st_size > limit:
            raise SpecError(
                f"{path}: cannot read study file: {st.st_size:,} bytes; at most {limit:,}"
            )
        # Non-blocking, so that even a file swapped for a FIFO since the stat cannot hang.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            data = f.read(limit + 1) or b""
    except FileNotFoundError as e:
        raise (missing(path) if not path.is_symlink() else _unread(path, e)) from e
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise _unread(path, e) from e
    if len(data) > limit:  # it grew since the stat
        raise SpecError(f"{path}: cannot read study file: more than {limit:,} bytes")
    return data

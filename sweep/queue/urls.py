"""Storage URLs as people see them: read by SQLAlchemy's parser, every secret hidden.

A storage URL appears in messages and logs; its password never may. A hand-written pattern
cannot know where a password ends (``u:SEC?RET@h``, ``u:SEC#RET@h`` and Azure's
``user@server:pw@h`` all printed theirs in clear, issue 22), so the URL is read by the parser
that connects with it, SQLAlchemy's ``make_url``, and rendered by it with the password hidden
(``render_as_string(hide_password=True)``); query-string values whose key names a secret are
hidden too. A URL that SQLAlchemy cannot read, or reads ambiguously, is refused (``parse_url``)
and shown with all between ``://`` and its last ``@`` hidden.

Note: SQLAlchemy's grammar is lax (a user name holds anything but ``:`` and ``/``, a password
anything but ``@``), which is what lets ``u:SEC?RET@h`` connect. "Ambiguously" is where that
laxness could show a piece of a secret as a host, a database or a query value, so those are
refused: an ``@`` after the one that ends the password (``u:p@ss@host`` would connect to host
``ss@host`` with password ``p``), and a ``?`` before that ``@`` in a URL with a secret query
key (``u@h:1/db?password=x@y`` is to SQLAlchemy user ``u@h``, password ``1/db?password=x``,
host ``y``). RFC 3986 wants such characters percent-encoded; the message says so.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import TYPE_CHECKING

from sweep.text import printable

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

#: Query keys whose values are hidden, matched as parts of the key after percent-decoding and
#: case-folding: libpq's password, sslpassword and passfile, drivers' pwd and passwd, and
#: whatever else names a secret (an access token, a key, an auth string, credentials).
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "key", "auth", "cred")
#: What a shown URL is cut to; a longer one is a mistake and the start identifies it.
_SHOWN = 300
_MASK = "***"


def _is_secret_key(key: str) -> bool:
    """Whether a query key names a secret (``password``, ``PassWord``, ``sslpassword``, …)."""
    return any(word in key.casefold() for word in _SECRET_WORDS)


def parse_url(url: str) -> URL:
    """``url`` as SQLAlchemy reads it, to connect with; ValueError naming what does not parse,
    in words that quote nothing of the URL (a part of it may be a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # no scheme://; a port int() cannot read
        raise ValueError(_why_unread(url)) from None
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ValueError(_PORT)
    end = _userinfo_end(url, parsed)
    userinfo = url[url.index("://") + 3 : end] if parsed.username is not None else ""
    if "@" in url[end:] or ("?" in userinfo and _query_secrets(url)):
        raise ValueError(_UNCLEAR)
    return parsed


_PORT = "the port must be a number from 1 to 65535"
_UNCLEAR = (
    "an @ leaves its host unclear (in a user name, password or value, write @ as %40, and "
    ": / ? # beside one as %3A %2F %3F %23)"
)


def _why_unread(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[\w+]+", scheme):
        return "it must begin with a scheme, such as postgresql://"
    host = re.split(r"[/?]", rest[rest.rfind("@") + 1 :], maxsplit=1)[0]
    if host.startswith("[") and "]" not in host:
        return "an IPv6 host must be closed with ], as in [::1]"
    return _PORT


def _userinfo_end(url: str, parsed: URL) -> int:
    """Where the host begins, as SQLAlchemy's grammar reads ``url`` (its user name holds no
    ``:`` or ``/``; its password ends at the first ``@`` after the user name's ``:``): no
    ``@`` may follow."""
    start = url.index("://") + 3
    if parsed.password is not None:
        return url.index("@", url.index(":", start)) + 1
    if parsed.username is not None:
        user = re.split(r"[:/]", url[start:], maxsplit=1)[0]
        return start + user.rindex("@") + 1
    # No user: an @ in a path (SQLite's) is a file name's; one after a host is a mistake
    # (``u/x:pw@h``: a "user name" holding a "/"), and may end a password.
    return len(url) if parsed.host is None else start


def mask_password(url: str) -> str:
    """``url`` for messages and logs, on one line: the password shown as ``***``, and so the
    value of every query key that names a secret (``?password=``, ``?sslpassword=``,
    ``?token=``, any case, percent-encoded or not). A URL with nothing secret in it is shown
    as given (a SQLite path keeps its characters); one that does not parse, with all between
    ``://`` (or its start) and its last ``@`` hidden."""
    try:
        parsed = parse_url(url)
    except ValueError:
        return printable(_mask_unparsed(url), _SHOWN)
    pairs = _pairs(parsed)
    if parsed.password is None and not any(_is_secret_key(k) for k, _ in pairs):
        return printable(url, _SHOWN)
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    return printable(shown + _query(pairs), _SHOWN)


def _pairs(parsed: URL) -> list[tuple[str, str]]:
    """The query's decoded pairs in their order (SQLAlchemy groups a repeated key's values)."""
    return [(k, v) for k, vs in parsed.query.items()
            for v in ((vs,) if isinstance(vs, str) else vs)]  # fmt: skip


def _mask_unparsed(url: str) -> str:
    """All between ``://`` and the last ``@`` hidden, and what follows shown only if it holds
    no secret value of any reading (an ``@`` inside a query string may be that last one)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        rest = scheme
        scheme = ""
    at = rest.rfind("@")
    head, tail = (_MASK, rest[at:]) if at >= 0 else ("", rest)
    base, question, query = tail.partition("?")
    if question:
        base += _query(urllib.parse.parse_qsl(query, keep_blank_values=True))
    if any(secret in base for secret in _query_secrets(url)):
        return scheme + sep + _MASK
    return scheme + sep + head + base


def _query_secrets(url: str) -> set[str]:
    """The values of secret keys in every query string a reading of ``url`` may find: after
    its first ``?`` (RFC 3986) and after its last ``@``."""
    queries = [url.partition("?")[2], url[url.rfind("@") + 1 :].partition("?")[2]]
    pairs = [part.partition("=")[::2] for q in queries for part in q.split("&")]
    unquote = urllib.parse.unquote_plus
    # each as written, and as a driver gets it
    return {value for k, v in pairs if v and _is_secret_key(unquote(k))
            for value in (v, unquote(v))}  # fmt: skip


def _query(pairs: list[tuple[str, str]]) -> str:
    """A query string from decoded pairs, in their order, with secret values hidden."""
    if not pairs:
        return ""
    quote = urllib.parse.quote_plus
    return "?" + "&".join(
        f"{quote(k)}={_MASK if _is_secret_key(k) else quote(v)}" for k, v in pairs
    )


def _secrets_in(url: str) -> list[str]:
    """Every text in ``url`` that may be a secret, longest first, decoded and encoded: the
    password and the values of query keys that name a secret; for a URL that does not parse,
    all between the first ``:`` after ``://`` and the last ``@``."""
    try:
        parsed = parse_url(url)
    except ValueError:
        rest = url.partition("://")[2] or url
        at = rest.rfind("@")
        found = {rest[rest.find(":") + 1 : at]} if at >= 0 else set()
        found |= _query_secrets(url)
    else:
        found = {v for k, v in _pairs(parsed) if _is_secret_key(k)} | {parsed.password or ""}
    found |= {urllib.parse.quote(s) for s in found} | {urllib.parse.quote_plus(s) for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def redact(text: str, url: str, limit: int = 500) -> str:
    """Text from a database server or driver about ``url``, for one line of a message:
    every secret of the URL hidden (a driver may quote its connection string), no control
    characters (a server's text may hold ANSI escape codes), at most ``limit`` characters."""
    for secret in _secrets_in(url):
        text = text.replace(secret, _MASK)
    return printable(text, limit)

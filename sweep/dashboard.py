"""Serve optuna-dashboard read-only, and only to requests that name this machine.

optuna-dashboard's API has no authentication: whoever reaches it can create, rename and delete
studies, write notes and user attributes, tell trials and upgrade the schema. Binding to
127.0.0.1 does not keep web pages out: a page in the user's browser can point its own DNS name
at 127.0.0.1 and use the API through the browser (DNS rebinding). So :func:`guard` answers only
requests whose ``Host`` is one of :func:`allowed_hosts` (421 otherwise), refuses every method
but GET, HEAD and OPTIONS (405) unless writes are allowed, and then refuses a write whose
``Origin`` is another site (403: CSRF).

The dashboard is given the study's artifact store (``sweep.artifacts``), so that its trial view
lists each trial's checkpoints and the study's evaluated model and downloads them (a GET, so
read-only mode allows it; uploading and deleting artifacts are writes). optuna keeps the meta
data of a deleted artifact on its trial (``artifacts:<id>``), so the dashboard may list files
that are gone; fetching one answers 404 with a line of text (:class:`_Served`), where the
dashboard itself would answer 500 and print a traceback on the terminal for each click.

:func:`serve` binds in the calling thread, so that a busy port or an unknown host is a one-line
:class:`SweepError`, and serves from a daemon thread: in the main thread, wsgiref's error
handler swallows a Ctrl-C or SIGTERM that lands during a request, and serving carries on.

Note: the port in ``Host`` is not checked (an SSH tunnel may use another); the name is what a
rebinding page cannot choose. A write without ``Origin`` (curl, a script) is not checked for
CSRF; browsers send one with every POST, PUT and DELETE. With writes refused, the dashboard
still shows its edit buttons; using them shows an error.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, BinaryIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from sweep.errors import SpecError, SweepError

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    import optuna
    from optuna.artifacts._protocol import ArtifactStore

logger = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# An allow-list, so it also covers PATCH and whatever a later dashboard adds. optuna-dashboard
# 0.21 writes with POST (create, rename, preference, tell, user-attrs, skip, artifacts, llm,
# incompatible-rdb-schema), PUT (notes, preference component) and DELETE (study, preference,
# artifacts); its GET routes only read.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# getaddrinfo's answers for a name that does not exist (other errors: DNS down, say).
_NO_SUCH_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
_STOP_TIMEOUT_S = 5.0  # how long Ctrl-C waits for the request in hand (a locked database?)


def allowed_hosts(host: str, *, extra_hosts: Iterable[str] = ()) -> frozenset[str]:
    """The host names a dashboard bound to ``host`` answers to: the localhost names, ``host``
    and its addresses, and ``extra_hosts``. An all-interfaces bind (``0.0.0.0``, ``::``) stays
    explicit: the machine's name and FQDN and their addresses stand for ``host``; any other
    name (a DNS alias, another interface, a reverse proxy's name) must be in ``extra_hosts``."""
    names = set(LOCAL_HOSTS) | _names(extra_hosts)
    own = [socket.gethostname(), socket.getfqdn()] if _is_wildcard(host) else [host]
    for name in own:
        names.add(_host_name(name))
        try:
            names.update(_host_name(info[4][0]) for info in _resolve(name, None))
        except (OSError, UnicodeError):  # a name need not resolve (unknown: _bind says so)
            pass
    names.discard(None)
    return frozenset(names)


def guard(
    app: WSGIApplication, *, allowed_hosts: Iterable[str], allow_writes: bool = False
) -> WSGIApplication:
    """``app`` answering only to ``allowed_hosts`` (``[::1]:8080`` form allowed, port ignored)
    and, unless ``allow_writes``, only to GET, HEAD and OPTIONS."""
    allowed = _names(allowed_hosts)
    logged: set[str] = set()

    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        host = environ.get("HTTP_HOST", "")
        if _host_name(host) not in allowed:
            if host not in logged and len(logged) < 100:  # once a name, within bounds
                logged.add(host)
                logger.warning("refused Host %r; allowed: %s", host, ", ".join(sorted(allowed)))
            text = "this server does not answer to that host name"
            return _refuse(start_response, method, "421 Misdirected Request", text)
        if method in READ_METHODS:
            return app(environ, start_response)
        if not allow_writes:
            text = "the dashboard is read-only (it was started without allowing writes)"
            allow = [("Allow", ", ".join(sorted(READ_METHODS)))]
            return _refuse(start_response, method, "405 Method Not Allowed", text, allow)
        origin = environ.get("HTTP_ORIGIN")  # scheme://host[:port] (RFC 6454), or "null"
        if origin is not None and origin.lower().partition("://")[2] != host.lower():
            return _refuse(start_response, method, "403 Forbidden", "cross-origin write refused")
        return app(environ, start_response)

    return guarded


def serve(
    storage: optuna.storages.BaseStorage,
    *,
    host: str,
    port: int,
    allow_writes: bool = False,
    extra_hosts: Iterable[str] = (),
    artifact_store: ArtifactStore | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve optuna-dashboard for ``storage`` on ``host``:``port`` until interrupted, with the
    artifacts in ``artifact_store`` (without one, the dashboard cannot show them).

    Binds first (a one-line SweepError if it cannot; SpecError for a bad port or extra host),
    calls ``on_ready(url)`` with the URL to open (the actual port for port 0, the machine's name
    for an all-interfaces bind), and serves until an exception (KeyboardInterrupt, the CLI's
    SIGTERM) reaches the calling thread, which stops the server and raises it again."""
    import optuna_dashboard  # heavy, and only needed here

    if not 0 <= port <= 65535:
        raise SpecError(f"port must be an integer in [0, 65535]; got {port}")
    hosts = allowed_hosts(host, extra_hosts=extra_hosts)
    server = _bind(host, port)
    failed: list[BaseException] = []
    # Not Thread.is_alive(): a KeyboardInterrupt that lands in join() marks the thread stopped
    # while it still runs (CPython 3.11's fix for bpo-45274 releases the thread's own lock).
    stopped = threading.Event()

    def run() -> None:
        try:
            server.serve_forever(poll_interval=0.5)
        except BaseException as e:  # raised again in the calling thread
            failed.append(e)
        finally:
            stopped.set()

    thread = threading.Thread(target=run, name="dashboard", daemon=True)
    try:
        served = None if artifact_store is None else _Served(artifact_store)
        app = optuna_dashboard.wsgi(storage, artifact_store=served)
        server.set_app(guard(app, allowed_hosts=hosts, allow_writes=allow_writes))
        thread.start()
        if on_ready is not None:
            name = socket.gethostname() if _is_wildcard(host) else host
            on_ready(f"http://{_netloc(name, server.server_address[1])}/")
        while not stopped.wait(0.5):  # short waits: a signal that did not wake it gets in
            pass
    finally:
        if thread.ident is not None and not stopped.is_set():
            # shutdown() waits for the request in hand; a stuck one must not hold up Ctrl-C.
            threading.Thread(target=server.shutdown, daemon=True).start()
            stopped.wait(_STOP_TIMEOUT_S)
        if thread.ident is None or stopped.is_set():  # else the thread uses it until exit
            server.server_close()
    if failed:
        raise failed[0]


class _Served:
    """The artifact store as the dashboard uses it: a missing artifact (a deleted checkpoint
    that its trial still lists) is a 404, not an uncaught ArtifactNotFound."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def open_reader(self, artifact_id: str) -> BinaryIO:
        from bottle import HTTPError  # optuna-dashboard's web framework: it answers this one
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            return self.store.open_reader(artifact_id)
        except ArtifactNotFound:
            raise HTTPError(404, "this artifact was deleted (a replaced checkpoint?)") from None

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(artifact_id)


class _Server(WSGIServer):
    """wsgiref's server for IPv4 or IPv6, with a request log at DEBUG instead of on stderr."""

    def __init__(self, family: socket.AddressFamily, address: tuple) -> None:
        self.address_family = family  # read by TCPServer.__init__ when it makes the socket
        super().__init__(address, _QuietHandler)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


def _bind(host: str, port: int) -> _Server:
    """A server bound to ``host``:``port``, or a one-line SweepError saying why not."""
    where = _netloc(host, port)
    try:
        family, _, _, _, address = _resolve(host, port)[0]
    except (socket.gaierror, UnicodeError) as e:
        unknown = not isinstance(e, socket.gaierror) or e.errno in _NO_SUCH_HOST
        reason = "unknown host" if unknown else f"cannot resolve host ({e.strerror})"
        raise SweepError(f"cannot serve on {where}: {reason}") from e
    try:
        return _Server(family, address)
    except OSError as e:
        reasons = {
            errno.EADDRINUSE: "address already in use (another dashboard? choose another --port)",
            errno.EADDRNOTAVAIL: "not an address of this machine (choose another --host)",
            errno.EACCES: "permission denied"
            + (" (ports below 1024 need root; choose another --port)" if port < 1024 else ""),
        }
        reason = reasons.get(e.errno) or (e.strerror or str(e)).lower()
        raise SweepError(f"cannot serve on {where}: {reason}") from e


def _resolve(host: str, port: int | None) -> list:
    return socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)


def _names(values: Iterable[str]) -> set[str]:
    names = set()
    for value in values:
        name = _host_name(value)
        if name is None:
            raise SpecError(f"allowed host must be a host name or IP address; got {value!r}")
        names.add(name)
    return names


def _host_name(value: str) -> str | None:
    """The host in a ``Host`` header: lower case, no port, brackets or final dot, an IP address
    in its short form (``[0:0::1]:80`` → ``::1``); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8080
        name, bracket, port = value[1:].partition("]")
        if not bracket or not (port == "" or port.startswith(":")):
            return None
        port = port[1:]
    elif value.count(":") == 1:  # localhost:8080
        name, _, port = value.partition(":")
    else:  # a name, an IPv4 address or (in an allow-list) a bare IPv6 address
        name, port = value, ""
    if port and not (port.isascii() and port.isdigit()):
        return None
    name = name.removesuffix(".")
    try:
        return ipaddress.ip_address(name).compressed
    except ValueError:
        return name if re.fullmatch(r"[a-z0-9_.-]+", name) else None


def _refuse(
    start_response: StartResponse, method: str, status: str, text: str, headers: list = ()
) -> list[bytes]:
    body = f"{status}: {text}\n".encode()
    plain = [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")]
    start_response(status, [*plain, ("Content-Length", str(len(body))), *headers])
    return [] if method == "HEAD" else [body]


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_wildcard(host: str) -> bool:
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False

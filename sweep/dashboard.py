"""Serve optuna-dashboard read-only, and only to requests that name this machine.

optuna-dashboard's API has no authentication: whoever reaches it can create, rename and delete
studies, write notes and user attributes, tell trials and upgrade the schema. Binding to
127.0.0.1 does not keep web pages out: a page in the user's browser can point its own DNS name
at 127.0.0.1 and use the API through the browser (DNS rebinding). So :func:`guard` answers only
requests whose ``Host`` is one of :func:`allowed_hosts` (421 otherwise), refuses every method
but GET, HEAD and OPTIONS (405) unless writes are allowed, and then refuses a write whose
``Origin`` is another site (403: CSRF).

The dashboard is given the study's artifact store (``sweep.trial.artifacts``), so that its trial
view lists each trial's checkpoints and the study's evaluated model (uploading and deleting them are
writes). Downloading one is answered by :func:`sweep.dashboard_files.artifact_files`: only a
regular file inside the store, never through a symlink, always as an ``application/octet-stream``
attachment, whatever the (untrusted) ``artifacts:<id>`` record says. No response carries CORS
headers (the dashboard sent ``Access-Control-Allow-Origin: *`` with every download): its own
page is same-origin and needs none.

:func:`serve` binds in the calling thread, so that a busy port or an unknown host is a one-line
:class:`SweepError`, and serves through waitress, a maintained WSGI server (optuna-dashboard's
docs call the standard library's wsgiref, which answers one request at a time, unsuitable for
production use). Its event loop, in a daemon thread, reads requests and hands each whole one to
a bounded pool of threads, so a client that sends half a request holds no thread and delays
nobody, and a connection silent for ``idle_timeout`` seconds is closed. The calling thread
only waits, so a Ctrl-C or SIGTERM reaches it (waitress's own loop would swallow a Ctrl-C) and
stops the server.

A study of more than ``sweep.queue.bounded.THRESHOLD`` trials is shown bounded (its best, newest
and running trials; the whole list took minutes and gigabytes at 10⁵): read-only, the dashboard
reads through :class:`sweep.queue.bounded.BoundedStorage`, and :func:`bounded_lists` keeps the
page's incremental reloads right. The page asks for ``trials[after:]``, ``after`` being the
index of the first RUNNING or WAITING trial it holds (all trials before it are taken as final),
but a bounded view is not a list that only grows: its newest window moves, its best change. So
a bounded study's list begins with a WAITING stand-in (number -1, its user attribute saying what
is shown), which makes every reload ask for the whole (bounded) list again.

Note: the port in ``Host`` is not checked (an SSH tunnel may use another); the name is what a
rebinding page cannot choose. A write without ``Origin`` (curl, a script) is not checked for
CSRF; browsers send one with every POST, PUT and DELETE. With writes refused, the dashboard
still shows its edit buttons; using them shows an error.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sweep.dashboard_files import artifact_files, text_response, tolerant_listings
from sweep.errors import SpecError, SweepError
from sweep.queue.bounded import BoundedStorage, bounded_text

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    import optuna
    from optuna.artifacts._protocol import ArtifactStore
    from waitress.server import BaseWSGIServer

logger = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# An allow-list, so it also covers PATCH and whatever a later dashboard adds. optuna-dashboard
# 0.21 writes with POST (create, rename, preference, tell, user-attrs, skip, artifacts, llm,
# incompatible-rdb-schema), PUT (notes, preference component) and DELETE (study, preference,
# artifacts); its GET routes only read.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# getaddrinfo's answers for a name that does not exist (other errors: DNS down, say).
_NO_SUCH_HOST = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
_STOP_TIMEOUT_S = 5.0  # how long Ctrl-C waits for the requests in hand (a locked database?)
# A connection that sends nothing for this long (an idle keep-alive, a request sent in part) is
# closed; a browser opens another when it next asks.
IDLE_TIMEOUT_S = 30
# Threads answering whole requests. The dashboard's requests are short reads of the database;
# a download is streamed by the event loop (wsgi.file_wrapper), not by a thread.
_THREADS = 8
_CONNECTIONS = 100  # open connections at most; more wait in the listen backlog
# Request bodies: a read-only dashboard takes none (every write is refused after the body is
# read); with writes, an artifact upload is a data URI that optuna-dashboard caps at 128 MiB.
_BODY_READ_ONLY = 64 * 1024
_BODY_WRITES = 192 * 1024 * 1024
_STUDY_DETAIL = re.compile(r"/api/studies/(\d+)")  # optuna-dashboard 0.21's trial list


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
    and, unless ``allow_writes``, only to GET, HEAD and OPTIONS; no answer carries CORS
    (``Access-Control-*``) headers."""
    allowed = _names(allowed_hosts)
    logged: set[str] = set()

    def guarded(environ: WSGIEnvironment, respond: StartResponse) -> Iterable[bytes]:
        def start_response(status: str, headers: list, exc_info: object = None) -> object:
            same_origin = [h for h in headers if not h[0].lower().startswith("access-control-")]
            return respond(status, same_origin, exc_info)

        method = environ.get("REQUEST_METHOD", "GET").upper()
        host = environ.get("HTTP_HOST", "")
        if _host_name(host) not in allowed:
            if host not in logged and len(logged) < 100:  # once a name, within bounds
                logged.add(host)
                logger.warning("refused Host %r; allowed: %s", host, ", ".join(sorted(allowed)))
            text = "this server does not answer to that host name"
            return text_response(start_response, method, "421 Misdirected Request", text)
        if method in READ_METHODS:
            return app(environ, start_response)
        if not allow_writes:
            text = "the dashboard is read-only (it was started without allowing writes)"
            allow = [("Allow", ", ".join(sorted(READ_METHODS)))]
            return text_response(start_response, method, "405 Method Not Allowed", text, allow)
        origin = environ.get("HTTP_ORIGIN")  # scheme://host[:port] (RFC 6454), or "null"
        if origin is not None and origin.lower().partition("://")[2] != host.lower():
            return text_response(
                start_response, method, "403 Forbidden", "cross-origin write refused"
            )
        return app(environ, start_response)

    return guarded


def bounded_lists(app: WSGIApplication, storage: BoundedStorage) -> WSGIApplication:
    """``app`` with each bounded study's trial list (``GET /api/studies/<id>?after=N``) begun
    by a WAITING stand-in saying what is shown, ``after`` counting it (see the module
    docstring); other answers unchanged."""
    from urllib.parse import parse_qsl, urlencode

    def served(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        match = _STUDY_DETAIL.fullmatch(environ.get("PATH_INFO", ""))
        if match is None or environ.get("REQUEST_METHOD") != "GET":
            return app(environ, start_response)
        study_id = int(match[1])
        query = parse_qsl(environ.get("QUERY_STRING", ""))
        after = dict(query).get("after", "0")
        if not (after.isascii() and after.isdigit()):
            return app(environ, start_response)  # its own 400
        if int(after) > 0 and storage.shown(study_id) is None:
            return app(environ, start_response)  # today's incremental list
        inner = dict(environ, QUERY_STRING=urlencode([(k, v) for k, v in query if k != "after"]))
        answer: list = []
        body = b"".join(_closing(app(inner, lambda *a: answer.append(a))))
        status, headers = answer[-1][0], answer[-1][1]
        shown = storage.shown(study_id)
        if status.startswith("200") and shown is not None:
            from optuna_dashboard._serializer import serialize_frozen_trial

            detail = json.loads(body)
            stand_in = serialize_frozen_trial(study_id, _stand_in(bounded_text(shown)), {})
            detail["trials"] = [stand_in, *detail["trials"]][int(after) :]
            body = json.dumps(detail).encode()
        elif int(after) > 0 and status.startswith("200"):  # just become small: today's slice
            detail = json.loads(body)
            detail["trials"] = detail["trials"][int(after) :]
            body = json.dumps(detail).encode()
        headers = [h for h in headers if h[0].lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]

    return served


def serve(
    storage: optuna.storages.BaseStorage,
    *,
    host: str,
    port: int,
    allow_writes: bool = False,
    extra_hosts: Iterable[str] = (),
    artifact_store: ArtifactStore | None = None,
    on_ready: Callable[[str], None] | None = None,
    idle_timeout: int = IDLE_TIMEOUT_S,
) -> None:
    """Serve optuna-dashboard for ``storage`` on ``host``:``port`` until interrupted, with the
    artifacts in ``artifact_store`` (without one, the dashboard cannot show them). A
    :class:`BoundedStorage` shows each large study bounded (see :func:`bounded_lists`).

    Binds first (a one-line SweepError if it cannot; SpecError for a bad port or extra host),
    calls ``on_ready(url)`` with the URL to open (the actual port for port 0, the machine's name
    for an all-interfaces bind), and serves until an exception (KeyboardInterrupt, the CLI's
    SIGTERM) reaches the calling thread, which stops the server and raises it again. A
    connection silent for ``idle_timeout`` seconds is closed."""
    import optuna_dashboard  # heavy, and only needed here
    import waitress

    if not 0 <= port <= 65535:
        raise SpecError(f"port must be an integer in [0, 65535]; got {port}")
    hosts = allowed_hosts(host, extra_hosts=extra_hosts)
    sock = _bind(host, port)
    failed: list[BaseException] = []
    # Not Thread.is_alive(): a KeyboardInterrupt that lands in join() marks the thread stopped
    # while it still runs (CPython 3.11's fix for bpo-45274 releases the thread's own lock).
    stopped = threading.Event()
    server: BaseWSGIServer | None = None
    connections: dict = {}  # the event loop's sockets: the listening one and each client's

    def run() -> None:
        try:
            server.run()
        except BaseException as e:  # raised again in the calling thread
            failed.append(e)
        finally:
            stopped.set()

    thread = threading.Thread(target=run, name="dashboard", daemon=True)
    try:
        tolerant_listings()
        app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store)
        if isinstance(storage, BoundedStorage):
            app = bounded_lists(app, storage)
        if artifact_store is not None:
            app = artifact_files(app, storage, artifact_store)
        server = waitress.create_server(
            guard(app, allowed_hosts=hosts, allow_writes=allow_writes), map=connections,
            sockets=[sock], threads=_THREADS, connection_limit=_CONNECTIONS,
            channel_timeout=idle_timeout, cleanup_interval=1,  # closes within ~2 s of the limit
            max_request_body_size=_BODY_WRITES if allow_writes else _BODY_READ_ONLY,
            asyncore_use_poll=True,  # select() fails past 1024 descriptors
            ident="sweep dashboard",
        )  # fmt: skip
        thread.start()
        if on_ready is not None:
            name = socket.gethostname() if _is_wildcard(host) else host
            on_ready(f"http://{_netloc(name, sock.getsockname()[1])}/")
        while not stopped.wait(0.5):  # short waits: a signal that did not wake it gets in
            pass
    finally:
        if server is None:
            sock.close()
        else:
            _stop(server, connections, stopped)
    if failed:
        raise failed[0]


def _closing(body: Iterable[bytes]) -> Iterable[bytes]:
    try:
        yield from body
    finally:
        if hasattr(body, "close"):
            body.close()


def _stand_in(text: str) -> optuna.trial.FrozenTrial:
    """The WAITING trial -1 a bounded study's list begins with, ``text`` its one attribute."""
    from optuna.trial import FrozenTrial, TrialState

    return FrozenTrial(number=-1, state=TrialState.WAITING, value=None, datetime_start=None,
                       datetime_complete=None, params={}, distributions={},
                       user_attrs={"bounded view": text}, system_attrs={},
                       intermediate_values={}, trial_id=-1)  # fmt: skip


def _stop(server: BaseWSGIServer, connections: dict, stopped: threading.Event) -> None:
    """Stop the request threads first, waiting at most _STOP_TIMEOUT_S for the requests in
    hand (a stuck one must not hold up Ctrl-C) while the event loop still sends their answers;
    then close every connection and the listening socket in the loop's own thread (its trigger
    runs the closing there), which then ends. Waitress stops its own servers in this order: a
    request thread that finishes wakes the loop through the trigger, which closing shuts."""
    from waitress import wasyncore

    server.task_dispatcher.shutdown(timeout=_STOP_TIMEOUT_S)
    if not stopped.is_set():
        try:
            server.trigger.pull_trigger(lambda: wasyncore.close_all(connections))
        except OSError:  # the loop has closed its trigger: it is ending anyway
            pass
        stopped.wait(_STOP_TIMEOUT_S)
    if not stopped.is_set():  # never run: nobody else touches the map
        wasyncore.close_all(connections)


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (not yet listening), or a one-line SweepError
    saying why not."""
    where = _netloc(host, port)
    try:
        family, kind, proto, _, address = _resolve(host, port)[0]
    except (socket.gaierror, UnicodeError) as e:
        unknown = not isinstance(e, socket.gaierror) or e.errno in _NO_SUCH_HOST
        reason = "unknown host" if unknown else f"cannot resolve host ({e.strerror})"
        raise SweepError(f"cannot serve on {where}: {reason}") from e
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart after TIME_WAIT
        sock.bind(address)
    except OSError as e:
        sock.close()
        reasons = {
            errno.EADDRINUSE: "address already in use (another dashboard? choose another --port)",
            errno.EADDRNOTAVAIL: "not an address of this machine (choose another --host)",
            errno.EACCES: "permission denied"
            + (" (ports below 1024 need root; choose another --port)" if port < 1024 else ""),
        }
        reason = reasons.get(e.errno) or (e.strerror or str(e)).lower()
        raise SweepError(f"cannot serve on {where}: {reason}") from e
    return sock


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


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_wildcard(host: str) -> bool:
    try:
        return not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False

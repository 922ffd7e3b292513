"""sweep.dashboard: optuna-dashboard answers only to this machine's names and, unless told, reads.

The guard is called as a WSGI app (no network) over the real dashboard and a real SQLite study;
``serve`` is run for real on a free port, in the main thread, and stopped by a Ctrl-C.
"""

import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import optuna_dashboard
import pytest

from sweep.dashboard import LOCAL_HOSTS, allowed_hosts, guard, serve
from sweep.errors import SpecError, SweepError
from tests.sweep.dashboard_helpers import dump, fetch, request, serving, storage, study_db


@pytest.fixture
def db(tmp_path) -> Path:
    return study_db(tmp_path)


def names(db: Path) -> list[str]:
    return sorted(optuna.study.get_all_study_names(storage=f"sqlite:///{db}"))


def call(app, method, path, *, host="127.0.0.1:8080", body=None, origin=None):
    """(status, headers, body) of one WSGI request."""
    data = b"" if body is None else json.dumps(body).encode()
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(data)}
    environ.update(CONTENT_TYPE="application/json", CONTENT_LENGTH=str(len(data)))
    setup_testing_defaults(environ)  # sets a Host of its own
    environ.pop("HTTP_HOST")
    if host is not None:
        environ["HTTP_HOST"] = host
    if origin is not None:
        environ["HTTP_ORIGIN"] = origin
    got = {}

    def start_response(status, headers, exc_info=None):
        got.update(status=int(status.split()[0]), headers=dict(headers))

    chunks = app(environ, start_response)
    try:
        return got["status"], got["headers"], b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()


def guarded(db: Path, **kw):
    return guard(optuna_dashboard.wsgi(storage(db)), allowed_hosts=LOCAL_HOSTS, **kw)


# --- Host -----------------------------------------------------------------------------------

LOCAL = ["127.0.0.1:8080", "127.0.0.1", "localhost:8080", "LocalHost", "localhost.", "[::1]:9"]
LOCAL += ["[::1]", "[0:0:0:0:0:0:0:1]:8080", "localhost:"]


@pytest.mark.parametrize("host", LOCAL)
def test_a_local_host_is_served(db, host):
    status, _, body = call(guarded(db), "GET", "/api/studies", host=host)
    assert status == 200
    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["g"]


FOREIGN = ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil.example"]
FOREIGN += ["", None, "[::1", "[::1]x", "localhost:80:80", "localhost:x", "local host", "::2"]


@pytest.mark.parametrize("host", FOREIGN)
def test_a_foreign_or_missing_host_is_misdirected(db, host):
    status, headers, body = call(guarded(db), "GET", "/api/studies", host=host)
    assert status == 421 and headers["Content-Type"].startswith("text/plain")
    assert b"study_summaries" not in body and b'"g"' not in body and body.count(b"\n") == 1


def test_the_host_is_checked_before_a_write_is_let_through(db):
    before = dump(db)
    status, _, _ = call(guarded(db, allow_writes=True), "DELETE", "/api/studies/1", host="evil.x")
    assert status == 421 and dump(db) == before


# --- writes ---------------------------------------------------------------------------------

# (method, path, body, status when allowed, study names afterwards)
WRITES = [
    ("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}, 201, ["g", "new"]),
    ("POST", "/api/studies/1/rename", {"study_name": "renamed"}, 201, ["renamed"]),
    ("DELETE", "/api/studies/1", None, 204, []),
    ("PUT", "/api/studies/1/note", {"version": 1, "body": "hello"}, 204, ["g"]),
    ("POST", "/api/trials/2/user-attrs", {"user_attrs": {"k": "v"}}, 204, ["g"]),
]


@pytest.mark.parametrize(("method", "path", "body"), [w[:3] for w in WRITES])
def test_a_write_is_refused_and_the_database_unchanged(db, method, path, body):
    before = dump(db)
    status, headers, text = call(guarded(db), method, path, body=body)
    assert status == 405 and headers["Allow"] == "GET, HEAD, OPTIONS"
    assert b"read-only" in text
    assert dump(db) == before


@pytest.mark.parametrize(("method", "path", "body", "status", "after"), WRITES)
def test_a_write_goes_through_when_allowed(db, method, path, body, status, after):
    before = dump(db)
    origin = "http://127.0.0.1:8080"  # what a browser sends from the dashboard's own page
    assert call(guarded(db, allow_writes=True), method, path, body=body, origin=origin)[0] == status
    assert names(db) == after and dump(db) != before


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "http://localhost:8080", "http://127.0.0.1:9", "x"]
)
def test_a_write_from_another_origin_is_forbidden(db, origin):
    before = dump(db)
    app = guarded(db, allow_writes=True)
    status, _, _ = call(app, "DELETE", "/api/studies/1", host="127.0.0.1:8080", origin=origin)
    assert status == 403 and dump(db) == before


# --- the allow-list -------------------------------------------------------------------------


def test_a_bound_address_answers_to_itself_and_the_localhost_names():
    assert allowed_hosts("127.0.0.1") == LOCAL_HOSTS
    assert allowed_hosts("::1", extra_hosts=["Dash.Example.:443", "[::2]"]) == LOCAL_HOSTS | {
        "dash.example",
        "::2",
    }


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::"])
def test_an_all_interfaces_bind_answers_to_the_machine_name_not_to_any(wildcard):
    hosts = allowed_hosts(wildcard)
    assert LOCAL_HOSTS | {socket.gethostname().lower()} <= hosts
    assert wildcard not in hosts and "evil.example" not in hosts


@pytest.mark.parametrize("extra", ["", "http://x.example", "a b", "x:y:z"])
def test_a_malformed_extra_host_is_a_spec_error(extra):
    with pytest.raises(SpecError, match="allowed host"):
        allowed_hosts("127.0.0.1", extra_hosts=[extra])


# --- serve, end to end ----------------------------------------------------------------------


def test_serve_is_read_only_and_answers_only_to_local_names(db):
    before = dump(db)

    def client(url):
        port = int(url.rsplit(":", 1)[1].strip("/"))
        return (
            url,
            port,
            [
                request(url + "api/studies", host=f"127.0.0.1:{port}"),
                request(url + "api/studies", host="evil.example"),
                request(url + "api/studies/1", "DELETE"),
            ],
        )

    (url, port, (ok, misdirected, delete)), _interrupt = serving(db, client)
    assert url == f"http://127.0.0.1:{port}/" and port > 0
    assert ok[0] == 200 and b'"g"' in ok[1]
    assert misdirected[0] == 421 and b"study_summaries" not in misdirected[1]
    assert delete[0] == 405 and dump(db) == before
    with socket.socket() as again:  # serve closed the port (not the GC): it can listen again
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the TIME_WAITs
        again.bind(("127.0.0.1", port))
        again.listen()


def test_serve_with_writes_allowed_refuses_only_other_origins(db):
    def client(url):
        cross = request(url + "api/studies/1", "DELETE", origin="http://evil.example")
        return cross, names(db), request(url + "api/studies/1", "DELETE")

    (cross, names_between, same), _ = serving(db, client, allow_writes=True)
    assert cross[0] == 403 and names_between == ["g"]
    assert same[0] == 204 and names(db) == []


def test_a_port_in_use_is_a_one_line_error(db):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SweepError) as e:
            serve(storage(db), host="127.0.0.1", port=port)
    assert str(e.value) == (
        f"cannot serve on 127.0.0.1:{port}: address already in use "
        "(another dashboard? choose another --port)"
    )


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("nosuchhost.invalid", "unknown host"),
        ("192.0.2.1", "not an address of this machine (choose another --host)"),  # TEST-NET-1
    ],
)
def test_a_host_it_cannot_bind_is_a_one_line_error(db, host, reason):
    with pytest.raises(SweepError) as e:
        serve(storage(db), host=host, port=8080)
    assert str(e.value) == f"cannot serve on {host}:8080: {reason}"


def test_a_privileged_port_is_a_one_line_error():
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if not start.exists() or int(start.read_text()) <= 1:
        pytest.skip("this system lets anyone bind port 1")
    code = (
        "import optuna\nfrom sweep.dashboard import serve\nfrom sweep.errors import SweepError\n"
        "try:\n    serve(optuna.storages.InMemoryStorage(), host='127.0.0.1', port=1)\n"
        "except SweepError as e:\n    print(e)\n"
    )
    drop = []  # root may bind it: run without the capability to
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root, and no setpriv to drop CAP_NET_BIND_SERVICE")
        drop = ["setpriv", "--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service"]
    out = subprocess.run(
        [*drop, sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.stdout == (
        "cannot serve on 127.0.0.1:1: permission denied "
        "(ports below 1024 need root; choose another --port)\n"
    ), out.stderr


@pytest.mark.parametrize("port", [-1, 65536])  # getaddrinfo takes 65536 for 0, a free port
def test_a_port_out_of_range_is_a_spec_error(db, port):
    with pytest.raises(SpecError, match="port"):
        serve(storage(db), host="127.0.0.1", port=port, on_ready=pytest.fail)


# --- same origin ----------------------------------------------------------------------------


def test_no_answer_carries_cors_headers(db):
    """optuna-dashboard sent ``Access-Control-Allow-Origin: *`` with every artifact: any web
    page could read what the dashboard serves. The guard drops every CORS header."""

    def cors(environ, start_response):
        headers = [("Content-Type", "text/plain"), ("Access-Control-Allow-Origin", "*")]
        start_response("200 OK", [*headers, ("access-control-allow-credentials", "true")])
        return [b"x"]

    status, headers, _ = call(guard(cors, allowed_hosts=LOCAL_HOSTS), "GET", "/")
    assert status == 200 and headers == {"Content-Type": "text/plain"}

    def client(url):
        return [fetch(url + path) for path in ["", "api/studies", "api/studies/1", "nothing"]]

    answers, _ = serving(db, client)
    assert [a[0] for a in answers] == [200, 200, 200, 404]
    assert not [k for _, h, _ in answers for k in h if k.lower().startswith("access-control-")]


# --- many clients ---------------------------------------------------------------------------

HALF_A_REQUEST = b"GET /api/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def half_sent(url: str) -> socket.socket:
    """A connection that sent part of a request and says nothing more."""
    host, port = url.removeprefix("http://").strip("/").rsplit(":", 1)
    slow = socket.create_connection((host, int(port)), timeout=10)
    slow.sendall(HALF_A_REQUEST)
    return slow


def test_a_client_that_sends_half_a_request_delays_nobody(db):
    """wsgiref answered one connection at a time: one half-sent request stopped the dashboard
    for everybody, with no timeout."""

    def client(url):
        with half_sent(url), half_sent(url):
            time.sleep(0.5)  # the server has taken both connections in
            return request(url + "api/studies")  # urllib gives up after 10 s

    (status, body), _ = serving(db, client)
    assert status == 200 and b'"g"' in body


def test_a_silent_connection_is_closed_after_the_idle_timeout(db):
    def client(url):
        with half_sent(url) as slow:
            start = time.monotonic()
            try:
                got = slow.recv(1024)  # b"" when the server closes it; 10 s at most
            except TimeoutError:
                got = "still open after 10 s"
            return got, time.monotonic() - start

    (got, waited), _ = serving(db, client, idle_timeout=1)
    assert got == b"" and waited < 10


def test_a_request_still_finishing_at_ctrl_c_ends_without_a_traceback(db, monkeypatch, caplog):
    """Ctrl-C closed the event loop's trigger while a request thread was still finishing; the
    thread then pulled the closed trigger and waitress logged a traceback. Now the request
    threads stop first, as waitress stops its own servers."""
    from waitress.server import BaseWSGIServer

    pull = BaseWSGIServer.pull_trigger

    def late_pull(server):  # a request thread slowed down just before it wakes the loop
        if threading.current_thread().name.startswith("waitress-"):
            time.sleep(1.0)
        pull(server)

    monkeypatch.setattr(BaseWSGIServer, "pull_trigger", late_pull)
    (status, body), _ = serving(db, lambda url: request(url + "api/studies"))
    assert status == 200 and b'"g"' in body
    time.sleep(1.5)  # a thread the stop did not wait for has finished by now
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

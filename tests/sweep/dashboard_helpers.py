"""What the dashboard's tests share: a small study database and ``serve`` run for real."""

import _thread
import signal
import sqlite3
import threading
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from sweep.dashboard import serve


def study_db(folder: Path) -> Path:
    """A SQLite database holding one study, "g" (id 1): trial 1 complete, trial 2 running."""
    path = folder / "s.db"
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="g")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    study.ask()  # trial 2, running
    return path


def storage(db: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{db}")


def dump(db: Path) -> list[str]:
    """Everything in the database, as SQL."""
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request(url, method="GET", *, host=None, origin=None):
    """(status, body) of one HTTP request."""
    status, _, body = fetch(url, method, host=host, origin=origin)
    return status, body


def fetch(url, method="GET", *, host=None, origin=None):
    """(status, headers, body) of one HTTP request."""
    headers = {k: v for k, v in [("Host", host), ("Origin", origin)] if v is not None}
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with NO_PROXY.open(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read()


def serving(db, client, **kw):
    """``client(url)`` run against ``serve`` (in this, the main thread), then a Ctrl-C; returns
    its result and the interrupt, whose traceback keeps ``serve``'s frame (and server) alive."""
    result = {}

    def on_ready(url):
        def run():
            try:
                result["value"] = client(url)
            except BaseException as e:
                result["error"] = e
            finally:
                _thread.interrupt_main()

        threading.Thread(target=run, daemon=True).start()

    # interrupt_main does nothing while SIGINT is ignored, as it is in a run started in the
    # background (nohup, ``&``): serve would then wait forever.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as interrupt:
            serve(storage(db), host="127.0.0.1", port=0, on_ready=on_ready, **kw)
    finally:
        signal.signal(signal.SIGINT, previous)
    if "error" in result:
        raise result["error"]
    return result["value"], interrupt

"""sweep.dashboard_files: the dashboard serves a study's artifacts like a careful file server.

Artifacts are uploaded as sweep uploads them, then records and files are forged as another
client of the database, or a user of the folder, could: symlinks, FIFOs, HTML, records that
are not JSON. ``serve`` runs for real (``dashboard_helpers.serving``), and ``sweep dashboard``
in a subprocess where its terminal (stderr) matters.
"""

import json
import os
import socket
from pathlib import Path

import optuna
import pytest

from sweep.dashboard_files import NotServed, open_artifact
from sweep.trial.artifacts import open_store
from tests.sweep.dashboard_helpers import dump, fetch, request, serving, storage, study_db
from tests.sweep.helpers import start_cli, wait_for


@pytest.fixture
def db(tmp_path) -> Path:
    return study_db(tmp_path)


def with_artifacts(db: Path, folder: Path) -> tuple[str, str]:
    """Two checkpoint-like artifacts uploaded to trial 2 of ``db`` into the store at
    ``folder``, the second then deleted as sweep deletes a replaced checkpoint (optuna keeps
    its ``artifacts:<id>`` meta data on the trial); (kept id, deleted id)."""
    from optuna.artifacts import upload_artifact

    from sweep.trial.artifacts import open_store

    store, rdb = open_store(str(folder)), storage(db)
    ids = []
    for epoch in (1, 2):
        path = folder.parent / f"trial-1-epoch-{epoch}.npz"
        path.write_bytes(ARTIFACT * epoch)
        trial = rdb.get_trial(2)  # running: optuna uploads only to a running trial
        ids.append(upload_artifact(artifact_store=store, file_path=str(path),
                                   study_or_trial=trial, storage=rdb))  # fmt: skip
    store.remove(ids[1])
    return ids[0], ids[1]


ARTIFACT = bytes(range(256)) * 40  # not text, not one chunk of a small read


def test_serve_lists_and_serves_a_trials_artifacts_read_only(db, tmp_path, capfd):
    from sweep.trial.artifacts import open_store

    kept, deleted = with_artifacts(db, tmp_path / "artifacts")
    before = dump(db)

    def client(url):
        return (
            json.loads(request(url + "api/studies/1")[1]),
            request(url + f"artifacts/1/2/{kept}"),
            request(url + f"artifacts/1/2/{deleted}"),
            request(url + "api/artifacts/1/2", "POST"),
            request(url + f"api/artifacts/1/2/{kept}", "DELETE"),
        )

    store = open_store(str(tmp_path / "artifacts"), read_only=True)
    (detail, got, gone, upload, delete), _ = serving(db, client, artifact_store=store)
    listed = {a["artifact_id"]: a["filename"] for a in detail["trials"][1]["artifacts"]}
    assert listed == {kept: "trial-1-epoch-1.npz", deleted: "trial-1-epoch-2.npz"}
    assert got == (200, ARTIFACT)  # the stored bytes, through the dashboard's artifact route
    assert gone[0] == 404 and b"this artifact was deleted" in gone[1]
    assert "Traceback" not in capfd.readouterr().err  # (the dashboard's own 500 prints one)
    assert upload[0] == delete[0] == 405 and dump(db) == before
    assert (tmp_path / "artifacts" / kept).read_bytes() == ARTIFACT


def sweep_dashboard(db: Path, paths: list[str], *args: str) -> tuple[list, str]:
    """``sweep dashboard`` on a free port: the answers to GET ``paths`` and its stderr."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/"
    proc = start_cli("dashboard", "--storage", f"sqlite:///{db}", "--port", str(port), *args)
    try:
        wait_for(lambda: _up(base), timeout=60)
        answers = [request(base + path) for path in paths]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    return answers, err


@pytest.mark.slow
def test_sweep_dashboard_serves_the_store_beside_the_database_or_the_given_one(db, tmp_path):
    given, _ = with_artifacts(db, tmp_path / "artifacts")
    (tmp_path / "artifacts").rename(tmp_path / "given")
    beside, _ = with_artifacts(db, tmp_path / "artifacts")  # the default: beside s.db
    got = {}
    for args, artifact in [([], beside), (["--artifacts", str(tmp_path / "given")], given)]:
        got[artifact] = sweep_dashboard(db, [f"artifacts/1/2/{artifact}"], *args)[0][0]
    assert got == {beside: (200, ARTIFACT), given: (200, ARTIFACT)}


def _up(base: str) -> bool:
    try:
        return request(base + "api/studies")[0] == 200
    except OSError:  # not listening yet
        return False


def listed(db: Path, artifact_id: str, record: object = None, **meta: str) -> None:
    """Trial 2 names ``artifact_id`` as sweep names its files (or with the raw ``record``)."""
    if record is None:
        meta = {"artifact_id": artifact_id, "filename": "a.npz",
                "mimetype": "application/octet-stream", "encoding": None, **meta}  # fmt: skip
        record = json.dumps(meta)
    storage(db).set_trial_system_attr(2, f"artifacts:{artifact_id}", record)


SECRET = b"outside the artifact store"


def forged_id(n: int) -> str:
    """An id of the form optuna-dashboard's own route takes (hex and dashes), like a uuid4."""
    return f"00000000-0000-4000-8000-{n:012d}"


def test_a_symlink_fifo_or_folder_in_the_store_is_not_served(db, tmp_path, caplog):
    """The read-only dashboard served whatever a listed id's symlink pointed to, outside the
    store; now only a regular file directly in the folder is opened, never through a link."""
    kept, _ = with_artifacts(db, tmp_path / "artifacts")
    folder = tmp_path / "artifacts"
    forged = [forged_id(n) for n in range(4)]
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (folder / forged[0]).symlink_to(tmp_path / "secret.txt")
    (folder / forged[1]).symlink_to(folder / kept)  # a link inside the store is a link too
    os.mkfifo(folder / forged[2])  # opening it for reading would wait for a writer
    (folder / forged[3]).mkdir()
    for artifact_id in forged:
        listed(db, artifact_id)

    def client(url):
        return [request(url + f"artifacts/1/2/{a}") for a in [*forged, kept]]

    store = open_store(str(folder), read_only=True)
    answers, _ = serving(db, client, artifact_store=store)
    assert [a[0] for a in answers] == [404, 404, 404, 404, 200]
    assert not [a for a in answers[:-1] if SECRET in a[1] or ARTIFACT in a[1]]
    refused = [r.getMessage() for r in caplog.records if "not served" in r.getMessage()]
    assert len(refused) == len(forged) and all("trial 2" in line for line in refused)
    assert (tmp_path / "secret.txt").read_bytes() == SECRET


@pytest.mark.parametrize("artifact_id", ["sub/secret.txt", "../secret.txt", "ABSOLUTE",
                                         "x\x00y", ".", "..", "", ".x.tmp"])  # fmt: skip
def test_an_id_that_is_not_one_file_name_is_not_opened(tmp_path, artifact_id):
    """``sub`` is a symlink to a folder outside the store: O_NOFOLLOW covers only the last
    component, so an id of more than one component is refused before any open."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(SECRET)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    folder = tmp_path / "artifacts"
    folder.mkdir()
    (folder / "sub").symlink_to(tmp_path / "outside")
    (folder / ".x.tmp").write_bytes(SECRET)  # an upload's temporary file
    if artifact_id == "ABSOLUTE":
        artifact_id = str(tmp_path / "secret.txt")
    with pytest.raises(NotServed, match="not an artifact id"):
        open_artifact(open_store(str(folder), read_only=True), artifact_id)


def test_a_record_saying_html_is_served_as_an_attachment_that_no_browser_runs(db, tmp_path):
    """A record whose mimetype was text/html made the dashboard serve stored bytes as a page
    of its own origin; now every download has the same fixed headers."""
    folder = tmp_path / "artifacts"
    kept, _ = with_artifacts(db, folder)
    page, page_id = b"<script>fetch('/api/studies/1', {method: 'DELETE'})</script>", forged_id(1)
    (folder / page_id).write_bytes(page)
    listed(db, page_id, mimetype="text/html", encoding="gzip",
           filename='../x.html"\r\nSet-Cookie: a=b')  # fmt: skip

    def client(url):
        return [
            fetch(url + f"artifacts/1/2/{a}", m) for a in [page_id, kept] for m in ["GET", "HEAD"]
        ]

    store = open_store(str(folder), read_only=True)
    (get, head, get_kept, _), _ = serving(db, client, artifact_store=store)
    assert get[0] == head[0] == 200 and get[2] == page and head[2] == b""
    for _, headers, _ in [get, head, get_kept]:
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Disposition"].startswith("attachment; filename=")
        assert "sandbox" in headers["Content-Security-Policy"]
        assert "Content-Encoding" not in headers and "Content-Encodings" not in headers
    assert get[1]["Content-Disposition"] == 'attachment; filename="x.html___Set-Cookie__a_b"'
    assert get_kept[1]["Content-Disposition"] == 'attachment; filename="trial-1-epoch-1.npz"'


RECORDS = ["not json", "[1, 2]", 5, {"mimetype": "text/html"}]  # (a number, an object: not text)


def test_a_record_that_is_not_json_is_a_404_and_one_line(db, tmp_path):
    """optuna-dashboard answered such a record with a 500 and a traceback on the terminal, per
    request; now a 404 and one log line."""
    folder = tmp_path / "artifacts"
    kept = with_artifacts(db, folder)
    for n, record in enumerate(RECORDS):
        (folder / forged_id(n)).write_bytes(SECRET)
        listed(db, forged_id(n), record=record)
    files = [f"artifacts/1/2/{forged_id(n)}" for n in range(4)]
    answers, err = sweep_dashboard(db, [*files, "api/studies/1?after=0"])
    assert [a[0] for a in answers[:-1]] == [404] * len(RECORDS)
    assert not [a for a in answers if SECRET in a[1]]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "answered 404" in line]
    assert len(lines) == len(RECORDS), err
    assert all("not optuna's ArtifactMeta as JSON; answered 404" in line for line in lines)
    # The study's page lists trial 2's good artifacts and leaves the bad records out, one
    # line each (optuna-dashboard's own listing answered it with a 500 and a traceback).
    status, body = answers[-1]
    assert status == 200
    [trial] = [t for t in json.loads(body)["trials"] if t["trial_id"] == 2]
    assert {a["artifact_id"] for a in trial["artifacts"]} == set(kept)
    listed_out = [line for line in err.splitlines() if line.endswith("; not listed")]
    assert len(listed_out) == len(RECORDS), err


def test_a_studys_artifact_is_served_and_a_trials_only_under_its_own_study(db, tmp_path):
    """The evaluated model is the study's artifact (``/artifacts/<study>/<id>``); a trial's
    is served only under the study it belongs to."""
    from sweep.trial.artifacts import upload

    folder = tmp_path / "artifacts"
    kept, _ = with_artifacts(db, folder)
    (tmp_path / "model.npz").write_bytes(ARTIFACT)
    model = upload(open_store(str(folder)), storage(db), tmp_path / "model.npz", study_id=1)
    other = storage(db).create_new_study([optuna.study.StudyDirection.MAXIMIZE], "other")
    paths = [f"artifacts/1/{model}", f"artifacts/1/2/{kept}", f"artifacts/{other}/2/{kept}",
             f"artifacts/{other}/{model}", f"artifacts/9/2/{kept}", "artifacts/1/9/x"]  # fmt: skip

    def client(url):
        return [fetch(url + path) for path in paths]

    store = open_store(str(folder), read_only=True)
    answers, _ = serving(db, client, artifact_store=store)
    assert [a[0] for a in answers] == [200, 200, 404, 404, 404, 404]
    assert answers[0][2] == ARTIFACT and answers[0][1]["Content-Type"] == "application/octet-stream"
    assert answers[0][1]["Content-Disposition"] == 'attachment; filename="model.npz"'

"""Checkpoints on many hosts: PostgreSQL for the queue, an S3-compatible server for the files.

moto runs as a real S3 server on loopback (``ThreadedMotoServer``), reached over HTTP by the
`sweep` processes through boto3's own settings (``AWS_*`` variables, ``AWS_ENDPOINT_URL_S3``),
as a MinIO or AWS bucket would be. A `sweep run` worker is killed in the middle of epoch 6
(tests/sweep/stall, as in test_checkpoint.py), and a `sweep worker` started afterwards, as on
another host, resumes the trial from the bucket alone.
"""

import importlib
import os
import signal
import socket
import uuid

import pytest
from optuna.trial import TrialState

from sweep.queue.attrs import RESUME_FROM
from sweep.study.spec import load_spec
from tests.postgres import fresh_database
from tests.sweep.helpers import load, run_cli, start_cli, wait_for
from tests.sweep.test_checkpoint import (
    EPOCHS,
    STALL_AT,
    _assert_same_as_uninterrupted,
    _best,
    _checkpoint_epoch,
    _env,
    _reference,
    _stalled,
    _study,
)


def _need(module: str):
    """A dev-extra module: skipped without it on a developer's machine, a failure in CI."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason="pip install -e '.[dev]'")


boto3 = _need("boto3")
moto_server = _need("moto.server")

PREFIX = "studies/c"
#: boto3's settings for the sweep processes (and this one); the endpoint is added per server.
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3():
    """An S3 server on loopback; yields the environment that points boto3 at it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with pytest.MonkeyPatch.context() as mp:  # a developer's own AWS settings stay out
            for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
                mp.delenv(name, raising=False)
            mp.setenv("AWS_CONFIG_FILE", os.devnull)
            mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credentials: no 1 s probe
            yield {**AWS, "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}
    finally:
        server.stop()


def _client(env: dict[str, str]):
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def _bucket(env: dict[str, str]) -> str:
    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    _client(env).create_bucket(Bucket=name)
    return name


def _keys(env: dict[str, str], bucket: str) -> set[str]:
    listed = _client(env).list_objects_v2(Bucket=bucket)
    return {o["Key"] for o in listed.get("Contents", [])}


@pytest.mark.slow
def test_a_trial_killed_on_one_host_resumes_on_another_from_the_bucket(
    tmp_path, postgres_server, s3
):
    study = _study(tmp_path)
    reference = _reference(tmp_path, study)
    url = fresh_database(postgres_server)
    bucket = _bucket(s3)
    artifacts = f"s3://{bucket}/{PREFIX}"
    # A `sweep run` of two workers; the one training the grid's point stalls in epoch 6.
    proc = start_cli("run", str(study), "--storage", url, "--jobs", "2", "--artifacts",
                     artifacts, env=_env(tmp_path) | s3)  # fmt: skip
    pid = _stalled(tmp_path, proc)
    name = load_spec(study).name
    assert wait_for(lambda: _checkpoint_epoch(url, name) == STALL_AT - 1)
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode == 1, proc.stderr.read()
    [waiting] = [t for t in load(url, name).trials if t.state == TrialState.WAITING]
    given = waiting.system_attrs[RESUME_FROM]
    assert given["epoch"] == STALL_AT - 1
    # Epoch 5's state is in the bucket (and nowhere on this host's disk).
    assert f"{PREFIX}/{given['artifact_id']}" in _keys(s3, bucket)
    assert not (tmp_path / "artifacts").exists()
    # Another process, as on another host, that knows only the database and the bucket.
    out = run_cli("worker", "--study", name, "--storage", url, "--artifacts", artifacts,
                  env=_env(tmp_path, stall=False) | s3)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "cannot resume" not in out.stderr, out.stderr
    [done] = [t for t in load(url, name).trials if t.state == TrialState.COMPLETE]
    assert done.user_attrs["resumed_from_epoch"] == STALL_AT - 1
    assert done.user_attrs["resumed_from_trial"] == given["trial"]
    assert done.user_attrs["epochs_run"] == EPOCHS - STALL_AT + 1
    _assert_same_as_uninterrupted(done, reference)
    # Only the best model's weights are left, under the prefix.
    best = _best(url)
    assert best["trial"] == done.number and best["value"] == done.value
    assert _keys(s3, bucket) == {f"{PREFIX}/{best['artifact_id']}"}
    # A worker given a bucket that does not exist: one line, before it claims anything.
    out = run_cli("worker", "--study", name, "--storage", url, "--artifacts",
                  "s3://no-such-bucket/x", env=s3)  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"sweep: error: --artifacts s3://no-such-bucket/x (endpoint {s3['AWS_ENDPOINT_URL_S3']}): "
        "there is no bucket 'no-such-bucket'"
    ]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nobody listens there


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault", ["no bucket", "dead endpoint", "no credentials", "bad endpoint URL"]
)
def test_a_bad_bucket_is_one_line_when_the_launcher_starts(tmp_path, s3, fault):
    study = _study(tmp_path)
    db = tmp_path / "db.sqlite"
    bucket = _bucket(s3)
    env, artifacts = dict(s3), f"s3://{bucket}/{PREFIX}"
    if fault == "no bucket":
        artifacts, expected = "s3://no-such-bucket/x", "there is no bucket 'no-such-bucket'"
    elif fault == "dead endpoint":
        env["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{_closed_port()}"
        expected = "cannot connect to the endpoint"
    elif fault == "no credentials":
        env |= {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
        expected = "Unable to locate credentials"
    else:
        env["AWS_ENDPOINT_URL_S3"] = "not a url"
        expected = "Invalid endpoint: not a url"
    out = run_cli("run", str(study), "--storage", f"sqlite:///{db}", "--jobs", "2",
                  "--artifacts", artifacts, env=env)  # fmt: skip
    assert out.returncode == 1, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.startswith(f"sweep: error: --artifacts {artifacts}"), line
    assert line.endswith(expected), line
    assert not db.exists()  # checked before the study was made: nothing to clean up


def test_forged_pointers_read_and_delete_nothing_outside_sweeps_forms_in_a_bucket(
    tmp_path, s3, monkeypatch, caplog
):
    # Objects beside and under the study's prefix, in other prefixes and at the bucket's root;
    # every pointer another client could write names one of them (by its name, by ../ forms,
    # by a uuid4 that no trial names). Every S3 request the store makes is recorded. (A forged
    # ``artifacts:<uuid4>`` on the trial itself would count as sweep's: the module's Note.)
    import logging

    import optuna

    from mlp import MLP, TrainConfig
    from sweep.queue import attrs
    from sweep.queue.attrs import BEST_MODEL
    from sweep.queue.storage import open_storage
    from sweep.trial.artifacts import open_store
    from sweep.trial.checkpoint import Checkpoints
    from sweep.trial.cleanup import trial_ended
    from tests.sweep.test_checkpoint_cases import _data

    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    bucket, foreign = _bucket(s3), str(uuid.uuid4())
    victims = {"victim.txt", "studies/victim.txt", f"{PREFIX}/victim.txt",
               f"studies/other/{foreign}", f"{PREFIX}/{foreign}"}  # fmt: skip
    for key in victims:
        _client(s3).put_object(Bucket=bucket, Key=key, Body=key.encode())
    store = open_store(f"s3://{bucket}/{PREFIX}")
    requests = []
    store.store.client.meta.events.register(
        "before-call.s3.*",
        lambda model, params, **_: requests.append((model.name, params.get("Key"))),
    )
    forged = ["victim.txt", "../victim.txt", f"../other/{foreign}", "../../victim.txt", foreign]
    # The store itself takes plain names only: a key of another prefix is never formed.
    for artifact in forged[1:4]:
        with pytest.raises(ValueError, match="Invalid artifact_id"):
            store.open_reader(artifact)
        with pytest.raises(ValueError, match="Invalid artifact_id"):
            store.remove(artifact)
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    with caplog.at_level(logging.WARNING):
        for artifact in forged:  # as resume_from, then as every other pointer
            trial = study.ask()
            forged_attrs = {
                attrs.RESUMED_FROM: {"artifact_id": artifact, "epoch": 1, "trial": 0},
                attrs.CHECKPOINT: {"artifact_id": artifact, "epoch": 1},
            }
            if artifact != foreign:
                forged_attrs[f"artifacts:{artifact}"] = {}
            for key, value in forged_attrs.items():
                storage.set_trial_system_attr(trial._trial_id, key, value)
            saved = Checkpoints(store, trial, fits="")
            config = TrainConfig(epochs=2, batch_size=64, learning_rate=0.1)
            assert saved.resume(MLP(16, 8, seed=1), config, _data()) is None
            saved.close()
            trial.report(50.0, 1)
            study.tell(trial, 50.0)
            trial_ended(store, study, storage.get_trial(trial._trial_id))
    assert requests == []  # nothing read, nothing deleted
    listed = _client(s3).list_objects_v2(Bucket=bucket)["Contents"]
    assert {o["Key"] for o in listed} == victims
    for key in victims:
        assert _client(s3).get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()
    # One line per forged record: resume_from (at the resume), the name and checkpoint (at the
    # trial's end); none made a best model.
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("sweep")]
    assert len(messages) == 3 * len(forged) - 1, messages
    assert all("left as" in m or "malformed" in m for m in messages), messages
    assert BEST_MODEL not in storage.get_study_system_attrs(study._study_id)

"""Training state saved after an epoch and resumed exactly (mlp.checkpoint); trained models
saved and loaded (MLP.save/load); both read as untrusted files."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from mlp import MLP, CheckpointError, TrainConfig, TrainState, fit, load_state, save_state
from mlp.checkpoint import STATE_JSON_BYTES

FUZZ = settings(max_examples=300, derandomize=True, database=None, deadline=timedelta(seconds=5))


def _shuffled(**changes) -> TrainConfig:
    """Every piece of state that crosses epochs in use: shuffling and dropout draw from the
    generator, momentum keeps buffers, the schedule depends on the epoch."""
    base = TrainConfig(
        epochs=10, shuffle=True, dropout=0.2, momentum=0.9, nesterov=True, weight_decay=1e-3,
        schedule="step", step_size=3, gamma=0.5, warmup_epochs=2, seed=7, full_train_eval=False,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def _metrics(history, epochs):
    """Every field but the wall time, for the given 1-based epochs."""
    return [dataclasses.replace(history.epochs[e - 1], seconds=0.0) for e in epochs]


def _states(model, data, config):
    states = {}
    history = fit(model, data, config, on_state=lambda s: states.__setitem__(s.epoch, s))
    return history, states


# --- Resuming --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "schedule", "nesterov"),
    [("float64", "step", True), ("float64", "cosine", False), ("float32", "step", False),
     ("float32", "cosine", True)],
)  # fmt: skip
def test_a_run_resumed_from_a_file_equals_the_run_never_stopped(
    tiny, tmp_path, dtype, schedule, nesterov
):
    config = _shuffled(schedule=schedule, nesterov=nesterov)
    # float32 sums depend on how BLAS splits them: the same thread count in both runs.
    with threadpool_limits(limits=1):
        whole = MLP(32, 24, dtype=dtype, seed=3)
        history, states = _states(whole, tiny, config)
        save_state(states[5], tmp_path / "state.npz")
        resumed = MLP(32, 24, dtype=dtype, seed=99)  # other weights: all must come from the file
        run = []
        state = load_state(tmp_path / "state.npz", like=resumed)
        later = fit(resumed, tiny, config, resume=state, on_epoch=lambda m: run.append(m.epoch))
    assert run == [6, 7, 8, 9, 10]
    for p, q in zip(whole.params, resumed.params, strict=True):
        assert np.array_equal(p, q)
    assert _metrics(later, range(6, 11)) == _metrics(history, range(6, 11))
    assert later.epochs[:5] == history.epochs[:5]  # the saved epochs, their seconds included
    assert not np.array_equal(states[5].params[0], whole.params[0]), "the run went on after 5"


def test_a_resume_without_momentum_or_shuffling_continues_too(tiny):
    config = TrainConfig(epochs=4)  # the notebook's protocol: nothing random, no buffers
    whole = MLP(16, 16, seed=1, dtype="float64")
    history, states = _states(whole, tiny, config)
    assert states[2].velocity is None
    resumed = MLP(16, 16, seed=2, dtype="float64")
    later = fit(resumed, tiny, config, resume=states[2])
    assert np.array_equal(whole.params[0], resumed.params[0])
    assert _metrics(later, range(1, 5)) == _metrics(history, range(1, 5))


def test_patience_counts_on_across_a_resume(tiny):
    config = TrainConfig(epochs=40, patience=3, shuffle=True, seed=1, full_train_eval=False)
    history, states = _states(MLP(16, 16, dtype="float64"), tiny, config)
    stop = len(history.epochs)
    assert history.stopped_early and stop < 40
    # Resume inside the patience window: epochs without improvement already counted.
    k = max(e for e, s in states.items() if 0 < s.since_best < config.patience)
    run = []
    fresh = MLP(16, 16, dtype="float64")
    later = fit(fresh, tiny, config, resume=states[k], on_epoch=lambda m: run.append(m.epoch))
    assert run == list(range(k + 1, stop + 1)) and later.stopped_early
    # The state written as patience ran out resumes to nothing more.
    run.clear()
    last = fit(fresh, tiny, config, resume=states[stop], on_epoch=lambda m: run.append(1))
    assert run == [] and last.stopped_early and last.epochs == history.epochs


def test_on_state_gets_copies_after_each_epoch_the_callback_let_through(tiny):
    states = []
    model = MLP(16, 16)
    fit(model, tiny, _shuffled(epochs=3), on_state=states.append, on_epoch=lambda m: m.epoch == 3)
    assert [s.epoch for s in states] == [1, 2]  # not after the epoch that stopped training
    assert not np.array_equal(states[0].params[0], states[1].params[0])
    assert not np.array_equal(states[1].params[0], model.params[0])  # copies, not the arrays
    assert states[1].rng != states[0].rng and len(states[1].history) == 2


def test_resume_refuses_a_state_from_another_run(tiny):
    _, states = _states(MLP(16, 16), tiny, _shuffled(epochs=2))
    with pytest.raises(ValueError, match="weights into"):
        fit(MLP(16, 8), tiny, _shuffled(epochs=2), resume=states[1])
    with pytest.raises(ValueError, match="momentum"):
        fit(MLP(16, 16), tiny, _shuffled(epochs=2, momentum=0.0, nesterov=False), resume=states[1])
    with pytest.raises(ValueError, match="in a run of 1"):
        fit(MLP(16, 16), tiny, _shuffled(epochs=1), resume=states[2])


# --- The file --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    """A checkpoint after 2 epochs of a small float64 run with momentum, and its model."""
    _, states = _states(MLP(8, 8, dtype="float64"), tiny, _shuffled(epochs=2))
    path = tmp_path_factory.mktemp("saved") / "state.npz"
    save_state(states[2], path)
    return path, states[2], MLP(8, 8, dtype="float64")


def _same_state(a: TrainState, b: TrainState) -> bool:
    arrays = [*a.params, *(a.velocity or [])], [*b.params, *(b.velocity or [])]
    return (
        len(arrays[0]) == len(arrays[1])
        and all(np.array_equal(p, q) for p, q in zip(*arrays, strict=True))
        and (a.epoch, a.rng, a.best, a.since_best, a.history, a.fits)
        == (b.epoch, b.rng, b.best, b.since_best, b.history, b.fits)
    )


def test_what_a_state_was_trained_for_is_kept_and_checked(saved, tmp_path):
    path, state, like = saved
    fits = dataclasses.replace(state, fits="sweep-fits/1:" + "ab" * 32)
    save_state(fits, tmp_path / "f.npz")
    assert load_state(tmp_path / "f.npz", like=like).fits == fits.fits
    with pytest.raises(ValueError, match="fits must be a string of at most 256"):
        save_state(dataclasses.replace(state, fits="x" * 257), tmp_path / "long.npz")
    # A state of format 1 (before fits) reads as fitting nothing a caller names.
    old = _members(path)
    doc = json.loads(old["state"].tobytes())
    del doc["fits"]
    doc["format"] = "mlp-train-state/1"
    np.savez(tmp_path / "old.npz", **old | {"state": np.frombuffer(
        json.dumps(doc).encode().ljust(STATE_JSON_BYTES), np.uint8)})  # fmt: skip
    assert load_state(tmp_path / "old.npz", like=like).fits == ""


def test_save_and_load_round_trip_every_field(saved, tmp_path):
    path, state, like = saved
    assert _same_state(load_state(path, like=like), state)
    without = dataclasses.replace(state, velocity=None, epoch=0, history=[], since_best=0)
    save_state(without, tmp_path / "s.npz")
    assert _same_state(load_state(tmp_path / "s.npz", like=like), without)
    assert os.listdir(tmp_path) == ["s.npz"]


def test_a_checkpoint_handed_to_mlp_load_is_named_for_what_it_is(saved, tmp_path):
    """The dashboard downloads a checkpoint under its artifact id, without a sidecar (#28)."""
    path, state, like = saved
    download = tmp_path / "0f1e2d3c-aaaa-4bbb-8ccc-123456789abc"
    download.write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match=r"got a training checkpoint, which holds no arch"):
        MLP.load(download)
    assert _same_state(load_state(download, like=like), state)  # what the line says works
    # A model's file without its sidecar is still just that: no sidecar.
    like.save(tmp_path / "model.npz")
    (tmp_path / "model.json").unlink()
    with pytest.raises(CheckpointError, match=r"model\.json: expected a model's JSON sidecar"):
        MLP.load(tmp_path / "model.npz")


def test_a_failed_save_leaves_the_old_file_and_no_temporary(saved, tmp_path):
    _, state, _ = saved
    target = tmp_path / "s.npz"
    save_state(state, target)
    before = target.read_bytes()
    bad = dataclasses.replace(state, params=[np.array([object()]), *state.params[1:]])
    with pytest.raises(ValueError, match="pickle"):
        save_state(bad, target)  # np.savez refuses the object array midway through the file
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["s.npz"]


_WRITER = """
import sys, dataclasses, numpy as np
from mlp import MLP, TrainState, save_state
model = MLP(64, 64)
for i in range(10**9):
    params = [np.full_like(p, i % 7) for p in model.params]
    save_state(TrainState(0, params, None, np.random.default_rng(i).bit_generator.state,
                          -1.0, 0, []), sys.argv[1])
    if i == 0:
        print("ready", flush=True)
"""


def test_a_reader_sees_whole_checkpoints_while_a_writer_is_killed(tmp_path):
    # A real process rewrites one file as fast as it can; every read finds a whole file, and a
    # SIGKILL mid-write leaves the last whole one (plus, at most, its temporary file).
    target = tmp_path / "s.npz"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline() == "ready\n"
        like = MLP(64, 64)
        values = set()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            state = load_state(target, like=like)
            values.add(float(state.params[0][0, 0]))
            assert all((p == p.flat[0]).all() for p in state.params)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert len(values) > 1, "the writer must have replaced the file while it was read"
    load_state(target, like=like)
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".tmp")]) <= 1


# --- Refusals --------------------------------------------------------------------------------


def _members(path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _with_json(members, **changes) -> dict[str, np.ndarray]:
    doc = json.loads(members["state"].tobytes())
    doc.update(changes)
    text = json.dumps(doc).encode().ljust(STATE_JSON_BYTES)
    return members | {"state": np.frombuffer(text, np.uint8)}


def _seconds(history: np.ndarray, value: float) -> np.ndarray:
    """``history`` with its last epoch's wall time (a study's measured objective) forged."""
    forged = history.copy()
    forged[-1, 5] = value
    return forged


def _variants(path, like):
    """(name, bytes or members, the words the message must hold) for each way to be wrong."""
    raw = path.read_bytes()
    m = _members(path)
    rng = json.loads(m["state"].tobytes())["rng"]
    return [
        ("not a zip", b"hello\n", "no zip end record"),
        ("empty", b"", "no zip end record"),
        ("truncated", raw[: len(raw) // 2], "no zip end record"),
        ("no velocity", {k: v for k, v in m.items() if not k.startswith("v_")}, "got no v_w1"),
        ("no json", {k: v for k, v in m.items() if k != "state"}, "got no state"),
        ("other shape", m | {"w2": np.zeros((8, 9))}, "w2 of float64 (8, 9)"),
        ("other dtype", m | {"b1": m["b1"].astype(np.float32)}, "b1 of float32"),
        ("pickled", m | {"w1": np.array([None] * 784 * 8).reshape(784, 8)}, "w1 of object"),
        ("json not utf-8", m | {"state": np.full(STATE_JSON_BYTES, 0xFF, np.uint8)}, "not JSON"),
        ("json a list", m | {"state": np.frombuffer(b"[]".ljust(4096), np.uint8)}, "object"),
        ("negative epoch", _with_json(m, epoch=-1), "got epoch -1"),
        ("epoch a string", _with_json(m, epoch="2"), 'got epoch "2"'),
        ("epoch a bool", _with_json(m, epoch=True), "got epoch true"),
        ("history too short", _with_json(m, epoch=3, since_best=0), "history of float64 (2, 6)"),
        ("history numbering", m | {"history": m["history"][::-1].copy()}, "1, 2, 3"),
        ("negative seconds", m | {"history": _seconds(m["history"], -1e9)}, "epoch seconds"),
        ("nan seconds", m | {"history": _seconds(m["history"], np.nan)}, "epoch seconds"),
        ("inf seconds", m | {"history": _seconds(m["history"], np.inf)}, "epoch seconds"),
        ("since_best", _with_json(m, since_best=3), "got since_best 3"),
        ("best", _with_json(m, best=2.5), "got best 2.5"),
        ("velocity flag", _with_json(m, velocity=1), "got velocity 1"),
        ("extra key", _with_json(m, extra=1), "not mlp-train-state/2"),
        ("fits a number", _with_json(m, fits=7), "got fits 7, not a string"),
        ("fits too long", _with_json(m, fits="x" * 300), "not a string of at most 256"),
        ("format 1 with fits", _with_json(m, format="mlp-train-state/1"), "not mlp-train-state/2"),
        ("other format", _with_json(m, format="x"), "not mlp-train-state/2"),
        ("mt19937", _with_json(m, rng=rng | {"bit_generator": "MT19937"}), "not a PCG64"),
        ("rng inc", _with_json(m, rng=rng | {"state": {"state": 1, "inc": -1}}), "not a PCG64"),
        ("rng bool", _with_json(m, rng=rng | {"has_uint32": True}), "not a PCG64"),
    ]


def test_each_way_to_be_wrong_is_one_line_naming_the_file(saved, tmp_path):
    path, _, like = saved
    for name, content, words in _variants(path, like):
        bad = tmp_path / f"{name.replace(' ', '-')}.npz"
        if isinstance(content, bytes):
            bad.write_bytes(content)
        else:
            np.savez(bad, **content)  # allow_pickle: the "pickled" case writes an object array
        with pytest.raises(CheckpointError) as info:
            load_state(bad, like=like)
        message = str(info.value)
        assert message.startswith(f"{bad}: expected a training checkpoint; "), name
        assert words in message and "\n" not in message, (name, message)


def test_the_json_may_not_hold_nan(saved, tmp_path):
    path, _, like = saved
    text = json.dumps(json.loads(_members(path)["state"].tobytes()) | {"best": float("nan")})
    np.savez(tmp_path / "n.npz", **_members(path) | {"state": np.frombuffer(
        text.encode().ljust(STATE_JSON_BYTES), np.uint8)})  # fmt: skip
    with pytest.raises(CheckpointError, match="not JSON"):
        load_state(tmp_path / "n.npz", like=like)


def test_the_model_it_is_read_for_bounds_it(saved, tmp_path):
    path, _, like = saved
    with pytest.raises(CheckpointError, match="w1 of float64 \\(784, 8\\), not float32"):
        load_state(path, like=MLP(8, 8))
    big = MLP(512, 64, dtype="float64")  # 3.3 MB of weights, as many of momentum
    save_state(TrainState(0, big.params, big.params, {}, -1.0, 0, []), tmp_path / "big.npz")
    with pytest.raises(CheckpointError, match=r"got a file of [\d,]+ bytes, more than 1,"):
        load_state(tmp_path / "big.npz", like=MLP(1, 1, dtype="float64"))  # over 3× + 1 MiB
    with pytest.raises(CheckpointError, match="got no such file"):
        load_state(tmp_path / "absent.npz", like=like)
    with pytest.raises(CheckpointError, match="got a folder"):
        load_state(tmp_path, like=like)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(CheckpointError, match="got a FIFO"):
        load_state(tmp_path / "fifo", like=like)


@FUZZ
@given(data=st.data())
def test_a_damaged_checkpoint_is_refused_or_read_whole(saved, tmp_path_factory, data):
    path, state, like = saved
    raw = bytearray(path.read_bytes())
    if data.draw(st.booleans(), "truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), "length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), "flips")):
            i = data.draw(st.integers(0, len(raw) - 1), "offset")
            raw[i] ^= data.draw(st.integers(1, 255), "mask")
    bad = tmp_path_factory.mktemp("fuzz") / "bad.npz"
    bad.write_bytes(raw)
    try:
        got = load_state(bad, like=like)
    except CheckpointError as e:
        assert str(e).startswith(f"{bad}: ") and "\n" not in str(e)
    else:
        # A flip zipfile does not read (a timestamp, a version field) leaves the data whole.
        assert _same_state(got, state)


# --- Trained models --------------------------------------------------------------------------


def test_a_saved_model_loads_to_the_same_predictions(tiny, mnist, tmp_path):
    model = MLP(32, 16, activation="tanh", seed=2)
    fit(model, tiny, TrainConfig(epochs=2))
    meta = {"train": dataclasses.asdict(TrainConfig(epochs=2)), "valid_accuracy": 0.9}
    sidecar = model.save(tmp_path / "best.npz", meta=meta)
    assert sidecar == tmp_path / "best.json"
    doc = json.loads(sidecar.read_text())
    assert doc["sizes"] == [784, 32, 16, 10] and doc["meta"] == meta
    assert (doc["activation"], doc["dtype"]) == ("tanh", "float32")
    loaded = MLP.load(tmp_path / "best.npz")
    x, y = mnist.valid
    assert np.array_equal(loaded.predict(x), model.predict(x))
    assert loaded.evaluate(x, y) == model.evaluate(x, y)
    assert loaded.activation == "tanh" and loaded.dtype == np.float32
    assert sorted(os.listdir(tmp_path)) == ["best.json", "best.npz"]


def test_a_model_file_that_does_not_match_its_sidecar_is_refused(tmp_path):
    MLP(8, 8, seed=1).save(tmp_path / "a.npz", meta=None)
    MLP(8, 8, seed=2).save(tmp_path / "b.npz")
    MLP(8, 4).save(tmp_path / "c.npz")
    MLP(8, 8, dtype="float64").save(tmp_path / "d.npz")
    sidecar = json.loads((tmp_path / "a.json").read_text())
    sha = {n: json.loads((tmp_path / f"{n}.json").read_text())["sha256"] for n in "abcd"}

    def refused(words, weights="a", **changes):
        # The weights of save `weights`, with their digest unless `changes` says otherwise.
        (tmp_path / "x.json").write_text(json.dumps(sidecar | {"sha256": sha[weights]} | changes))
        (tmp_path / "x.npz").write_bytes((tmp_path / f"{weights}.npz").read_bytes())
        with pytest.raises(CheckpointError, match=words) as info:
            MLP.load(tmp_path / "x.npz")
        assert str(info.value).startswith(str(tmp_path / "x.")) and "\n" not in str(info.value)

    refused("SHA-256", weights="b", sha256=sha["a"])  # same shapes, other weights
    refused("w2 of float32 \\(8, 4\\), not float32 \\(8, 8\\)", weights="c")
    refused("w1 of float64 \\(784, 8\\), not float32", weights="d")
    refused("fewer than", dtype="float64")
    refused("fewer than", sizes=[784, 10**6, 10**6, 10])  # refused before 4 TB are allocated
    refused("not \\[784, h1, …, hd, 10\\]", sizes=[784, 8, 8])
    refused("activation", activation="swish")
    refused("format", format="other")
    refused("no sha256", sha256=None)
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"x\.json: .*not JSON"):
        MLP.load(tmp_path / "x.npz")
    with pytest.raises(CheckpointError, match=r"y\.json: .*no such file"):
        MLP.load(tmp_path / "y.npz")
    (tmp_path / "a.npz").unlink()
    with pytest.raises(CheckpointError, match=r"a\.npz: .*no such file"):
        MLP.load(tmp_path / "a.npz")


def test_saving_refuses_what_it_could_not_read_back(tmp_path):
    with pytest.raises(ValueError, match=r"cannot end in \.json"):
        MLP(4, 4).save(tmp_path / "m.json")
    with pytest.raises(ValueError, match="Out of range float values"):
        MLP(4, 4).save(tmp_path / "m.npz", meta={"loss": float("nan")})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("saved", "into"), [("float64", "float32"), ("float32", "float64")])
def test_a_state_of_another_dtype_is_refused_and_the_model_left_as_it_was(tiny, saved, into):
    """The same shapes in another dtype would be cast in silently: a float64 run going on in
    float32 (or back) is not the run the checkpoint was written by."""
    config = TrainConfig(epochs=2)
    _, states = _states(MLP(16, 16, seed=1, dtype=saved), tiny, config)
    other = MLP(16, 16, seed=2, dtype=into)
    before = [p.copy() for p in other.params]
    with pytest.raises(ValueError, match=f"cannot resume {saved} .* into {into}"):
        fit(other, tiny, config, resume=states[1])
    assert all(np.array_equal(p, q) for p, q in zip(other.params, before, strict=True))

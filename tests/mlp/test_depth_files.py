"""Files of any depth (#25): trained models and training states written and read back, the files
of the two-layer code still read, and a sidecar or a state of another shape refused in one line.

tests/mlp/data holds files written by the two-layer code (commit 20cfd44) with a tiny
784-3-2-10 network: depth2-model.npz and .json by ``MLP.save`` (biases b_k = (1, 2, …)/(10k)),
depth2-state.npz by ``save_state`` after two epochs of ``fit`` (momentum, shuffled) on 500
examples.
"""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlp import MLP, CheckpointError, TrainConfig, fit, load_state, parameter_count, save_state

DATA = Path(__file__).parent / "data"


def _digest(arrays) -> str:
    return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()


# --- Files of the two-layer code -------------------------------------------------------------


def test_a_model_saved_by_the_two_layer_code_loads(tmp_path):
    model = MLP.load(DATA / "depth2-model.npz")
    assert model.sizes == (784, 3, 2, 10) and model.hidden == (3, 2)
    assert (model.activation, model.dtype) == ("relu", np.float32)
    expected = MLP(3, 2, seed=1)  # the weights it was saved with: drawn in the same order
    for k, b in enumerate(expected.params[1::2], 1):
        b[:] = np.arange(1, b.size + 1) / (10 * k)
    for p, q in zip(model.params, expected.params, strict=True):
        assert np.array_equal(p, q)
    # What the code writes today is that file's form: the same members and sidecar fields.
    expected.save(tmp_path / "m.npz", meta={"written by": "MLP.save before #25 (commit 20cfd44)"})
    old, new = (
        json.loads(p.read_text()) for p in (DATA / "depth2-model.json", tmp_path / "m.json")
    )
    assert {k: v for k, v in new.items() if k not in ("sha256", "weights")} == {
        k: v for k, v in old.items() if k not in ("sha256", "weights")
    }
    with np.load(DATA / "depth2-model.npz") as a, np.load(tmp_path / "m.npz") as b:
        assert a.files == b.files == ["w1", "b1", "w2", "b2", "w3", "b3"]


def test_a_training_state_saved_by_the_two_layer_code_loads_and_resumes(tiny, tmp_path):
    like = MLP(3, 2)
    state = load_state(DATA / "depth2-state.npz", like=like)
    assert state.epoch == 2 and [m.epoch for m in state.history] == [1, 2]
    assert [m.valid_accuracy for m in state.history] == [0.1071, 0.1178]
    assert state.fits == "written by mlp.checkpoint.save_state before #25 (commit 20cfd44)"
    assert _digest(state.params) == (
        "9a14ae634f4596be301ad492c8f71efcf3ef76937a21f761ee8bf3b9e7e67052"
    )
    assert _digest(state.velocity) == (
        "3924d93af448c86cf1eff8f9f050100e47516bc6f8e54fbed006a08398c5674e"
    )
    config = TrainConfig(epochs=3, momentum=0.9, shuffle=True, seed=2)
    history = fit(like, tiny.head(500), config, resume=state)
    assert [m.epoch for m in history.epochs] == [1, 2, 3]
    save_state(state, tmp_path / "again.npz")  # today's writer: the same members
    with np.load(DATA / "depth2-state.npz") as a, np.load(tmp_path / "again.npz") as b:
        assert a.files == b.files


# --- Any depth -------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [(5,), (5, 4, 3), (5, 4, 3, 2)])
def test_a_model_of_any_depth_saves_and_loads(tmp_path, hidden):
    model = MLP(*hidden, activation="sigmoid", dtype="float64", seed=4)
    sidecar = model.save(tmp_path / "m.npz")
    assert json.loads(sidecar.read_text())["sizes"] == [784, *hidden, 10]
    loaded = MLP.load(tmp_path / "m.npz")
    assert loaded.sizes == model.sizes and loaded.activation == "sigmoid"
    for p, q in zip(loaded.params, model.params, strict=True):
        assert np.array_equal(p, q) and p.dtype == np.float64


@pytest.mark.parametrize("hidden", [(6,), (6, 5, 4), (6, 5, 4, 3)])
def test_a_run_of_any_depth_resumed_from_a_file_equals_the_run_never_stopped(
    tiny, tmp_path, hidden
):
    data = tiny.head(500)
    config = TrainConfig(epochs=3, momentum=0.9, nesterov=True, dropout=0.2, shuffle=True, seed=7)
    whole = MLP(*hidden, dtype="float64", seed=1)
    states = {}
    history = fit(whole, data, config, on_state=lambda s: states.__setitem__(s.epoch, s))
    save_state(states[1], tmp_path / "s.npz")
    resumed = MLP(*hidden, dtype="float64", seed=2)
    later = fit(resumed, data, config, resume=load_state(tmp_path / "s.npz", like=resumed))
    for p, q in zip(whole.params, resumed.params, strict=True):
        assert np.array_equal(p, q)
    same = [dataclasses.replace(m, seconds=0) for m in later.epochs[1:]]
    assert same == [dataclasses.replace(m, seconds=0) for m in history.epochs[1:]]


# --- Refusals --------------------------------------------------------------------------------


def _forged(tmp_path, weights: str, **changes) -> Path:
    """``weights``' model file beside its sidecar with ``changes``, the digest made to match
    (a forger can)."""
    shutil.copy(tmp_path / f"{weights}.npz", tmp_path / "x.npz")
    doc = json.loads((tmp_path / f"{weights}.json").read_text()) | changes
    doc["sha256"] = hashlib.sha256((tmp_path / "x.npz").read_bytes()).hexdigest()
    (tmp_path / "x.json").write_text(json.dumps(doc))
    return tmp_path / "x.npz"


def _refused(path: Path, words: str) -> str:
    with pytest.raises(CheckpointError, match=words) as info:
        MLP.load(path)
    message = str(info.value)
    assert message.startswith(str(path.with_suffix(""))) and "\n" not in message
    return message


@pytest.mark.parametrize(
    "sizes",
    [[784, 3, 2, 2, 2, 2, 10], [784, 3, 0, 10], [784, 10], [784, 3, -2, 10], [784, 3, 2, 9],
     [785, 3, 2, 10], [784, 3, 2.0, 10], [784, 3, True, 10]],
    ids=["5 hidden", "0 wide", "no hidden", "negative", "9 classes", "785 inputs", "float",
         "bool"],
)  # fmt: skip
def test_a_sidecar_with_sizes_other_than_1_to_4_widths_is_refused_in_one_line(tmp_path, sizes):
    MLP(3, 2).save(tmp_path / "a.npz")
    _refused(
        _forged(tmp_path, "a", sizes=sizes),
        r"x\.json: expected a model's JSON sidecar; got sizes .*, not \[784, h1, …, hd, 10\] "
        r"with 1 to 4 hidden sizes, each >= 1$",
    )


def test_the_bytes_of_every_layer_are_counted_before_a_model_is_built(tmp_path):
    # Three widths of which the third claims 52 MB of weights, beside a file of 11 kB: refused
    # before anything of that size is allocated (counting two widths would let it through).
    MLP(3, 2).save(tmp_path / "a.npz")
    need = parameter_count(3, 2, 10**6) * 4
    _refused(_forged(tmp_path, "a", sizes=[784, 3, 2, 10**6, 10]), f"fewer than the {need:,} of")


def test_the_weights_of_a_deeper_network_do_not_pass_as_a_shallower_one(tmp_path):
    # 784-3-2-10-10's first three layers have 784-3-2-10's shapes; its fourth must not be
    # dropped without a word.
    MLP(3, 2, 10).save(tmp_path / "deep.npz")
    _refused(_forged(tmp_path, "deep", sizes=[784, 3, 2, 10]), r"got 2 member\(s\) not "
             r'expected: \["b4", "w4"\]$')  # fmt: skip
    MLP(3, 2).save(tmp_path / "shallow.npz")
    _refused(_forged(tmp_path, "shallow", sizes=[784, 3, 2, 10, 10]), "got no w4$")


def test_a_training_state_of_another_depth_is_refused(tiny, tmp_path):
    states = {}
    config = TrainConfig(epochs=1, momentum=0.9)
    fit(MLP(3, 2, 10), tiny.head(200), config, on_state=lambda s: states.__setitem__(1, s))
    save_state(states[1], tmp_path / "deep.npz")
    with pytest.raises(CheckpointError, match=r'deep\.npz: .*got 4 member\(s\) not expected: '
                       r'\["b4", "v_b4", "v_w4", "w4"\]$'):  # fmt: skip
        load_state(tmp_path / "deep.npz", like=MLP(3, 2))
    with pytest.raises(CheckpointError, match=r"got w3 of float32 \(2, 10\), not float32 \(2, 5\)"):
        load_state(tmp_path / "deep.npz", like=MLP(3, 2, 5))
    with pytest.raises(CheckpointError, match=r"got no w4"):
        load_state(DATA / "depth2-state.npz", like=MLP(3, 2, 10))


_SIZE = st.one_of(
    st.integers(-2, 12), st.sampled_from([784, 10, 2**31, 2**63, 10**30]), st.booleans(),
    st.floats(allow_nan=False), st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=2),
)  # fmt: skip


@settings(max_examples=150, derandomize=True, database=None, deadline=None)
@given(sizes=st.one_of(
    st.lists(_SIZE, max_size=8),
    st.lists(st.integers(1, 12), min_size=1, max_size=6).map(lambda h: [784, *h, 10]),
    st.lists(_SIZE, max_size=6).map(lambda h: [784, *h, 10]),
))  # fmt: skip
def test_any_sizes_in_a_sidecar_load_the_model_or_are_one_line(tmp_path_factory, sizes):
    tmp_path = tmp_path_factory.mktemp("sizes")
    MLP(3, 2).save(tmp_path / "a.npz")
    path = _forged(tmp_path, "a", sizes=sizes)
    try:
        model = MLP.load(path)
    except CheckpointError as e:
        assert str(e).startswith(str(tmp_path / "x.")) and "\n" not in str(e)
    else:
        assert list(model.sizes) == sizes == [784, 3, 2, 10]

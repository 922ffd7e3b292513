"""Depth 2, the notebook's, trains to the same numbers as before any depth existed (#25), bit
for bit: pinned from runs of the two-layer code (commit 20cfd44), and checked against a frozen
copy of that code on whatever machine runs the tests.

Float results depend on the machine's arithmetic, not just on the code: OpenBLAS picks its
kernels by CPU (its Haswell and SkylakeX kernels sum a product in different orders) and numpy
its own loops (tanh in float64 with and without AVX-512 differs in the last bit). So the pins
are kept per machine kind, named by both choices and both versions (the lock's,
.ci/constraints.txt); on a kind not pinned the frozen copy still proves the depth-2 model
unchanged. The pins were taken on an AMD EPYC with AVX-512, forcing the other kinds with
OPENBLAS_CORETYPE and NPY_DISABLE_CPU_FEATURES.
"""

import hashlib
import itertools

import numpy as np
import pytest
import threadpoolctl

from mlp import MLP, ModelConfig, TrainConfig, fit, parameter_count
from mlp.functions import ACTIVATIONS, INITIALISERS, cross_entropy, cross_entropy_grad
from mlp.gradcheck import gradcheck
from mlp.model import architecture, described, not_finite, param_names
from tests.mlp.numeric import central_differences, relative_error

#: Every code path of a training step: shuffled batches, dropout masks, Nesterov momentum, weight
#: decay; the evaluation passes too (full_train_eval, the default).
_CONFIG = TrainConfig(epochs=2, momentum=0.9, nesterov=True, dropout=0.2, shuffle=True,
                      weight_decay=1e-4, seed=5)  # fmt: skip
_CASES = [("float32", "relu"), ("float64", "tanh")]


def _machine() -> str:
    """The arithmetic's kind: OpenBLAS's version and kernel family, numpy's version and the SIMD
    extensions it uses."""
    blas = [
        f"{i['internal_api']} {i.get('version')} {i.get('architecture')}"
        for i in threadpoolctl.threadpool_info()
        if i["user_api"] == "blas"
    ]
    simd = np.show_config(mode="dicts")["SIMD Extensions"].get("found", [])
    return f"{'+'.join(blas)}; numpy {np.__version__} {','.join(simd)}"


def _run(model, data) -> tuple:
    """Two epochs of _CONFIG on ``data`` from ``model``'s weights (one BLAS thread: how BLAS
    splits a sum changes float results): each epoch's losses as float.hex and accuracies, and
    the SHA-256 of the final weights' bytes."""
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        history = fit(model, data, _CONFIG)
    epochs = tuple(
        (m.train_loss.hex(), m.train_accuracy, m.valid_loss.hex(), m.valid_accuracy)
        for m in history.epochs
    )
    digest = hashlib.sha256(b"".join(p.tobytes() for p in model.params)).hexdigest()
    return epochs, digest


#: What the two-layer code gave, per machine kind and case: (epochs, SHA-256 of the weights).
PINS: dict[str, dict[tuple[str, str], tuple]] = {
    "openblas 0.3.31.188.0 SkylakeX; numpy 2.4.6 X86_V3,X86_V4,AVX512_ICL": {
        ("float32", "relu"): (
            (("0x1.dba95e37bc5f4p-2", 0.8515, "0x1.15fb200cf353ap-1", 0.8281),
             ("0x1.ee60213b78c8bp-3", 0.928, "0x1.751698e5702b2p-2", 0.8904)),
            "7b2b9e21d0afdb9d866a4635bd89d8828ea2944d5c6570dc8db1bdecad69f9cd",
        ),
        ("float64", "tanh"): (
            (("0x1.c1cded771182ep-2", 0.868, "0x1.234c311ff6b56p-1", 0.8325),
             ("0x1.e30be14fd7b85p-3", 0.93, "0x1.aa135b65ce775p-2", 0.8818)),
            "0099510b87fa71ae5705e77977d0480be2ff6595ee908442850e5289ba728100",
        ),
    },
    "openblas 0.3.31.188.0 Haswell; numpy 2.4.6 X86_V3,X86_V4,AVX512_ICL": {
        ("float32", "relu"): (
            (("0x1.dba95c2c93698p-2", 0.8515, "0x1.15fb1fbd1292bp-1", 0.8281),
             ("0x1.ee601d3c24d0ep-3", 0.928, "0x1.75169862b717ep-2", 0.8904)),
            "355ba7d270bb0eff82f8e48d399b1d7fe1a90c48676e77777619119782e6ff74",
        ),
        ("float64", "tanh"): (
            (("0x1.c1cded7711833p-2", 0.868, "0x1.234c311ff6b58p-1", 0.8325),
             ("0x1.e30be14fd7b85p-3", 0.93, "0x1.aa135b65ce775p-2", 0.8818)),
            "625e19c750de48754b3f3e9cabd85a7aa4fd700c5089a88dde9def253942853b",
        ),
    },
    "openblas 0.3.31.188.0 Haswell; numpy 2.4.6 X86_V3": {
        ("float32", "relu"): (
            (("0x1.dba95c2c93698p-2", 0.8515, "0x1.15fb1fbd1292bp-1", 0.8281),
             ("0x1.ee601d3c24d0ep-3", 0.928, "0x1.75169862b717ep-2", 0.8904)),
            "355ba7d270bb0eff82f8e48d399b1d7fe1a90c48676e77777619119782e6ff74",
        ),
        ("float64", "tanh"): (
            (("0x1.c1cded7711833p-2", 0.868, "0x1.234c311ff6b59p-1", 0.8325),
             ("0x1.e30be14fd7b86p-3", 0.93, "0x1.aa135b65ce775p-2", 0.8818)),
            "a48bb3968ea4d1db2bd5a243b3dbd4d930808263f6e45ccaea1479b62f74056f",
        ),
    },
    "openblas 0.3.31.188.0 Sandybridge; numpy 2.4.6 ": {
        ("float32", "relu"): (
            (("0x1.dba95f0bbc79ep-2", 0.8515, "0x1.15fb21a2a8627p-1", 0.8281),
             ("0x1.ee7634faf4202p-3", 0.928, "0x1.75145ea638842p-2", 0.8902)),
            "785909e8e69ae9bf5864639b2abf66c563b0387c1fedb22aaccb684846b9fcf9",
        ),
        ("float64", "tanh"): (
            (("0x1.c1cded7711833p-2", 0.868, "0x1.234c311ff6b59p-1", 0.8325),
             ("0x1.e30be14fd7b84p-3", 0.93, "0x1.aa135b65ce775p-2", 0.8818)),
            "98f7f4978700ca5825a704c440fa6fd6163ff296bf9ef53e351904f627c00b7d",
        ),
    },
}  # fmt: skip


@pytest.mark.parametrize(("dtype", "activation"), _CASES)
def test_depth_2_trains_to_the_pinned_numbers(tiny, dtype, activation):
    machine = _machine()
    if machine not in PINS:
        pytest.skip(f"no pins for {machine}; the frozen two-layer copy still checks depth 2")
    got = _run(MLP(512, 768, dtype=dtype, activation=activation, seed=3), tiny)
    assert got == PINS[machine][dtype, activation]


# --- The two-layer code, frozen --------------------------------------------------------------


class _TwoLayers(MLP):
    """``MLP`` as it was before #25 (commit 20cfd44): its weights' draw, forward and backward,
    copied; the rest (evaluate, loss) is inherited and calls these."""

    def __init__(self, h1, h2, *, activation, dtype, seed):
        self.sizes = (784, h1, h2, 10)
        self.activation, self.dtype, self._act = (
            activation,
            np.dtype(dtype),
            ACTIVATIONS[activation],
        )
        rng = np.random.default_rng(seed)
        self.params = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            w = INITIALISERS["glorot"](fan_in, fan_out, rng, 1.0).astype(self.dtype)
            self.params += [w, np.zeros(fan_out, dtype=self.dtype)]

    def forward(self, x, *, dropout=0.0, rng=None):
        w1, b1, w2, b2, w3, b3 = self.params
        m1 = m2 = None
        h1 = x @ w1
        h1 += b1
        self._act.forward(h1)
        if dropout > 0:
            m1 = _mask(h1.shape, dropout, rng, self.dtype)
        h2 = (h1 if m1 is None else h1 * m1) @ w2
        h2 += b2
        self._act.forward(h2)
        if dropout > 0:
            m2 = _mask(h2.shape, dropout, rng, self.dtype)
        logits = (h2 if m2 is None else h2 * m2) @ w3
        logits += b3
        return logits, (x, h1, h2, m1, m2)

    def backward_from_probs(self, probs, cache, y, *, scale=1.0):
        _, w2, _, w3, _ = self.params[1:]
        x, h1, h2, m1, m2 = cache
        d3 = cross_entropy_grad(probs, y)
        if scale != 1.0:
            d3 *= scale
        gw3 = (h2 if m2 is None else h2 * m2).T @ d3
        gb3 = d3.sum(axis=0)
        dh2 = d3 @ w3.T
        d2 = self._act.grad(h2, dh2 if m2 is None else np.multiply(dh2, m2, out=dh2))
        gw2 = (h1 if m1 is None else h1 * m1).T @ d2
        gb2 = d2.sum(axis=0)
        dh1 = d2 @ w2.T
        d1 = self._act.grad(h1, dh1 if m1 is None else np.multiply(dh1, m1, out=dh1))
        gw1 = x.T @ d1
        gb1 = d1.sum(axis=0)
        return [gw1, gb1, gw2, gb2, gw3, gb3]


def _mask(shape, p, rng, dtype):
    return (rng.random(shape, dtype=np.float32) >= p).astype(dtype) / dtype.type(1 - p)


@pytest.mark.parametrize(("dtype", "activation"), _CASES)
def test_depth_2_trains_as_the_frozen_two_layer_code_on_this_machine(tiny, dtype, activation):
    frozen = _run(_TwoLayers(64, 48, dtype=dtype, activation=activation, seed=3), tiny)
    assert _run(MLP(64, 48, dtype=dtype, activation=activation, seed=3), tiny) == frozen


# --- Any depth --------------------------------------------------------------------------------

#: Small, unequal widths: a layer's gradient given another's shape fails to broadcast or index.
_WIDTHS = {1: (7,), 2: (7, 5), 3: (7, 5, 6), 4: (7, 5, 6, 4)}


#: Input pixels that are not 0 (the first ones): W1's other rows get no gradient, so the oracle
#: need not perturb them one by one (a second per test).
_PIXELS = 16


def _model(depth, activation="relu"):
    model = MLP(*_WIDTHS[depth], activation=activation, init="normal", init_std=0.5,
                dtype="float64", seed=3)  # fmt: skip
    rng = np.random.default_rng(depth)
    for b in model.params[1::2]:  # non-zero biases, so that their gradients are tested
        b[:] = rng.normal(size=b.shape) * 0.1
    x = np.zeros((4, 784))
    x[:, :_PIXELS] = rng.uniform(0, 1, size=(4, _PIXELS)) * (rng.uniform(size=(4, _PIXELS)) < 0.5)
    return model, x, np.array([0, 3, 7, 9])


@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_backward_matches_central_differences_at_every_depth(depth, activation, dropout):
    model, x, y = _model(depth, activation)

    def forward():  # the same masks every time: a fresh generator with the same seed
        return model.forward(x, dropout=dropout, rng=np.random.default_rng(5))

    logits, cache = forward()
    assert len(cache.hidden) == len(cache.masks) == depth
    assert all((m is None) == (dropout == 0) for m in cache.masks)
    grads = model.backward(logits, cache, y)
    assert len(grads) == len(model.params) == 2 * depth + 2
    assert not grads[0][_PIXELS:].any()
    tested = [model.params[0][:_PIXELS], *model.params[1:]]  # views: perturbed in place
    for p, g in zip(tested, [grads[0][:_PIXELS], *grads[1:]], strict=True):
        numeric = central_differences(p, lambda: cross_entropy(forward()[0], y)[0])
        assert g.shape == p.shape and np.abs(g).max() > 0, "a zero gradient tests nothing"
        assert relative_error(g, numeric) < 1e-6


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_the_notebooks_gradient_check_passes_at_every_depth(tiny, depth, activation):
    model = MLP(*_WIDTHS[depth], activation=activation, dtype="float64", seed=1)
    result = gradcheck(model, tiny.train.x[:8].astype(np.float64), tiny.train.y[:8])
    diffs = dict(zip(result.ns, result.max_abs_diff, strict=True))
    # Backprop agrees with the derivative to round-off once ε is small; relu's kinks, which
    # deeper layers of narrow ones sit near, need ε below ~1e-3 to stay on one side.
    assert min(diffs.values()) < 1e-9
    if activation == "tanh":  # smooth: the difference falls as ε² (100× per decade)
        assert diffs[10] / diffs[100] > 50 and diffs[100] / diffs[1000] > 50
    names = [f"{w}{k}" for k in range(1, depth + 2) for w in "Wb"]
    assert {name for name, _ in result.checked} == set(names)


def test_shapes_names_and_counts_follow_the_widths():
    for depth, widths in _WIDTHS.items():
        model = MLP(*widths, init="zeros")
        assert model.sizes == (784, *widths, 10) and model.hidden == widths
        assert [p.shape for p in model.params[::2]] == list(itertools.pairwise(model.sizes))
        assert model.n_params == parameter_count(*widths)
        assert param_names(len(model.params))[-2:] == (f"W{depth + 1}", f"b{depth + 1}")
    assert parameter_count(800) == 636_010 and architecture(800) == "784-800-10"
    assert architecture(512, 768) == "784-512-768-10"
    assert described(300, 100) == "784-300-100-10 (266,610 parameters)"


def test_a_config_builds_its_depth_and_only_its_depth():
    config = ModelConfig(depth=3, hidden_1=9, hidden_2=7, hidden_3=5, hidden_4=99,
                         activation="tanh", dtype="float64")  # fmt: skip
    model = MLP.from_config(config, seed=4)
    assert model.sizes == (784, 9, 7, 5, 10)
    by_hand = MLP(9, 7, 5, activation="tanh", dtype="float64", seed=4)
    assert all(np.array_equal(p, q) for p, q in zip(model.params, by_hand.params, strict=True))
    assert MLP.from_config(ModelConfig(depth=1, hidden_1=800)).sizes == (784, 800, 10)


def test_layers_are_drawn_input_side_first_so_a_deeper_net_starts_as_the_shallower():
    # The same generator draws W1, W2, … in turn: 784-7-5-10's first layer is 784-7-10's.
    shallow, deep = MLP(7, seed=2), MLP(7, 5, 6, seed=2)
    assert np.array_equal(shallow.params[0], deep.params[0])


@pytest.mark.parametrize("hidden", [(), (4, 4, 4, 4, 4), (4, 0), (4, -1)])
def test_a_depth_outside_1_to_4_or_a_width_below_1_is_refused(hidden):
    with pytest.raises(ValueError, match="hidden"):
        MLP(*hidden)


def test_not_finite_names_the_layer_at_any_depth():
    model = MLP(4, 3, 2, 2, init="zeros")
    assert not_finite(model.params) is None
    model.params[7][0] = np.inf
    assert not_finite(model.params) == "b4"
    model.params[9][0] = np.nan
    assert not_finite(model.params) == "b4"  # the first

import math
import warnings

import numpy as np
import pytest

from mlp import MLP, CheckpointError, ModelConfig, parameter_count
from mlp.functions import ACTIVATIONS
from mlp.optim import SGD
from tests.mlp.numeric import central_differences, relative_error


def test_parameter_count_is_exact():
    assert parameter_count(512, 768) == 803_594
    for h1, h2 in [(1, 1), (392, 256), (1024, 1024)]:
        assert MLP(h1, h2, init="zeros").n_params == parameter_count(h1, h2)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_backward_matches_central_differences_for_every_tensor(activation, rng):
    model = MLP(7, 5, activation=activation, init="normal", init_std=0.5, dtype="float64", seed=3)
    for b in model.params[1::2]:
        b[:] = rng.normal(size=b.shape) * 0.1  # non-zero biases, so their gradients are tested
    x = rng.uniform(0, 1, size=(4, 784)) * (rng.uniform(size=(4, 784)) < 0.2)
    y = np.array([0, 3, 7, 9])
    logits, cache = model.forward(x)
    grads = model.backward(logits, cache, y)
    for p, g in zip(model.params, grads, strict=True):
        numeric = central_differences(p, lambda: model.loss(x, y))
        assert np.abs(g).max() > 0, "a zero gradient would make this test vacuous"
        assert relative_error(g, numeric) < 1e-6


def test_one_sgd_step_by_hand():
    # 784-1-1-10 with one active input pixel, worked on paper:
    # z1 = 0.5·1 = 0.5, h1 = 0.5; z2 = 2·0.5 = 1, h2 = 1; logits = (1, 0, …, 0).
    model = MLP(1, 1, init="zeros", dtype="float64")
    w1, b1, w2, b2, w3, b3 = model.params
    w1[0, 0], w2[0, 0], w3[0, 0] = 0.5, 2.0, 1.0
    x = np.zeros((1, 784))
    x[0, 0] = 1.0
    y = np.array([3])
    e = math.e
    p0, pk = e / (e + 9), 1 / (e + 9)  # softmax of (1, 0, …, 0)
    assert model.loss(x, y) == pytest.approx(-math.log(pk), rel=1e-12)
    # dL/dlogits = p - onehot(3); backprop through W3 picks column 0, through W2 multiplies by 2.
    d_logits = np.full(10, pk)
    d_logits[0], d_logits[3] = p0, pk - 1
    dz2 = p0 * 1.0  # (d_logits · W3[0]) · relu'(1)
    dz1 = dz2 * 2.0  # · W2 · relu'(0.5)
    lr = 0.1
    logits, cache = model.forward(x)
    SGD(model.params).step(model.backward(logits, cache, y), lr)
    assert w1[0, 0] == pytest.approx(0.5 - lr * dz1 * 1.0, rel=1e-12)  # 0.453606…
    assert b1[0] == pytest.approx(-lr * dz1, rel=1e-12)
    assert w2[0, 0] == pytest.approx(2.0 - lr * dz2 * 0.5, rel=1e-12)  # 1.988401…
    assert b2[0] == pytest.approx(-lr * dz2, rel=1e-12)
    np.testing.assert_allclose(w3[0], np.eye(10)[0] - lr * d_logits * 1.0, rtol=1e-12)
    np.testing.assert_allclose(b3, -lr * d_logits, rtol=1e-12)
    assert not w1[1:].any(), "inputs that were zero get no update"


def test_a_model_from_its_config_is_the_model_of_those_arguments():
    config = ModelConfig(hidden_1=9, hidden_2=7, init="normal", init_std=0.3,
                         activation="tanh", dtype="float64")  # fmt: skip
    built = MLP.from_config(config, seed=11)
    by_hand = MLP(9, 7, init="normal", init_std=0.3, activation="tanh", dtype="float64", seed=11)
    assert (built.sizes, built.activation, built.dtype) == (by_hand.sizes, "tanh", np.float64)
    for p, q in zip(built.params, by_hand.params, strict=True):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(built.params[0], MLP.from_config(config, seed=12).params[0])


def test_float32_model_computes_in_float32(rng):
    model = MLP(16, 8)
    x = rng.uniform(size=(3, 784)).astype(np.float32)
    logits, cache = model.forward(x)
    assert logits.dtype == np.float32
    grads = model.backward(logits, cache, np.array([1, 2, 3]))
    assert all(g.dtype == np.float32 for g in grads)


def test_float32_and_float64_start_from_the_same_weights():
    a, b = MLP(20, 10, dtype="float32", seed=5), MLP(20, 10, dtype="float64", seed=5)
    for p, q in zip(a.params, b.params, strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"activation": "gelu"}, "activation"),
        ({"init": "he"}, "init"),
        ({"dtype": "float16"}, "dtype"),
    ],
)
def test_unknown_options_are_refused(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MLP(4, 4, **kwargs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_initial_weights_past_the_dtypes_range_are_refused_without_a_numpy_warning(dtype):
    # 1e308 · N(0, 1) overflows float64 beyond 1.8 and every float32: numpy warned of the cast
    # before the one-line error (#22); now the draw is checked, silently, and refused.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"^init 'normal' with init_std 1e\+308 drew W1 "
                           rf"weights that are not finite in {dtype} "):  # fmt: skip
            MLP(64, 8, init="normal", init_std=1e308, dtype=dtype)
        MLP(64, 8, init="normal", init_std=1e30, dtype="float32")  # finite: built


def test_a_model_whose_weights_are_not_finite_does_not_load(tmp_path):
    # The sidecar's digest matches (save computed it), yet the weights predict nothing.
    model = MLP(8, 4, seed=1)
    model.params[2][1, 2] = np.nan
    model.save(tmp_path / "nan.npz")
    with pytest.raises(CheckpointError, match=r"nan\.npz: expected a trained model; got W2 "
                       r"weights that are not finite \(NaN or infinite\)$"):  # fmt: skip
        MLP.load(tmp_path / "nan.npz")
    model.params[2][1, 2] = 0.5
    model.save(tmp_path / "ok.npz")
    MLP.load(tmp_path / "ok.npz")

import numpy as np
import pytest

from mlp.functions import ACTIVATIONS, INITIALISERS, cross_entropy, cross_entropy_grad


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivative_matches_central_difference(name, rng):
    act = ACTIVATIONS[name]
    z = rng.normal(size=1000) * 3
    z = z[np.abs(z) > 1e-3]  # away from relu's kink
    eps = 1e-6
    numeric = (act.forward(z + eps) - act.forward(z - eps)) / (2 * eps)
    analytic = act.grad(act.forward(z.copy()), np.ones_like(z))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_sigmoid_is_stable_at_extremes():
    z = np.array([-1000.0, 0.0, 1000.0])
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        out = ACTIVATIONS["sigmoid"].forward(z)
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])


def test_cross_entropy_is_finite_for_extreme_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # underflow to 0 is fine
        loss, probs = cross_entropy(logits, np.array([1, 1]))
    assert loss == pytest.approx(1e4)  # row 0: -log softmax = 2e4; row 1: 0; mean 1e4
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_cross_entropy_matches_direct_formula(rng):
    logits = rng.normal(size=(6, 10))
    y = rng.integers(0, 10, size=6)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    loss, probs = cross_entropy(logits, y)
    assert loss == pytest.approx(-np.log(p[np.arange(6), y]).mean(), rel=1e-12)
    np.testing.assert_allclose(probs, p, rtol=1e-12)
    onehot = np.eye(10)[y]
    np.testing.assert_allclose(cross_entropy_grad(probs, y), (p - onehot) / 6, rtol=1e-12)


def test_initialisers():
    rng = np.random.default_rng(0)
    assert not INITIALISERS["zeros"](784, 512, rng, 1.0).any()
    w = INITIALISERS["normal"](784, 512, rng, 100.0)
    assert w.std() == pytest.approx(100.0, rel=0.01)
    w = INITIALISERS["glorot"](784, 512, rng, 1.0)
    bound = np.sqrt(6 / (784 + 512))
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound  # uniform over the whole interval
    assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.01)

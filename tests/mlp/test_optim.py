"""Momentum, Nesterov, weight decay, schedules, dropout and early stopping: each against numbers
worked by hand or an independent oracle."""

import math

import numpy as np
import pytest

from mlp import MLP, TrainConfig, fit
from mlp.functions import cross_entropy
from mlp.optim import SGD, learning_rate_at
from tests.mlp.numeric import central_differences, relative_error


def _two_steps(**kwargs):
    w = np.array([[1.0]])  # a weight matrix, so weight decay applies
    opt = SGD([w], **kwargs)
    opt.step([np.array([[0.5]])], 0.1)
    after_one = w.item()
    opt.step([np.array([[0.5]])], 0.1)
    return after_one, w.item()


def test_classical_momentum_by_hand():
    # v1 = g = 0.5; w1 = 1 - 0.1·0.5 = 0.95; v2 = 0.9·0.5 + 0.5 = 0.95; w2 = 0.95 - 0.095 = 0.855
    assert _two_steps(momentum=0.9) == pytest.approx((0.95, 0.855), rel=1e-12)


def test_nesterov_momentum_by_hand():
    # v1 = 0.5; step g + μv = 0.5 + 0.45 = 0.95 → w1 = 0.905
    # v2 = 0.45 + 0.5 = 0.95; step 0.5 + 0.855 = 1.355 → w2 = 0.905 - 0.1355 = 0.7695
    assert _two_steps(momentum=0.9, nesterov=True) == pytest.approx((0.905, 0.7695), rel=1e-12)


def test_weight_decay_by_hand_and_not_on_biases():
    # g = 0.5 + 0.01·1 = 0.51 → w1 = 1 - 0.051 = 0.949; then g = 0.5 + 0.00949 → w2 = 0.898051
    assert _two_steps(weight_decay=0.01) == pytest.approx((0.949, 0.898051), rel=1e-12)
    b = np.array([1.0])
    SGD([b], weight_decay=0.01).step([np.array([0.5])], 0.1)
    assert b.item() == pytest.approx(0.95)  # a bias: no decay


def test_folding_the_learning_rate_into_the_gradients_is_the_same_step(rng):
    # fit's fast path for plain SGD: backward(scale=lr), then a step with lr = 1.
    plain, folded = (MLP(8, 8, dtype="float64", seed=1) for _ in range(2))
    x, y = rng.random((5, 784)), np.array([1, 2, 3, 4, 5])
    logits, cache = plain.forward(x)
    SGD(plain.params).step(plain.backward(logits, cache, y), 0.1)
    logits, cache = folded.forward(x)
    _, probs = cross_entropy(logits, y)
    optimiser = SGD(folded.params)
    assert optimiser.folds_learning_rate
    optimiser.step(folded.backward_from_probs(probs, cache, y, scale=0.1), 1.0)
    for p, q in zip(plain.params, folded.params, strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-13, atol=1e-15)
    assert not SGD(plain.params, momentum=0.9).folds_learning_rate
    assert not SGD(plain.params, weight_decay=1e-4).folds_learning_rate


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"schedule": "constant"}, [0.1] * 6),
        ({"schedule": "step", "step_size": 2, "gamma": 0.5}, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]),
        (
            {"schedule": "cosine", "epochs": 6},
            [0.1 * 0.5 * (1 + math.cos(math.pi * e / 6)) for e in range(6)],
        ),
        ({"schedule": "constant", "warmup_epochs": 3}, [0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.1, 0.1]),
        (
            {"schedule": "cosine", "epochs": 6, "warmup_epochs": 2},
            [
                0.05,
                0.1,
                0.1,
                0.1 * 0.5 * (1 + math.cos(math.pi / 4)),
                0.05,
                0.1 * 0.5 * (1 + math.cos(3 * math.pi / 4)),
            ],
        ),
    ],
)
def test_schedule_values(kwargs, expected):
    got = [learning_rate_at(e, 0.1, **kwargs) for e in range(1, 7)]
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_backward_with_dropout_matches_central_differences(activation, rng):
    model = MLP(6, 5, activation=activation, init="normal", init_std=0.5, dtype="float64", seed=2)
    for b in model.params[1::2]:  # off relu's kink when a row's inputs are all dropped
        b[:] = rng.normal(size=b.shape) * 0.1
    x = rng.uniform(0, 1, size=(4, 784)) * (rng.uniform(size=(4, 784)) < 0.2)
    y = np.array([0, 3, 7, 9])

    def loss():  # the same masks every time: a fresh generator with the same seed
        logits, _ = model.forward(x, dropout=0.4, rng=np.random.default_rng(5))
        return cross_entropy(logits, y)[0]

    logits, cache = model.forward(x, dropout=0.4, rng=np.random.default_rng(5))
    assert all(m is not None and (m == 0).any() for m in cache.masks)
    grads = model.backward(logits, cache, y)
    for p, g in zip(model.params, grads, strict=True):
        numeric = central_differences(p, loss)
        assert relative_error(g, numeric) < 1e-6


def test_dropout_keeps_the_expected_activation_and_is_off_at_evaluation(rng):
    model = MLP(1000, 1000, seed=3)
    x = rng.random((64, 784)).astype(np.float32)
    _, clean = model.forward(x)
    _, dropped = model.forward(x, dropout=0.3, rng=np.random.default_rng(0))
    m1, h1 = dropped.masks[0], dropped.hidden[0]
    kept = (m1 > 0).mean()
    assert kept == pytest.approx(0.7, abs=0.01)
    assert set(np.unique(m1)) == {0.0, np.float32(1 / 0.7)}
    # inverted dropout: the mean of the dropped layer matches the clean one
    assert (h1 * m1).mean() == pytest.approx(clean.hidden[0].mean(), rel=0.02)
    # evaluation never drops: a training config with dropout leaves evaluate() untouched
    logits, _ = model.forward(x)
    np.testing.assert_array_equal(model.predict(x), logits.argmax(axis=1))
    assert model.evaluate(x, np.zeros(64, dtype=np.int64)) == model.evaluate(
        x, np.zeros(64, dtype=np.int64)
    )


def test_early_stopping_on_validation_accuracy(tiny):
    seen = []
    config = TrainConfig(epochs=30, learning_rate=5.0, patience=2)  # too high: it stalls
    history = fit(MLP(16, 16, seed=0), tiny, config, on_epoch=seen.append)
    accs = [m.valid_accuracy for m in seen]
    assert history.stopped_early and len(accs) < 30
    best = max(accs[:-2])
    assert all(a <= best for a in accs[-2:])  # the last two epochs did not improve


def test_momentum_training_learns(tiny):
    plain = fit(MLP(32, 32, seed=0), tiny, TrainConfig(epochs=3, learning_rate=0.01))
    heavy = fit(MLP(32, 32, seed=0), tiny,
                TrainConfig(epochs=3, learning_rate=0.01, momentum=0.9, nesterov=True))  # fmt: skip
    # with a small step, momentum's larger effective step learns faster
    assert heavy.epochs[-1].valid_accuracy > plain.epochs[-1].valid_accuracy

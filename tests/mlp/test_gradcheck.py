import numpy as np
import pytest

from mlp import MLP
from mlp.gradcheck import DEFAULT_NS, gradcheck


def test_default_ns_are_the_notebooks():
    assert DEFAULT_NS == (1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 50000, 100000, 500000)


def test_difference_falls_as_epsilon_shrinks(tiny):
    model = MLP(32, 24, dtype="float64", seed=1)
    result = gradcheck(model, tiny.train.x[:16].astype(np.float64), tiny.train.y[:16])
    diffs = dict(zip(result.ns, result.max_abs_diff, strict=True))
    assert diffs[1] > diffs[10] > diffs[100] > diffs[1000]
    assert diffs[1000] < 1e-6  # backprop agrees with the derivative, not just roughly
    # The notebook's ten W2[0, :10] entries come first, then a sample of every tensor.
    assert result.checked[:10] == tuple(("W2", (0, j)) for j in range(10))
    assert {name for name, _ in result.checked} == {"W1", "b1", "W2", "b2", "W3", "b3"}


def test_gradcheck_leaves_the_model_unchanged(tiny):
    model = MLP(8, 8, dtype="float64", seed=2)
    before = [p.copy() for p in model.params]
    gradcheck(model, tiny.train.x[:4].astype(np.float64), tiny.train.y[:4], ns=(1, 1000))
    for p, q in zip(model.params, before, strict=True):
        np.testing.assert_array_equal(p, q)


def test_gradcheck_refuses_float32():
    with pytest.raises(ValueError, match="float64"):
        gradcheck(MLP(4, 4), np.zeros((1, 784), np.float32), np.array([0]))

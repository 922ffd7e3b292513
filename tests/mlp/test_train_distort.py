"""fit with distortions of the training digits (#25): drawn from the run's generator, so that
runs repeat and resume bit for bit; never reaching the data, the validation split or any
evaluation pass."""

import dataclasses

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from mlp import MLP, TrainConfig, fit

DISTORTED = TrainConfig(
    epochs=4, batch_size=50, shift=2, rotation=10, zoom=0.1, shear=0.15, elastic_alpha=34,
    shuffle=True, dropout=0.1, momentum=0.9, full_train_eval=False, seed=3,
)  # fmt: skip


@pytest.fixture(scope="module")
def small(mnist):
    """600 training and 200 validation digits, copied: writable, so that a distortion
    written into them would show as a change rather than an error."""
    data = mnist.head(600)
    return data._replace(
        train=data.train._replace(x=data.train.x.copy(), y=data.train.y.copy()),
        valid=data.valid._replace(x=data.valid.x[:200].copy(), y=data.valid.y[:200].copy()),
    )


def _weights(model):
    return [p.copy() for p in model.params]


@pytest.mark.parametrize(("dtype", "shuffle"), [("float32", True), ("float64", False)])
def test_a_run_resumed_mid_way_equals_the_run_never_stopped(small, dtype, shuffle):
    config = dataclasses.replace(DISTORTED, shuffle=shuffle)
    states = {}
    with threadpool_limits(limits=1):  # float32 sums depend on how BLAS splits them
        whole = MLP(24, 16, dtype=dtype, seed=1)
        history = fit(whole, small, config, on_state=lambda s: states.__setitem__(s.epoch, s))
        resumed = MLP(24, 16, dtype=dtype, seed=9)
        later = fit(resumed, small, config, resume=states[2])
    for p, q in zip(whole.params, resumed.params, strict=True):
        assert np.array_equal(p, q)
    assert [m.train_loss for m in later.epochs] == [m.train_loss for m in history.epochs]


def test_the_same_seed_trains_the_same_weights_and_another_seed_others(small):
    def run(seed):
        model = MLP(24, 16, seed=1)
        with threadpool_limits(limits=1):
            fit(model, small, dataclasses.replace(DISTORTED, epochs=1, seed=seed))
        return _weights(model)

    one, two, other = run(5), run(5), run(6)
    assert all(np.array_equal(p, q) for p, q in zip(one, two, strict=True))
    assert not np.array_equal(one[0], other[0])


@pytest.mark.parametrize("shuffle", [True, False])
def test_distortions_reach_training_and_nothing_else(small, shuffle):
    train_x, valid_x = small.train.x.copy(), small.valid.x.copy()
    config = dataclasses.replace(DISTORTED, epochs=2, shuffle=shuffle, full_train_eval=True)
    plain, distorted = MLP(24, 16, seed=1), MLP(24, 16, seed=1)
    fit(plain, small, dataclasses.replace(config, shift=0, rotation=0, zoom=0, shear=0,
                                          elastic_alpha=0))  # fmt: skip
    history = fit(distorted, small, config)
    assert not np.array_equal(plain.params[0], distorted.params[0])  # they trained apart
    assert np.array_equal(small.train.x, train_x) and np.array_equal(small.valid.x, valid_x)
    # Every evaluation pass sees the clean digits: the last epoch's metrics are the final
    # model's on the untouched splits.
    last = history.epochs[-1]
    valid = distorted.evaluate(valid_x, small.valid.y, batch_size=config.eval_batch_size)
    train = distorted.evaluate(train_x, small.train.y, batch_size=config.eval_batch_size)
    assert (last.valid_loss, last.valid_accuracy) == valid
    assert (last.train_loss, last.train_accuracy) == train

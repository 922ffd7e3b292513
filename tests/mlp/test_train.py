import numpy as np
import pytest

from mlp import MLP, DivergedError, TrainConfig, fit


@pytest.mark.slow  # two epochs on the full training set: ~30 s
def test_zeros_reproduces_the_notebook_digits(mnist):
    # Zeros init is deterministic: only b3 learns, so a float64 run in the notebook's order
    # must give the notebook's printed losses to the last digits.
    model = MLP(512, 768, init="zeros", dtype="float64")
    history = fit(model, mnist, TrainConfig(epochs=2, batch_size=128, learning_rate=0.1))
    losses = history.column("train_loss")
    assert losses[0] == pytest.approx(2.30106604987257, abs=1e-10)
    assert losses[1] == pytest.approx(2.3010626883570473, abs=1e-10)
    assert history.column("train_accuracy") == [0.11356, 0.11356]  # the majority class, '1'


@pytest.mark.slow  # ten epochs on the full training set: ~40 s
def test_glorot_reference_run(mnist):
    model = MLP(512, 768, init="glorot", dtype="float32", seed=0)
    history = fit(model, mnist, TrainConfig(epochs=10, batch_size=128, learning_rate=0.1))
    losses = history.column("train_loss")
    assert 0.26 <= losses[0] <= 0.29  # notebook: 0.272
    assert 0.035 <= losses[-1] <= 0.055  # notebook: 0.0449
    assert history.epochs[-1].valid_accuracy >= 0.973  # notebook: 97.53%
    assert all(np.diff(losses) < 0)


def test_callback_sees_every_epoch_and_can_stop(tiny):
    seen = []

    def on_epoch(m):
        seen.append(m)
        return m.epoch == 2

    history = fit(MLP(16, 16), tiny, TrainConfig(epochs=5), on_epoch=on_epoch)
    assert [m.epoch for m in seen] == [1, 2]
    assert history.stopped_early and len(history.epochs) == 2
    m = seen[-1]
    assert 0 < m.train_loss < 2.3 and 0.5 < m.valid_accuracy <= 1 and m.seconds > 0


def test_running_train_metrics_approximate_the_full_pass(tiny):
    config = TrainConfig(epochs=3, full_train_eval=False)
    full = fit(MLP(32, 32, seed=4), tiny, TrainConfig(epochs=3))
    running = fit(MLP(32, 32, seed=4), tiny, config)
    # Same weights either way: the evaluation pass must not change training.
    assert running.column("valid_loss") == full.column("valid_loss")
    # The running mean lags the end-of-epoch loss, so it is higher but close.
    for r, f in zip(running.column("train_loss"), full.column("train_loss"), strict=True):
        assert f < r < f + 0.5


def test_shuffling_is_seeded(tiny):
    def run(seed):
        return fit(MLP(16, 16, seed=0), tiny, TrainConfig(epochs=2, shuffle=True, seed=seed))

    assert run(1).column("valid_loss") == run(1).column("valid_loss")
    assert run(1).column("valid_loss") != run(2).column("valid_loss")


def test_a_shuffled_epoch_trains_on_the_seeded_permutation(tiny):
    # Oracle: the same permutation applied to the data up front, then trained in order.
    order = np.random.default_rng(5).permutation(len(tiny.train.y))
    permuted = tiny._replace(
        train=tiny.train._replace(x=tiny.train.x[order], y=tiny.train.y[order])
    )
    shuffled, in_order = MLP(16, 16, seed=0), MLP(16, 16, seed=0)
    fit(shuffled, tiny, TrainConfig(epochs=1, batch_size=7, shuffle=True, seed=5))
    fit(in_order, permuted, TrainConfig(epochs=1, batch_size=7))
    for p, q in zip(shuffled.params, in_order.params, strict=True):
        np.testing.assert_array_equal(p, q)


def test_divergence_stops_with_a_clear_error(tiny):
    model = MLP(64, 64, init="normal", init_std=100.0)
    with pytest.raises(DivergedError, match="diverged") as info:
        fit(model, tiny, TrainConfig(epochs=3, learning_rate=1e6))
    assert info.value.epoch == 1

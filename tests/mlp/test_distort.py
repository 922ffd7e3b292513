"""Distortions of the training digits (mlp.distort): each kind against an independent oracle
(a zero-filled roll, np.rot90, a sheared line, the law of smoothed noise), the identity at
strength 0, and every draw from the generator passed in."""

import dataclasses

import numpy as np
import pytest

from mlp import TrainConfig
from mlp.distort import distort, distorts

SIDE = 28
ALL = TrainConfig(shift=2, rotation=10, zoom=0.1, shear=0.15, elastic_alpha=34, elastic_sigma=4)
KINDS = {
    "shift": TrainConfig(shift=2),
    "rotation": TrainConfig(rotation=10),
    "zoom": TrainConfig(zoom=0.1),
    "shear": TrainConfig(shear=0.15),
    "elastic": TrainConfig(elastic_alpha=34),
    "all": ALL,
}


class Highest:
    """A generator stand-in whose every draw is the top of its range: a known distortion.
    (distort draws uniform angles, scales and slopes, integer shifts and uniform noise.)"""

    def uniform(self, low, high, size):
        return np.full(size, float(high))

    def integers(self, low, high, size):
        return np.full(size, high - 1)


def _images(n: int, seed: int = 0) -> np.ndarray:
    """n noisy images with no zero pixel, so that where each pixel came from shows."""
    return np.random.default_rng(seed).uniform(0.05, 1, (n, SIDE * SIDE)).astype(np.float32)


def _digits(mnist, n: int = 64) -> np.ndarray:
    return np.asarray(mnist.train.x[:n], dtype=np.float32)


def _rolled(image: np.ndarray, down: int, right: int) -> np.ndarray:
    """The oracle of a shift: np.roll, and the pixels that wrapped around set to 0."""
    out = np.roll(image.reshape(SIDE, SIDE), (down, right), axis=(0, 1))
    out[:down] = 0 if down > 0 else out[:down]
    out[SIDE + down :] = 0 if down < 0 else out[SIDE + down :]
    out[:, :right] = 0 if right > 0 else out[:, :right]
    out[:, SIDE + right :] = 0 if right < 0 else out[:, SIDE + right :]
    return out.reshape(-1)


def test_distorts_is_any_strength_above_zero():
    assert not distorts(TrainConfig())
    assert not distorts(TrainConfig(elastic_sigma=9))  # a width, not a strength
    for config in KINDS.values():
        assert distorts(config)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_strength_zero_is_the_identity_and_draws_nothing(dtype):
    x = _images(40).astype(dtype)
    rng = np.random.default_rng(3)
    before = rng.bit_generator.state
    out = distort(x, rng, TrainConfig(elastic_sigma=2))
    assert out.dtype == x.dtype and np.array_equal(out, x) and out is not x
    into = np.full_like(x, 7)
    assert distort(x, rng, TrainConfig(), out=into) is into and np.array_equal(into, x)
    assert rng.bit_generator.state == before


def test_a_shift_by_k_pixels_is_a_zero_filled_roll():
    x = _images(600)
    out = distort(x, np.random.default_rng(0), TrainConfig(shift=3))
    seen = set()
    for image, moved in zip(x, out, strict=True):
        matches = [
            (down, right)
            for down in range(-3, 4)
            for right in range(-3, 4)
            if np.array_equal(moved, _rolled(image, down, right))
        ]
        assert len(matches) == 1
        seen.update(matches)
    assert len(seen) == 49  # every shift in [-3, 3]² is drawn


def test_the_oracle_of_a_shift_fills_with_zeros():
    image = np.arange(1, SIDE * SIDE + 1, dtype=np.float32)
    moved = _rolled(image, 2, -1).reshape(SIDE, SIDE)
    assert moved[0].sum() == moved[1].sum() == 0 and (moved[:, -1] == 0).all()
    assert moved[2, 0] == image[1]  # pixel (0, 1) went 2 down and 1 left


def test_a_known_shift_moves_down_and_right():
    x = _images(3)
    out = distort(x, Highest(), TrainConfig(shift=4))
    for image, moved in zip(x, out, strict=True):
        assert np.array_equal(moved, _rolled(image, 4, 4))


def _bar() -> np.ndarray:
    """A bar from the centre to the right edge, two rows thick, and a dot at the top left."""
    image = np.zeros((SIDE, SIDE), dtype=np.float32)
    image[13:15, 15:26] = 1
    image[3, 5] = 0.5
    return image.reshape(1, -1)


def test_rotation_turns_counter_clockwise_as_seen():
    # np.rot90 turns an array counter-clockwise as displayed (row 0 on top), about its centre.
    out = distort(_bar(), Highest(), TrainConfig(rotation=90)).reshape(SIDE, SIDE)
    np.testing.assert_allclose(out, np.rot90(_bar().reshape(SIDE, SIDE)), atol=1e-5)
    assert out[2:13, 13:15].min() > 0.99  # the bar now points up


def test_an_affine_map_and_a_shift_compose_into_one_resampling():
    config = TrainConfig(rotation=90, shift=2)  # turned about the centre, then moved 2 and 2
    out = distort(_bar(), Highest(), config).reshape(-1)
    expected = _rolled(np.rot90(_bar().reshape(SIDE, SIDE)).reshape(-1), 2, 2)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_zoom_scales_about_the_centre():
    square = np.zeros((SIDE, SIDE), dtype=np.float32)
    square[10:18, 10:18] = 1  # 8 × 8 about the centre, 13.5
    out = distort(square.reshape(1, -1), Highest(), TrainConfig(zoom=0.5))  # scale 1.5
    out = out.reshape(SIDE, SIDE)
    # Pixel p samples 13.5 + (p − 13.5)/1.5: pixels 9..18 fall inside the square (10..17);
    # 8 and 19 sample 9.83 and 17.17, 5/6 of the way into it; 7 and 20, 1/6.
    np.testing.assert_allclose(out[9:19, 9:19], 1, atol=1e-6)
    for edge, inside in [(8, 5 / 6), (19, 5 / 6), (7, 1 / 6), (20, 1 / 6)]:
        np.testing.assert_allclose(out[edge, 9:19], inside, atol=1e-5)
        np.testing.assert_allclose(out[9:19, edge], inside, atol=1e-5)
    assert out[:7].max() == out[21:].max() == out[:, :7].max() == out[:, 21:].max() == 0
    assert out.sum() == pytest.approx(1.5**2 * square.sum(), rel=1e-5)  # the area's square


def test_shear_slants_a_vertical_line_to_the_right_going_down():
    image = np.zeros((SIDE, SIDE), dtype=np.float32)
    image[:, 13:15] = 1  # a vertical line through the centre
    out = distort(image.reshape(1, -1), Highest(), TrainConfig(shear=0.5)).reshape(SIDE, SIDE)
    cols = np.arange(SIDE)
    for row in range(4, 24):  # x' = x + 0.5·y about the centre: the line's middle moves
        centre = (out[row] * cols).sum() / out[row].sum()
        assert centre == pytest.approx(13.5 + 0.5 * (row - 13.5), abs=1e-4)


@pytest.mark.parametrize("kind", ["rotation", "zoom", "shear"])
def test_small_affine_maps_keep_the_ink_of_a_digit(mnist, kind):
    x = _digits(mnist, 200)
    out = distort(x, np.random.default_rng(1), KINDS[kind])
    ratio = out.sum(axis=1) / x.sum(axis=1)
    assert 0.97 < np.median(ratio) < 1.03 and ratio.min() > 0.75 and ratio.max() < 1.25
    assert not np.allclose(out, x, atol=0.1)  # they did move


def _displacements(alpha: float, sigma: float, n: int, seed: int) -> np.ndarray:
    """(n, 2, 28, 28) elastic displacements (x, y), read through the public function: pixel
    value = its column (or row) / 32 is linear, and bilinear resampling of a linear ramp is
    exact, so output − input is the displacement / 32 wherever the source is in the image."""
    ramp = np.arange(SIDE, dtype=np.float32) / 32
    fields = []
    for image in (np.tile(ramp, (SIDE, 1)), np.tile(ramp[:, None], (1, SIDE))):
        x = np.tile(image.reshape(1, -1), (n, 1))
        config = TrainConfig(elastic_alpha=alpha, elastic_sigma=sigma)
        out = distort(x, np.random.default_rng(seed), config)  # the same seed: the same fields
        fields.append((out - x).reshape(n, SIDE, SIDE) * 32)
    return np.stack(fields, axis=1)


def _gauss(sigma: float) -> np.ndarray:
    k = np.arange(-40, 41)
    g = np.exp(-(k**2) / (2 * sigma**2))
    return g / g.sum()


def test_the_elastic_field_is_smoothed_noise_of_the_size_alpha_gives():
    d = _displacements(34, 4, 400, seed=5)[:, :, 10:18, 10:18]  # sources stay in the image
    # Uniform noise in [-1, 1] (variance 1/3) smoothed by G in both directions, times α:
    # variance α²/3 · (Σ g²)² at a pixel far from the edges.
    expected = 34 * np.sqrt(1 / 3) * (_gauss(4) ** 2).sum()
    assert d.std() == pytest.approx(expected, rel=0.1)
    assert abs(d.mean()) < 0.1 * expected  # no drift: the noise is centred
    x, y = d[:, 0], d[:, 1]
    # Neighbours move together (exp(-1/16) for a Gaussian of width 4); x and y independently.
    assert np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1] > 0.9
    assert np.corrcoef(y[:, :-1].ravel(), y[:, 1:].ravel())[0, 1] > 0.9
    assert abs(np.corrcoef(x.ravel(), y.ravel())[0, 1]) < 0.1


def test_the_elastic_field_scales_with_alpha_and_narrows_with_sigma():
    small, large = (_displacements(a, 4, 50, seed=6)[:, :, 8:20, 8:20] for a in (4, 12))
    np.testing.assert_allclose(large, 3 * small, atol=1e-3)  # the same noise, three times
    wide, narrow = (_displacements(8, s, 300, seed=6)[:, 0, 8:20, 8:20] for s in (6, 1))
    far = {"wide": wide, "narrow": narrow}
    lag4 = {k: np.corrcoef(v[:, :, :-4].ravel(), v[:, :, 4:].ravel())[0, 1] for k, v in far.items()}
    assert lag4["wide"] > 0.7 and lag4["narrow"] < 0.1  # exp(-16/144) and exp(-16/4)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_same_seed_gives_the_same_batch_and_another_seed_another(kind):
    x = _images(300)  # more than a chunk of 256
    one, two, other = (
        distort(x, np.random.default_rng(seed), KINDS[kind]) for seed in (11, 11, 12)
    )
    assert np.array_equal(one, two)
    assert not np.array_equal(one, other)


@pytest.mark.parametrize("kind", list(KINDS))
def test_x_is_never_modified_and_out_is_filled(kind):
    x = _images(300)  # more than a chunk of 256: the second chunk lands after the first
    kept = x.copy()
    into = np.full_like(x, np.nan)
    assert distort(x, np.random.default_rng(0), KINDS[kind], out=into) is into
    assert np.array_equal(x, kept) and np.isfinite(into).all()
    assert np.array_equal(into, distort(x, np.random.default_rng(0), KINDS[kind]))


@pytest.mark.parametrize("kind", list(KINDS))
def test_float64_digits_come_back_in_float64(mnist, kind):
    x = _digits(mnist, 16)
    wide = distort(x.astype(np.float64), np.random.default_rng(2), KINDS[kind])
    narrow = distort(x, np.random.default_rng(2), KINDS[kind])
    assert wide.dtype == np.float64
    np.testing.assert_allclose(wide, narrow, atol=1e-6)


def test_every_output_stays_a_digit_on_a_black_background(mnist):
    x = _digits(mnist, 256)
    strong = dataclasses.replace(ALL, shift=8, rotation=90, zoom=0.5, shear=1, elastic_alpha=100)
    for config in (ALL, strong):
        out = distort(x, np.random.default_rng(4), config)
        assert out.min() >= 0 and out.max() <= x.max()  # bilinear: a mean of pixels and zeros
        assert (out[:, 0] == 0).mean() > 0.9  # the corners stay black


def test_a_batch_of_another_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(n, 784\) images; got shape \(3, 28, 28\)"):
        distort(np.zeros((3, 28, 28)), np.random.default_rng(0), ALL)

"""Distortions of the training digits, drawn afresh for every minibatch (#25).

Simard, Steinkraus and Platt (ICDAR 2003) brought a 784-800-10 MLP from 1.6% to 1.1% test error
with affine distortions of the training digits and to 0.7% with elastic ones. The kinds, each
with its strength a ``TrainConfig`` field (0: off):

- ``shift``: a translation by a whole number of pixels, uniform in [-shift, shift] per axis;
- ``rotation`` (uniform in ±rotation degrees, counter-clockwise as the digit is seen),
  ``zoom`` (scale uniform in [1 - zoom, 1 + zoom]) and ``shear`` (horizontal, slope uniform in
  ±shear): an affine map about the image centre;
- ``elastic_alpha``, ``elastic_sigma``: Simard's elastic distortion, a displacement field
  uniform in [-1, 1] per pixel and axis, smoothed by a Gaussian of width sigma and scaled by
  alpha.

All of them compose into one sampling grid per image and one bilinear resampling, zero outside
the image, so that a digit is interpolated once however many kinds are on. Shifts alone take a
path with no interpolation: a shift by k pixels is exactly a roll filled with zeros.

Everything is vectorised over the batch (no loop per image) and works in float32; a float64
batch is resampled in float32 and returned in float64. Every random number comes from the
``rng`` passed in, the training run's, so a run is deterministic and a resume bit-identical.
"""

from __future__ import annotations

import functools
import threading
from typing import Protocol

import numpy as np

SIDE = 28  # an MNIST digit is SIDE × SIDE pixels, row-major
_PIXELS = SIDE * SIDE
_CENTRE = (SIDE - 1) / 2
#: The padded frame of the bilinear gather: one row and column of zeros before the image, two
#: after, so that a clipped source coordinate in [0, SIDE + 1] always has its 2×2 neighbourhood
#: inside the frame and reads zeros off the image, with no mask.
_FRAME = SIDE + 2  # top-left corners of the 2×2 neighbourhoods, per axis


class Strengths(Protocol):
    """What ``distort`` reads from its configuration (a ``TrainConfig`` has them all)."""

    shift: int
    rotation: float
    zoom: float
    shear: float
    elastic_alpha: float
    elastic_sigma: float


def distorts(config: Strengths) -> bool:
    """Whether ``config`` distorts anything: any strength above 0 (``elastic_sigma`` is a
    width, not a strength)."""
    return (
        config.shift > 0
        or config.rotation > 0
        or config.zoom > 0
        or config.shear > 0
        or config.elastic_alpha > 0
    )


def distort(
    x: np.ndarray, rng: np.random.Generator, config: Strengths, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Each row of ``x`` distorted afresh, drawing from ``rng`` only.

    x: (n, 784) float32 or float64, pixels in [0, 1) with background 0; never modified.
    Returns (n, 784) of x's dtype, written into ``out`` when given (it must not overlap x).
    With every strength 0 it returns x's values exactly and draws nothing.
    """
    if x.ndim != 2 or x.shape[1] != _PIXELS:
        raise ValueError(f"distort takes (n, {_PIXELS}) images; got shape {x.shape}")
    if out is None:
        out = np.empty(x.shape, dtype=x.dtype)
    if not distorts(config):
        out[...] = x
        return out
    for lo in range(0, len(x), _CHUNK):
        _distort(x[lo : lo + _CHUNK], rng, config, out[lo : lo + _CHUNK])
    return out


#: Images distorted at a time: bounds the scratch memory each thread keeps (about 90 kB an
#: image, 23 MB at most) whatever the batch size.
_CHUNK = 256


def _distort(x: np.ndarray, rng: np.random.Generator, config: Strengths, out: np.ndarray) -> None:
    n = len(x)
    shifts = rng.integers(-config.shift, config.shift + 1, size=(n, 2)) if config.shift else None
    if config.rotation or config.zoom or config.shear or config.elastic_alpha:
        _resample(x, _grid(n, rng, config, shifts), out)
    else:
        _shifted(x, shifts, config.shift, out)


class _Scratch(threading.local):
    """Scratch arrays kept from call to call, one set per thread. Allocated afresh they cost
    more than the arithmetic: glibc hands freed blocks of a few hundred kB back to the system
    and every call faulted them in again (4.4 ms a batch of 128 against 1.1 ms reused)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(
        self, name: str, n: int, shape: tuple[int, ...], dtype: type = np.float32
    ) -> np.ndarray:
        """The first ``n`` rows of this thread's array ``name`` of rows ``shape``: zeros when
        it is made, and whatever was last written to it after."""
        kept = self.arrays.get(name)
        if kept is None or len(kept) < n or kept.shape[1:] != shape or kept.dtype != dtype:
            kept = self.arrays[name] = np.zeros((n, *shape), dtype=dtype)
        return kept[:n]


_SCRATCH = _Scratch()


def _shifted(x: np.ndarray, shifts: np.ndarray, most: int, out: np.ndarray) -> None:
    """Each image of ``x`` moved by its ``shifts`` (n, 2) = (down, right) whole pixels into
    ``out``, zeros coming in: one gather from a zero-padded copy, no interpolation."""
    n, side = len(x), SIDE + 2 * most
    padded = _SCRATCH.get("padded", n, (side, side), x.dtype)  # its border is never written
    padded[:, most : most + SIDE, most : most + SIDE] = x.reshape(n, SIDE, SIDE)
    # Output pixel (r, c) reads input (r - down, c - right): padded (r - down + most, ...).
    start = np.arange(n) * side * side + (most - shifts[:, 0]) * side + (most - shifts[:, 1])
    index = _SCRATCH.get("shift index", n, (_PIXELS,), np.intp)
    np.add(_window(side), start[:, None], out=index)
    np.take(padded.reshape(-1), index, out=out)


@functools.cache
def _window(side: int) -> np.ndarray:
    """(784,): where each pixel of the SIDE × SIDE window at the corner of a (side, side) image
    is in that image, row-major."""
    rows, cols = np.divmod(np.arange(_PIXELS), SIDE)
    index = rows * side + cols
    index.flags.writeable = False
    return index


def _grid(
    n: int, rng: np.random.Generator, config: Strengths, shifts: np.ndarray | None
) -> np.ndarray:
    """Where each output pixel samples its image: (n, 2, 784) float32 source coordinates
    (column, row) in the padded frame of ``_resample``.

    The affine map M = rotation · scale · shear turns a digit about the centre, then its shift
    moves it; sampling runs that backwards, source = M⁻¹(target − centre − shift) + centre, and
    adds the elastic field at each target pixel to the source coordinates (Simard's
    formulation). In image coordinates (x right, y down) rotating by θ counter-clockwise as seen
    is x' = x cos θ + y sin θ, y' = −x sin θ + y cos θ; the shear is x' = x + k·y.
    """
    theta = np.deg2rad(rng.uniform(-config.rotation, config.rotation, n)) if config.rotation else 0
    scale = rng.uniform(1 - config.zoom, 1 + config.zoom, n) if config.zoom else 1
    slope = rng.uniform(-config.shear, config.shear, n) if config.shear else 0
    cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
    # M⁻¹ = shear(−k) · scale(1/s) · rotation(−θ), one 2×2 matrix per image, then the
    # translation, then 1 for the elastic field's constant (its basis row).
    coef = np.zeros((n, 2, 4))
    coef[:, 0, 0] = cos - slope * sin
    coef[:, 0, 1] = -sin - slope * cos
    coef[:, 1, 0] = sin
    coef[:, 1, 1] = cos
    coef[:, :, 2] = _CENTRE + 1  # + 1: the padded frame
    if shifts is not None:  # M⁻¹ applied to the shift (right, down)
        coef[:, :, 2] -= np.einsum("nij,nj->ni", coef[:, :, :2], shifts[:, ::-1])
    basis = np.empty((4, _PIXELS), dtype=np.float32)
    basis[:3] = _basis()
    basis[3] = 0
    grid = _SCRATCH.get("grid", n, (2, _PIXELS))
    if config.elastic_alpha:
        gauss, mean = _smoothing(float(config.elastic_sigma))
        basis[3] = -2 * config.elastic_alpha * mean
        coef[:, :, 3] = 1
    np.matmul(coef.reshape(2 * n, 4).astype(np.float32), basis, out=grid.reshape(2 * n, _PIXELS))
    if config.elastic_alpha:
        _add_elastic(grid, rng, gauss, 2 * config.elastic_alpha)
    return grid


@functools.cache
def _basis() -> np.ndarray:
    """(3, 784) float32: each pixel's column and row relative to the centre, and a 1."""
    rows, cols = np.divmod(np.arange(_PIXELS), SIDE)
    basis = np.stack([cols - _CENTRE, rows - _CENTRE, np.ones(_PIXELS)]).astype(np.float32)
    basis.flags.writeable = False
    return basis


def _add_elastic(
    grid: np.ndarray, rng: np.random.Generator, gauss: np.ndarray, scale: float
) -> None:
    """Add to ``grid`` (n, 2, 784) Simard's displacement fields less their constant part:
    2α·G·U·G for noise U uniform in [0, 1) per pixel and axis, ``gauss`` being G and
    ``scale`` 2α.

    With the constant −2α·G·(½)·G that ``_grid`` adds through its basis, that is α·G·(2U − 1)·G:
    noise uniform in [-1, 1) smoothed by the Gaussian G (separable: G·V·G smooths the rows of V
    and then its columns) and scaled by α. Since the noise is independent per pixel, it is drawn
    straight into the layout the two matrix products want, (28, 2n·28) and then (2n·28, 28):
    block i of the first product is G·Uᵢ, and row (r, i) of the second the row r of G·Uᵢ·G.
    """
    n = len(grid)
    fields = 2 * n  # one per image and axis
    noise = rng.random(dtype=np.float32, out=_SCRATCH.get("noise", n, (2 * _PIXELS,)))
    half = _SCRATCH.get("half", n, (2 * _PIXELS,)).reshape(SIDE, fields * SIDE)
    np.matmul(gauss, noise.reshape(SIDE, fields * SIDE), out=half)
    smooth = _SCRATCH.get("smooth", n, (2 * _PIXELS,)).reshape(SIDE * fields, SIDE)
    np.matmul(half.reshape(SIDE * fields, SIDE), gauss * np.float32(scale), out=smooth)
    # smooth[r, i, c] is pixel (r, c) of field i.
    grid.reshape(fields, SIDE, SIDE)[...] += smooth.reshape(SIDE, fields, SIDE).transpose(1, 0, 2)


@functools.lru_cache(maxsize=8)
def _smoothing(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The (28, 28) Gaussian smoothing matrix G of width ``sigma`` (symmetric; the kernel is
    normalised over every offset within an image, zero beyond its edges), and G·(½)·G (784,),
    the smoothing of the noise's mean. float32, read-only."""
    offsets = np.arange(SIDE)
    kernel = np.exp(-((offsets[:, None] - offsets[None, :]) ** 2) / (2 * sigma**2))
    kernel /= np.exp(-(np.arange(-SIDE + 1, SIDE) ** 2) / (2 * sigma**2)).sum()
    mean = (kernel @ np.full((SIDE, SIDE), 0.5) @ kernel).reshape(-1)
    gauss, mean = kernel.astype(np.float32), mean.astype(np.float32)
    gauss.flags.writeable = mean.flags.writeable = False
    return gauss, mean


def _resample(x: np.ndarray, grid: np.ndarray, out: np.ndarray) -> None:
    """Bilinear resampling of each image of ``x`` (n, 784) at its ``grid`` (n, 2, 784; used up
    as scratch), zero outside the image, into ``out``.

    The 2×2 neighbourhood of every corner of the padded frame is laid out as four float32 side
    by side, viewed as one 16-byte item, so that a single ``take`` gathers all four taps of
    every output pixel (four gathers of one float32 from a padded image: 20% slower in all).
    """
    n = len(x)
    taps = _SCRATCH.get("taps", n, (_FRAME, _FRAME, 4))  # what is not written here stays 0
    image = x.reshape(n, SIDE, SIDE)
    # Pixel (r, c) sits at (r + 1, c + 1) in the padded frame: the top-left tap of the corner
    # (r + 1, c + 1), the top-right of (r + 1, c), the bottom-left of (r, c + 1), ...
    taps[:, 1 : SIDE + 1, 1 : SIDE + 1, 0] = image
    taps[:, 1 : SIDE + 1, 0:SIDE, 1] = image
    taps[:, 0:SIDE, 1 : SIDE + 1, 2] = image
    taps[:, 0:SIDE, 0:SIDE, 3] = image
    # Clipped into [0, SIDE + 1], a coordinate a pixel or more off the image lands where every
    # tap is in the zero border, and every corner's neighbours stay inside the frame: no mask.
    np.clip(grid, 0, SIDE + 1, out=grid)
    corner = np.floor(grid, out=_SCRATCH.get("corner", n, (2, _PIXELS)))
    grid -= corner  # now the fractions
    flat = _SCRATCH.get("flat", n, (_PIXELS,))
    np.multiply(corner[:, 1], _FRAME, out=flat)
    flat += corner[:, 0]
    flat += _starts(n)  # each image's first corner; exact in float32: integers below 2**24
    index = _SCRATCH.get("index", n, (_PIXELS,), np.intp)
    index[...] = flat
    gathered = _SCRATCH.get("gathered", n, (_PIXELS,), np.complex128)
    np.take(taps.reshape(-1).view(np.complex128), index, out=gathered)
    # Arithmetic on every fourth float32 runs six times slower than on contiguous arrays
    # (no SIMD): the taps are copied apart first, then interpolated across and down.
    top_left, top_right, bottom_left, bottom_right = apart = _SCRATCH.get("apart", 4, (n, _PIXELS))
    np.copyto(apart, gathered.view(np.float32).reshape(n, _PIXELS, 4).transpose(2, 0, 1))
    across_x, down_y = grid[:, 0], grid[:, 1]
    top_right -= top_left
    top_right *= across_x
    top_right += top_left  # the top row, interpolated across
    bottom_right -= bottom_left
    bottom_right *= across_x
    bottom_right += bottom_left  # the bottom row
    bottom_right -= top_right
    bottom_right *= down_y
    np.add(top_right, bottom_right, out=out)


@functools.lru_cache(maxsize=4)
def _starts(n: int) -> np.ndarray:
    """(n, 1) float32: where each of n images starts in the flattened corners of the frame."""
    starts = (np.arange(n, dtype=np.float32) * (_FRAME * _FRAME))[:, None]
    starts.flags.writeable = False
    return starts

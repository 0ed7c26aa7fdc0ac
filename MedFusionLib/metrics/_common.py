"""Shared helpers of the fusion metrics: input checks, the 8-bit convention, MATLAB-style filters.

Every metric works on **8-bit grey levels**: integers 0..255 held as float64 (the convention of
the reference implementations the fusion literature reports with, which read 8-bit image files,
see ``metrics-and-baselines.md`` §0). Inputs in ``[0, data_range]`` are mapped there by
``round(x * 255 / data_range)`` (halves up), the quantisation an 8-bit result file has. So the
score of a fused volume held in memory as floats equals the score of the 8-bit image the user
saves, and an 8-bit image read through float32 scores exactly as its integers do (Fast-FMI,
which bins grey levels, otherwise collapses on sub-level noise).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from scipy import ndimage

from ..errors import InvalidInputError

__all__: list[str] = []  # private module (GREY_SCALE is exported by the package)

#: How every image is scored (recorded in the metrics JSON and the compare report).
GREY_SCALE = "8-bit: round(x * 255 / data_range), integers 0..255"

#: Relative slack allowed outside [0, data_range] (float rounding of the fusion methods).
_RANGE_SLACK = 1e-3


def resolve_data_range(x: np.ndarray, data_range: float | None, func: str) -> float:
    """The intensity range of ``x``: ``data_range`` if given, 255 for uint8, 1 for bool."""
    if data_range is not None:
        data_range = float(data_range)
        if not np.isfinite(data_range) or data_range <= 0:
            raise InvalidInputError(f"{func}: data_range must be a positive number, got {data_range}.")
        return data_range
    if x.dtype == np.uint8:
        return 255.0
    if x.dtype == np.bool_:
        return 1.0
    raise InvalidInputError(
        f"{func} needs data_range for {x.dtype} input (the intensity span of the images, e.g. "
        "data_range=1.0 for [0, 1] data or 255.0 for 0..255 grey levels)."
    )


def to_grey255(x, data_range: float | None, *, name: str, func: str) -> np.ndarray:
    """Validate one 2D image and return its 8-bit grey levels: integers 0..255 as float64.

    ``round(x * 255 / data_range)`` with halves rounded up; values within the float slack
    outside ``[0, data_range]`` are clipped. Integer 0..255 input (``uint8``, or any dtype with
    ``data_range=255``) is returned unchanged.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise InvalidInputError(
            f"{func}: {name} must be a 2D image (H, W), got shape {x.shape}; use "
            "MedFusionLib.metrics.volume_metrics for 3D volumes."
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise InvalidInputError(f"{func}: {name} must be numeric, got dtype {x.dtype}.")
    rng = resolve_data_range(x, data_range, func)
    y = x.astype(np.float64) * (255.0 / rng)
    if not np.all(np.isfinite(y)):
        raise InvalidInputError(f"{func}: {name} contains NaN or Inf values.")
    lo, hi = float(y.min()), float(y.max())
    if lo < -_RANGE_SLACK * 255.0 or hi > 255.0 * (1 + _RANGE_SLACK):
        raise InvalidInputError(
            f"{func}: {name} has values in [{lo * rng / 255:.6g}, {hi * rng / 255:.6g}], outside "
            f"[0, data_range={rng:g}]; normalise the image first (MedFusionLib.normalize) or pass "
            "the right data_range."
        )
    return np.floor(np.clip(y, 0.0, 255.0) + 0.5)


def check_same_shape(shapes: dict[str, tuple], func: str) -> None:
    """Raise if the named shapes differ."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise InvalidInputError(
            f"{func}: the images must have the same shape, got {desc}; resample them onto one grid "
            "first (MedFusionLib.registration.resample_to)."
        )


def check_min_side(shape, minimum: int, func: str) -> None:
    """Raise if either side of a 2D ``shape`` is below ``minimum`` pixels."""
    if min(shape) < minimum:
        raise InvalidInputError(
            f"{func} needs images of at least {minimum} x {minimum} pixels, got {shape[0]} x "
            f"{shape[1]}."
        )


# --------------------------------------------------------------------------------------------
# MATLAB conventions


def round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: halves go away from zero (numpy rounds half to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def normalize1(x: np.ndarray) -> np.ndarray:
    """Liu's ``normalize1``: min-max to 0..255 and round to integers (float64 output).

    An all-zero image is returned unchanged; a constant non-zero image (0/0 in the reference)
    becomes all zeros. Exact ties (k + 0.5) round up even when float rounding of a rescaled input
    puts them a hair below, so the result is invariant to a positive affine map of ``x``.
    """
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return np.zeros_like(x, dtype=np.float64)
    return np.floor((x - lo) / (hi - lo) * 255.0 + (0.5 + 1e-9))


def gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1D Gaussian whose outer product equals ``fspecial('gaussian', size, sigma)``.

    ``fspecial`` zeroes entries below ``eps * max``; for the windows used here (size <= 17 with
    sigma >= size / 5 or 1.5) no entry is that small, so the separable form is exact.
    """
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """MATLAB ``filter2(g g^T, x, 'valid')`` for a symmetric separable 1D kernel ``g`` (odd length)."""
    h = len(g) // 2
    y = ndimage.correlate1d(x, g, axis=0, mode="constant")
    y = ndimage.correlate1d(y, g, axis=1, mode="constant")
    return y[h:x.shape[0] - h, h:x.shape[1] - h]


def filter_same_separable(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """MATLAB ``filter2(g g^T, x, 'same')`` (zero padding) for a separable kernel; real input."""
    y = ndimage.correlate1d(x, g, axis=0, mode="constant")
    return ndimage.correlate1d(y, g, axis=1, mode="constant")


def correlate_same(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """MATLAB ``filter2(kernel, x, 'same')``: correlation with zero padding (odd kernel)."""
    return ndimage.correlate(x, np.asarray(kernel, dtype=np.float64), mode="constant")


def convolve_same(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """MATLAB ``conv2(x, kernel, 'same')``: convolution with zero padding (odd kernel)."""
    return ndimage.convolve(x, np.asarray(kernel, dtype=np.float64), mode="constant")


def freqspace_grid(shape) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``[u, v] = freqspace([rows, cols], 'meshgrid')``: u varies along columns."""
    rows, cols = shape
    fu = (np.arange(cols) - cols // 2) * 2.0 / cols
    fv = (np.arange(rows) - rows // 2) * 2.0 / rows
    return np.meshgrid(fu, fv)


def block_reduce_padded(x: np.ndarray, size: int, func: str) -> np.ndarray:
    """MATLAB ``blkproc(x, [size size], fun)``: non-overlapping blocks, partial blocks zero-padded.

    ``func`` is ``"sum"`` or ``"mean"`` (the mean divides by ``size**2``, padding included).
    """
    rows, cols = x.shape
    pr, pc = (-rows) % size, (-cols) % size
    if pr or pc:
        x = np.pad(x, ((0, pr), (0, pc)))
    r, c = x.shape[0] // size, x.shape[1] // size
    s = x.reshape(r, size, c, size).sum(axis=(1, 3))
    return s / (size * size) if func == "mean" else s


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """MATLAB ``corr2``: Pearson correlation over all pixels; 0 when either image is constant."""
    xm = x - x.mean()
    ym = y - y.mean()
    den = np.sqrt((xm * xm).sum() * (ym * ym).sum())
    if den == 0 or not np.isfinite(den):
        return 0.0
    return float((xm * ym).sum() / den)


def safe_ratio(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    """``num / den`` with ``fill`` where the quotient is 0/0 (other divisions by 0 give +-inf)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.asarray(num, dtype=np.float64) / den
    return np.where(np.isnan(r), fill, r)


# --------------------------------------------------------------------------------------------
# Shared intermediate results


class Triplet:
    """Two sources and a fused image as 8-bit grey levels, with cached shared intermediates.

    ``compute_metrics`` builds one per slice so that, e.g., the joint histograms are computed once
    for MI, FF, FS, FI, NMI, Q_TE and Q_NCIE.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, f: np.ndarray):
        self.a, self.b, self.f = a, b, f
        self._cache: dict = {}

    def cached(self, key, compute):
        """Return ``compute()``, evaluated once per key."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @cached_property
    def quantised(self) -> dict[str, np.ndarray]:
        """``normalize1`` of each image as int64 bin indices 0..255 (MI-family quantisation)."""
        return {k: normalize1(getattr(self, k)).astype(np.int64) for k in "abf"}


def prepare(a, b, f, data_range, func: str) -> Triplet:
    """Validate a source/source/fused triplet and quantise it to 8-bit grey levels."""
    check_same_shape({"source a": np.shape(a), "source b": np.shape(b), "fused": np.shape(f)}, func)
    return Triplet(to_grey255(a, data_range, name="source a", func=func),
                   to_grey255(b, data_range, name="source b", func=func),
                   to_grey255(f, data_range, name="fused", func=func))


def prepare_fused(f, data_range, func: str) -> np.ndarray:
    """Validate a fused image alone and quantise it to 8-bit grey levels."""
    return to_grey255(f, data_range, name="fused", func=func)

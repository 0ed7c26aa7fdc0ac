"""Frequency responses of the NSCT and NSST filter banks: grids, the nonsubsampled pyramid's
filters and the directional windows (float64 numpy, computed once per size; see
:mod:`MedFusionLib.transforms._frame` for how they make a transform)."""

from __future__ import annotations

from math import comb

import numpy as np

from .. import optional

pywt = optional.lazy("pywt", what="the NSCT/NSST '9-7' pyramid filters")

__all__ = [
    "PYRAMID_FILTERS",
    "MARGIN",
    "fft_size",
    "symmetric_indices",
    "frequency_grid",
    "pyramid_filters_1d",
    "pyramid_responses",
    "pseudo_polar_coordinate",
    "partition_windows",
    "tree_windows",
]

#: Pyramid filter families (see :func:`pyramid_filters_1d`).
PYRAMID_FILTERS = ("maxflat", "9-7")

#: Symmetric padding added on each side before the FFT, in pixels (at least; the padded size is
#: then rounded up to an FFT-friendly size).
MARGIN = 16


# ------------------------------------------------------------------------------------------------
# Grids and padding
# ------------------------------------------------------------------------------------------------

def fft_size(n: int) -> int:
    """Smallest even integer ``>= n`` whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    m = max(2, int(n) + (int(n) % 2))
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2


def symmetric_indices(n: int, before: int, after: int) -> np.ndarray:
    """Indices into an axis of length ``n`` that extend it by half-sample symmetry.

    Equivalent to ``np.pad(..., mode="symmetric")`` (``... 1 0 | 0 1 ... n-1 | n-1 n-2 ...``) but
    valid for pads longer than the axis (the reflection repeats).
    """
    idx = np.arange(-before, n + after) % (2 * n)
    return np.where(idx >= n, 2 * n - 1 - idx, idx)


def frequency_grid(hp: int, wp: int, *, full: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Angular frequencies ``(w_y, w_x)`` of the DFT bins, shapes ``(hp, 1)`` and ``(1, m)``.

    ``m = wp // 2 + 1`` (the rfft layout, ``w_x`` in [0, pi]) or, with ``full=True``, ``m = wp``
    (the fft layout, ``w_x`` in [-pi, pi)).
    """
    wy = 2 * np.pi * np.fft.fftfreq(hp)[:, None]
    wx = 2 * np.pi * (np.fft.fftfreq(wp) if full else np.fft.rfftfreq(wp))[None, :]
    return wy, wx


# ------------------------------------------------------------------------------------------------
# Nonsubsampled pyramid
# ------------------------------------------------------------------------------------------------

def _maxflat_halfband(t: np.ndarray, k: int) -> np.ndarray:
    """Daubechies' maximally flat halfband polynomial ``(1-t)^k sum_{i<k} C(k-1+i, i) t^i``.

    With ``t = sin^2(w/2)`` this is 1 at ``w = 0``, 0 at ``w = pi``, 1/2 at ``w = pi/2``, with
    ``k`` vanishing derivatives at both ends (I. Daubechies, Ten Lectures on Wavelets, 1992,
    Sec. 6.1).
    """
    return (1 - t) ** k * sum(comb(k - 1 + i, i) * t ** i for i in range(k))


def _symmetric_response(taps, center: int, w: np.ndarray) -> np.ndarray:
    """Zero-phase frequency response of a symmetric FIR filter normalised to 1 at ``w = 0``."""
    h = np.asarray(taps, dtype=np.float64)
    h = h / h.sum()
    n = np.arange(h.size) - center
    out = np.zeros_like(w, dtype=np.float64)
    for coef, shift in zip(h, n):
        if coef != 0.0:
            out = out + coef * np.cos(shift * w)
    return out


def pyramid_filters_1d(name: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1D analysis and synthesis lowpass responses ``(h0(w), g0(w))`` of a pyramid family.

    * ``'maxflat'``: ``h0 = g0 = sqrt(P_2(sin^2(w/2)))`` with ``P_2`` the maximally flat halfband
      polynomial of order 2 (a tight, orthogonal-like split).
    * ``'9-7'``: the Cohen-Daubechies-Feauveau 9/7 biorthogonal pair (analysis 9 taps, synthesis
      7 taps, coefficients from PyWavelets' ``'bior4.4'``), whose product is ``P_4``.
    """
    if name == "maxflat":
        r = np.sqrt(np.clip(_maxflat_halfband(np.sin(w / 2) ** 2, 2), 0.0, 1.0))
        return r, r
    if name == "9-7":
        wav = pywt.Wavelet("bior4.4")
        return (_symmetric_response(wav.dec_lo, 5, w), _symmetric_response(wav.rec_lo, 4, w))
    raise ValueError(f"unknown pyramid filter {name!r}; expected one of {PYRAMID_FILTERS}.")


def pyramid_responses(name: str, wy: np.ndarray, wx: np.ndarray, nlevels: int):
    """Frequency responses of a ``nlevels``-level nonsubsampled pyramid.

    Returns
    -------
    low_a, low_s : ndarray
        Analysis and synthesis responses of the final lowpass.
    bands : list of (ndarray, ndarray)
        ``(analysis, synthesis)`` responses of the band-pass levels, **coarse to fine**.

    ``low_a * low_s + sum(a * s for a, s in bands) == 1`` everywhere (telescoping Bezout
    identity).
    """
    cum_a = np.ones(np.broadcast_shapes(wy.shape, wx.shape))
    cum_s = cum_a.copy()
    bands = []
    for j in range(nlevels):  # j = 0 is the finest level
        hy, gy = pyramid_filters_1d(name, (2 ** j) * wy)
        hx, gx = pyramid_filters_1d(name, (2 ** j) * wx)
        h0, g0 = hy * hx, gy * gx
        h1 = np.sqrt(np.clip(1.0 - h0 * g0, 0.0, None))
        bands.append((cum_a * h1, cum_s * h1))
        cum_a = cum_a * h0
        cum_s = cum_s * g0
    return cum_a, cum_s, bands[::-1]


# ------------------------------------------------------------------------------------------------
# Directional windows
# ------------------------------------------------------------------------------------------------

def pseudo_polar_coordinate(wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """Orientation of each frequency as a pseudo-polar slope coordinate ``theta`` in [0, 4).

    In the horizontal cone ``|w_y| <= |w_x|``, ``theta = 1 + w_y / w_x`` (in [0, 2]); in the
    vertical cone ``theta = 3 - w_x / w_y`` (in (2, 4)). ``theta`` is continuous modulo 4, equal
    for ``w`` and ``-w``, and equal slope steps are equal ``theta`` steps, as on the pseudo-polar
    grid of the discrete shearlet transform (the shears ``s`` map slopes linearly). The origin
    gets 0.
    """
    wy, wx = np.broadcast_arrays(wy, wx)
    horizontal = np.abs(wy) <= np.abs(wx)
    with np.errstate(divide="ignore", invalid="ignore"):
        th_h = 1.0 + wy / wx
        th_v = 3.0 - wx / wy
    theta = np.where(horizontal, th_h, th_v)
    return np.where((wx == 0) & (wy == 0), 0.0, theta) % 4.0


def _meyer_nu(x: np.ndarray) -> np.ndarray:
    """Meyer's auxiliary function: 0 for x <= 0, 1 for x >= 1, ``nu(x) + nu(1-x) = 1``."""
    x = np.clip(x, 0.0, 1.0)
    return x ** 4 * (35 - 84 * x + 70 * x ** 2 - 20 * x ** 3)


def _bump(x: np.ndarray, transition: float) -> np.ndarray:
    """Window that is 1 on ``[t, 1 - t]``, 0 outside ``[-t, 1 + t]``, with Meyer sine/cosine
    transitions of half-width ``t``, so that shifted copies ``_bump(x - k)`` satisfy
    ``sum_k _bump(x - k)**2 = 1``."""
    t = transition
    rise = np.sin(0.5 * np.pi * _meyer_nu((x + t) / (2 * t)))
    fall = np.cos(0.5 * np.pi * _meyer_nu((x - (1 - t)) / (2 * t)))
    return np.where(x < 0.5, rise, fall)


def _circular_offset(r: np.ndarray, k: float, n: float) -> np.ndarray:
    """``r - k`` wrapped into ``[-n/2 + 1/2, n/2 + 1/2)`` so that windows wrap around the circle."""
    return (r - k + n / 2 - 0.5) % n - n / 2 + 0.5


def partition_windows(theta: np.ndarray, n: int, transition: float = 0.25) -> np.ndarray:
    """``n`` directional windows from a uniform smooth partition of the slope circle.

    Window ``k`` covers ``theta`` in ``[4k/n, 4(k+1)/n]`` (shear slopes equally spaced, half the
    windows in each cone when ``n`` is even) with Meyer transitions of half-width
    ``transition`` x (window width). Returns an array ``(n,) + theta.shape`` with
    ``sum_k W_k**2 == 1``.
    """
    r = theta * (n / 4.0)
    out = np.zeros((n,) + theta.shape)
    for k in range(n):
        x = _circular_offset(r, k, n)
        support = np.abs(x - 0.5) < 0.5 + transition  # the window vanishes elsewhere
        out[k][support] = _bump(x[support], transition)
    return out


def tree_windows(theta: np.ndarray, stages: int, transition: float = 0.25) -> np.ndarray:
    """``2**stages`` directional windows from a tree of two-channel fan filter banks.

    Stage 1 is a fan filter pair splitting the horizontal and vertical cones; every further stage
    splits every wedge in two with the same periodic two-channel pair (as the quincunx/
    parallelogram-resampled fan filters of the directional filter bank do). Each stage pair is
    power complementary, so ``sum_k W_k**2 == 1``. Window ``k`` is the product of the stage
    responses along its path in the tree. Every stage uses transitions of the same absolute
    half-width, ``transition`` x (final wedge width), so that a stage's periodic response leaks
    only inside the transition bands of the stages before it.
    """
    windows = np.ones((1,) + theta.shape)
    for m in range(1, stages + 1):
        parts = 2 ** m  # intervals of the circle after this stage
        r = theta * (parts / 4.0)
        t = transition * 2.0 ** (m - stages)
        left = _bump(_circular_offset(r % 2.0, 0, 2), t)  # first half of each pair
        right = np.sqrt(np.clip(1.0 - left ** 2, 0.0, 1.0))
        nxt = np.empty((2 * windows.shape[0],) + theta.shape)
        nxt[0::2] = windows * left
        nxt[1::2] = windows * right
        windows = nxt
    return windows

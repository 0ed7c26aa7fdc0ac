"""Frequency-domain machinery shared by the NSCT and NSST transforms.

Both transforms are undecimated filter banks: every subband has the size of the (padded) image
and is obtained by multiplying the image spectrum by a fixed frequency response. They are built
here from two ingredients:

1. **A nonsubsampled pyramid** (the "à trous" two-channel filter bank iterated with filters
   upsampled by ``2**j``; da Cunha, Zhou and Do 2006, Sec. II-A). At level ``j`` the lowpass is
   ``H0(2^j w)`` (separable, zero phase) and the highpass is ``H1 = G1 = sqrt(1 - H0 G0)``, so the
   Bezout identity ``H0 G0 + H1 G1 = 1`` holds and the pyramid is perfectly reconstructing. With
   ``H0 = G0`` (the ``'maxflat'`` family) the pyramid is a tight frame.
2. **Directional windows** ``D_k(w)`` on each band-pass level, functions of the pseudo-polar
   slope of ``w`` only, with ``sum_k D_k(w)**2 = 1``. Applied in both analysis and synthesis they
   keep perfect reconstruction.

The image is extended by half-sample symmetric padding (as the toolboxes' symmetric extension)
to an FFT-friendly size, the transform is computed with torch FFTs on that grid, and the
reconstruction is cropped back, so ``reconstruct(decompose(x)) == x`` to float32 rounding for any
``H x W`` (odd and non-square included). Fusion (:func:`fuse`) packs the two sources into one
complex image ``a + i b``: since every response is real and even, each subband of both sources is
a single complex inverse FFT (real part: ``a``, imaginary part: ``b``).

All responses are computed once per (size, parameters, device) in float64 numpy and cached as
float32 torch tensors (analysis on the full DFT grid, synthesis in the rfft layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import comb

import numpy as np

__all__ = [
    "FrameBank",
    "Coefficients",
    "PYRAMID_FILTERS",
    "MARGIN",
    "CPU_CHUNK_PIXELS",
    "fft_size",
    "symmetric_indices",
    "frequency_grid",
    "pyramid_filters_1d",
    "pyramid_responses",
    "pseudo_polar_coordinate",
    "partition_windows",
    "tree_windows",
    "make_bank",
    "cached_bank",
    "analysis",
    "synthesis",
    "fuse",
    "decompose",
    "check_levels",
    "check_pfilt",
    "as_batch",
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
        import pywt

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


# ------------------------------------------------------------------------------------------------
# Filter bank object, analysis, synthesis, fusion
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameBank:
    """Frequency responses of one redundant transform on one padded grid (torch tensors).

    Attributes
    ----------
    shape : (int, int)
        Image size ``(H, W)``.
    padded : (int, int)
        FFT grid ``(H_pad, W_pad)``.
    before : (int, int)
        Rows and columns of padding before the image.
    low_analysis_full : Tensor (H_pad, W_pad)
        Analysis response of the lowpass on the full DFT grid (fft layout).
    low_synthesis : Tensor (H_pad, W_pad // 2 + 1)
        Synthesis response of the lowpass (rfft layout).
    band_analysis_full : list of Tensor (n_dir, H_pad, W_pad)
    band_synthesis : list of Tensor (n_dir, H_pad, W_pad // 2 + 1)
        One entry per band-pass level, coarse to fine.

    The analysis responses are stored on the full grid because the fusion packs the two sources
    into one complex image (``a + i b``), whose subbands are then one complex inverse FFT each
    (real part: ``a``'s coefficients, imaginary part: ``b``'s), twice as fast as two real inverse
    FFTs. Every response is real and even on the DFT grid (``R(k) = R(-k)``).
    """

    shape: tuple
    padded: tuple
    before: tuple
    low_analysis_full: object
    low_synthesis: object
    band_analysis_full: list
    band_synthesis: list

    @property
    def low_analysis(self):
        """Analysis response of the lowpass in the rfft layout (a view)."""
        return self.low_analysis_full[..., : self.padded[1] // 2 + 1]

    @property
    def band_analysis(self) -> list:
        """Analysis responses of the band-pass levels in the rfft layout (views)."""
        return [a[..., : self.padded[1] // 2 + 1] for a in self.band_analysis_full]

    @property
    def directions(self) -> list[int]:
        """Number of directional subbands per level, coarse to fine."""
        return [int(a.shape[0]) for a in self.band_analysis]


def make_bank(shape, *, pyramid: str, directions, windows, device: str = "cpu") -> FrameBank:
    """Build a :class:`FrameBank` for images of ``shape``.

    Parameters
    ----------
    shape : (int, int)
        Image size.
    pyramid : str
        Pyramid filter family, one of :data:`PYRAMID_FILTERS`.
    directions : sequence of int
        ``log2`` of the number of directions per level, coarse to fine (0: no directional split).
    windows : callable
        ``windows(theta, log2_directions) -> (2**l,) + theta.shape`` array with unit sum of
        squares (:func:`partition_windows` or :func:`tree_windows` adapted).
    device : str
        Torch device of the tensors.
    """
    import torch

    h, w = (int(s) for s in shape)
    hp, wp = fft_size(h + 2 * MARGIN), fft_size(w + 2 * MARGIN)
    before = (MARGIN + (hp - h - 2 * MARGIN) // 2, MARGIN + (wp - w - 2 * MARGIN) // 2)
    wy, wx = frequency_grid(hp, wp, full=True)
    low_a, low_s, bands = pyramid_responses(pyramid, wy, wx, len(directions))
    theta = pseudo_polar_coordinate(wy, wx)

    def negated(r):
        """``r`` at the DFT bins ``-k`` (indices taken modulo the grid size)."""
        return np.roll(np.flip(r, axis=(-2, -1)), (1, 1), axis=(-2, -1))

    def directional(l):
        if l == 0:
            return np.ones((1,) + theta.shape)
        # A real transform needs R(k) = R(-k) on the DFT grid. The slope of -k equals that of k
        # except on the Nyquist row and column (where -pi maps to itself): symmetrise with the
        # root-mean-square, which keeps sum_k D_k^2 = 1.
        d = windows(theta, l)
        return np.sqrt(0.5 * (d ** 2 + negated(d) ** 2))

    def tensor(x):
        return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device)

    half = wp // 2 + 1
    band_full, band_s = [], []
    for (a, s), l in zip(bands, directions):
        d = directional(int(l))
        band_full.append(tensor(a[None] * d))
        band_s.append(band_full[-1][..., :half] if np.array_equal(a, s)
                      else tensor((s[None] * d)[..., :half]))
    low_full = tensor(low_a)
    low_s_t = low_full[..., :half] if np.array_equal(low_a, low_s) else tensor(low_s[..., :half])
    return FrameBank((h, w), (hp, wp), before, low_full, low_s_t, band_full, band_s)


def _pad(bank: FrameBank, x):
    """Symmetric extension of ``x`` (..., H, W) onto the bank's padded grid."""
    import torch

    h, w = bank.shape
    hp, wp = bank.padded
    iy = symmetric_indices(h, bank.before[0], hp - h - bank.before[0])
    ix = symmetric_indices(w, bank.before[1], wp - w - bank.before[1])
    iy = torch.as_tensor(iy, device=x.device)
    ix = torch.as_tensor(ix, device=x.device)
    return x.index_select(-2, iy).index_select(-1, ix)


def _crop(bank: FrameBank, x):
    (h, w), (t, l) = bank.shape, bank.before
    return x[..., t:t + h, l:l + w]


def analysis(bank: FrameBank, x):
    """Decompose ``x`` (Tensor (N, H, W)) into ``(lowpass, [bands])`` on the padded grid.

    ``lowpass`` is ``(N, H_pad, W_pad)``; ``bands[i]`` is ``(N, n_dir_i, H_pad, W_pad)``, coarse to
    fine.
    """
    import torch

    s = bank.padded
    spec = torch.fft.rfft2(_pad(bank, x))
    low = torch.fft.irfft2(spec * bank.low_analysis, s=s)
    bands = [torch.fft.irfft2(spec[:, None] * a, s=s) for a in bank.band_analysis]
    return low, bands


def synthesis(bank: FrameBank, low, bands):
    """Inverse of :func:`analysis`: ``(N, H, W)`` image from the lowpass and band coefficients."""
    import torch

    spec = torch.fft.rfft2(low) * bank.low_synthesis
    for c, s in zip(bands, bank.band_synthesis):
        spec = spec + (torch.fft.rfft2(c) * s).sum(dim=1)
    return _crop(bank, torch.fft.irfft2(spec, s=bank.padded))


#: Pixels per working chunk of :func:`fuse` on the CPU (four 288 x 288 planes): small enough for
#: the FFTs and the rules to run in cache, which makes them several times faster.
CPU_CHUNK_PIXELS = 4 * 288 * 288


def fuse(bank: FrameBank, a, b, *, fuse_low, fuse_band, chunk_pixels: int | None = -1):
    """Fuse two batches subband by subband without holding the whole decomposition in memory.

    Parameters
    ----------
    bank : FrameBank
    a, b : Tensor (N, H, W)
    fuse_low : callable ``(low_a, low_b) -> low`` on ``(N, H_pad, W_pad)`` tensors.
    fuse_band : callable ``(band_a, band_b, level) -> band`` on ``(n, c, H_pad, W_pad)`` tensors
        (a group of ``n`` slices and ``c`` directions of one level); ``level`` counts from 0 at
        the coarsest band-pass level.
    chunk_pixels : int or None, optional
        Approximate number of coefficient pixels per source processed together; ``None``
        processes every slice and direction of a level at once. The default (-1) is
        :data:`CPU_CHUNK_PIXELS` on the CPU and ``None`` on CUDA.

    Returns
    -------
    Tensor (N, H, W)
        The synthesis of the fused coefficients (not clipped).
    """
    import torch

    if chunk_pixels == -1:
        chunk_pixels = None if a.is_cuda else CPU_CHUNK_PIXELS
    s = bank.padded
    # (N, H_pad, W_pad): F[a] + i F[b], scaled by 1/(H_pad W_pad) once here so that the many
    # inverse transforms below need no scaling pass (norm="forward").
    spec = torch.fft.fft2(_pad(bank, torch.complex(a, b)), norm="forward")
    low = torch.fft.ifft2(spec * bank.low_analysis_full, norm="forward")
    out = torch.fft.rfft2(fuse_low(low.real, low.imag)) * bank.low_synthesis
    del low
    n = a.shape[0]
    plane = s[0] * s[1]
    for level, (an, sy) in enumerate(zip(bank.band_analysis_full, bank.band_synthesis)):
        ndir = an.shape[0]
        if chunk_pixels is None:
            step, group = ndir, n
        else:
            step = min(ndir, max(1, chunk_pixels // plane))
            group = max(1, chunk_pixels // (step * plane))
        for g in range(0, n, group):
            spec_g = spec[g:g + group, None]  # (n, 1, H_pad, W_pad)
            for k in range(0, ndir, step):
                coef = torch.fft.ifft2(spec_g * an[k:k + step], norm="forward")  # (n, c, ...)
                fused = fuse_band(coef.real, coef.imag, level)
                del coef
                out[g:g + group] += (torch.fft.rfft2(fused) * sy[k:k + step]).sum(dim=1)
    return _crop(bank, torch.fft.irfft2(out, s=s))


# ------------------------------------------------------------------------------------------------
# Public decomposition object and helpers used by the transform modules
# ------------------------------------------------------------------------------------------------

@dataclass
class Coefficients:
    """A redundant decomposition of a batch of slices.

    Attributes
    ----------
    lowpass : Tensor (N, H_pad, W_pad)
        Coarsest approximation, on the padded grid.
    bands : list of Tensor (N, n_dir, H_pad, W_pad)
        Directional band-pass subbands, coarse to fine.
    bank : FrameBank
        The filter bank (holds the padding needed to invert).
    """

    lowpass: object
    bands: list
    bank: FrameBank

    def crop(self, coef):
        """The part of a coefficient array (..., H_pad, W_pad) that lies over the image."""
        return _crop(self.bank, coef)


def check_levels(transform: str, levels, *, max_levels: int = 6, max_log2: int = 6) -> tuple:
    """Validate a per-level list of ``log2`` direction counts; return it as a tuple of ints.

    Raises
    ------
    InvalidInputError
        If ``levels`` is not a non-empty sequence of at most ``max_levels`` integers in
        ``[0, max_log2]``.
    """
    import numbers

    from ..errors import InvalidInputError

    msg = (f"{transform}: parameter 'levels' must be a list of 1 to {max_levels} integers in "
           f"[0, {max_log2}] (log2 of the number of directions per level, coarse to fine)")
    if isinstance(levels, str):  # "3,3,4,4" or "3 3 4 4" from a command line
        try:
            levels = [int(v) for v in levels.replace(",", " ").split()]
        except ValueError:
            raise InvalidInputError(f"{msg}; got {levels!r}.") from None
    if isinstance(levels, bytes) or not hasattr(levels, "__len__"):
        raise InvalidInputError(f"{msg}; got {levels!r}.")
    out = []
    for v in levels:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v <= max_log2:
            raise InvalidInputError(f"{msg}; got {list(levels)!r}.")
        out.append(int(v))
    if not 1 <= len(out) <= max_levels:
        raise InvalidInputError(f"{msg}; got {list(levels)!r}.")
    return tuple(out)


def as_batch(x, device):
    """``(x_tensor (N, H, W) float32 on device, squeeze)`` from a 2D/3D array or tensor."""
    import torch

    from ..errors import InvalidInputError

    t = torch.as_tensor(x)
    if t.ndim not in (2, 3) or min(t.shape[-2:]) < 1:
        raise InvalidInputError(f"expected an (H, W) or (N, H, W) image, got shape {tuple(t.shape)}.")
    t = t.to(device=device if device is not None else t.device, dtype=torch.float32)
    return (t[None], True) if t.ndim == 2 else (t, False)


def check_pfilt(transform: str, pfilt) -> str:
    """Validate a pyramid filter name; return it normalised."""
    from ..errors import InvalidInputError

    key = pfilt.strip().lower() if isinstance(pfilt, str) else None
    if key not in PYRAMID_FILTERS:
        raise InvalidInputError(
            f"{transform}: parameter 'pfilt' must be one of "
            f"{', '.join(map(repr, PYRAMID_FILTERS))}; got {pfilt!r}."
        )
    return key


@lru_cache(maxsize=8)
def cached_bank(shape: tuple, levels: tuple, pfilt: str, device: str, directional: str,
                transition: float) -> FrameBank:
    """:func:`make_bank` memoised on its (hashable) arguments.

    ``directional`` is ``"shear"`` (:func:`partition_windows`, NSST) or ``"dfb"``
    (:func:`tree_windows`, NSCT).
    """
    if directional == "shear":
        def windows(theta, l):
            return partition_windows(theta, 2 ** l, transition)
    else:
        def windows(theta, l):
            return tree_windows(theta, l, transition)
    return make_bank(shape, pyramid=pfilt, directions=levels, windows=windows, device=device)


def decompose(x, bank_for, device) -> Coefficients:
    """Analysis of ``x`` ((N, H, W) or (H, W), array or tensor) with ``bank_for(shape, device)``."""
    t, _ = as_batch(x, device)
    bank = bank_for(tuple(t.shape[-2:]), str(t.device))
    low, bands = analysis(bank, t)
    return Coefficients(low, bands, bank)

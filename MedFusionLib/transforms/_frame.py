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
float32 torch tensors (analysis on the full DFT grid, synthesis in the rfft layout). The
responses are in :mod:`._responses`; this module builds the banks and runs them.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .. import optional
from ..errors import InvalidInputError
from ._responses import (MARGIN, PYRAMID_FILTERS, fft_size, frequency_grid, partition_windows,
                         pseudo_polar_coordinate, pyramid_responses, symmetric_indices,
                         tree_windows)

torch = optional.lazy("torch", what="the NSCT/NSST transforms")

__all__ = [
    "FrameBank",
    "Coefficients",
    "CPU_CHUNK_PIXELS",
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
    s = bank.padded
    spec = torch.fft.rfft2(_pad(bank, x))
    low = torch.fft.irfft2(spec * bank.low_analysis, s=s)
    bands = [torch.fft.irfft2(spec[:, None] * a, s=s) for a in bank.band_analysis]
    return low, bands


def synthesis(bank: FrameBank, low, bands):
    """Inverse of :func:`analysis`: ``(N, H, W)`` image from the lowpass and band coefficients."""
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
    t = torch.as_tensor(x)
    if t.ndim not in (2, 3) or min(t.shape[-2:]) < 1:
        raise InvalidInputError(f"expected an (H, W) or (N, H, W) image, got shape {tuple(t.shape)}.")
    t = t.to(device=device if device is not None else t.device, dtype=torch.float32)
    return (t[None], True) if t.ndim == 2 else (t, False)


def check_pfilt(transform: str, pfilt) -> str:
    """Validate a pyramid filter name; return it normalised."""
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

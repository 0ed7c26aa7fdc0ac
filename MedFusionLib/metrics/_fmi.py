"""Feature mutual information (Haghighat), Fast-FMI form, vectorised over all windows.

Every ``w x w`` window (``'valid'`` positions, column-major flattening) of the A/F and B/F feature
images is min-max normalised, turned into a "pdf" and a CDF; the joint pdf is built by Nelsen's
method between the Frechet bounds, and the window's normalised MI is 2 I / (H_A + H_F). The map
value is the mean of the A and B terms; FMI is the mean of the map.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.fft import dctn

from .. import optional
from ..errors import InvalidInputError, UnknownOptionError
from ._common import Triplet, prepare

pywt = optional.lazy("pywt", what="metric FMI_w (wavelet features)")

__all__ = ["fmi", "fmi_pixel", "fmi_dct", "fmi_wavelet", "FMI_FEATURES"]

#: Feature extractors available to :func:`fmi` (MATLAB's ``edge`` is not ported).
FMI_FEATURES = ("none", "gradient", "dct", "wavelet")

_CHUNK = 2048  # windows per vectorised block: the (l, l, chunk) staircase test stays in L2 cache (2048: 0.18 s vs 0.25 s at 4096 per 256x256 slice)


def _rerange(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(), x.max()
    if hi == lo:
        return np.ones_like(x)
    return (x - lo) / (hi - lo)


def _feature(x: np.ndarray, feature: str) -> np.ndarray:
    if feature == "none":
        return x
    if feature == "gradient":  # MATLAB gradient(x) with one output: d/dx only (along columns)
        return np.gradient(x, axis=1)
    if feature == "dct":
        return dctn(x, type=2, norm="ortho")
    # 'wavelet': one level of the discrete Meyer wavelet, [cA cH; cV cD] rescaled to [0, 1].
    # PyWavelets' 'dmey' (62 taps) is not MATLAB's filter, so values differ from fmi.m.
    ca, (ch, cv, cd) = pywt.dwt2(x, "dmey", mode="symmetric")
    return _rerange(np.block([[ca, ch], [cv, cd]]))


def _windows(x: np.ndarray, w: int) -> np.ndarray:
    """(w*w, K) array of all K valid windows, one per column, each flattened column-major
    (MATLAB ``x(:)``); the window axis first keeps every vectorised step on long rows."""
    v = sliding_window_view(x, (w, w))  # (rows, cols, p, q)
    return np.ascontiguousarray(v.transpose(3, 2, 0, 1)).reshape(w * w, -1)


def _minmax(x: np.ndarray) -> np.ndarray:
    """Min-max normalise each column; a constant column becomes ones (as ``fmi.m``)."""
    lo = x.min(axis=0)
    span = x.max(axis=0) - lo
    flat = span == 0
    out = (x - lo) / np.where(flat, 1.0, span)
    out[:, flat] = 1.0
    return out


def _log2_or_0(p: np.ndarray) -> np.ndarray:
    """log2|p| where p != 0, else 0."""
    ap = np.abs(p)
    return np.log2(ap + (ap == 0))


def _gather(a: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``a[rows[q, k], k]`` for a C-contiguous (l, K) array ``a``."""
    return np.take(a.ravel(), rows * a.shape[1] + cols)


def _nfmi_columns(x: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Normalised FMI of each column pair of min-max normalised windows ``x``, ``f`` (l, K).

    Equivalent to ``fmi.m``'s per-window loops, reorganised for speed:

    * Nelsen's joint pdf is coef * M + (1 - coef) * p_F p_X^T, where M is the cell mass of the
      upper Frechet bound (c >= 0) or, for c < 0, of the lower bound, which is the upper bound of
      F and the reversed X. M is a "staircase" of at most 2l - 1 non-zero cells: merging the two
      CDFs' breakpoints, each interval between consecutive breakpoints is one cell. The interval
      ending at F breakpoint i lies in row i and in the column of the X breakpoints below it; the
      one ending at X breakpoint j likewise.
    * The bound's covariance sum_ij [H(i, j) - F(i) X(j)] is, by Hoeffding's identity, the
      covariance of the window indices under M.
    * The joint entropy is the closed form of the product part over all cells,
      -(1 - coef) [log2|1 - coef| - H_F - H_X], corrected on the staircase cells only.
    """
    l, k = x.shape
    xp = x / x.sum(axis=0)
    fp = f / f.sum(axis=0)
    xt = xp - xp.mean(axis=0)
    ft = fp - fp.mean(axis=0)
    num = (xt * ft).sum(axis=0)
    den = np.sqrt((xt * xt).sum(axis=0) * (ft * ft).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(num == 0, 0.0, num / den)

    idx = np.arange(l, dtype=np.float64)[:, None]
    ex, ef = (xp * idx).sum(axis=0), (fp * idx).sum(axis=0)
    xsd = np.sqrt(np.maximum((xp * idx * idx).sum(axis=0) - ex ** 2, 0.0))
    fsd = np.sqrt(np.maximum((fp * idx * idx).sum(axis=0) - ef ** 2, 0.0))
    lxp, lfp = _log2_or_0(xp), _log2_or_0(fp)
    hx = -(xp * lxp).sum(axis=0)
    hf = -(fp * lfp).sum(axis=0)

    neg = c < 0  # lower Frechet bound: use X reversed
    xq = np.where(neg, xp[::-1], xp)
    lxq = np.where(neg, lxp[::-1], lxp)
    exq = np.where(neg, (l - 1) - ex, ex)

    # the staircase, F breakpoints first on ties
    fc = np.cumsum(fp, axis=0)
    xc = np.cumsum(xq, axis=0)
    below = xc[None, :, :] < fc[:, None, :]  # [i, j]: X breakpoint j precedes F breakpoint i
    r = below.sum(axis=1)  # column of the interval ending at F breakpoint i
    s = l - below.sum(axis=0)  # row of the interval ending at X breakpoint j
    cols = np.arange(k)
    zero = np.zeros((1, k))
    fc0 = np.concatenate([zero, fc])  # fc0[i] = F(i - 1), F(-1) = 0
    xc0 = np.concatenate([zero, xc])
    m_f = fc - np.maximum(fc0[:-1], _gather(xc0, r, cols))
    m_f[(r >= l) | (m_f < 0)] = 0.0
    m_x = xc - np.maximum(xc0[:-1], _gather(fc0, s, cols))
    m_x[(s >= l) | (m_x < 0)] = 0.0
    r = np.minimum(r, l - 1)
    s = np.minimum(s, l - 1)

    cov = (m_f * idx * r).sum(axis=0) + (m_x * s * idx).sum(axis=0) - ef * exq
    cov = np.where(neg, -cov, cov)
    sd = fsd * xsd
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = c / (cov / sd)
    coef = np.where((sd == 0) | (c == 0) | ~np.isfinite(coef), 0.0, coef)

    w = 1.0 - coef
    log_w = _log2_or_0(w)
    hj = -w * (log_w - (hx + hf))
    mass = np.concatenate([m_f, m_x])
    p = np.concatenate([fp * _gather(xq, r, cols), _gather(fp, s, cols) * xq])
    log_p = np.concatenate([lfp + _gather(lxq, r, cols), _gather(lfp, s, cols) + lxq])
    joint = coef * mass + w * p
    corr = -joint * _log2_or_0(joint) + (w * p) * (log_w + log_p)
    hj = hj + np.where(mass > 0, corr, 0.0).sum(axis=0)

    mi = hx + hf - hj
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((mi == 0) | (hx + hf == 0), 0.0, 2.0 * mi / (hx + hf))


def _fmi_map_terms(af: np.ndarray, bf: np.ndarray, ff: np.ndarray, w: int):
    """Per-window fmi_AF and fmi_BF for feature images ``af``, ``bf``, ``ff``."""
    wa, wb, wf = _windows(af, w), _windows(bf, w), _windows(ff, w)
    n = wa.shape[1]
    fmi_af = np.ones(n)
    fmi_bf = np.ones(n)
    for s in range(0, n, _CHUNK):
        sl = slice(s, s + _CHUNK)
        a, b, f = wa[:, sl], wb[:, sl], wf[:, sl]
        eq_af = np.all(a == f, axis=0)
        f_norm = _minmax(f)
        # fmi.m normalises fSub in place in the A branch, so the B branch's equality test sees
        # the normalised window wherever the A branch ran.
        f_seen_by_b = np.where(eq_af, f, f_norm)
        eq_bf = np.all(b == f_seen_by_b, axis=0)
        todo = ~eq_af
        if todo.any():
            fmi_af[sl][todo] = _nfmi_columns(_minmax(a[:, todo]), f_norm[:, todo])
        todo = ~eq_bf
        if todo.any():
            fmi_bf[sl][todo] = _nfmi_columns(_minmax(b[:, todo]), f_norm[:, todo])
    return fmi_af, fmi_bf


def _fmi(t: Triplet, feature: str = "none", window: int = 3, reduce: str = "mean") -> float:
    af, bf, ff = (_feature(x, feature) for x in (t.a, t.b, t.f))
    fmi_af, fmi_bf = _fmi_map_terms(af, bf, ff, window)
    total = fmi_af + fmi_bf
    return float(total.mean() / 2.0 if reduce == "mean" else total.mean())


def fmi(source_a, source_b, fused, *, data_range=None, feature: str = "none", window: int = 3,
        reduce: str = "mean") -> float:
    """Feature mutual information (Fast-FMI, Haghighat & Razian 2014).

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
        Co-registered images with values in ``[0, data_range]``; at least ``window`` pixels a side.
    data_range : float, optional
        Required for float input.
    feature : {"none", "gradient", "dct", "wavelet"}, optional
        Feature image: raw pixels (FMI_pixel), d/dx by central differences (FMI_g), the
        orthonormal 2D DCT-II (FMI_dct) or one level of the discrete Meyer wavelet rescaled to
        [0, 1] (FMI_w; PyWavelets' 62-tap 'dmey', not MATLAB's, so FMI_w differs from ``fmi.m``).
        Always pass it explicitly: ``fmi.m`` defaults to 'edge', which is not ported.
    window : int, optional
        Odd sliding-window size (3 in the literature).
    reduce : {"mean", "sum"}, optional
        ``"mean"`` gives the standard (fmi_AF + fmi_BF)/2 averaged over windows, range [0, 1];
        ``"sum"`` gives fmi_AF + fmi_BF, range [0, 2].

    Returns
    -------
    float
        Direction: higher is better. Range [0, 1] (``reduce="mean"``).

    Notes
    -----
    Reproduces ``fmi.m`` including its in-place normalisation quirk (the B branch compares the
    B window with the already-normalised F window). The review's "FMI" values (up to 1.21) exceed
    the normalised range, so they came from an unnormalised or summed variant and cannot be
    reproduced. Cost is O(windows x window^4); a 256 x 256 slice takes a few tenths of a second.

    References
    ----------
    M.B.A. Haghighat, A. Aghagolzadeh, H. Seyedarabi, "A non-reference image fusion metric based
    on mutual information of image features", Comput. Electr. Eng. 37(5):744-756, 2011.
    M. Haghighat, M.A. Razian, "Fast-FMI: non-reference image fusion metric", AICT 2014.
    """
    if feature not in FMI_FEATURES:
        raise UnknownOptionError(f"fmi: unknown feature {feature!r}; use one of "
                                 f"{', '.join(FMI_FEATURES)}.")
    if reduce not in ("mean", "sum"):
        raise UnknownOptionError(f"fmi: unknown reduce {reduce!r}; use 'mean' or 'sum'.")
    if int(window) != window or window < 3 or window % 2 == 0:
        raise InvalidInputError(f"fmi: window must be an odd integer >= 3, got {window!r}.")
    t = prepare(source_a, source_b, fused, data_range, "fmi")
    if min(t.f.shape) < window:
        raise InvalidInputError(f"fmi needs images of at least {window} x {window} pixels, got "
                                f"{t.f.shape[0]} x {t.f.shape[1]}.")
    return _fmi(t, feature, int(window), reduce)


def fmi_pixel(source_a, source_b, fused, *, data_range=None) -> float:
    """FMI on raw pixels (FMI_pixel; the review's "FMI"), 3 x 3 windows.

    Direction: higher is better. Range [0, 1]. See :func:`fmi` for the definition, quirks and
    references (Haghighat et al. 2011; Haghighat & Razian 2014).
    """
    return fmi(source_a, source_b, fused, data_range=data_range, feature="none")


def fmi_dct(source_a, source_b, fused, *, data_range=None) -> float:
    """FMI on the orthonormal 2D DCT of each image (FMI_dct), 3 x 3 windows.

    Direction: higher is better. Range [0, 1]. See :func:`fmi` (Haghighat et al. 2011).
    """
    return fmi(source_a, source_b, fused, data_range=data_range, feature="dct")


def fmi_wavelet(source_a, source_b, fused, *, data_range=None) -> float:
    """FMI on one level of the discrete Meyer wavelet decomposition (FMI_w), 3 x 3 windows.

    Direction: higher is better. Range [0, 1]. Uses PyWavelets' 'dmey', which differs from
    MATLAB's, so values are not those of ``fmi.m``. See :func:`fmi` (Haghighat et al. 2011).
    """
    return fmi(source_a, source_b, fused, data_range=data_range, feature="wavelet")

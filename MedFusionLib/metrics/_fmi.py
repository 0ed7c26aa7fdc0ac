"""Feature mutual information (Haghighat), Fast-FMI form, vectorised over all windows.

Every ``w x w`` window (``'valid'`` positions, column-major flattening) of the A/F and B/F feature
images is min-max normalised, turned into a "pdf" and a CDF; the joint pdf is built by Nelsen's
method between the Frechet bounds, and the window's normalised MI is 2 I / (H_A + H_F). The map
value is the mean of the A and B terms; FMI is the mean of the map.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import InvalidInputError, UnknownOptionError
from ._common import Triplet, prepare

__all__ = ["fmi", "fmi_pixel", "fmi_dct", "fmi_wavelet", "FMI_FEATURES"]

#: Feature extractors available to :func:`fmi` (MATLAB's ``edge`` is not ported).
FMI_FEATURES = ("none", "gradient", "dct", "wavelet")

_CHUNK = 2048  # windows per vectorised block (cache-friendly: ~1.6 MB per (chunk, 10, 10) array)


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
        from scipy.fft import dctn
        return dctn(x, type=2, norm="ortho")
    # 'wavelet': one level of the discrete Meyer wavelet, [cA cH; cV cD] rescaled to [0, 1].
    # PyWavelets' 'dmey' (62 taps) is not MATLAB's filter, so values differ from fmi.m.
    import pywt
    ca, (ch, cv, cd) = pywt.dwt2(x, "dmey", mode="symmetric")
    return _rerange(np.block([[ca, ch], [cv, cd]]))


def _windows(x: np.ndarray, w: int) -> np.ndarray:
    """(K, w*w) array of all valid windows, each flattened column-major (MATLAB ``x(:)``)."""
    v = sliding_window_view(x, (w, w))
    return np.ascontiguousarray(v.transpose(0, 1, 3, 2)).reshape(-1, w * w)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo = x.min(axis=1, keepdims=True)
    span = x.max(axis=1, keepdims=True) - lo
    flat = span == 0
    out = (x - lo) / np.where(flat, 1.0, span)
    return np.where(flat, 1.0, out)


def _entropy_rows(p: np.ndarray) -> np.ndarray:
    """Row-wise sum of -p log2|p| over non-zero p (MATLAB ``real(-p.*log2(p))``)."""
    ap = np.abs(p)
    lg = np.log2(ap, out=np.zeros_like(ap), where=ap > 0)
    return -(p * lg).reshape(p.shape[0], -1).sum(axis=1)


def _nfmi_rows(x: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Normalised FMI of each row pair of min-max normalised windows ``x`` and ``f`` (K, l)."""
    k, l = x.shape
    xp = x / x.sum(axis=1, keepdims=True)
    fp = f / f.sum(axis=1, keepdims=True)
    xc = np.cumsum(xp, axis=1)
    fc = np.cumsum(fp, axis=1)

    xt = xp - xp.mean(axis=1, keepdims=True)
    ft = fp - fp.mean(axis=1, keepdims=True)
    num = (xt * ft).sum(axis=1)
    den = np.sqrt((xt * xt).sum(axis=1) * (ft * ft).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(num == 0, 0.0, num / den)

    idx = np.arange(1, l + 1, dtype=np.float64)
    xsd = np.sqrt(np.maximum(xp @ (idx * idx) - (xp @ idx) ** 2, 0.0))
    fsd = np.sqrt(np.maximum(fp @ (idx * idx) - (fp @ idx) ** 2, 0.0))

    zeros = np.zeros((k, 1))
    fc0 = np.concatenate([zeros, fc], axis=1)[:, :, None]  # F along rows (i)
    xc0 = np.concatenate([zeros, xc], axis=1)[:, None, :]  # X along columns (j)
    bound = np.minimum(fc0, xc0)  # upper Frechet bound where c >= 0
    neg = c < 0
    if neg.any():  # lower Frechet bound
        bound[neg] = np.maximum(fc0[neg] + xc0[neg] - 1.0, 0.0)
    cov = bound[:, 1:, 1:].sum(axis=(1, 2)) - fc.sum(axis=1) * xc.sum(axis=1)
    sd = fsd * xsd
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = c / (cov / sd)
    degenerate = (sd == 0) | ((c >= 0) & (c == 0)) | ~np.isfinite(coef)
    coef = np.where(degenerate, 0.0, coef)[:, None, None]

    mass = np.diff(np.diff(bound, axis=1), axis=2)  # (K, l, l) cell masses of the bound
    joint = coef * mass + (1.0 - coef) * fp[:, :, None] * xp[:, None, :]

    hx = _entropy_rows(xp)
    hf = _entropy_rows(fp)
    mi = hx + hf - _entropy_rows(joint)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where((mi == 0) | (hx + hf == 0), 0.0, 2.0 * mi / (hx + hf))
    return out


def _fmi_map_terms(af: np.ndarray, bf: np.ndarray, ff: np.ndarray, w: int):
    """Per-window fmi_AF and fmi_BF for feature images ``af``, ``bf``, ``ff``."""
    wa, wb, wf = _windows(af, w), _windows(bf, w), _windows(ff, w)
    fmi_af = np.ones(wa.shape[0])
    fmi_bf = np.ones(wa.shape[0])
    for s in range(0, wa.shape[0], _CHUNK):
        sl = slice(s, s + _CHUNK)
        a, b, f = wa[sl], wb[sl], wf[sl]
        eq_af = np.all(a == f, axis=1)
        f_norm = _minmax(f)
        # fmi.m normalises fSub in place in the A branch, so the B branch's equality test sees
        # the normalised window wherever the A branch ran.
        f_seen_by_b = np.where(eq_af[:, None], f, f_norm)
        eq_bf = np.all(b == f_seen_by_b, axis=1)
        todo = ~eq_af
        if todo.any():
            fmi_af[sl][todo] = _nfmi_rows(_minmax(a[todo]), f_norm[todo])
        todo = ~eq_bf
        if todo.any():
            fmi_bf[sl][todo] = _nfmi_rows(_minmax(b[todo]), f_norm[todo])
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

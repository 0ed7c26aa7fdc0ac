"""Structural-similarity fusion metrics: SSIM (sum), MS-SSIM (sum), Q_Y, Q_C, Piella's Q_S/Q_W/Q_E.

All local statistics use Gaussian windows with ``'valid'`` filtering on the 0..255 scale. Local
(co)variances whose magnitude is below floating-point noise (1e-12 x (mu^2 + 1)) are set to 0, so
flat regions give exact 0/0 cases, which the NaN guards then resolve (documented per metric).
"""

from __future__ import annotations

import numpy as np

from ._common import Triplet, check_min_side, correlate_same, filter_valid, gaussian_1d, prepare, safe_ratio

__all__ = ["ssim", "ms_ssim", "yang", "cvejic", "piella_s", "piella_w", "piella_e",
           "MS_SSIM_WEIGHTS"]

#: Scale weights of MS-SSIM (Wang, Simoncelli & Bovik 2003), finest first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

_G11 = gaussian_1d(11, 1.5)
_G7 = gaussian_1d(7, 1.5)
_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2
_C_YANG = 2e-16


def _stats(x: np.ndarray, y: np.ndarray, g: np.ndarray):
    """Local means, variances and covariance of ``x`` and ``y`` ('valid' Gaussian windows)."""
    mu1, mu2 = filter_valid(x, g), filter_valid(y, g)
    s1 = filter_valid(x * x, g) - mu1 * mu1
    s2 = filter_valid(y * y, g) - mu2 * mu2
    s12 = filter_valid(x * y, g) - mu1 * mu2
    s1 = np.where(np.abs(s1) < 1e-12 * (mu1 * mu1 + 1.0), 0.0, s1)
    s2 = np.where(np.abs(s2) < 1e-12 * (mu2 * mu2 + 1.0), 0.0, s2)
    s12 = np.where(np.abs(s12) < 1e-12 * (np.abs(mu1 * mu2) + 1.0), 0.0, s12)
    return mu1, mu2, s1, s2, s12


def _ssim_maps(mu1, mu2, s1, s2, s12, c1, c2):
    """(SSIM map, contrast-structure map)."""
    cs = (2.0 * s12 + c2) / (s1 + s2 + c2)
    lum = (2.0 * mu1 * mu2 + c1) / (mu1 * mu1 + mu2 * mu2 + c1)
    return lum * cs, cs


def _cached_stats(t: Triplet, x: str, y: str, size: int):
    g = _G11 if size == 11 else _G7
    return t.cached(("stats", x, y, size), lambda: _stats(getattr(t, x), getattr(t, y), g))


def _ssim_map(t: Triplet, x: str, y: str) -> np.ndarray:
    return t.cached(("ssim11", x, y),
                    lambda: _ssim_maps(*_cached_stats(t, x, y, 11), _C1, _C2)[0])


def _yang_map(t: Triplet, x: str, y: str) -> np.ndarray:
    return t.cached(("ssim7", x, y),
                    lambda: _ssim_maps(*_cached_stats(t, x, y, 7), _C_YANG, _C_YANG)[0])


# ---- cores ----------------------------------------------------------------------------------

def _ssim(t: Triplet) -> float:
    return float(_ssim_map(t, "a", "f").mean() + _ssim_map(t, "b", "f").mean())


def _pool2(x: np.ndarray) -> np.ndarray:
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    return x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def ms_ssim_levels(shape) -> int:
    """Number of MS-SSIM scales (<= 5) whose coarsest image still fits an 11 x 11 window."""
    side, levels = min(shape), 1
    while levels < 5 and side // 2 ** levels >= 11:
        levels += 1
    return levels


def _ms_ssim_pair(x: np.ndarray, y: np.ndarray) -> float:
    levels = ms_ssim_levels(x.shape)
    w = np.array(MS_SSIM_WEIGHTS[:levels])
    w = w / w.sum()
    value = 1.0
    for i in range(levels):
        ssim_map, cs_map = _ssim_maps(*_stats(x, y, _G11), _C1, _C2)
        if i < levels - 1:
            value *= max(float(cs_map.mean()), 0.0) ** w[i]
            x, y = _pool2(x), _pool2(y)
        else:
            value *= max(float(ssim_map.mean()), 0.0) ** w[i]
    return float(value)


def _ms_ssim(t: Triplet) -> float:
    return _ms_ssim_pair(t.a, t.f) + _ms_ssim_pair(t.b, t.f)


def _qy(t: Triplet, nan_guard: bool = True) -> float:
    s_ab = _yang_map(t, "a", "b")
    s_af, s_bf = _yang_map(t, "a", "f"), _yang_map(t, "b", "f")
    _, _, va, vb, _ = _cached_stats(t, "a", "b", 7)
    if nan_guard:
        lam = safe_ratio(va, va + vb, 0.5)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = va / (va + vb)
    q = np.where(s_ab >= 0.75, lam * s_af + (1.0 - lam) * s_bf, np.maximum(s_af, s_bf))
    return float(q.mean())


def _qc(t: Triplet, nan_guard: bool = True) -> float:
    s_af, s_bf = _yang_map(t, "a", "f"), _yang_map(t, "b", "f")
    c_af = _cached_stats(t, "a", "f", 7)[4]
    c_bf = _cached_stats(t, "b", "f", 7)[4]
    if nan_guard:
        mu = safe_ratio(c_af, c_af + c_bf, 0.5)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            mu = c_af / (c_af + c_bf)
    with np.errstate(invalid="ignore"):
        q = mu * s_af + (1.0 - mu) * s_bf
        q = np.where(mu < 0, 0.0, np.where(mu > 1, 1.0, q))
    return float(q.mean())


def _piella_parts(sf_a, sf_b, va, vb):
    """Liu's metricPeilla.m: saliency weights lambda and the window weights c(w)."""
    both0 = (va + vb) == 0
    va = np.where(both0, va + 0.5, va)
    vb = np.where(both0, vb + 0.5, vb)
    lam = va / (va + vb)
    local = lam * sf_a + (1.0 - lam) * sf_b
    cw = np.maximum(va, vb)
    return local, cw


def _piella(t: Triplet, x="a", y="b", z="f", weighted=False) -> float:
    _, _, va, vb, _ = _cached_stats(t, x, y, 11)
    local, cw = _piella_parts(_ssim_map(t, z, x), _ssim_map(t, z, y), va, vb)
    if not weighted:
        return float(local.mean())
    total = cw.sum()
    if total == 0:
        return float(local.mean())
    return float((cw / total * local).sum())


_PREWITT_X = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], dtype=np.float64)
_PREWITT_Y = np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]], dtype=np.float64)


def _edges(x: np.ndarray) -> np.ndarray:
    return np.sqrt(correlate_same(x, _PREWITT_X) ** 2 + correlate_same(x, _PREWITT_Y) ** 2)


def _qe(t: Triplet, alpha: float = 1.0) -> float:
    qw = _piella(t, weighted=True)
    e = Triplet(_edges(t.a), _edges(t.b), _edges(t.f))
    qw_edges = _piella(e, weighted=True)
    return float(qw * np.sign(qw_edges) * abs(qw_edges) ** alpha)


# ---- public functions --------------------------------------------------------------------------

def _prepared(source_a, source_b, fused, data_range, func, minimum=11) -> Triplet:
    t = prepare(source_a, source_b, fused, data_range, func)
    check_min_side(t.f.shape, minimum, func)
    return t


def ssim(source_a, source_b, fused, *, data_range=None) -> float:
    """SSIM(A, F) + SSIM(B, F), VIFB form (11 x 11 Gaussian, sigma 1.5, 'valid', L = 255).

    K = (0.01, 0.03), no automatic downsampling, mean of each SSIM map.

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
        At least 11 x 11 pixels, values in ``[0, data_range]``.
    data_range : float, optional

    Returns
    -------
    float
        Direction: higher is better. Range [-2, 2]; 2 when F equals both sources.

    References
    ----------
    Z. Wang, A.C. Bovik, H.R. Sheikh, E.P. Simoncelli, "Image quality assessment: from error
    visibility to structural similarity", IEEE Trans. Image Process. 13(4):600-612, 2004.
    """
    return _ssim(_prepared(source_a, source_b, fused, data_range, "ssim"))


def ms_ssim(source_a, source_b, fused, *, data_range=None) -> float:
    """MS-SSIM(A, F) + MS-SSIM(B, F) (sum, like :func:`ssim`).

    Five scales with weights :data:`MS_SSIM_WEIGHTS`, 11 x 11 Gaussian (sigma 1.5, 'valid'),
    2 x 2 average pooling (an odd last row/column is dropped), negative contrast-structure terms
    clamped at 0. Images with a side below 176 use fewer scales (the coarsest must fit the
    window), with the retained weights renormalised to sum 1.

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
        At least 11 x 11 pixels.
    data_range : float, optional

    Returns
    -------
    float
        Direction: higher is better. Range [0, 2].

    References
    ----------
    Z. Wang, E.P. Simoncelli, A.C. Bovik, "Multiscale structural similarity for image quality
    assessment", Proc. 37th Asilomar Conf. Signals, Systems and Computers, 2003.
    """
    return _ms_ssim(_prepared(source_a, source_b, fused, data_range, "ms_ssim"))


def yang(source_a, source_b, fused, *, data_range=None, nan_guard: bool = True) -> float:
    """Yang's SSIM-based fusion metric Q_Y.

    SSIM maps with a 7 x 7 Gaussian (sigma 1.5, 'valid') and C1 = C2 = 2e-16. Where
    SSIM(A, B | w) >= 0.75: Q = lambda SSIM(A, F | w) + (1 - lambda) SSIM(B, F | w) with
    lambda = s_A^2 / (s_A^2 + s_B^2); elsewhere Q = max(SSIM(A, F | w), SSIM(B, F | w)).

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
        At least 11 x 11 pixels.
    data_range : float, optional
    nan_guard : bool, optional
        Set lambda = 0.5 where it is 0/0 (windows flat in both sources, e.g. black backgrounds);
        ``False`` reproduces the reference, which then returns NaN.

    Returns
    -------
    float
        Direction: higher is better. Range [0, 1] (SSIM values can make it slightly negative).

    References
    ----------
    C. Yang, J.-Q. Zhang, X.-R. Wang, X. Liu, "A novel similarity based quality metric for image
    fusion", Information Fusion 9(2):156-160, 2008.
    """
    return _qy(_prepared(source_a, source_b, fused, data_range, "yang"), bool(nan_guard))


def cvejic(source_a, source_b, fused, *, data_range=None, nan_guard: bool = True) -> float:
    """Cvejic's similarity fusion metric Q_C.

    mu = s_AF / (s_AF + s_BF) (local covariances, 7 x 7 Gaussian); Q = mu SSIM(A, F | w) +
    (1 - mu) SSIM(B, F | w), with Q = 0 where mu < 0 and Q = 1 where mu > 1; mean over windows.

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
        At least 11 x 11 pixels.
    data_range : float, optional
    nan_guard : bool, optional
        Set mu = 0.5 where it is 0/0 (flat windows); ``False`` reproduces the reference's NaN.

    Returns
    -------
    float
        Direction: higher is better. Range [0, 1]. Not symmetric in A and B: where the local
        covariances have opposite signs the clamps give 0 or 1 depending on which source is A
        (as in the reference code).

    References
    ----------
    N. Cvejic, A. Loza, D. Bull, N. Canagarajah, "A similarity metric for assessment of image
    fusion algorithms", Int. J. Information and Communication Engineering 2(3):178-182, 2006.
    """
    return _qc(_prepared(source_a, source_b, fused, data_range, "cvejic"), bool(nan_guard))


def piella_s(source_a, source_b, fused, *, data_range=None) -> float:
    """Piella's fusion quality index Q_S (Q_0 form with saliency weights).

    Q_S = mean(lambda Q(A, F | w) + (1 - lambda) Q(B, F | w)), lambda = s_A^2 / (s_A^2 + s_B^2)
    from local variances; following Liu's ``metricPeilla.m``, Q is the 11 x 11 Gaussian SSIM
    (not the 8 x 8 universal quality index of the paper) and 0.5 is added to both variances
    where both are 0.

    Returns
    -------
    float
        Direction: higher is better. Range [-1, 1].

    References
    ----------
    G. Piella, H. Heijmans, "A new quality metric for image fusion", Proc. ICIP 2003, vol. 3,
    pp. 173-176. Z. Wang, A.C. Bovik, "A universal image quality index", IEEE Signal Process.
    Lett. 9(3):81-84, 2002.
    """
    return _piella(_prepared(source_a, source_b, fused, data_range, "piella_s"))


def piella_w(source_a, source_b, fused, *, data_range=None) -> float:
    """Piella's weighted fusion quality index Q_W.

    As :func:`piella_s`, with windows weighted by c(w) = max(s_A^2, s_B^2) / sum max.

    Returns
    -------
    float
        Direction: higher is better. Range [-1, 1].

    References
    ----------
    G. Piella, H. Heijmans, Proc. ICIP 2003, vol. 3, pp. 173-176.
    """
    return _piella(_prepared(source_a, source_b, fused, data_range, "piella_w"), weighted=True)


def piella_e(source_a, source_b, fused, *, data_range=None) -> float:
    """Piella's edge-dependent fusion quality index Q_E = Q_W(A, B, F) Q_W(A', B', F')^alpha.

    A', B', F' are Prewitt gradient-magnitude images (the filters of Liu's ``metricPeilla.m``,
    whose own Q_E branch cannot run); alpha = 1. Implemented from the paper.

    Returns
    -------
    float
        Direction: higher is better. Range [-1, 1].

    References
    ----------
    G. Piella, H. Heijmans, Proc. ICIP 2003, vol. 3, pp. 173-176.
    """
    return _qe(_prepared(source_a, source_b, fused, data_range, "piella_e"))

"""Visual-information-fidelity fusion metrics: VIFF (Han et al. 2013) and VIF (sum of VIFp)."""

from __future__ import annotations

import numpy as np

from ._common import Triplet, check_min_side, filter_valid, gaussian_1d, prepare

__all__ = ["viff", "vif"]

#: Smallest side for which all four VIF scales have at least one pixel.
VIF_MIN_SIDE = 48

_EPS = 1e-10


def _vif_maps(ref: np.ndarray, dist: np.ndarray, sigma_nsq: float):
    """Per-scale (VID, VIND, g) maps of Sheikh & Bovik's pixel-domain VIF, 4 scales."""
    out = []
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        g1 = gaussian_1d(n, n / 5.0)
        if scale > 1:
            ref = filter_valid(ref, g1)[::2, ::2]
            dist = filter_valid(dist, g1)[::2, ::2]
        mu1, mu2 = filter_valid(ref, g1), filter_valid(dist, g1)
        s1 = filter_valid(ref * ref, g1) - mu1 * mu1
        s2 = filter_valid(dist * dist, g1) - mu2 * mu2
        s12 = filter_valid(ref * dist, g1) - mu1 * mu2
        s1 = np.maximum(s1, 0.0)
        s2 = np.maximum(s2, 0.0)
        g = s12 / (s1 + _EPS)
        sv = s2 - g * s12
        low1 = s1 < _EPS
        g = np.where(low1, 0.0, g)
        sv = np.where(low1, s2, sv)
        s1 = np.where(low1, 0.0, s1)
        low2 = s2 < _EPS
        g = np.where(low2, 0.0, g)
        sv = np.where(low2, 0.0, sv)
        neg = g < 0
        sv = np.where(neg, s2, sv)
        g = np.where(neg, 0.0, g)
        sv = np.maximum(sv, _EPS)
        vid = np.log10(1.0 + g * g * s1 / (sv + sigma_nsq))
        vind = np.log10(1.0 + s1 / sigma_nsq)
        out.append((vid, vind, g))
    return out


def _viff(t: Triplet) -> float:
    sigma_nsq = 0.005 * 255.0 * 255.0
    c = 1e-7
    weights = np.array([1.0, 0.0, 0.15, 1.0]) / 2.15
    ma, mb = _vif_maps(t.a, t.f, sigma_nsq), _vif_maps(t.b, t.f, sigma_nsq)
    total = 0.0
    for w, (vid_a, vind_a, g_a), (vid_b, vind_b, g_b) in zip(weights, ma, mb):
        pick_a = g_a < g_b
        vid = np.where(pick_a, vid_a, vid_b)
        vind = np.where(pick_a, vind_a, vind_b)
        total += w * (vid + c).sum() / (vind + c).sum()
    return float(total)


def _vifp(ref: np.ndarray, dist: np.ndarray) -> float:
    maps = _vif_maps(ref, dist, 2.0)
    num = sum(m[0].sum() for m in maps)
    den = sum(m[1].sum() for m in maps)
    if den == 0:
        return 1.0  # the reference replaces NaN (0/0) by 1
    return float(num / den)


def _vif(t: Triplet) -> float:
    return _vifp(t.a, t.f) + _vifp(t.b, t.f)


def viff(source_a, source_b, fused, *, data_range=None) -> float:
    """VIFF, the visual-information-fidelity fusion metric of Han et al. (2013).

    Sheikh-Bovik VID/VIND maps of each source against F at 4 scales (Gaussian windows N = 17,
    9, 5, 3, sigma = N/5, 'valid' filtering, decimation by 2), visual noise
    sigma_n^2 = 0.005 * 255^2; per pixel the source with the smaller gain g is kept;
    VIFF = sum_s p_s sum(VID + C) / sum(VIND + C), p = [1, 0, 0.15, 1] / 2.15, C = 1e-7.

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
        At least 48 x 48 pixels, values in ``[0, data_range]`` (mapped to 0..255: the noise
        variance is fixed, so the scale matters).
    data_range : float, optional

    Returns
    -------
    float
        Direction: higher is better. Range roughly [0, 1].

    References
    ----------
    Y. Han, Y. Cai, Y. Cao, X. Xu, "A new image fusion performance metric based on visual
    information fidelity", Information Fusion 14(2):127-135, 2013.
    """
    t = prepare(source_a, source_b, fused, data_range, "viff")
    check_min_side(t.f.shape, VIF_MIN_SIDE, "viff")
    return _viff(t)


def vif(source_a, source_b, fused, *, data_range=None) -> float:
    """VIF = VIFp(A, F) + VIFp(B, F), Sheikh-Bovik pixel-domain VIF with sigma_n^2 = 2.

    The "VIF" column of SeAFusion/CDDFuse-style papers (CDDFuse names it ``VIFF``, but it is not
    Han's VIFF: see :func:`viff`). VIFp = sum over 4 scales of VID / sum of VIND.

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
        At least 48 x 48 pixels.
    data_range : float, optional

    Returns
    -------
    float
        Direction: higher is better. Range roughly [0, 2].

    References
    ----------
    H.R. Sheikh, A.C. Bovik, "Image information and visual quality", IEEE Trans. Image Process.
    15(2):430-444, 2006.
    """
    t = prepare(source_a, source_b, fused, data_range, "vif")
    check_min_side(t.f.shape, VIF_MIN_SIDE, "vif")
    return _vif(t)

"""Edge-transfer fusion metric Q^AB/F (Xydeas & Petrovic), VIFB/CDDFuse form."""

from __future__ import annotations

import numpy as np

from ._common import Triplet, convolve_same, prepare

__all__ = ["qabf"]

_H1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)   # y response
_H3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)   # x response

_TG, _KG, _DG = 0.9994, -15.0, 0.5
_TA, _KA, _DA = 0.9879, -22.0, 0.8


def _strength_orientation(x: np.ndarray):
    sx = convolve_same(x, _H3)
    sy = convolve_same(x, _H1)
    g = np.sqrt(sx * sx + sy * sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(sx == 0, np.pi / 2, np.arctan(sy / np.where(sx == 0, 1.0, sx)))
    return g, alpha


def _preservation(gx, ax, gf, af) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(gx > gf, gf / np.where(gx > gf, gx, 1.0),
                     np.where(gx == gf, gf, gx / np.where(gf > 0, gf, 1.0)))
    a = 1.0 - np.abs(ax - af) / (np.pi / 2)
    qg = _TG / (1.0 + np.exp(_KG * (g - _DG)))
    qa = _TA / (1.0 + np.exp(_KA * (a - _DA)))
    return qg * qa


def _qabf(t: Triplet) -> float:
    ga, aa = _strength_orientation(t.a)
    gb, ab = _strength_orientation(t.b)
    gf, af = _strength_orientation(t.f)
    den = (ga + gb).sum()
    if den == 0:
        return float("nan")  # no edges in either source: undefined
    num = (_preservation(ga, aa, gf, af) * ga + _preservation(gb, ab, gf, af) * gb).sum()
    return float(num / den)


def qabf(source_a, source_b, fused, *, data_range=None) -> float:
    """Edge-information preservation Q^AB/F (Xydeas & Petrovic), VIFB/CDDFuse form.

    Sobel strength g and orientation alpha of each image (zero-padded ``conv2``), relative
    strength G and orientation A of each source versus F, sigmoid preservations
    (Gamma_g = 0.9994, kappa_g = -15, sigma_g = 0.5; Gamma_a = 0.9879, kappa_a = -22,
    sigma_a = 0.8), weighted by the source gradient strength (L = 1).

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
        Co-registered images with values in ``[0, data_range]``.
    data_range : float, optional
        Required for float input.

    Returns
    -------
    float
        Direction: higher is better. Range [0, 1]. NaN when neither source has any edge.
        Invariant to a common positive scaling of A, B and F (up to the g_A = g_F quirk below,
        which moves it by ~1e-3 on integer images), not to rescaling F alone.

    Notes
    -----
    Keeps the reference quirk G = g_F where g_A = g_F (the paper intends 1). With F = A the
    orientation term is Gamma_a / (1 + exp(-22 x 0.2)) = 0.9759, so Q^AB/F(A, A, A) is at most
    about 0.9753 (less where gradients are below 1 grey level).

    References
    ----------
    C.S. Xydeas, V. Petrovic, "Objective image fusion performance measure", Electron. Lett.
    36(4):308-309, 2000.
    """
    return _qabf(prepare(source_a, source_b, fused, data_range, "qabf"))

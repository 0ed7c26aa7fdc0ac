"""Statistics of the fused image and correlation-based fusion metrics: M, SD, SF, AG, SCD, CC, PSNR."""

from __future__ import annotations

import numpy as np

from ..errors import UnknownOptionError
from ._common import Triplet, pearson, prepare, prepare_fused

__all__ = ["mean_intensity", "standard_deviation", "spatial_frequency", "average_gradient",
           "scd", "correlation_coefficient", "psnr"]


def _check_variant(value: str, allowed: tuple[str, ...], func: str) -> str:
    if value not in allowed:
        raise UnknownOptionError(f"{func}: unknown variant {value!r}; use one of {', '.join(allowed)}.")
    return value


# ---- cores on Triplet (0..255 float64) ----------------------------------------------------------

def _mean(t: Triplet) -> float:
    return float(t.f.mean())


def _sd(t: Triplet) -> float:
    return float(np.sqrt(np.mean((t.f - t.f.mean()) ** 2)))


def _sf(t: Triplet, variant: str = "vifb") -> float:
    f = t.f
    dr = np.diff(f, axis=1)  # F(i, j) - F(i, j-1)
    dc = np.diff(f, axis=0)  # F(i, j) - F(i-1, j)
    if variant == "vifb":
        n = f.size
        rf2, cf2 = (dr * dr).sum() / n, (dc * dc).sum() / n
    else:
        rf2 = (dr * dr).mean() if dr.size else 0.0
        cf2 = (dc * dc).mean() if dc.size else 0.0
    return float(np.sqrt(rf2 + cf2))


def _ag(t: Triplet, variant: str = "vifb") -> float:
    gy, gx = np.gradient(t.f)
    s = np.sqrt((gx * gx + gy * gy) / 2.0).sum()
    m, n = t.f.shape
    k = (m - 1) * (n - 1) if variant == "vifb" else m * n
    return float(s / k)


def _scd(t: Triplet) -> float:
    return pearson(t.f - t.b, t.a) + pearson(t.f - t.a, t.b)


def _cc(t: Triplet) -> float:
    return 0.5 * (pearson(t.a, t.f) + pearson(t.b, t.f))


def _psnr(t: Triplet, variant: str = "standard") -> float:
    if variant == "vifb":
        n = t.f.size
        mse = 0.5 * (np.sqrt(((t.a - t.f) ** 2).sum()) / n + np.sqrt(((t.b - t.f) ** 2).sum()) / n)
    else:
        mse = 0.5 * (np.mean((t.a - t.f) ** 2) + np.mean((t.b - t.f) ** 2))
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0 ** 2 / mse))


# ---- public functions --------------------------------------------------------------------------

def mean_intensity(fused, *, data_range=None) -> float:
    """Mean grey level M of the fused image (the review's "M").

    Parameters
    ----------
    fused : ndarray, shape (H, W)
        Fused image with values in ``[0, data_range]``.
    data_range : float, optional
        Intensity span of the input; required for float input (255 is assumed for uint8).

    Returns
    -------
    float
        Mean on the 0..255 scale, range [0, 255]. Direction: the review treats higher as better;
        in general it is a brightness descriptor, not a quality measure.

    References
    ----------
    Standard descriptor; reported by the review as "M".
    """
    return _mean(Triplet(None, None, prepare_fused(fused, data_range, "mean_intensity")))


def standard_deviation(fused, *, data_range=None) -> float:
    """Standard deviation SD of the fused image (population form, 1/MN), on the 0..255 scale.

    Direction: higher is better (more contrast). Range [0, 127.5].

    Parameters
    ----------
    fused : ndarray, shape (H, W)
    data_range : float, optional
        Intensity span of the input; required for float input.

    References
    ----------
    Y.-J. Rao, "In-fibre Bragg grating sensors", Meas. Sci. Technol. 8(4):355-375, 1997 (the
    citation used by VIFB); standard statistic.
    """
    return _sd(Triplet(None, None, prepare_fused(fused, data_range, "standard_deviation")))


def spatial_frequency(fused, *, data_range=None, variant: str = "vifb") -> float:
    """Spatial frequency SF = sqrt(RF^2 + CF^2) of the fused image, on the 0..255 scale.

    Direction: higher is better. Range [0, inf).

    Parameters
    ----------
    fused : ndarray, shape (H, W)
    data_range : float, optional
    variant : {"vifb", "mean"}, optional
        ``"vifb"`` divides the squared row/column differences by MN (VIFB); ``"mean"`` averages
        over the M(N-1) and (M-1)N differences (CDDFuse).

    References
    ----------
    A.M. Eskicioglu, P.S. Fisher, "Image quality measures and their performance", IEEE Trans.
    Commun. 43(12):2959-2965, 1995.
    """
    _check_variant(variant, ("vifb", "mean"), "spatial_frequency")
    return _sf(Triplet(None, None, prepare_fused(fused, data_range, "spatial_frequency")), variant)


def average_gradient(fused, *, data_range=None, variant: str = "vifb") -> float:
    """Average gradient AG = (1/K) sum sqrt((Gx^2 + Gy^2)/2), central differences (np.gradient).

    Direction: higher is better. Range [0, inf), 0..255 scale.

    Parameters
    ----------
    fused : ndarray, shape (H, W)
    data_range : float, optional
    variant : {"vifb", "mean"}, optional
        K = (M-1)(N-1) (VIFB) or K = MN (CDDFuse).

    References
    ----------
    G. Cui, H. Feng, Z. Xu, Q. Li, Y. Chen, "Detail preserved fusion of visible and infrared
    images using regional saliency extraction and multi-scale image decomposition", Opt. Commun.
    341:199-209, 2015.
    """
    _check_variant(variant, ("vifb", "mean"), "average_gradient")
    return _ag(Triplet(None, None, prepare_fused(fused, data_range, "average_gradient")), variant)


def scd(source_a, source_b, fused, *, data_range=None) -> float:
    """Sum of the correlations of differences, SCD = r(F - B, A) + r(F - A, B).

    Direction: higher is better. Range [-2, 2]. Invariant to a common positive scaling and a
    common offset of A, B and F. A constant image has correlation 0 by convention.

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
        Co-registered images with values in ``[0, data_range]``.
    data_range : float, optional

    References
    ----------
    V. Aslantas, E. Bendes, "A new image quality metric for image fusion: the sum of the
    correlations of differences", AEU Int. J. Electron. Commun. 69(12):1890-1896, 2015.
    """
    return _scd(prepare(source_a, source_b, fused, data_range, "scd"))


def correlation_coefficient(source_a, source_b, fused, *, data_range=None) -> float:
    """CC = (r(A, F) + r(B, F)) / 2, Pearson correlations over all pixels (CDDFuse form).

    Direction: higher is better. Range [-1, 1]. Invariant to a positive affine map of each image.

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
    data_range : float, optional

    References
    ----------
    Z. Zhao et al., "CDDFuse: correlation-driven dual-branch feature decomposition for
    multi-modality image fusion", CVPR 2023 (evaluation code ``utils/Evaluator.py``).
    """
    return _cc(prepare(source_a, source_b, fused, data_range, "correlation_coefficient"))


def psnr(source_a, source_b, fused, *, data_range=None, variant: str = "standard") -> float:
    """PSNR = 10 log10(255^2 / ((MSE(A, F) + MSE(B, F)) / 2)) in dB.

    Direction: higher is better. Range [0, inf]; ``inf`` when F equals both sources.

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
    data_range : float, optional
    variant : {"standard", "vifb"}, optional
        ``"vifb"`` reproduces VIFB's ``metricsPsnr.m``, whose "MSE" is sqrt(SSE)/(MN) (a bug
        that gives about 57 dB on any pair); use only to compare with VIFB tables.

    References
    ----------
    P. Jagalingam, A.V. Hegde, "A review of quality metrics for fused image", Aquatic Procedia
    4:133-142, 2015.
    """
    _check_variant(variant, ("standard", "vifb"), "psnr")
    return _psnr(prepare(source_a, source_b, fused, data_range, "psnr"), variant)

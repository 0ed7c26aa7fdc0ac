"""Human-visual-system fusion metrics: Q_CB (Chen & Blum) and Q_CV (Chen & Varshney)."""

from __future__ import annotations

import numpy as np

from ._common import (Triplet, block_reduce_padded, correlate_same, filter_same_separable,
                      freqspace_grid, normalize1, prepare, safe_ratio)

__all__ = ["chen_blum", "chen_varshney"]


def _csf_filter(x: np.ndarray, response: np.ndarray) -> np.ndarray:
    """``ifft2(ifftshift(fftshift(fft2(x)) .* response))`` with ``response`` on the centred grid."""
    return np.fft.ifft2(np.fft.fft2(x) * np.fft.ifftshift(response))


def _gauss31(sigma: float) -> np.ndarray:
    """1D factor of Liu's unnormalised 31 x 31 Gaussian exp(-r^2/2s^2)/(2 pi s^2)."""
    x = np.arange(-15, 16, dtype=np.float64)
    return np.exp(-(x * x) / (2 * sigma * sigma)) / np.sqrt(2 * np.pi * sigma * sigma)


def _filter_complex(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    return filter_same_separable(x.real, g) + 1j * filter_same_separable(x.imag, g)


def _qcb(t: Triplet) -> float:
    f0, f1, a = 15.3870, 1.3456, 0.7622
    k = h = 1.0
    p, q, z = 3.0, 2.0, 1e-4
    rows, cols = t.f.shape
    u, v = freqspace_grid((rows, cols))
    r = np.sqrt((u * cols / 30.0) ** 2 + (v * rows / 30.0) ** 2)
    sd = np.exp(-(r / f0) ** 2) - a * np.exp(-(r / f1) ** 2)
    g1, g2 = _gauss31(2.0), _gauss31(4.0)

    def masked_contrast(x):
        y = _csf_filter(normalize1(x), sd)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.abs(_filter_complex(y, g1) / _filter_complex(y, g2) - 1.0)
        c = np.nan_to_num(c, nan=0.0, posinf=0.0)
        return k * c ** p / (h * c ** q + z)

    ca, cb, cf = masked_contrast(t.a), masked_contrast(t.b), masked_contrast(t.f)
    qaf = np.where(ca < cf, safe_ratio(ca, cf, 1.0), safe_ratio(cf, ca, 1.0))
    qbf = np.where(cb < cf, safe_ratio(cb, cf, 1.0), safe_ratio(cf, cb, 1.0))
    lam_a = safe_ratio(ca * ca, ca * ca + cb * cb, 0.5)
    return float(np.mean(lam_a * qaf + (1.0 - lam_a) * qbf))


_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
_SOBEL_Y = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float64)


def _qcv(t: Triplet) -> float:
    alpha, block = 5.0, 16
    a, b, f = normalize1(t.a), normalize1(t.b), normalize1(t.f)

    def saliency(x):
        g = np.sqrt(correlate_same(x, _SOBEL_X) ** 2 + correlate_same(x, _SOBEL_Y) ** 2)
        return block_reduce_padded(g ** alpha, block, "sum")

    rows, cols = f.shape
    u, v = freqspace_grid((rows, cols))
    r = np.sqrt((u * cols / 8.0) ** 2 + (v * rows / 8.0) ** 2)
    csf = 2.6 * (0.0192 + 0.144 * r) * np.exp(-(0.144 * r) ** 1.1)  # Mannos-Sakrison

    def distortion(x):
        d = _csf_filter(x - f, csf)
        return block_reduce_padded(d * d, block, "mean")  # complex square, as in the reference

    la, lb = saliency(a), saliency(b)
    den = (la + lb).sum()
    if den == 0:
        return 0.0  # no edges in either source: no visible difference to weigh
    return float(np.real((la * distortion(a) + lb * distortion(b)).sum() / den))


def chen_blum(source_a, source_b, fused, *, data_range=None) -> float:
    """Chen-Blum human-visual-system fusion metric Q_CB.

    Each image is min-max quantised to 0..255 (``normalize1``), filtered by the DoG contrast
    sensitivity function (f0 = 15.3870, f1 = 1.3456, a = 0.7622, frequencies scaled by size/30),
    its local contrast |G_2 * I / G_4 * I - 1| (31 x 31 Gaussians) masked as
    C' = |C|^3 / (|C|^2 + 1e-4); the preservation min/max(C'_X, C'_F) is weighted by
    lambda_A = C'_A^2 / (C'_A^2 + C'_B^2) and averaged.

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
    data_range : float, optional

    Returns
    -------
    float
        Direction: higher is better. Range [0, 1]. Invariant to a positive affine map of each
        image. 0/0 ratios (flat regions) count as full preservation and equal weights.

    References
    ----------
    Y. Chen, R.S. Blum, "A new automated quality assessment algorithm for image fusion", Image
    Vis. Comput. 27(10):1421-1432, 2009.
    """
    return _qcb(prepare(source_a, source_b, fused, data_range, "chen_blum"))


def chen_varshney(source_a, source_b, fused, *, data_range=None) -> float:
    """Chen-Varshney human-visual-system fusion metric Q_CV (lower is better).

    On ``normalize1``-quantised images: per 16 x 16 block the saliency lambda_X = sum g_X^5
    (Sobel magnitude) and the distortion D_X = mean of the Mannos-Sakrison CSF-filtered
    (X - F)^2; Q_CV = sum(lambda_A D_A + lambda_B D_B) / sum(lambda_A + lambda_B). Partial blocks
    are zero-padded (MATLAB ``blkproc``).

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
    data_range : float, optional

    Returns
    -------
    float
        Direction: **lower** is better. Range [0, inf). Invariant to a positive affine map of
        each image.

    References
    ----------
    H. Chen, P.K. Varshney, "A human perception inspired quality metric for image fusion based
    on regional information", Information Fusion 8(2):193-207, 2007.
    """
    return _qcv(prepare(source_a, source_b, fused, data_range, "chen_varshney"))

"""Pixel-level fusion rules: average, maximum and PCA weighting.

These are the simplest baselines of the literature and the fallback that works without torch.
All functions follow the registry contract: ``a``, ``b`` are ``float32 (N, H, W)`` in [0, 1].
"""

from __future__ import annotations

import numpy as np

from ._registry import register

__all__ = ["average", "maximum", "pca"]


@register("average", title="Pixel average", family="pixel", provides_weights=True,
          reference="Arithmetic mean of the co-registered sources.")
def average(a: np.ndarray, b: np.ndarray, *, device: str = "cpu", return_weights: bool = False):
    """Fused = (a + b) / 2. The contribution map is 0.5 everywhere."""
    fused = ((a + b) * np.float32(0.5)).astype(np.float32, copy=False)
    if return_weights:
        return fused, np.full_like(fused, 0.5)
    return fused


@register("maximum", title="Pixel maximum", family="pixel", provides_weights=True,
          reference="Per-pixel maximum of the co-registered sources.")
def maximum(a: np.ndarray, b: np.ndarray, *, device: str = "cpu", return_weights: bool = False):
    """Fused = max(a, b). The contribution map is 1 where ``a`` is chosen (ties go to ``a``)."""
    fused = np.maximum(a, b).astype(np.float32, copy=False)
    if return_weights:
        return fused, (a >= b).astype(np.float32)
    return fused


def _pca_weights(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(w_a, w_b) from the principal eigenvector of the 2x2 covariance of one slice pair."""
    x = np.stack([a.ravel(), b.ravel()]).astype(np.float64)
    cov = np.cov(x)
    if not np.all(np.isfinite(cov)) or np.allclose(cov, 0.0):
        return 0.5, 0.5
    _, vecs = np.linalg.eigh(cov)
    v = np.abs(vecs[:, -1])  # eigh sorts ascending: last column is the principal axis
    s = v.sum()
    if s <= 0:
        return 0.5, 0.5
    return float(v[0] / s), float(v[1] / s)


@register("pca", title="PCA weighted average", family="pixel", provides_weights=True,
          reference="V.P.S. Naidu, J.R. Raol, Defence Sci. J. 58(3):338-352, 2008.")
def pca(a: np.ndarray, b: np.ndarray, *, device: str = "cpu", return_weights: bool = False):
    """Weighted average with weights from the principal component of the 2x2 covariance.

    The weights are computed per slice: ``C = cov([a.ravel(), b.ravel()])``, ``v`` the eigenvector
    of the largest eigenvalue (taken in absolute value, so invariant to its sign), and
    ``(w_a, w_b) = v / sum(v)``. A constant slice pair gets equal weights.
    """
    fused = np.empty_like(a, dtype=np.float32)
    weights = np.empty_like(a, dtype=np.float32) if return_weights else None
    for i in range(a.shape[0]):
        wa, wb = _pca_weights(a[i], b[i])
        fused[i] = wa * a[i] + wb * b[i]
        if weights is not None:
            weights[i] = wa
    np.clip(fused, 0.0, 1.0, out=fused)
    if return_weights:
        return fused, weights
    return fused

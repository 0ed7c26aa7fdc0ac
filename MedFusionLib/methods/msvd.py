"""Multi-resolution singular value decomposition (MSVD) fusion (Naidu 2011).

MSVD is a wavelet-like transform whose filters are learnt from the image: the slice is cut into
non-overlapping 2 x 2 blocks, each block becomes a column of a ``4 x (HW/4)`` matrix ``X``, and the
left singular vectors ``U`` of ``X`` (the eigenvectors of ``X X^T``, by decreasing eigenvalue)
give the coefficients ``T = U^T X``. The first row of ``T`` is a low-pass ("LL") image of half
size, the three others are detail images. Fusion averages LL, keeps the larger-magnitude detail
coefficient, averages the two bases, and inverts with ``X = U T``; further levels recurse on LL.

Singular vectors are defined up to sign, so the bases of the two sources are first put in a
canonical sign (largest-magnitude entry positive) and the columns of the second source's basis are
then flipped where they point away from the first's; without this, averaging the bases can cancel
columns and destroy the image.
"""

from __future__ import annotations

import numpy as np

from ._registry import register
from ._rules import check_bool, check_int, select_maxabs

__all__ = ["msvd", "msvd_decompose", "align_basis"]


def _to_blocks(x: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` with even H, W -> ``(N, 4, H/2, W/2)``, block entries in column-major order."""
    return np.stack([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                    axis=1)


def _from_blocks(t: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_to_blocks`."""
    n, _, h, w = t.shape
    x = np.empty((n, 2 * h, 2 * w), dtype=t.dtype)
    x[:, 0::2, 0::2] = t[:, 0]
    x[:, 1::2, 0::2] = t[:, 1]
    x[:, 0::2, 1::2] = t[:, 2]
    x[:, 1::2, 1::2] = t[:, 3]
    return x


def _canonical_sign(u: np.ndarray) -> np.ndarray:
    """Flip each column of ``u`` (``(N, 4, 4)``) so that its largest-magnitude entry is positive."""
    idx = np.argmax(np.abs(u), axis=1)  # (N, 4): row of the largest entry of each column
    lead = np.take_along_axis(u, idx[:, None, :], axis=1)  # (N, 1, 4)
    return u * np.where(lead < 0, -1.0, 1.0)


def msvd_decompose(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One MSVD level of a batch of even-sized slices.

    Parameters
    ----------
    x : ndarray, shape (N, H, W), H and W even

    Returns
    -------
    u : ndarray, float64, shape (N, 4, 4)
        Left singular vectors of the block matrix, by decreasing singular value, columns in the
        canonical sign (largest-magnitude entry positive).
    t : ndarray, float64, shape (N, 4, H/2, W/2)
        ``U^T X``: ``t[:, 0]`` is the low-pass image, ``t[:, 1:]`` the three detail images.
        ``x`` is recovered exactly as ``U t`` (``U`` is orthogonal).
    """
    blocks = _to_blocks(x.astype(np.float64, copy=False))
    gram = np.einsum("nikl,njkl->nij", blocks, blocks)
    _, vecs = np.linalg.eigh(gram)
    u = _canonical_sign(vecs[..., ::-1])
    return u, np.einsum("nji,njkl->nikl", u, blocks)


def align_basis(u_ref: np.ndarray, u: np.ndarray, t: np.ndarray):
    """Flip columns of ``u`` (and the matching rows of ``t``) that point away from ``u_ref``.

    Parameters
    ----------
    u_ref, u : ndarray, shape (N, 4, 4)
        Bases of the two sources (columns are basis vectors).
    t : ndarray, shape (N, 4, h, w)
        Coefficients of the second source, ``u^T X``.

    Returns
    -------
    u, t : ndarray
        The same basis and coefficients with column ``k`` of ``u`` and row ``k`` of ``t`` negated
        wherever ``<u_ref[:, k], u[:, k]> < 0``; ``u t`` is unchanged.
    """
    flip = np.where(np.einsum("nik,nik->nk", u_ref, u) < 0, -1.0, 1.0)  # (N, 4)
    return u * flip[:, None, :], t * flip[:, :, None, None]


def _fuse_level(a: np.ndarray, b: np.ndarray, levels: int, consistency: bool) -> np.ndarray:
    h, w = a.shape[-2:]
    pad = [(0, 0), (0, h % 2), (0, w % 2)]
    if h % 2 or w % 2:
        a, b = np.pad(a, pad, mode="edge"), np.pad(b, pad, mode="edge")
    ua, ta = msvd_decompose(a)
    ub, tb = align_basis(ua, *msvd_decompose(b))

    tf = np.empty_like(ta)
    if levels > 1 and min(ta.shape[-2:]) >= 2:
        tf[:, 0] = _fuse_level(ta[:, 0], tb[:, 0], levels - 1, consistency)
    else:
        tf[:, 0] = 0.5 * (ta[:, 0] + tb[:, 0])
    tf[:, 1:] = select_maxabs(ta[:, 1:], tb[:, 1:], consistency=consistency)
    uf = 0.5 * (ua + ub)
    fused = _from_blocks(np.einsum("nij,njkl->nikl", uf, tf))
    return fused[:, :h, :w]


@register("msvd", title="Multi-resolution SVD (MSVD)", family="multiscale",
          reference="V.P.S. Naidu, Defence Sci. J. 61(5):479-484, 2011.")
def msvd(a: np.ndarray, b: np.ndarray, *, level: int = 1, consistency: bool = False,
         device: str = "cpu") -> np.ndarray:
    """Fuse in the multi-resolution SVD domain.

    Parameters
    ----------
    a, b : ndarray, float32, shape (N, H, W)
        Co-registered sources in [0, 1]. Odd sizes are padded by edge replication and cropped.
    level : int, optional
        Decomposition levels, 1 to 8 (default 1, as in Naidu's demonstration); each further level
        decomposes the low-pass image again.
    consistency : bool, optional
        Apply the 3 x 3 majority consistency check to the detail decision maps (default False).
    device : str, optional
        Ignored (CPU only).

    Returns
    -------
    ndarray, float32, shape (N, H, W), values in [0, 1]
    """
    level = check_int("msvd", "level", level, 1, 8)
    consistency = check_bool("msvd", "consistency", consistency)
    if min(a.shape[-2:]) < 2:
        return np.clip(0.5 * (a + b), 0.0, 1.0).astype(np.float32)
    fused = _fuse_level(a, b, level, consistency)
    return np.clip(fused, 0.0, 1.0).astype(np.float32)

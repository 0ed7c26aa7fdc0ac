"""Grid and transform helpers: comparing grids, resampling, overlap, transform distances."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = ["same_grid", "resample_to", "overlap_fraction", "is_identity", "flatten",
           "linear_part", "mean_distance"]


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-6) -> bool:
    """True when two images share size, origin, spacing and direction."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def resample_to(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform | None = None, *,
                default: float = 0.0, interpolator=sitk.sitkLinear) -> sitk.Image:
    """Resample ``moving`` on ``fixed``'s grid through ``transform`` (fixed -> moving points).

    With no transform (or an identity) and identical grids the image is returned unchanged, so an
    aligned 2D pair stays pixel-aligned exactly.
    """
    if transform is None:
        transform = sitk.Transform(fixed.GetDimension(), sitk.sitkIdentity)
    if same_grid(moving, fixed) and is_identity(transform, fixed):
        return moving
    return sitk.Resample(moving, fixed, transform, interpolator, default, moving.GetPixelID())


def is_identity(transform: sitk.Transform, ref: sitk.Image) -> bool:
    """True when ``transform`` moves no corner of ``ref`` by more than 1e-6 mm."""
    size = np.array(ref.GetSize())
    for corner in np.ndindex(*(2,) * ref.GetDimension()):
        idx = [int(c * (s - 1)) for c, s in zip(corner, size)]
        pt = ref.TransformIndexToPhysicalPoint(idx)
        if np.linalg.norm(np.subtract(transform.TransformPoint(pt), pt)) > 1e-6:
            return False
    return True


def overlap_fraction(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Fraction of ``fixed``'s grid that maps inside ``moving`` through ``transform`` (coarse grid)."""
    factor = [max(1, int(np.ceil(s / 48))) for s in fixed.GetSize()]
    coarse = sitk.Shrink(fixed, factor)
    # the moving image's box on a grid of at most 48 voxels per axis (only its extent matters)
    mfactor = [max(1, int(np.ceil(s / 48))) for s in moving.GetSize()]
    ones = sitk.Image([int(np.ceil(s / f)) for s, f in zip(moving.GetSize(), mfactor)], sitk.sitkUInt8)
    ones += 1
    ones.SetSpacing(tuple(sp * f for sp, f in zip(moving.GetSpacing(), mfactor)))
    ones.SetDirection(moving.GetDirection())
    d = np.asarray(moving.GetDirection()).reshape(moving.GetDimension(), -1)
    corner = np.asarray(moving.TransformContinuousIndexToPhysicalPoint([-0.5] * moving.GetDimension()))
    ones.SetOrigin(tuple(corner + d @ (0.5 * np.asarray(ones.GetSpacing()))))
    cover = sitk.Resample(ones, coarse, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return float(sitk.GetArrayViewFromImage(cover).mean())


def flatten(tx: sitk.Transform) -> sitk.Transform:
    """Unwrap a one-element composite (what ``Execute`` returns with ``inPlace=False``)."""
    if tx.GetName() == "CompositeTransform":
        c = sitk.CompositeTransform(tx)
        return c.GetNthTransform(0).Downcast() if c.GetNumberOfTransforms() == 1 else c
    return tx.Downcast()


def linear_part(tx: sitk.Transform, dim: int, tol: float = 1e-6):
    """``(A, t)`` with ``tx(p) = A p + t`` when ``tx`` is linear (checked on probe points), else None."""
    probes = np.vstack([np.zeros(dim), 100.0 * np.eye(dim)])
    mapped = np.array([tx.TransformPoint(tuple(float(v) for v in p)) for p in probes])
    t = mapped[0]
    A = (mapped[1:] - t).T / 100.0
    rng = np.random.default_rng(0)
    for p in rng.uniform(-150, 150, (6, dim)):
        if np.linalg.norm(np.asarray(tx.TransformPoint(tuple(p))) - (A @ p + t)) > tol * 1e3:
            return None
    return A, t


def _matrix_offset(tx: sitk.Transform, dim: int):
    """``(A, b)`` with ``tx(p) = A p + b`` for ITK's matrix-offset transforms, else None."""
    if not hasattr(tx, "GetMatrix"):
        tx = tx.Downcast()
    if not hasattr(tx, "GetMatrix"):
        return None
    A = np.asarray(tx.GetMatrix(), float).reshape(dim, dim)
    return A, np.asarray(tx.TransformPoint((0.0,) * dim), float)


def mean_distance(a: sitk.Transform, b: sitk.Transform, points: np.ndarray) -> float:
    """Mean distance (mm) between where ``a`` and ``b`` send ``points`` (N, dim)."""
    dim = points.shape[1]
    la, lb = _matrix_offset(a, dim), _matrix_offset(b, dim)
    if la is not None and lb is not None:
        d = points @ (la[0] - lb[0]).T + (la[1] - lb[1])
        return float(np.linalg.norm(d, axis=1).mean())
    return float(np.mean([np.linalg.norm(np.subtract(a.TransformPoint(tuple(map(float, p))),
                                                     b.TransformPoint(tuple(map(float, p)))))
                          for p in points]))

"""Seeded misalignment cases built from the bundled sample data, for tests and benchmarks.

Every case is a fixed image, a moving image and the *true* transform (fixed -> moving points),
so a registration can be scored by its target registration error (:func:`tre`). The moving image
is the source volume moved by a known rigid transform and resampled on a grid that follows the
anatomy (as a technologist centres the field of view on the head), optionally anisotropic and
oblique. :func:`ct_with_neck_and_couch` adds what a head CT brings beyond a brain-only MR: neck,
cervical spine, shoulders and the couch; :func:`colin_t1_t2` pairs the Colin27 T1 (a different
subject, fetched by ``make data``) with a T2-like contrast made from its tissue classes. The CT,
PET and T2-like volumes are SYNTHETIC (see :mod:`MedFusionLib.datasets`).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..functional_phantoms import colin_tissue_maps
from .search import set_rotation

__all__ = ["random_rigid", "rigid", "turned", "moved_copy", "ct_with_neck_and_couch", "brain_only",
           "colin_t1_t2", "tre", "brain_points"]


def random_rigid(rng: np.random.Generator, max_deg: float = 30.0, max_mm: float = 50.0,
                 centre=(0.0, -18.0, 18.0)) -> sitk.Euler3DTransform:
    """A rigid transform with angles uniform in +-``max_deg`` about each axis and a translation
    of uniform direction and length up to ``max_mm``, rotating about ``centre`` (mm, LPS)."""
    tx = sitk.Euler3DTransform()
    tx.SetCenter(tuple(float(c) for c in centre))
    tx.SetRotation(*np.radians(rng.uniform(-max_deg, max_deg, 3)))
    d = rng.standard_normal(3)
    tx.SetTranslation(tuple(d / np.linalg.norm(d) * rng.uniform(0, max_mm)))
    return tx


def rigid(angles_deg, shift_mm, centre=(0.0, -18.0, 18.0)) -> sitk.Euler3DTransform:
    """The rigid transform with Euler angles (deg) about ``centre`` and a translation (mm)."""
    tx = sitk.Euler3DTransform()
    tx.SetCenter(tuple(float(c) for c in centre))
    tx.SetRotation(*np.radians(angles_deg))
    tx.SetTranslation(tuple(float(s) for s in shift_mm))
    return tx


def turned(matrix, angles_deg=(0.0, 0.0, 0.0), shift_mm=(0.0, 0.0, 0.0),
           centre=(0.0, -18.0, 18.0)) -> sitk.Euler3DTransform:
    """The rigid transform ``rigid(angles_deg, shift_mm)`` after the turn ``matrix`` (3 x 3,
    orthonormal; e.g. one of :func:`..search.axis_aligned_orientations`), both about ``centre``:
    points x -> R_small (matrix (x - c)) + c + shift."""
    small = rigid(angles_deg, shift_mm, centre)
    R = np.asarray(small.GetMatrix()).reshape(3, 3) @ np.asarray(matrix, float).reshape(3, 3)
    tx = set_rotation(sitk.Euler3DTransform(), R)
    tx.SetCenter(tuple(float(c) for c in centre))
    tx.SetTranslation(tuple(float(s) for s in shift_mm))
    return tx


def moved_copy(source: sitk.Image, truth: sitk.Transform, *, spacing=None, direction=None,
               margin_mm: float = 10.0, background: float | None = None) -> sitk.Image:
    """``source`` moved by ``truth``: ``moved(truth(x)) = source(x)``, on a grid around it.

    Parameters
    ----------
    source : SimpleITK.Image
        The volume as it lies in the fixed frame.
    truth : SimpleITK.Transform
        Fixed -> moving points (what a perfect registration returns).
    spacing : sequence of float, optional
        Voxel size of the moving grid (default: the source's).
    direction : sequence of float, optional
        Direction cosines of the moving grid (default: the source's); oblique grids allowed.
    margin_mm : float, optional
        The grid covers the moved source's bounding box plus this margin.
    background : float, optional
        Value outside the source (default: its minimum).
    """
    dim = source.GetDimension()
    spacing = tuple(float(s) for s in (spacing or source.GetSpacing()))
    direction = tuple(float(d) for d in (direction or source.GetDirection()))
    D = np.asarray(direction).reshape(dim, dim)
    size = np.asarray(source.GetSize())
    corners = np.array([truth.TransformPoint(source.TransformContinuousIndexToPhysicalPoint(
        [float(c) * (s - 1) for c, s in zip(corner, size)])) for corner in np.ndindex(*(2,) * dim)])
    local = corners @ D  # coordinates along the grid axes
    lo, hi = local.min(0) - margin_mm, local.max(0) + margin_mm
    n = [int(np.ceil((h - l) / s)) + 1 for l, h, s in zip(lo, hi, spacing)]
    grid = sitk.Image(n, sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(direction)
    grid.SetOrigin(tuple(D @ lo))
    if background is None:
        background = float(sitk.GetArrayViewFromImage(source).min())
    out = sitk.Resample(source, grid, truth.GetInverse(), sitk.sitkLinear, background, sitk.sitkFloat32)
    for key in source.GetMetaDataKeys():
        out.SetMetaData(key, source.GetMetaData(key))
    return out


def ct_with_neck_and_couch(ct: sitk.Image) -> sitk.Image:
    """The sample CT (HU, MNI grid) extended 130 mm down with neck, spine and shoulders, and a couch.

    The neck is an elliptic soft-tissue cylinder (40 HU) with a vertebral column (700 HU) and
    spinal canal; shoulders widen below; the couch is a 12 mm plate (150 HU) 8 mm behind the head,
    separated from it by air, spanning the whole length.
    """
    sp = np.asarray(ct.GetSpacing())
    size = np.asarray(ct.GetSize())
    origin = np.asarray(ct.GetOrigin())
    D = np.asarray(ct.GetDirection()).reshape(3, 3)
    arr = sitk.GetArrayFromImage(ct)
    head = arr > -500
    ys = np.nonzero(head.any(axis=(0, 2)))[0]
    zs = np.nonzero(head.any(axis=(1, 2)))[0]
    ext_z = int(round(130 / sp[2]))
    ext_y = int(round(40 / sp[1]))
    big = np.full((size[2] + ext_z, size[1] + ext_y, size[0]), -1000.0, np.float32)
    # LPS: +y is posterior. The MNI grid's y axis points anterior->posterior after the flip iff D[1,1] > 0
    y0 = 0 if D[1, 1] > 0 else ext_y
    big[ext_z:, y0:y0 + size[1], :] = arr
    zz, yy, xx = np.meshgrid(np.arange(big.shape[0]), np.arange(big.shape[1]), np.arange(big.shape[2]),
                             indexing="ij")
    cx = size[0] / 2.0
    cy = y0 + float(np.mean(ys))
    neck_top = ext_z + zs.min() + int(round(45 / sp[2]))
    neck = (((xx - cx) * sp[0] / 55.0) ** 2 + ((yy - cy) * sp[1] / 60.0) ** 2 <= 1) & (zz < neck_top)
    air = big < -500
    big[neck & air] = 40.0
    spine_y = cy + (1 if D[1, 1] > 0 else -1) * 25 / sp[1]
    vert = (((xx - cx) * sp[0]) ** 2 + ((yy - spine_y) * sp[1]) ** 2 <= 12 ** 2) & (zz < neck_top - 10)
    canal = (((xx - cx) * sp[0]) ** 2 + ((yy - spine_y - (1 if D[1, 1] > 0 else -1) * 14 / sp[1]) * sp[1]) ** 2
             <= 6 ** 2) & (zz < neck_top - 10)
    big[vert] = 700.0
    big[canal] = 20.0
    shoulders = (((xx - cx) * sp[0] / 180.0) ** 2 + ((yy - cy) * sp[1] / 75.0) ** 2 <= 1) & \
                (zz < int(round(40 / sp[2])))
    big[shoulders & (big < -500)] = 35.0
    # couch: behind the most posterior tissue, separated by 8 mm of air
    body = big > -500
    back = np.nonzero(body.any(axis=(0, 2)))[0]
    edge = back.max() + int(round(8 / sp[1])) if D[1, 1] > 0 else back.min() - int(round(8 / sp[1]))
    lo, hi = (edge, edge + int(round(12 / sp[1]))) if D[1, 1] > 0 else (edge - int(round(12 / sp[1])), edge)
    big[:, max(lo, 0):min(hi, big.shape[1]), :] = 150.0
    out = sitk.GetImageFromArray(big)
    out.SetSpacing(tuple(sp))
    out.SetDirection(ct.GetDirection())
    # index (0, -y0, -ext_z) of the new grid is index (0, 0, 0) of the old one
    out.SetOrigin(tuple(origin - D @ (np.array([0.0, y0, ext_z]) * sp)))
    for key in ct.GetMetaDataKeys():
        out.SetMetaData(key, ct.GetMetaData(key))
    return out


def colin_t1_t2(path) -> tuple[sitk.Image, sitk.Image]:
    """The Colin27 brain-extracted T1 (``ch2bet.nii.gz``) and a SYNTHETIC T2-like volume on its
    grid: CSF bright (1000), grey matter 600, white matter 350, from the tissue classes of
    :func:`MedFusionLib.functional_phantoms.colin_tissue_maps` (k-means of the T1)."""

    maps = colin_tissue_maps(path)
    t1 = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    t2 = sitk.GetImageFromArray((1000.0 * maps.csf + 600.0 * maps.gm + 350.0 * maps.wm).astype(np.float32))
    t2.CopyInformation(t1)
    return t1, t2


def brain_only(mr: sitk.Image, margin_mm: float = 5.0) -> sitk.Image:
    """``mr`` cropped to the bounding box of its non-zero voxels plus ``margin_mm``."""
    arr = sitk.GetArrayViewFromImage(mr)
    nz = np.argwhere(arr > 0.05 * float(arr.max()))
    sp = np.asarray(mr.GetSpacing())[::-1]
    lo = np.maximum(nz.min(0) - np.ceil(margin_mm / sp).astype(int), 0)
    hi = np.minimum(nz.max(0) + np.ceil(margin_mm / sp).astype(int) + 1, arr.shape)
    return mr[int(lo[2]):int(hi[2]), int(lo[1]):int(hi[1]), int(lo[0]):int(hi[0])]


def brain_points(mr: sitk.Image, step: int = 997) -> np.ndarray:
    """Physical points (N, 3), mm, inside the brain of the MNI T1 (every ``step``-th voxel)."""
    arr = sitk.GetArrayViewFromImage(mr)
    idx = np.argwhere(arr > 0.1 * float(np.percentile(arr, 99.5)))[::step]
    return np.array([mr.TransformIndexToPhysicalPoint([int(x), int(y), int(z)]) for z, y, x in idx])


def tre(found: sitk.Transform, truth: sitk.Transform, points: np.ndarray) -> tuple[float, float]:
    """Mean and max distance (mm) between ``found`` and ``truth`` over ``points``."""
    d = [np.linalg.norm(np.subtract(found.TransformPoint(tuple(map(float, p))),
                                    truth.TransformPoint(tuple(map(float, p))))) for p in points]
    return float(np.mean(d)), float(np.max(d))

"""Working grids and foreground masks: what the registration iterates on instead of the inputs.

Registration needs a resolution of a millimetre or two, not the input's: a 512 x 512 x 400 CT is
reduced by integer box averaging (``BinShrink``, which also anti-aliases) and resampled on an
isotropic grid aligned with the image's own axes, so that the cost of every later step depends on
the anatomy's size, not on the scanner's matrix. Coarser levels of the pyramid are made from the
finest working image the same way.

Foreground masks separate the anatomy from air, noise and objects that are not the patient (a
CT couch, a head holder): a threshold at a fraction of the bright end, an opening that breaks
thin bridges, the largest connected component and its holes filled.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = ["working_image", "foreground_mask", "mask_points", "label_mask"]

#: Foreground threshold as a fraction of the range from the 1st to the 99.5th percentile.
FOREGROUND_FRACTION = 0.1


def working_image(image: sitk.Image, spacing: float, box=None) -> sitk.Image:
    """``image`` on an isotropic grid of ``spacing`` mm covering the same physical box.

    Parameters
    ----------
    image : SimpleITK.Image
        Scalar 2D or 3D image, any spacing (anisotropic and oblique grids included).
    spacing : float
        Voxel size of the result in mm.
    box : (ndarray, ndarray), optional
        Low and high bounds (mm) along the image's own axes (``direction.T @ point``): the
        result covers only the part of the image inside them.

    Returns
    -------
    SimpleITK.Image
        ``float32``, the same direction as ``image``; voxels are box averages of the input where
        the input is finer than ``spacing`` (integer factors), then linearly interpolated.
    """
    sp = np.asarray(image.GetSpacing(), dtype=float)
    factor = [max(1, int(np.floor(spacing / s + 1e-6))) for s in sp]
    img = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
    if any(f > 1 for f in factor):
        img = sitk.BinShrink(img, factor)
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection()).reshape(dim, -1)
    # the input's outer corner (index -0.5) along the image's axes
    lo = direction.T @ np.asarray(image.TransformContinuousIndexToPhysicalPoint([-0.5] * dim))
    hi = lo + np.asarray(image.GetSize()) * sp
    if box is not None:
        lo, hi = np.maximum(lo, box[0]), np.minimum(hi, box[1])
        hi = np.maximum(hi, lo + 2 * spacing)
    size = [max(2, int(np.ceil(e / spacing))) for e in hi - lo]
    origin = direction @ (lo + spacing / 2.0)
    return sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, tuple(origin),
                         (float(spacing),) * image.GetDimension(), image.GetDirection(), 0.0,
                         sitk.sitkFloat32)


def foreground_mask(image: sitk.Image) -> np.ndarray:
    """The anatomy of a working image as a boolean (z, y, x) array.

    Voxels above :data:`FOREGROUND_FRACTION` of the way from the 1st to the 99.5th percentile
    (air of a CT in HU included), opened by one voxel
    (breaks a couch or a head holder away from the body), the largest connected component, holes
    filled. An image with no such component gives an all-False mask.
    """
    arr = sitk.GetArrayViewFromImage(image)
    lo, hi = (float(v) for v in np.percentile(arr, [1, 99.5]))
    if not np.isfinite(hi) or hi <= lo:
        return np.zeros(arr.shape, bool)
    mask = ndimage.gaussian_filter(np.asarray(arr, np.float32), 0.7) > lo + FOREGROUND_FRACTION * (hi - lo)
    opened = ndimage.binary_opening(mask, iterations=1)
    if opened.any():
        mask = opened
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(np.argmax(sizes))
    if mask.ndim == 3:
        mask = ndimage.binary_closing(mask, iterations=2) | mask
    return ndimage.binary_fill_holes(mask)


def label_mask(labels: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """A user's label image (non-zero = inside) on ``reference``'s grid, as a boolean array."""
    on_ref = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                           labels.GetPixelID())
    return sitk.GetArrayViewFromImage(on_ref) != 0


def mask_points(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """Physical coordinates (N, dim), mm, of the voxels of ``image`` where ``mask`` is True."""
    idx = np.argwhere(mask)[:, ::-1].astype(float)  # (x, y, z) index order
    direction = np.asarray(image.GetDirection()).reshape(image.GetDimension(), -1)
    return (np.asarray(image.GetOrigin()) + (idx * np.asarray(image.GetSpacing())) @ direction.T)

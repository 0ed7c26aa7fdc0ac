"""Bundled sample data: a real MR T1 and SYNTHETIC CT-like and PET-like volumes with known truth.

Sources
-------
- ``mr_t1``: the MNI ICBM152 2009a nonlinear symmetric T1 template (real, averaged anatomy of 152
  adults, skull-stripped), 197 x 233 x 189 at 1 mm, shipped offline by the ``nilearn`` package.
  Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
  Institute, McGill University; used under its permissive licence (copy, modify and distribute
  with this notice). Fonov et al., NeuroImage 54(1):313-327, 2011, :DOI:`10.1016/j.neuroimage.2010.07.033`.
- ``ct``: SYNTHETIC CT-like volume in Hounsfield units derived from the template's grey/white
  matter probability maps: brain tissue (grey matter 40 HU, white matter 25 HU, CSF 5 HU), a
  synthetic skull shell (700-1500 HU, diploe darker than the tables), scalp (30 HU) and air
  (-1000 HU), plus a calcification and scanner-like noise.
- ``pet``: SYNTHETIC FDG-PET-like volume in SUV (grey matter 8, white matter 2.5, CSF 0.3, scalp
  1), with three hot lesions and a cold one, blurred to a 6 mm FWHM resolution, with noise.

The synthetic volumes are NOT scans of a patient: they exist so that demos and tests have a
realistic multi-modal pair whose ground truth (anatomy and misalignment) is known. Every file the
demo writes says so. The ITK example slices (real BrainWeb-simulated T1 and proton-density MR,
Apache-2.0) are fetched at set-up by ``Resources/SampleData/fetch-itk-examples.sh``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import optional
from .errors import InvalidInputError
from .options import look_up

__all__ = ["sample_volumes", "sample_pair", "truth_transform", "itk_example", "data_dir",
           "SAMPLE_KINDS", "SYNTHETIC_NOTE"]

SAMPLE_KINDS = ("ct-mr", "pet-mr")
SYNTHETIC_NOTE = ("SYNTHETIC sample data: MR T1 is the real MNI152 template; the CT-like and "
                  "PET-like volumes are synthesised from its tissue maps, not scanned.")

_REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Folder holding fetched sample data: ``$MEDFUSION_DATA`` or ``<repo>/.data``."""
    return Path(os.environ.get("MEDFUSION_DATA", _REPO / ".data"))


def itk_example(name: str) -> Path:
    """Path of one ITK example slice (e.g. ``BrainT1Slice.png``), fetched at set-up.

    Raises
    ------
    InvalidInputError
        If the file is not there, saying how to fetch it.
    """
    path = data_dir() / "itk" / name
    if not path.is_file():
        raise InvalidInputError(
            f"{path}: ITK example image not found; run `make data` (or "
            "Resources/SampleData/fetch-itk-examples.sh) once to fetch the sample data."
        )
    return path


def _mni_arrays():
    datasets = optional.require("nilearn.datasets", what="the bundled sample data (MNI152 template)")
    t1 = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    return np.asarray(t1.dataobj, dtype=np.float32), gm, wm, mask, np.asarray(t1.affine, dtype=float)


def _to_image(arr_xyz: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """NIfTI-style (x, y, z) array + RAS affine -> SimpleITK image (LPS geometry)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr_xyz.transpose(2, 1, 0)))
    flip = np.diag([-1.0, -1.0, 1.0])
    rot = affine[:3, :3]
    spacing = np.linalg.norm(rot, axis=0)
    direction = flip @ (rot / spacing)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    img.SetOrigin(tuple(float(v) for v in flip @ affine[:3, 3]))
    return img


def _sphere(shape, centre, radius) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return d2 <= radius ** 2


@functools.lru_cache(maxsize=1)
def _volumes():
    t1, gm, wm, mask, affine = _mni_arrays()
    rng = np.random.default_rng(2024)
    csf = np.clip(mask.astype(np.float32) - gm - wm, 0.0, 1.0)
    # distance (mm) outside the brain: CSF gap 0-2 mm, skull 2-9 mm, scalp 9-14 mm, then air
    dist = ndimage.distance_transform_edt(~mask).astype(np.float32)
    skull = (dist > 2.0) & (dist <= 9.0)
    scalp = (dist > 9.0) & (dist <= 14.0)
    gap = (dist > 0) & (dist <= 2.0)
    # skull: dense outer/inner tables, darker diploe in the middle, slow variation in density
    table = 1.0 - np.exp(-((dist - 5.5) ** 2) / 3.0)
    density = ndimage.gaussian_filter(rng.standard_normal(dist.shape).astype(np.float32), 6) * 8
    hu_bone = np.clip(900 + 600 * table + 150 * density, 700, 1600)
    ct = np.full(t1.shape, -1000.0, dtype=np.float32)
    ct[scalp] = 30.0
    ct[skull] = hu_bone[skull]
    ct[gap] = 8.0
    inside = mask
    ct[inside] = (40.0 * gm + 25.0 * wm + 5.0 * csf)[inside]
    calc = _sphere(t1.shape, (120, 140, 100), 2.5)  # a small calcification
    ct[calc] = 600.0
    ct = ndimage.gaussian_filter(ct, 0.7)
    ct += rng.normal(0.0, 4.0, ct.shape).astype(np.float32) * (ct > -900)
    ct = np.clip(ct, -1024, 3000)

    pet = (8.0 * gm + 2.5 * wm + 0.3 * csf) * mask + 1.0 * scalp + 0.4 * skull
    for centre, radius, value in (((70, 150, 110), 6, 22.0), ((130, 90, 80), 4, 18.0),
                                  ((100, 60, 120), 5, 16.0)):
        pet[_sphere(t1.shape, centre, radius)] = value
    pet[_sphere(t1.shape, (125, 150, 95), 7) & mask] = 0.8  # a cold (hypometabolic) region
    pet = ndimage.gaussian_filter(pet.astype(np.float32), 6.0 / 2.355)  # 6 mm FWHM
    pet = np.clip(pet + rng.normal(0.0, 0.15, pet.shape).astype(np.float32) * np.sqrt(np.maximum(pet, 0)), 0, None)

    out = {}
    for key, arr in (("mr_t1", t1 * 1000.0), ("ct", ct), ("pet", pet)):
        img = _to_image(arr.astype(np.float32), affine)
        if key != "mr_t1":
            img.SetMetaData("MedFusion.Synthetic", "1")
        img.SetMetaData("0008|0060", {"mr_t1": "MR", "ct": "CT", "pet": "PT"}[key])
        out[key] = img
    return out


def _copy(image: sitk.Image) -> sitk.Image:
    """A deep copy that keeps the metadata (``sitk.Image(image)`` does not)."""
    out = sitk.Image(image)
    for key in image.GetMetaDataKeys():
        out.SetMetaData(key, image.GetMetaData(key))
    return out


def sample_volumes() -> dict[str, sitk.Image]:
    """The sample volumes ``mr_t1``, ``ct`` (HU) and ``pet`` (SUV), 1 mm on the MNI152 grid.

    Each image carries its modality in the DICOM Modality key (``0008|0060``), and the synthetic
    ones ``MedFusion.Synthetic = 1``. Returns copies: callers may modify them.
    """
    return {k: _copy(v) for k, v in _volumes().items()}


def truth_transform(centre=(0.0, -18.0, 18.0)) -> sitk.Euler3DTransform:
    """The known rigid misalignment of the sample pairs (fixed -> moving points, LPS mm).

    Rotations of 6, -4 and 8 degrees about x, y and z (about ``centre``) and a translation of
    (7, -9, 5) mm: a realistic head repositioning between two sessions.
    """
    tx = sitk.Euler3DTransform()
    tx.SetCenter(centre)
    tx.SetRotation(*np.radians([6.0, -4.0, 8.0]))
    tx.SetTranslation((7.0, -9.0, 5.0))
    return tx


def sample_pair(kind: str = "ct-mr", *, moved: bool = True, moving_spacing=(1.2, 1.2, 2.5)):
    """A fixed MR T1 and a moving CT-like or PET-like volume with a known misalignment.

    Parameters
    ----------
    kind : {"ct-mr", "pet-mr"}
        Which synthetic source to pair with the MR T1.
    moved : bool, optional
        Apply :func:`truth_transform` to the moving volume (else it stays aligned).
    moving_spacing : tuple of float, optional
        Voxel size (mm) of the moving volume's grid: thicker slices, as a CT or PET would have.

    Returns
    -------
    fixed, moving : SimpleITK.Image
        ``fixed`` is the MR (1 mm); ``moving`` the CT (HU) or PET (SUV) on its own grid.
    truth : SimpleITK.Transform
        The transform a perfect registration returns (fixed -> moving points); identity if not
        ``moved``.
    """
    kind = look_up(kind, SAMPLE_KINDS, what="sample pair")
    vols = _volumes()
    fixed = _copy(vols["mr_t1"])
    src = vols["ct" if kind == "ct-mr" else "pet"]
    truth = truth_transform() if moved else sitk.Euler3DTransform()
    size = [int(round(sz * sp / ms)) for sz, sp, ms in zip(src.GetSize(), src.GetSpacing(), moving_spacing)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(tuple(float(s) for s in moving_spacing))
    grid.SetDirection(src.GetDirection())
    grid.SetOrigin(src.GetOrigin())
    background = -1000.0 if kind == "ct-mr" else 0.0
    # moving(y) = source(truth^-1(y)), so that moving(truth(x)) = source(x) on the fixed grid
    moving = sitk.Resample(src, grid, truth.GetInverse(), sitk.sitkLinear, background, sitk.sitkFloat32)
    for key in src.GetMetaDataKeys():
        moving.SetMetaData(key, src.GetMetaData(key))
    return fixed, moving, truth

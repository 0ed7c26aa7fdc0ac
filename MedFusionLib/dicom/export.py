"""A fusion result as DICOM: the derived series plus, when possible, the registration object."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import SimpleITK as sitk

from ..errors import InvalidInputError
from ..outputs import OutputSet
from ._headers import _looks_dicom
from .derived import write_derived_series
from .spatial_registration import _affine_of, write_spatial_registration

logger = logging.getLogger(__name__)

def write_fusion_dicom(
    fused: sitk.Image,
    out_dir: str | os.PathLike,
    *,
    fixed: str | os.PathLike,
    moving: str | os.PathLike,
    fixed_series_uid: str | None = None,
    moving_series_uid: str | None = None,
    transform: sitk.Transform | None = None,
    method: str = "",
) -> list[Path]:
    """Write a fusion result as DICOM: the derived image series and, when possible, the registration.

    Calls :func:`write_derived_series` (sources: fixed then moving) and, when the moving image is
    DICOM too and ``transform`` is rigid or affine (or None), :func:`write_spatial_registration`
    into ``out_dir / "REG00001.dcm"``. A B-spline registration is logged and not stored.

    Parameters
    ----------
    fused : SimpleITK.Image
        Fused volume on the fixed grid (``FusionResult.fused``).
    out_dir : str or path-like
        Output folder.
    fixed, moving : str or path-like
        The inputs as given to the fusion (the fixed one must be a CT or MR DICOM series).
    fixed_series_uid, moving_series_uid : str, optional
        SeriesInstanceUIDs when the folders hold several series.
    transform : SimpleITK.Transform, optional
        Fixed -> moving registration transform (``FusionResult.registration.transform``).
    method : str, optional
        Fusion method name.

    Returns
    -------
    files : list of Path
        Every file written (the image slices, then the registration object if written).
    """
    # one output set (MedFusionLib.outputs): the series and the registration object are put in
    # place together or not at all (inside a caller's set, e.g. fuse's, they join that one)
    with OutputSet(folders=[out_dir]):
        files = write_derived_series(
            fused, out_dir, reference_dir=fixed, reference_series_uid=fixed_series_uid,
            sources=[(fixed, fixed_series_uid), (moving, moving_series_uid)],
            transforms=[None, transform], description=f"MedFusion fused ({method})" if method
            else "MedFusion fused", method=method)
        moving = Path(moving)
        if not (moving.is_dir() or _looks_dicom(moving)):
            return files
        try:
            if transform is not None:
                _affine_of(transform)
        except InvalidInputError as exc:
            logger.info("registration not stored as DICOM: %s", exc)
            return files
        files.append(write_spatial_registration(
            transform, Path(out_dir) / "REG00001.dcm", reference_dir=fixed, moving_dir=moving,
            reference_series_uid=fixed_series_uid, moving_series_uid=moving_series_uid,
            description=f"MedFusion registration for {method} fusion" if method else
            "MedFusion registration"))
    return files

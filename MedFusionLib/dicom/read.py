"""Reading one DICOM series as a SimpleITK volume: :func:`read_series`."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InvalidInputError
from .geometry import _Frame, _functional_group, _layout, _frames_of, _regularize
from .pixels import _stack
from .series import _choose_series, _scan
from .suv import _acquisition_times, suv_factor

logger = logging.getLogger(__name__)


_META_KEYS = {
    "0008|0060": "Modality",
    "0020|000d": "StudyInstanceUID",
    "0020|000e": "SeriesInstanceUID",
    "0020|0052": "FrameOfReferenceUID",
    "0008|0016": "SOPClassUID",
    "0008|103e": "SeriesDescription",
    "0020|0011": "SeriesNumber",
    "0054|1001": "Units",
    "0018|0050": "SliceThickness",
}


def _first_value(v):
    if v is None:
        return None
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return v[0] if len(v) else None
    return v


def read_series(
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    suv: bool = False,
    strict: bool = False,
) -> sitk.Image:
    """Read one DICOM series as a 3D volume with exact geometry and real-world values.

    Parameters
    ----------
    path : str or path-like
        A folder (searched recursively) or a single (multi-frame) DICOM file.
    series_uid : str, optional
        SeriesInstanceUID to read when the folder holds several image series.
    suv : bool, optional
        For PET (Modality ``PT``): convert Bq/mL to SUV body weight with :func:`suv_factor`.
    strict : bool, optional
        Raise on non-uniform slice spacing or gantry tilt instead of resampling onto a regular grid.

    Returns
    -------
    image : SimpleITK.Image
        3D scalar image (x = columns, y = rows, z = slices sorted along the slice normal; a single
        slice gives depth 1), geometry in LPS millimetres. Pixel type int16/int32 when the rescale
        keeps integers (e.g. CT in HU), else float32. DICOM facts are stored as metadata (see the
        module docstring).

    Raises
    ------
    InvalidInputError
        Several image series and no ``series_uid``; unknown ``series_uid``; non-image objects only;
        missing geometry tags; inconsistent orientation or pixel spacing; duplicated positions;
        missing slices; irregular geometry with ``strict=True``; SUV tags missing.
    MissingDependencyError
        Compressed pixel data that no installed decoder can read.

    Warns
    -----
    UserWarning
        When slices were resampled onto a regular grid (non-uniform spacing or gantry tilt).
    """
    path = Path(path)
    scan = _scan(path)
    uid, items = _choose_series(path, scan, series_uid)
    datasets = {p: ds for p, ds in items}
    frames: list[_Frame] = []
    for p, ds in items:
        frames.extend(_frames_of(p, ds))
    ds0 = items[0][1]
    layout = _layout(frames, ds0)
    first = layout.frames[0]
    ds_first = datasets[first.path]
    vol = _stack(layout, datasets)
    sx, sy = float(first.spacing[1]), float(first.spacing[0])
    note = ""
    if layout.irregular:
        what = "; ".join(layout.irregular)
        if strict:
            raise InvalidInputError(
                f"{path}: series {uid} has irregular geometry: {what} (first slice {first.name()}). "
                "Read it with strict=False to resample onto a regular grid."
            )
        vol = _regularize(vol, layout, (sx, sy))
        note = f"resampled onto a regular grid ({what})"
        warnings.warn(f"{path}: series {uid}: {note}.", UserWarning, stacklevel=2)
        logger.warning("%s: series %s: %s", path, uid, note)

    modality = str(ds_first.get("Modality", "") or "").upper()
    units = {"CT": "HU"}.get(modality, str(ds_first.get("Units", "") or ""))
    if suv:
        factor = suv_factor(ds_first, acquisition_times=_acquisition_times(datasets.values()),
                            source=str(first.path))
        vol = vol.astype(np.float32) * np.float32(factor)
        units = "SUVbw"

    image = sitk.GetImageFromArray(vol)
    image.SetSpacing((sx, sy, float(layout.step)))
    image.SetOrigin(tuple(float(v) for v in first.position))
    image.SetDirection(tuple(float(v) for v in np.column_stack([layout.row, layout.col, layout.normal]).ravel()))

    for key, keyword in _META_KEYS.items():
        value = _first_value(ds_first.get(keyword))
        if value not in (None, ""):
            image.SetMetaData(key, str(value))
    for key, keyword in (("0028|1050", "WindowCenter"), ("0028|1051", "WindowWidth")):
        value = _first_value(ds_first.get(keyword))
        if value is None and "SharedFunctionalGroupsSequence" in ds_first:
            item = _functional_group(ds_first, first.index or 0, "FrameVOILUTSequence")
            value = _first_value(item.get(keyword)) if item is not None else None
        if value not in (None, ""):
            image.SetMetaData(key, str(value))
    image.SetMetaData("MedFusion|units", units)
    image.SetMetaData("MedFusion|source", str(path))
    if suv:
        image.SetMetaData("MedFusion|suv_factor", repr(factor))
    if note:
        image.SetMetaData("MedFusion|regularized", note)
    if layout.tilt_deg:
        image.SetMetaData("MedFusion|gantry_tilt_deg", f"{layout.tilt_deg:.3f}")
    return image

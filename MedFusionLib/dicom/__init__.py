"""DICOM in and out: read a series as a volume, PET SUV, write a fused volume as a derived series.

Reading (:func:`read_series`) uses pydicom and builds the geometry from the headers: slices are
sorted by their position along the slice normal (never by file name), classic single-frame series,
enhanced multi-frame objects (per-frame functional groups) and NM/SPECT multi-frame volumes are
supported, and rescale slope/intercept are applied (Hounsfield units for CT). Geometry is returned
in LPS, as DICOM and SimpleITK store it. Non-uniform slice spacing and gantry tilt are detected; by
default the volume is resampled onto a regular grid (with a warning), ``strict=True`` raises
instead. Missing slices, mixed series without a choice, inconsistent orientations, compressed pixel
data without a decoder and non-image objects raise :class:`~MedFusionLib.errors.InvalidInputError`
or :class:`~MedFusionLib.errors.MissingDependencyError` naming the file and the DICOM tag.

The returned image carries these DICOM header facts as metadata (``image.GetMetaData(key)``):
``0008|0060`` Modality (``CT``, ``MR``, ``PT``, ``NM``, ...), ``0020|000d`` StudyInstanceUID,
``0020|000e`` SeriesInstanceUID, ``0020|0052`` FrameOfReferenceUID, ``0008|0016`` SOPClassUID,
``0008|103e`` SeriesDescription, ``0020|0011`` SeriesNumber, ``0054|1001`` Units (PET), ``0028|1050``
/ ``0028|1051`` the first window centre/width, and ``MedFusion|units`` (``HU``, ``SUVbw``, ...).
Patient identifiers are deliberately not copied into the metadata (NRRD and MHA writers would store
them in plain text).

Writing (:func:`write_derived_series`) stores a fused volume as a new derived series in the study of
the fixed (reference) series; see its docstring for the attributes written.

The package is split by concern: :mod:`.series` (finding series), :mod:`.geometry` (slice
geometry), :mod:`.pixels` (pixel data), :mod:`.suv` (PET SUV), :mod:`.read` (:func:`read_series`),
:mod:`.derived` (:func:`write_derived_series`), :mod:`.spatial_registration` and :mod:`.export`.
"""

from .derived import check_derived_reference, write_derived_series
from .export import write_fusion_dicom
from .read import read_series
from .series import SeriesInfo, list_series
from .spatial_registration import write_spatial_registration
from .suv import suv_factor

__all__ = [
    "SeriesInfo",
    "list_series",
    "read_series",
    "suv_factor",
    "check_derived_reference",
    "write_derived_series",
    "write_spatial_registration",
    "write_fusion_dicom",
]

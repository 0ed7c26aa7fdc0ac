"""Storing a rigid or affine registration as a DICOM Spatial Registration object."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from .._version import __version__
from ..errors import InvalidInputError
from ..outputs import atomic_output
from ._compose import _PATIENT_STUDY_KEYWORDS, _TYPE2, _add_instance_references, _ref_item
from .compat import require_pydicom, write_file
from ._headers import _tag
from .geometry import _frames_of, _layout
from .series import _choose_series, _scan

_SRO_CLASS = "1.2.840.10008.5.1.4.1.1.66.1"  # Spatial Registration Storage


def _is_linear(transform: sitk.Transform) -> bool:
    """False for B-spline and displacement-field transforms, also inside a composite."""
    name = transform.GetName()
    if name == "CompositeTransform":
        comp = sitk.CompositeTransform(transform)
        return all(_is_linear(comp.GetNthTransform(i)) for i in range(comp.GetNumberOfTransforms()))
    return "BSpline" not in name and "Displacement" not in name


def _affine_of(transform: sitk.Transform) -> np.ndarray:
    """4x4 matrix of a linear ``transform`` (x -> A x + t), measured on points; raises if non-linear."""
    pts = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100], [37, -53, 71]], dtype=np.float64)
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in pts])
    t = mapped[0]
    a = (mapped[1:4] - t).T / 100.0
    if not _is_linear(transform) or np.max(np.abs(a @ pts[4] + t - mapped[4])) > 1e-4:
        raise InvalidInputError(
            f"a Spatial Registration object holds rigid or affine matrices; the {transform.GetName()} "
            "transform is not linear (use a DICOM Deformable Spatial Registration tool for B-splines)."
        )
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = a, t
    return m


def write_spatial_registration(
    transform: sitk.Transform | None,
    out_path: str | os.PathLike,
    *,
    reference_dir: str | os.PathLike,
    moving_dir: str | os.PathLike,
    reference_series_uid: str | None = None,
    moving_series_uid: str | None = None,
    description: str = "MedFusion registration",
) -> Path:
    """Store a rigid/affine registration as a DICOM Spatial Registration object (Modality REG).

    The object lives in the fixed (reference) study and frame of reference. Its first registration
    item is the identity for the fixed frame of reference; the second maps points of the moving
    series' frame of reference into the fixed one (the inverse of ``transform``, which maps fixed
    points to moving points as SimpleITK resampling does), with matrix type ``RIGID``,
    ``RIGID_SCALE`` or ``AFFINE`` as the matrix allows.

    Parameters
    ----------
    transform : SimpleITK.Transform or None
        Fixed -> moving point transform (``RegistrationResult.transform``); None for identity.
    out_path : str or path-like
        File to write (not overwritten if it exists).
    reference_dir, moving_dir : str or path-like
        DICOM folders (or files) of the fixed and moving series.
    reference_series_uid, moving_series_uid : str, optional
        SeriesInstanceUIDs when a folder holds several series.
    description : str, optional
        ContentDescription and SeriesDescription (at most 64 characters kept).

    Returns
    -------
    path : Path
        The written file.

    Raises
    ------
    InvalidInputError
        If the transform is not linear, a folder holds no usable series, or ``out_path`` exists.
    """

    require_pydicom()


    out_path = Path(out_path)
    if out_path.exists():
        raise InvalidInputError(f"{out_path}: exists already; choose a new file name.")
    if not out_path.parent.exists():
        raise InvalidInputError(f"{out_path}: the output folder {out_path.parent} does not exist.")
    fixed_to_moving = np.eye(4) if transform is None else _affine_of(transform)
    moving_to_fixed = np.linalg.inv(fixed_to_moving)
    a = moving_to_fixed[:3, :3]
    if np.allclose(a.T @ a, np.eye(3), atol=1e-6) and np.linalg.det(a) > 0:
        kind = "RIGID"
    elif np.allclose(a.T @ a, np.diag(np.diag(a.T @ a)), atol=1e-6) and np.linalg.det(a) > 0:
        kind = "RIGID_SCALE"
    else:
        kind = "AFFINE"

    def series(path, uid):
        path = Path(path)
        chosen, items = _choose_series(path, _scan(path), uid)
        frames = [f for p, ds in items for f in _frames_of(p, ds)]
        layout = _layout(frames, items[0][1])
        datasets = dict(items)
        return chosen, [datasets[f.path] for f in layout.frames]

    ref_uid, ref_sets = series(reference_dir, reference_series_uid)
    mov_uid, mov_sets = series(moving_dir, moving_series_uid)
    ref = ref_sets[0]
    for label, ds0 in (("fixed", ref), ("moving", mov_sets[0])):
        if not ds0.get("FrameOfReferenceUID"):
            raise InvalidInputError(
                f"{ds0.filename}: the {label} series has no {_tag('FrameOfReferenceUID')}; a "
                "registration relates frames of reference."
            )

    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds = Dataset()
    for kw in _PATIENT_STUDY_KEYWORDS:
        if kw in ref and ref[kw].value not in (None, "") and kw not in ("PatientPosition", "Laterality",
                                                                        "BodyPartExamined"):
            ds[kw] = ref[kw]
    for kw in _TYPE2[:-2] + ("Laterality",):
        if kw not in ds:
            setattr(ds, kw, "")
    ds.SOPClassUID = _SRO_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.Modality = "REG"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 2000
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = str(description)[:64]
    ds.Manufacturer = "MedFusion"
    ds.ManufacturerModelName = "MedFusion"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = __version__
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceNumber = 1
    ds.ContentLabel = "MEDFUSION_REG"
    ds.ContentDescription = str(description)[:64]
    ds.ContentCreatorName = ""

    def registration_item(frame_uid, sets, matrix, matrix_type):
        item = Dataset()
        item.FrameOfReferenceUID = frame_uid
        item.ReferencedImageSequence = [_ref_item(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in sets]
        mat = Dataset()
        mat.FrameOfReferenceTransformationMatrixType = matrix_type
        mat.FrameOfReferenceTransformationMatrix = [format_number_as_ds(float(v)) for v in matrix.ravel()]
        reg = Dataset()
        reg.RegistrationTypeCodeSequence = []  # type 2; the method is in ContentDescription
        reg.MatrixSequence = [mat]
        item.MatrixRegistrationSequence = [reg]
        return item

    ds.RegistrationSequence = [
        registration_item(ref.FrameOfReferenceUID, ref_sets, np.eye(4), "RIGID"),
        registration_item(mov_sets[0].FrameOfReferenceUID, mov_sets, moving_to_fixed, kind),
    ]
    refs = {}
    for sets, uid in ((ref_sets, ref_uid), (mov_sets, mov_uid)):
        refs.setdefault((str(sets[0].StudyInstanceUID), uid), []).extend(
            (str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in sets)
    _add_instance_references(ds, refs, str(ref.StudyInstanceUID))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SRO_CLASS
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta

    with atomic_output(out_path) as tmp:  # verified by pydicom's own write errors; umask applies
        write_file(tmp, ds)
    return out_path

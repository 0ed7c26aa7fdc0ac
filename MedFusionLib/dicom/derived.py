"""Writing a fused volume as a derived DICOM series in the fixed study: :func:`write_derived_series`."""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from .._version import __version__
from ..errors import InvalidInputError, OutputError
from ..outputs import make_temp_folder
from ._compose import (_PATIENT_STUDY_KEYWORDS, _TYPE2, _add_instance_references, _ref_item)
from .compat import require_pydicom, write_file
from ._headers import _looks_dicom, _tag
from .geometry import _Layout, _frames_of, _layout
from .series import _choose_series, _scan

logger = logging.getLogger(__name__)

_SOP_CLASS_FOR = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_IMAGE_TYPE_FOR = {"CT": ["DERIVED", "SECONDARY", "AXIAL"], "MR": ["DERIVED", "SECONDARY", "OTHER"]}

# Acquisition facts of the modality modules, copied from the reference when present.
_MODALITY_KEYWORDS = {
    "CT": {"KVP": 2, "AcquisitionNumber": 2},
    "MR": {"ScanningSequence": 1, "SequenceVariant": 1, "ScanOptions": 2, "MRAcquisitionType": 2,
           "RepetitionTime": 2, "EchoTime": 2, "EchoTrainLength": 2, "InversionTime": 3,
           "MagneticFieldStrength": 3, "ImagedNucleus": 3},
}
_MR_TYPE1_DEFAULTS = {"ScanningSequence": "RM", "SequenceVariant": "NONE"}


@dataclass
class _Source:
    label: str
    series_uid: str = ""
    study_uid: str = ""
    layout: _Layout | None = None
    sop: list[tuple[str, str]] = field(default_factory=list)  # per sorted frame: (class, instance)
    transform: sitk.Transform | None = None


def _read_source(item, transform, *, known: dict | None = None) -> _Source:
    """Headers and geometry of one source; ``known`` maps resolved paths to (scan, uid, layout)."""
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise InvalidInputError(f"sources: expected a path or a (path, series_uid) pair, got {item!r}.")
        path, uid = Path(item[0]), item[1]
    else:
        path, uid = Path(item), None
    if not path.exists():
        raise InvalidInputError(f"{path}: source image not found.")
    cached = (known or {}).get(path.resolve())  # (scan, series UID, layout) read already
    if cached is not None:
        scan = cached[0]
    else:
        scan = _scan(path) if (path.is_dir() or _looks_dicom(path)) else None
        if scan is None or not scan.headers:
            return _Source(label=f"file {path.name}", transform=transform)
    uid, items = _choose_series(path, scan, uid)
    if cached is not None and cached[1] == uid:
        layout = cached[2]
    else:
        layout = _layout([f for p, ds in items for f in _frames_of(p, ds)], items[0][1])
    datasets = {p: ds for p, ds in items}
    ds0 = datasets[layout.frames[0].path]
    number = ds0.get("SeriesNumber")
    desc = str(ds0.get("SeriesDescription", "") or "")
    label = f"{ds0.get('Modality', '?')} series{'' if number in (None, '') else ' ' + str(number)}"
    label += f" '{desc}'" if desc else ""
    label += f" ({uid})"
    sop = [(str(datasets[f.path].SOPClassUID), str(datasets[f.path].SOPInstanceUID)) for f in layout.frames]
    return _Source(label, uid, str(ds0.get("StudyInstanceUID", "")), layout, sop, transform)


def _contributing(src: _Source, points: np.ndarray) -> list[int]:
    """Indices of ``src``'s sorted frames whose slab holds any of ``points`` (n, 3) in LPS mm."""
    lay = src.layout
    if src.transform is not None:
        points = np.array([src.transform.TransformPoint(tuple(float(v) for v in p)) for p in points])
    d = points @ lay.normal
    half = lay.step / 2.0
    lo, hi = d.min() - half, d.max() + half
    return [k for k, dk in enumerate(lay.dist) if lo < dk < hi]


def _quantization(lo: float, hi: float) -> tuple[float, type]:
    """16-bit storage of values in [lo, hi]: (RescaleSlope, dtype); the intercept is always 0.

    Non-negative data use uint16 (PixelRepresentation 0), otherwise int16 (1).
    """
    if lo >= 0:
        return (hi / 65535.0 if hi > 0 else 1.0), np.uint16
    return max(abs(lo), abs(hi)) / 32767.0, np.int16


def _quantize(values: np.ndarray, slope: float, dtype: type) -> np.ndarray:
    """One slice of real values -> stored values (rounded to the nearest step)."""
    q = values.astype(np.float64) / slope
    np.rint(q, out=q)
    return q.astype(dtype)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed write created (deepest first), where they are empty."""
    for d in reversed(folders):
        try:
            d.rmdir()
        except OSError:
            return


def check_derived_reference(path: str | os.PathLike, image: sitk.Image | None = None) -> None:
    """Check, before any work, that ``path`` can be the reference of :func:`write_derived_series`.

    Parameters
    ----------
    path : str or path-like
        The fixed image's path: a DICOM folder or DICOM file.
    image : SimpleITK.Image, optional
        The fixed image as read; its ``0008|0060`` Modality must be CT or MR.

    Raises
    ------
    InvalidInputError
        If ``path`` is not DICOM or the modality is not CT or MR.
    """
    p = Path(path)
    if not (p.is_dir() or (p.is_file() and _looks_dicom(p))):
        raise InvalidInputError(
            f"{p}: a derived DICOM series needs a DICOM fixed image (its study, patient and frame of "
            "reference are copied); give the fixed series' DICOM folder, or write NIfTI/NRRD instead."
        )
    if image is not None and image.HasMetaDataKey("0008|0060"):
        modality = image.GetMetaData("0008|0060").strip().upper()
        if modality not in _SOP_CLASS_FOR:
            raise InvalidInputError(
                f"{p}: the fixed series has {_tag('Modality')} {modality}; a derived DICOM series can "
                "be written in the study of a CT or MR fixed series. Use the CT/MR image as FIXED."
            )


def write_derived_series(
    image: sitk.Image,
    out_dir: str | os.PathLike,
    *,
    reference_dir: str | os.PathLike,
    reference_series_uid: str | None = None,
    sources: Sequence = (),
    transforms: Sequence[sitk.Transform | None] | None = None,
    description: str = "MedFusion fused",
    method: str = "",
    series_number: int | None = None,
) -> list[Path]:
    """Write a fused volume as a new derived DICOM series in the fixed (reference) study.

    One single-frame instance per slice, of the reference's SOP class (CT Image Storage or MR Image
    Storage), with a new SeriesInstanceUID and SOPInstanceUIDs; the reference's StudyInstanceUID,
    FrameOfReferenceUID and patient/study identifiers (copied from the reference series only);
    ImageType ``DERIVED\\SECONDARY``; a DerivationDescription naming the method and the sources;
    per-slice SourceImageSequence items (purpose: DCM 121322) for the instances of each DICOM source
    that the slice overlaps, listed again in ReferencedSeriesSequence (same study) or
    StudiesContainingOtherReferencedInstancesSequence (other studies); ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing, SliceThickness and SpacingBetweenSlices from the image
    geometry; pixel data 16-bit with RescaleSlope (intercept 0) and a full-range window.

    Parameters
    ----------
    image : SimpleITK.Image
        3D scalar volume in the reference's frame of reference (LPS mm), e.g.
        ``FusionResult.fused`` (float32 in [0, 1] on the fixed grid).
    out_dir : str or path-like
        Folder for the files ``IM00001.dcm``, ... (created; existing files are never overwritten).
    reference_dir : str or path-like
        DICOM folder (or file) of the fixed series.
    reference_series_uid : str, optional
        SeriesInstanceUID of the fixed series when ``reference_dir`` holds several.
    sources : sequence, optional
        The inputs in order (fixed first): each a path (DICOM folder or file, or another image
        file) or a ``(path, series_uid)`` pair. Defaults to the reference series alone.
    transforms : sequence of SimpleITK.Transform or None, optional
        One per source: maps points of ``image`` to points of that source (the registration
        transform for the moving image, ``None`` for identity). Used to find which source slices
        each output slice overlaps.
    description : str, optional
        SeriesDescription (at most 64 characters kept).
    method : str, optional
        Fusion method name, written into DerivationDescription.
    series_number : int, optional
        SeriesNumber; default is the reference's SeriesNumber + 1000.

    Returns
    -------
    files : list of Path
        The written files, one per slice, in slice order.

    Raises
    ------
    InvalidInputError
        If the image is not a 3D scalar volume with finite values, its direction is not
        orthonormal, the reference is not a CT or MR image series, a source cannot be read, or an
        output file exists already.
    """
    require_pydicom()


    if not isinstance(image, sitk.Image):
        raise TypeError(f"write_derived_series needs a SimpleITK.Image, got {type(image).__name__}.")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(
            f"write_derived_series needs a 3D scalar volume, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per pixel."
        )
    arr = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(float(np.min(arr))) or not np.isfinite(float(np.max(arr))) or \
            np.isnan(arr).any():
        raise InvalidInputError("write_derived_series: the image holds NaN or infinite values.")
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if np.max(np.abs(direction.T @ direction - np.eye(3))) > 1e-4:
        raise InvalidInputError(
            "write_derived_series: the image direction is not orthonormal; DICOM slices need "
            f"perpendicular unit axes, got {direction.ravel().tolist()}."
        )
    if transforms is not None and len(transforms) != len(sources):
        raise InvalidInputError(
            f"write_derived_series: {len(transforms)} transforms for {len(sources)} sources; give "
            "one per source (None for identity)."
        )

    reference_dir = Path(reference_dir)
    ref_scan = _scan(reference_dir)
    ref_uid, ref_items = _choose_series(reference_dir, ref_scan, reference_series_uid)
    ref_frames = [f for p, ds in ref_items for f in _frames_of(p, ds)]
    ref_layout = _layout(ref_frames, ref_items[0][1])
    ref = dict(ref_items)[ref_layout.frames[0].path]
    modality = str(ref.get("Modality", "") or "").upper()
    if modality not in _SOP_CLASS_FOR:
        raise InvalidInputError(
            f"{ref_layout.frames[0].path}: the reference series has {_tag('Modality')} "
            f"{modality or 'missing'}; a derived DICOM series can be written in the study of a CT "
            "or MR fixed series. Use the CT/MR image as the fixed image, or write NIfTI/NRRD."
        )
    sop_class = _SOP_CLASS_FOR[modality]

    items = list(sources) if sources else [(reference_dir, ref_uid)]
    tlist = list(transforms) if transforms is not None else [None] * len(items)
    srcs = [_read_source(it, tf, known={reference_dir.resolve(): (ref_scan, ref_uid, ref_layout)})
            for it, tf in zip(items, tlist)]

    out_dir = Path(out_dir)
    nz, ny, nx = arr.shape
    names = [f"IM{k + 1:05d}.dcm" for k in range(nz)]
    clash = [n for n in names if (out_dir / n).exists()] if out_dir.is_dir() else []
    if clash:
        raise InvalidInputError(
            f"{out_dir / clash[0]}: exists already; write the derived series into an empty folder."
        )

    lo, hi = float(np.min(arr)), float(np.max(arr))
    slope, dtype = _quantization(lo, hi)
    signed = int(dtype is np.int16)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    row, col, axis = direction[:, 0], direction[:, 1], direction[:, 2]
    normal = np.cross(row, col)
    series_uid = generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    if series_number is None:
        try:
            series_number = int(ref.get("SeriesNumber")) + 1000
        except (TypeError, ValueError):
            series_number = 1000
    derivation = f"Image fusion by MedFusion {__version__}"
    derivation += f", method '{method}'" if method else ""
    derivation += ", sources: " + "; ".join(s.label for s in srcs)
    derivation = derivation[:1024]

    def ds_(value) -> str:
        return format_number_as_ds(float(value))

    base = Dataset()
    for kw in _PATIENT_STUDY_KEYWORDS:
        if kw in ref and ref[kw].value not in (None, ""):
            base[kw] = ref[kw]
    for kw in _TYPE2:
        if kw not in base:
            setattr(base, kw, "")
    for kw, typ in _MODALITY_KEYWORDS[modality].items():
        value = ref.get(kw)
        if value not in (None, ""):
            setattr(base, kw, value)
        elif typ == 1:
            setattr(base, kw, _MR_TYPE1_DEFAULTS[kw])
        elif typ == 2:
            setattr(base, kw, "")
    if str(ref.get("LossyImageCompression", "")) == "01":
        base.LossyImageCompression = "01"
    base.SOPClassUID = sop_class
    base.Modality = modality
    base.SeriesInstanceUID = series_uid
    base.SeriesNumber = int(series_number)
    base.SeriesDate, base.SeriesTime = date, time
    base.ContentDate, base.ContentTime = date, time
    base.InstanceCreationDate, base.InstanceCreationTime = date, time
    base.SeriesDescription = str(description)[:64]
    base.Manufacturer = "MedFusion"
    base.ManufacturerModelName = "MedFusion"
    base.SoftwareVersions = __version__
    base.ImageType = _IMAGE_TYPE_FOR[modality]
    base.DerivationDescription = derivation
    base.ImageOrientationPatient = [ds_(v) for v in np.concatenate([row, col])]
    base.PixelSpacing = [ds_(spacing[1]), ds_(spacing[0])]
    base.SliceThickness = ds_(spacing[2])
    base.SpacingBetweenSlices = ds_(spacing[2])
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = ny, nx
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = signed
    base.RescaleIntercept = "0"
    base.RescaleSlope = ds_(slope)
    if modality == "MR":
        base.RescaleType = "US"
    base.WindowCenter = ds_((lo + hi) / 2.0)
    base.WindowWidth = ds_(max(hi - lo, slope))
    base.WindowCenterWidthExplanation = "full range"
    base.BurnedInAnnotation = "NO"

    # in-plane sample points of a slice, to find the source slices it overlaps
    uu, vv = np.meshgrid(np.linspace(0, nx - 1, 5), np.linspace(0, ny - 1, 5))
    plane = (uu.ravel()[:, None] * spacing[0] * row + vv.ravel()[:, None] * spacing[1] * col)

    created = [d for d in (out_dir, *out_dir.parents) if not d.exists()][::-1]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_folder(out_dir)
    except OSError as exc:
        _remove_empty(created)
        raise OutputError(f"{out_dir}: cannot write the DICOM series there: "
                          f"{exc.strerror or exc}.") from None
    written: list[Path] = []
    try:
        for k in range(nz):
            position = origin + k * spacing[2] * axis
            ds = Dataset()
            ds.update(base)
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [ds_(v) for v in position]
            ds.SliceLocation = ds_(position @ normal)
            refs: dict[tuple[str, str], list[tuple[str, str]]] = {}
            source_items = []
            for src in srcs:
                if src.layout is None:
                    continue
                for j in _contributing(src, position + plane):
                    sop = src.sop[j]
                    if sop not in refs.setdefault((src.study_uid, src.series_uid), []):
                        refs[(src.study_uid, src.series_uid)].append(sop)
                        source_items.append(_ref_item(*sop, purpose=True))
            if source_items:
                ds.SourceImageSequence = source_items
            _add_instance_references(ds, refs, str(ref.StudyInstanceUID))
            ds.PixelData = _quantize(arr[k], slope, dtype).tobytes()
            ds["PixelData"].VR = "OW"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            write_file(tmp / names[k], ds)
            if (tmp / names[k]).stat().st_size < len(ds.PixelData):
                raise OSError(f"{names[k]} was written incompletely")
        for name in names:
            os.replace(tmp / name, out_dir / name)
            written.append(out_dir / name)
    except BaseException as exc:
        for p in written:
            p.unlink(missing_ok=True)
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
        _remove_empty(created)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"{out_dir}: could not write the DICOM series ("
                              f"{exc.strerror or exc}); is the disk full? Nothing was "
                              "written.") from None
        raise
    tmp.rmdir()
    logger.info("wrote derived series %s (%d slices) to %s", series_uid, nz, out_dir)
    return written

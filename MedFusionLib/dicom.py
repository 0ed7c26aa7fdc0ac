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
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InvalidInputError, MissingDependencyError

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

logger = logging.getLogger(__name__)

# Tolerances for geometry checks, in mm (positions) or direction-cosine units (orientation).
_ORIENTATION_TOL = 1e-4
_POSITION_TOL = 1e-2

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _tag(keyword: str) -> str:
    """``"RescaleSlope"`` -> ``"RescaleSlope (0028,1053)"`` for error messages."""
    from pydicom.datadict import tag_for_keyword

    t = tag_for_keyword(keyword)
    if t is None:
        return keyword
    return f"{keyword} ({t >> 16:04X},{t & 0xFFFF:04X})"


# --------------------------------------------------------------------------------------------
# Scanning a folder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesInfo:
    """One series found in a folder by :func:`list_series`.

    Attributes
    ----------
    series_uid, study_uid, frame_of_reference_uid : str
        SeriesInstanceUID, StudyInstanceUID and FrameOfReferenceUID ("" when absent).
    modality : str
        DICOM Modality (``CT``, ``MR``, ``PT``, ``NM``, ``SR``, ...).
    description : str
        SeriesDescription ("" when absent).
    series_number : int or None
        SeriesNumber.
    sop_class : str
        SOP Class name of the first object, e.g. "CT Image Storage".
    files : tuple of Path
        The files of the series, sorted by name (not by geometry).
    n_frames : int
        Total number of image frames (single-frame files count one each).
    rows, columns : int
        Image size of the first object (0 for non-image objects).
    is_image : bool
        Whether the series holds pixel data that :func:`read_series` can read as a volume.
    spacing : tuple of float or None
        Voxel size (x, y, z) in mm from the headers (z: median slice spacing); None when unknown.
    problems : tuple of str
        Geometry findings from the headers: non-uniform spacing, gantry tilt (the volume will be
        resampled) or the error :func:`read_series` would raise (missing slices, ...).
    """

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    description: str
    series_number: int | None
    sop_class: str
    files: tuple[Path, ...]
    n_frames: int
    rows: int
    columns: int
    is_image: bool
    spacing: tuple[float, float, float] | None = None
    problems: tuple[str, ...] = ()

    @property
    def n_files(self) -> int:
        """Number of files in the series."""
        return len(self.files)


@dataclass
class _Scan:
    headers: dict[str, list[tuple[Path, object]]] = field(default_factory=dict)
    skipped: list[Path] = field(default_factory=list)


def _iter_files(path: Path) -> Iterable[Path]:
    if path.is_file():
        yield path
        return
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.upper() != "DICOMDIR":
                yield Path(root) / name


def _has_pixels(ds) -> bool:
    return any(k in ds for k in _PIXEL_KEYWORDS)


def _scan(path: Path) -> _Scan:
    """Read every DICOM header under ``path`` (pixel data deferred), grouped by SeriesInstanceUID."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or folder.")
    scan = _Scan()
    for p in _iter_files(path):
        try:
            # defer_size: big values (pixel data) are not loaded, but their presence is recorded.
            ds = pydicom.dcmread(p, defer_size=1024)
        except (InvalidDicomError, OSError, EOFError) as exc:
            logger.info("%s: not a DICOM file, skipped (%s)", p, exc)
            scan.skipped.append(p)
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise InvalidInputError(
                f"{p}: the DICOM object has no {_tag('SeriesInstanceUID')}; it cannot be assigned "
                "to a series. Fix the file or remove it from the folder."
            )
        scan.headers.setdefault(uid, []).append((p, ds))
    return scan


def _n_frames(ds) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _info(uid: str, items: list[tuple[Path, object]]) -> SeriesInfo:
    first = items[0][1]
    image_items = [(p, ds) for p, ds in items if _has_pixels(ds)]
    ref = image_items[0][1] if image_items else first
    try:
        number = int(ref.get("SeriesNumber")) if ref.get("SeriesNumber") not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    sop = ref.get("SOPClassUID")
    sop_name = getattr(sop, "name", str(sop or "")) if sop else ""
    return SeriesInfo(
        series_uid=uid,
        study_uid=str(ref.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(ref.get("FrameOfReferenceUID", "") or ""),
        modality=str(ref.get("Modality", "") or ""),
        description=str(ref.get("SeriesDescription", "") or ""),
        series_number=number,
        sop_class=sop_name,
        files=tuple(sorted(p for p, _ in items)),
        n_frames=sum(_n_frames(ds) for _, ds in image_items),
        rows=int(ref.get("Rows", 0) or 0),
        columns=int(ref.get("Columns", 0) or 0),
        is_image=bool(image_items),
    )


def list_series(path: str | os.PathLike) -> list[SeriesInfo]:
    """List the DICOM series in a folder (searched recursively) or a single file.

    Parameters
    ----------
    path : str or path-like
        Folder (or one DICOM file). Hidden files, ``DICOMDIR`` and non-DICOM files are skipped.

    Returns
    -------
    series : list of SeriesInfo
        Image and non-image series, sorted by study, series number and UID. Empty when the folder
        holds no DICOM object.

    Raises
    ------
    InvalidInputError
        If ``path`` does not exist or an object has no SeriesInstanceUID.
    """
    scan = _scan(Path(path))
    infos = [_with_geometry(_info(uid, items), items) for uid, items in scan.headers.items()]
    return sorted(infos, key=lambda s: (s.study_uid, s.series_number or 0, s.series_uid))


def _with_geometry(info: SeriesInfo, items: list[tuple[Path, object]]) -> SeriesInfo:
    """Add the header-only geometry check (no pixel data is read) to ``info``."""
    from dataclasses import replace

    images = [(p, ds) for p, ds in items if _has_pixels(ds)]
    if not images:
        return info
    try:
        layout = _layout([f for p, ds in images for f in _frames_of(p, ds)], images[0][1])
    except InvalidInputError as exc:
        return replace(info, problems=(str(exc),))
    sp = layout.frames[0].spacing
    return replace(info, spacing=(float(sp[1]), float(sp[0]), float(layout.step)),
                   problems=tuple(layout.irregular))


def _describe(s: SeriesInfo) -> str:
    desc = f" '{s.description}'" if s.description else ""
    return f"{s.series_uid} ({s.modality or '?'}{desc}, {s.n_frames} frames in {s.n_files} files)"


def _choose_series(path: Path, scan: _Scan, series_uid: str | None) -> tuple[str, list]:
    if not scan.headers:
        extra = f" ({len(scan.skipped)} non-DICOM files skipped)" if scan.skipped else ""
        raise InvalidInputError(f"{path}: no DICOM files found{extra}.")
    infos = {uid: _info(uid, items) for uid, items in scan.headers.items()}
    images = [s for s in infos.values() if s.is_image]
    if series_uid is not None:
        series_uid = str(series_uid).strip()
        if series_uid not in infos:
            listing = "; ".join(_describe(s) for s in images) or "none"
            raise InvalidInputError(
                f"{path}: no series with SeriesInstanceUID (0020,000E) {series_uid}. "
                f"Image series present: {listing}."
            )
        chosen = infos[series_uid]
        if not chosen.is_image:
            raise InvalidInputError(
                f"{chosen.files[0]}: series {series_uid} is a non-image object "
                f"({chosen.sop_class or 'unknown SOP class'}) without {_tag('PixelData')}; "
                "choose an image series (list them with `medfusion dicom-ls DIR`)."
            )
    else:
        if not images:
            first = next(iter(infos.values()))
            raise InvalidInputError(
                f"{first.files[0]}: no image series in {path}: the DICOM objects found "
                f"({', '.join(sorted({s.sop_class or '?' for s in infos.values()}))}) have no "
                f"{_tag('PixelData')}."
            )
        if len(images) > 1:
            listing = "; ".join(_describe(s) for s in images)
            raise InvalidInputError(
                f"{path}: the folder holds {len(images)} image series; choose one by its "
                f"SeriesInstanceUID (0020,000E) (series_uid=..., see `medfusion dicom-ls`): {listing}."
            )
        chosen = images[0]
    items = [(p, ds) for p, ds in scan.headers[chosen.series_uid] if _has_pixels(ds)]
    for p, ds in scan.headers[chosen.series_uid]:
        if not _has_pixels(ds):
            logger.info("%s: non-image object in series %s, ignored", p, chosen.series_uid)
    return chosen.series_uid, items


# --------------------------------------------------------------------------------------------
# Frames and geometry
# --------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    path: Path
    index: int | None  # frame number in a multi-frame object (0-based), None for single-frame
    position: np.ndarray  # (3,) LPS mm
    orientation: np.ndarray  # (6,) row cosine then column cosine
    spacing: np.ndarray  # (2,) PixelSpacing: (row spacing, column spacing) mm
    slope: float
    intercept: float
    instance: int | None

    def name(self) -> str:
        return f"{self.path}" + ("" if self.index is None else f" frame {self.index + 1}")


def _floats(value, n: int, path: Path, keyword: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{path}: {_tag(keyword)} must hold {n} numbers, got {value!r}.")
    return arr


def _required(item, keyword: str, path: Path, where: str = ""):
    value = item.get(keyword) if item is not None else None
    if value is None or value == "":
        raise InvalidInputError(
            f"{path}: missing {_tag(keyword)}{where}; the slice geometry cannot be determined."
        )
    return value


def _scalar(item, keyword: str, default: float, path: Path) -> float:
    value = item.get(keyword) if item is not None else None
    if value is None or value == "":
        return default
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{path}: {_tag(keyword)} is not a number: {value!r}.") from None
    if not math.isfinite(v):
        raise InvalidInputError(f"{path}: {_tag(keyword)} is not finite: {value!r}.")
    return v


def _functional_group(ds, i: int, keyword: str):
    """Item ``keyword`` of frame ``i`` from the per-frame, else the shared functional groups."""
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is not None and i < len(per) and keyword in per[i] and len(per[i][keyword].value):
        return per[i][keyword].value[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0] and len(shared[0][keyword].value):
        return shared[0][keyword].value[0]
    return None


def _instance(ds) -> int | None:
    try:
        return int(ds.get("InstanceNumber"))
    except (TypeError, ValueError):
        return None


def _frames_of(path: Path, ds) -> list[_Frame]:
    """The geometry and rescale of every frame of one object."""
    n = _n_frames(ds)
    instance = _instance(ds)
    if "PerFrameFunctionalGroupsSequence" in ds:  # enhanced multi-frame
        frames = []
        for i in range(n):
            where = f" in frame {i + 1} of the functional groups"
            pos_item = _functional_group(ds, i, "PlanePositionSequence")
            ori_item = _functional_group(ds, i, "PlaneOrientationSequence")
            meas_item = _functional_group(ds, i, "PixelMeasuresSequence")
            pvt = _functional_group(ds, i, "PixelValueTransformationSequence")
            if pvt is None and "RescaleSlope" in ds:
                pvt = ds
            frames.append(
                _Frame(
                    path,
                    i,
                    _floats(_required(pos_item, "ImagePositionPatient", path, where), 3, path,
                            "ImagePositionPatient"),
                    _floats(_required(ori_item, "ImageOrientationPatient", path, where), 6, path,
                            "ImageOrientationPatient"),
                    _floats(_required(meas_item, "PixelSpacing", path, where), 2, path, "PixelSpacing"),
                    _scalar(pvt, "RescaleSlope", 1.0, path),
                    _scalar(pvt, "RescaleIntercept", 0.0, path),
                    instance,
                )
            )
        return frames
    slope = _scalar(ds, "RescaleSlope", 1.0, path)
    intercept = _scalar(ds, "RescaleIntercept", 0.0, path)
    if n == 1:
        return [
            _Frame(
                path,
                None,
                _floats(_required(ds, "ImagePositionPatient", path), 3, path, "ImagePositionPatient"),
                _floats(_required(ds, "ImageOrientationPatient", path), 6, path,
                        "ImageOrientationPatient"),
                _spacing_2d(ds, path),
                slope,
                intercept,
                instance,
            )
        ]
    # Classic multi-frame volume (NM/SPECT reconstructions): one position for the first frame,
    # frames stacked along the slice normal every SpacingBetweenSlices.
    geo = ds
    det = ds.get("DetectorInformationSequence")
    if "ImagePositionPatient" not in ds and det:
        geo = det[0]
    pos = _floats(_required(geo, "ImagePositionPatient", path), 3, path, "ImagePositionPatient")
    ori = _floats(_required(geo, "ImageOrientationPatient", path), 6, path, "ImageOrientationPatient")
    step = _scalar(ds, "SpacingBetweenSlices", float("nan"), path)
    if not math.isfinite(step) or step == 0:
        step = _scalar(ds, "SliceThickness", float("nan"), path)
    if not math.isfinite(step) or step == 0:
        raise InvalidInputError(
            f"{path}: multi-frame object without per-frame positions needs "
            f"{_tag('SpacingBetweenSlices')} (or SliceThickness) to stack its {n} frames."
        )
    normal = np.cross(ori[:3], ori[3:])
    spacing = _spacing_2d(ds, path)
    return [_Frame(path, i, pos + i * step * normal, ori, spacing, slope, intercept, instance)
            for i in range(n)]


def _spacing_2d(ds, path: Path) -> np.ndarray:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        if ds.get(kw) not in (None, ""):
            return _floats(ds.get(kw), 2, path, kw)
    raise InvalidInputError(f"{path}: missing {_tag('PixelSpacing')}; the pixel size is unknown.")


def _unit(v: np.ndarray, path: Path) -> np.ndarray:
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n < 1e-6:
        raise InvalidInputError(f"{path}: {_tag('ImageOrientationPatient')} has a zero vector.")
    return v / n


@dataclass
class _Layout:
    frames: list[_Frame]  # sorted along the normal
    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    dist: np.ndarray  # (n,) position along the normal, mm
    offsets: np.ndarray  # (n, 3) in-plane offset of each slice from the first one, mm
    step: float  # nominal slice spacing, mm
    irregular: list[str]  # human-readable irregularities (non-uniform spacing, tilt)
    tilt_deg: float


def _layout(frames: list[_Frame], ds0) -> _Layout:
    first = frames[0]
    for f in frames[1:]:
        if np.max(np.abs(f.orientation - first.orientation)) > _ORIENTATION_TOL:
            raise InvalidInputError(
                f"{f.name()}: {_tag('ImageOrientationPatient')} {list(np.round(f.orientation, 5))} "
                f"differs from {list(np.round(first.orientation, 5))} in {first.name()}; "
                "a volume needs one orientation. The series mixes planes (e.g. a localizer); "
                "remove the odd files or pick another series."
            )
        if np.max(np.abs(f.spacing - first.spacing)) > 1e-4:
            raise InvalidInputError(
                f"{f.name()}: {_tag('PixelSpacing')} {list(f.spacing)} differs from "
                f"{list(first.spacing)} in {first.name()}."
            )
    row = _unit(first.orientation[:3], first.path)
    col = _unit(first.orientation[3:], first.path)
    if abs(float(row @ col)) > 1e-3:
        raise InvalidInputError(
            f"{first.path}: {_tag('ImageOrientationPatient')} row and column directions are not "
            f"perpendicular (cosine {float(row @ col):.4f})."
        )
    col = _unit(col - (row @ col) * row, first.path)
    normal = np.cross(row, col)
    dist = np.array([f.position @ normal for f in frames])
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    dist = dist[order]
    for a, b, da, db in zip(frames[:-1], frames[1:], dist[:-1], dist[1:]):
        if db - da < 1e-3:
            raise InvalidInputError(
                f"{b.name()}: same slice position {_tag('ImagePositionPatient')} along the normal "
                f"({db:.3f} mm) as {a.name()}; the series holds several volumes (time points, echoes, "
                "...) or duplicated files. Split it, or remove the duplicates."
            )
    irregular: list[str] = []
    if len(frames) == 1:
        step = _scalar(ds0, "SpacingBetweenSlices", float("nan"), first.path)
        if not (math.isfinite(step) and step > 0):
            step = _scalar(ds0, "SliceThickness", 1.0, first.path)
        step = step if step > 0 else 1.0
    else:
        gaps = np.diff(dist)
        step = float(np.median(gaps))
        tol = max(_POSITION_TOL, 0.01 * step)
        for k, gap in enumerate(gaps):
            ratio = gap / step
            if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
                ia, ib = frames[k].instance, frames[k + 1].instance
                # frames of one object cannot go missing; consecutive instances mean uneven spacing
                same_object = frames[k].path == frames[k + 1].path
                consecutive = ia is not None and ib is not None and abs(ib - ia) == 1
                if not (same_object or consecutive):
                    missing = int(round(ratio)) - 1
                    raise InvalidInputError(
                        f"{frames[k + 1].name()}: about {missing} slice(s) missing before this one: "
                        f"gap of {gap:.3f} mm along the normal from {frames[k].name()} where the "
                        f"series spacing is {step:.3f} mm ({_tag('ImagePositionPatient')}). "
                        "Copy the complete series."
                    )
        if np.max(np.abs(gaps - step)) > tol:
            irregular.append(
                f"non-uniform slice spacing: {gaps.min():.3f} to {gaps.max():.3f} mm "
                f"(median {step:.3f} mm)"
            )
    rel = np.array([f.position - first.position for f in frames])
    # in-plane offset of each slice's first pixel: zero for an orthogonal stack
    offsets = rel - np.outer(rel @ normal, normal)
    tilt = 0.0
    if len(frames) > 1 and np.max(np.linalg.norm(offsets, axis=1)) > _POSITION_TOL:
        span = dist[-1] - dist[0]
        tilt = math.degrees(math.atan2(float(np.linalg.norm(offsets[-1])), float(span)))
        gantry = ds0.get("GantryDetectorTilt")
        hint = f", {_tag('GantryDetectorTilt')} = {gantry}" if gantry not in (None, "") else ""
        irregular.append(
            f"slices are sheared (gantry tilt about {tilt:.2f} degrees{hint}): the slice positions "
            "do not run along the slice normal"
        )
    return _Layout(frames, row, col, normal, dist, offsets, step, irregular, tilt)


# --------------------------------------------------------------------------------------------
# Pixel data
# --------------------------------------------------------------------------------------------


def _check_decoder(path: Path, ds) -> None:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None or not ts.is_compressed:
        return
    from pydicom.pixels import get_decoder

    try:
        available = get_decoder(ts).is_available
    except (NotImplementedError, ValueError, KeyError):
        available = False
    if not available:
        raise MissingDependencyError(
            f"{path}: the pixel data is compressed as {ts.name} ({_tag('TransferSyntaxUID')} = {ts}) "
            "and no installed decoder handles it. Install a pydicom pixel-data plugin "
            "(pylibjpeg with pylibjpeg-libjpeg or pylibjpeg-openjpeg, or python-gdcm), or decompress "
            "the series first (e.g. `gdcmconv --raw` or DCMTK `dcmdjpls`/`dcmdjpeg`)."
        )


def _pixels(path: Path, ds) -> np.ndarray:
    """Stored values of every frame as an array (frames, rows, columns)."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InvalidInputError(
            f"{path}: {_tag('SamplesPerPixel')} is {ds.SamplesPerPixel}; only grey-scale (one sample "
            "per pixel) series can be read as a volume."
        )
    _check_decoder(path, ds)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for corrupt pixel data
        raise InvalidInputError(f"{path}: cannot decode {_tag('PixelData')}: {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape[0] != _n_frames(ds):
        raise InvalidInputError(
            f"{path}: {_tag('NumberOfFrames')} is {_n_frames(ds)} but the pixel data holds "
            f"{arr.shape[0]} frames."
        )
    return arr


def _stack(layout: _Layout, datasets: dict[Path, object]) -> np.ndarray:
    """Rescaled voxel values (z, y, x), integer when rescale keeps integers, else float32."""
    frames = layout.frames
    integral = all(
        f.slope == 1.0 and float(f.intercept).is_integer() for f in frames
    )
    cache: dict[Path, np.ndarray] = {}
    rows = cols = None
    out = None
    for k, f in enumerate(frames):
        if f.path not in cache:
            cache.clear()  # one object's decoded frames at a time
            cache[f.path] = _pixels(f.path, datasets[f.path])
        raw = cache[f.path][0 if f.index is None else f.index]
        if out is None:
            rows, cols = raw.shape
            integral = integral and np.issubdtype(raw.dtype, np.integer)
            out = np.empty((len(frames), rows, cols), np.int32 if integral else np.float32)
        elif raw.shape != (rows, cols):
            raise InvalidInputError(
                f"{f.name()}: image size {raw.shape[1]}x{raw.shape[0]} ({_tag('Columns')} x "
                f"{_tag('Rows')}) differs from {cols}x{rows} in {frames[0].name()}."
            )
        if integral:
            np.add(raw, np.int32(f.intercept), out=out[k], casting="unsafe")
        else:
            np.multiply(raw, np.float32(f.slope), out=out[k], casting="unsafe")
            out[k] += np.float32(f.intercept)
    if integral:
        lo, hi = int(out.min()), int(out.max())
        if -32768 <= lo and hi <= 32767:
            out = out.astype(np.int16)
    return out


def _regularize(vol: np.ndarray, layout: _Layout, spacing_xy: tuple[float, float]) -> np.ndarray:
    """Resample sheared / unevenly spaced slices onto an orthogonal, evenly spaced grid.

    Slice ``k`` is shifted in-plane by its offset from the first slice (undoing gantry tilt), then
    the stack is linearly interpolated along the normal at ``dist[0] + j * step``.
    """
    from scipy import ndimage

    sx, sy = spacing_xy
    work = vol.astype(np.float32, copy=True)
    background = float(work.min())
    for k in range(1, work.shape[0]):
        o = layout.offsets[k]
        shift = (float(o @ layout.col) / sy, float(o @ layout.row) / sx)
        if abs(shift[0]) > 1e-6 or abs(shift[1]) > 1e-6:
            work[k] = ndimage.shift(work[k], shift, order=1, mode="constant", cval=background)
    d = layout.dist - layout.dist[0]
    n = int(math.floor(d[-1] / layout.step + 1e-3)) + 1  # the regular grid stays inside the data
    target = np.minimum(np.arange(n) * layout.step, d[-1])
    hi = np.clip(np.searchsorted(d, target, side="left"), 1, len(d) - 1)
    lo = hi - 1
    w = ((target - d[lo]) / (d[hi] - d[lo])).astype(np.float32)
    w = np.clip(w, 0.0, 1.0)[:, None, None]
    return (1.0 - w) * work[lo] + w * work[hi]


# --------------------------------------------------------------------------------------------
# PET SUV
# --------------------------------------------------------------------------------------------


def _datetime(date, time, *, what: str) -> _dt.datetime | None:
    """DA + TM strings -> datetime (None when either is empty)."""
    date = str(date or "").strip()
    time = str(time or "").strip()
    if not date or not time:
        return None
    return _parse_dt(date + time, what=what)


def _parse_dt(value: str, *, what: str) -> _dt.datetime:
    value = str(value).strip()
    for sign in ("+", "-"):  # drop a UTC offset suffix (&ZZXX)
        if sign in value[8:]:
            value = value[: 8 + value[8:].index(sign)]
    main, _, frac = value.partition(".")
    if len(main) < 10 or not main.isdigit():
        raise InvalidInputError(f"{what}: cannot read the date/time {value!r}.")
    main = main.ljust(14, "0")
    try:
        stamp = _dt.datetime.strptime(main[:14], "%Y%m%d%H%M%S")
    except ValueError:
        raise InvalidInputError(f"{what}: cannot read the date/time {value!r}.") from None
    if frac:
        stamp += _dt.timedelta(seconds=float("0." + frac))
    return stamp


def suv_factor(ds, *, acquisition_times: Sequence[_dt.datetime] | None = None, source: str = "") -> float:
    """Factor turning PET activity concentration (Bq/mL) into SUV body weight (g/mL).

    ``SUVbw = C * weight / decayed_dose`` with ``weight`` in g and the injected dose decayed from
    the injection time to the scan start: ``decayed_dose = dose * 2 ** (-(t_scan - t_inj) / T_half)``
    (QIBA / DICOM vendor-neutral SUV definition, decay correction ``START``). With decay correction
    ``ADMIN`` the dose is not decayed. Pixel values must already be rescaled to Bq/mL.

    Parameters
    ----------
    ds : pydicom.Dataset
        Header of one PET image of the series.
    acquisition_times : sequence of datetime, optional
        AcquisitionDate/Time of all slices; the scan start falls back to the earliest of them when
        the SeriesTime is later than the acquisition (series re-saved after the scan).
    source : str, optional
        Name of the file, used in error messages.

    Returns
    -------
    factor : float
        Multiply Bq/mL by this to get SUVbw; 1.0 when ``Units`` is already ``GML``.

    Raises
    ------
    InvalidInputError
        Naming the missing or unusable tag: Units (0054,1001), DecayCorrection (0054,1102),
        CorrectedImage (0028,0051), PatientWeight (0010,1030),
        RadiopharmaceuticalInformationSequence (0054,0016), RadionuclideTotalDose (0018,1074),
        RadionuclideHalfLife (0018,1075), RadiopharmaceuticalStartDateTime (0018,1078) /
        RadiopharmaceuticalStartTime (0018,1072), SeriesDate (0008,0021) / SeriesTime (0008,0031).
    """
    where = source or "PET header"

    def missing(keyword: str, why: str) -> InvalidInputError:
        return InvalidInputError(
            f"{where}: cannot convert PET to SUV (body weight): {_tag(keyword)} is {why}."
        )

    if str(ds.get("Modality", "")).upper() != "PT":
        raise InvalidInputError(
            f"{where}: SUV needs a PET series, but {_tag('Modality')} is {ds.get('Modality')!r}."
        )
    units = str(ds.get("Units", "") or "").strip().upper()
    if not units:
        raise missing("Units", "missing")
    if units == "GML":
        return 1.0
    if units != "BQML":
        raise missing("Units", f"{units!r}; only BQML (Bq/mL) or GML (already SUV) can be used")
    corrected = [str(v).upper() for v in (ds.get("CorrectedImage") or [])]
    if "DECY" not in corrected:
        raise missing("CorrectedImage", f"{corrected or 'missing'} (no DECY: the image is not decay corrected)")
    decay = str(ds.get("DecayCorrection", "") or "").strip().upper()
    if decay not in ("START", "ADMIN"):
        raise missing("DecayCorrection", f"{decay or 'missing'!r}; START or ADMIN is needed")
    weight = ds.get("PatientWeight")
    try:
        weight_kg = float(weight)
    except (TypeError, ValueError):
        raise missing("PatientWeight", "missing" if weight in (None, "") else f"{weight!r}") from None
    if not weight_kg > 0:
        raise missing("PatientWeight", f"{weight_kg} kg (must be positive)")
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise missing("RadiopharmaceuticalInformationSequence", "missing")
    rp = seq[0]
    try:
        dose = float(rp.get("RadionuclideTotalDose"))
    except (TypeError, ValueError):
        raise missing("RadionuclideTotalDose", "missing") from None
    if not dose > 0:
        raise missing("RadionuclideTotalDose", f"{dose} Bq (must be positive)")
    try:
        half_life = float(rp.get("RadionuclideHalfLife"))
    except (TypeError, ValueError):
        raise missing("RadionuclideHalfLife", "missing") from None
    if not half_life > 0:
        raise missing("RadionuclideHalfLife", f"{half_life} s (must be positive)")
    if decay == "ADMIN":
        return weight_kg * 1000.0 / dose
    scan = _datetime(ds.get("SeriesDate"), ds.get("SeriesTime"), what=f"{where} SeriesDate/SeriesTime")
    if scan is None:
        keyword = "SeriesDate" if not ds.get("SeriesDate") else "SeriesTime"
        raise missing(keyword, "missing (needed for the scan start time)")
    if acquisition_times:
        earliest = min(acquisition_times)
        if earliest < scan:
            logger.info("%s: SeriesTime after the earliest AcquisitionTime; using %s", where, earliest)
            scan = earliest
    if rp.get("RadiopharmaceuticalStartDateTime"):
        injected = _parse_dt(rp.RadiopharmaceuticalStartDateTime,
                             what=f"{where} {_tag('RadiopharmaceuticalStartDateTime')}")
    elif rp.get("RadiopharmaceuticalStartTime"):
        injected = _datetime(ds.get("SeriesDate"), rp.RadiopharmaceuticalStartTime,
                             what=f"{where} {_tag('RadiopharmaceuticalStartTime')}")
        if injected > scan:  # injected the day before the scan
            injected -= _dt.timedelta(days=1)
    else:
        raise missing("RadiopharmaceuticalStartDateTime", "missing, and so is RadiopharmaceuticalStartTime (0018,1072)")
    elapsed = (scan - injected).total_seconds()
    if elapsed < 0:
        raise InvalidInputError(
            f"{where}: cannot convert PET to SUV: the injection ({injected}) is after the scan "
            f"start ({scan}); check {_tag('RadiopharmaceuticalStartDateTime')} and SeriesTime (0008,0031)."
        )
    decayed = dose * 2.0 ** (-elapsed / half_life)
    return weight_kg * 1000.0 / decayed


def _acquisition_times(datasets: Iterable) -> list[_dt.datetime]:
    out = []
    for ds in datasets:
        try:
            t = _datetime(ds.get("AcquisitionDate"), ds.get("AcquisitionTime"), what="AcquisitionTime")
        except InvalidInputError:
            t = None
        if t is not None:
            out.append(t)
    return out


# --------------------------------------------------------------------------------------------
# read_series
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Writing a derived series
# --------------------------------------------------------------------------------------------

_SOP_CLASS_FOR = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_IMAGE_TYPE_FOR = {"CT": ["DERIVED", "SECONDARY", "AXIAL"], "MR": ["DERIVED", "SECONDARY", "OTHER"]}

# Copied from the fixed (reference) series only: patient, study and frame-of-reference identity.
_PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "OtherPatientIDsSequence", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence", "PatientAge", "PatientSize", "PatientWeight",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription",
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    "Laterality", "PatientPosition", "BodyPartExamined",
)
# Type 2 attributes that must be present (empty when the reference lacks them).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber", "PositionReferenceIndicator",
          "PatientPosition", "Laterality")  # the last two are 2C: required for CT/MR here
# Acquisition facts of the modality modules, copied from the reference when present.
_MODALITY_KEYWORDS = {
    "CT": {"KVP": 2, "AcquisitionNumber": 2},
    "MR": {"ScanningSequence": 1, "SequenceVariant": 1, "ScanOptions": 2, "MRAcquisitionType": 2,
           "RepetitionTime": 2, "EchoTime": 2, "EchoTrainLength": 2, "InversionTime": 3,
           "MagneticFieldStrength": 3, "ImagedNucleus": 3},
}
_MR_TYPE1_DEFAULTS = {"ScanningSequence": "RM", "SequenceVariant": "NONE"}

_SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")


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


def _looks_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _contributing(src: _Source, points: np.ndarray) -> list[int]:
    """Indices of ``src``'s sorted frames whose slab holds any of ``points`` (n, 3) in LPS mm."""
    lay = src.layout
    if src.transform is not None:
        points = np.array([src.transform.TransformPoint(tuple(float(v) for v in p)) for p in points])
    d = points @ lay.normal
    half = lay.step / 2.0
    lo, hi = d.min() - half, d.max() + half
    return [k for k, dk in enumerate(lay.dist) if lo < dk < hi]


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ref_item(sop_class: str, sop_instance: str, *, purpose: bool = False):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if purpose:
        item.PurposeOfReferenceCodeSequence = [_code(*_SOURCE_PURPOSE)]
    return item


def _add_instance_references(ds, refs: dict[tuple[str, str], list[tuple[str, str]]], study_uid: str) -> None:
    """Common Instance Reference module: ``refs`` maps (study, series) UIDs to (class, instance) UIDs.

    Series of ``study_uid`` go to ReferencedSeriesSequence, the others to
    StudiesContainingOtherReferencedInstancesSequence.
    """
    from pydicom.dataset import Dataset

    same, other = [], {}
    for (study, series), sops in refs.items():
        item = Dataset()
        item.SeriesInstanceUID = series
        item.ReferencedInstanceSequence = [_ref_item(*sop) for sop in sops]
        if study == study_uid:
            same.append(item)
        else:
            other.setdefault(study, []).append(item)
    if same:
        ds.ReferencedSeriesSequence = same
    if other:
        studies = []
        for study, series_items in other.items():
            st = Dataset()
            st.StudyInstanceUID = study
            st.ReferencedSeriesSequence = series_items
            studies.append(st)
        ds.StudiesContainingOtherReferencedInstancesSequence = studies


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
    import tempfile

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pydicom.valuerep import format_number_as_ds

    from . import __version__

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
    out_dir.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = arr.shape
    names = [f"IM{k + 1:05d}.dcm" for k in range(nz)]
    clash = [n for n in names if (out_dir / n).exists()]
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

    tmp = Path(tempfile.mkdtemp(prefix=".medfusion-", dir=out_dir))
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
            pydicom.dcmwrite(tmp / names[k], ds, enforce_file_format=True)
        for name in names:
            os.replace(tmp / name, out_dir / name)
            written.append(out_dir / name)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    finally:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
    logger.info("wrote derived series %s (%d slices) to %s", series_uid, nz, out_dir)
    return written


# --------------------------------------------------------------------------------------------
# Spatial Registration object
# --------------------------------------------------------------------------------------------

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
    import tempfile

    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pydicom.valuerep import format_number_as_ds

    from . import __version__

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
    fd, tmp = tempfile.mkstemp(prefix=".medfusion-", suffix=".dcm", dir=out_path.parent)
    os.close(fd)
    try:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_path


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
    files = write_derived_series(
        fused, out_dir, reference_dir=fixed, reference_series_uid=fixed_series_uid,
        sources=[(fixed, fixed_series_uid), (moving, moving_series_uid)],
        transforms=[None, transform], description=f"MedFusion fused ({method})" if method else
        "MedFusion fused", method=method)
    moving = Path(moving)
    if not (moving.is_dir() or _looks_dicom(moving)):
        return files
    try:
        if transform is not None:
            _affine_of(transform)
    except InvalidInputError as exc:
        logger.info("registration not stored as DICOM: %s", exc)
        return files
    try:
        files.append(write_spatial_registration(
            transform, Path(out_dir) / "REG00001.dcm", reference_dir=fixed, moving_dir=moving,
            reference_series_uid=fixed_series_uid, moving_series_uid=moving_series_uid,
            description=f"MedFusion registration for {method} fusion" if method else
            "MedFusion registration"))
    except BaseException:
        for p in files:
            p.unlink(missing_ok=True)
        raise
    return files

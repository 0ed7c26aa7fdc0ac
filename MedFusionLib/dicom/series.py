"""Finding DICOM series in a folder: :func:`list_series`, and the choice of one series to read."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from pydicom.errors import InvalidDicomError

from ..errors import InvalidInputError
from .compat import require_pydicom
from ._headers import _has_pixels, _n_frames, _tag
from .geometry import _frames_of, _layout

logger = logging.getLogger(__name__)

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


def _scan(path: Path) -> _Scan:
    """Read every DICOM header under ``path`` (pixel data deferred), grouped by SeriesInstanceUID."""
    pydicom = require_pydicom()

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

"""Slice geometry from the headers: frames of single- and multi-frame objects, their sorting along
the slice normal, spacing, missing-slice and gantry-tilt checks, and resampling onto a regular grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InvalidInputError
from ._headers import _ORIENTATION_TOL, _POSITION_TOL, _floats, _n_frames, _required, _scalar, _tag


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


def _regularize(vol: np.ndarray, layout: _Layout, spacing_xy: tuple[float, float]) -> np.ndarray:
    """Resample sheared / unevenly spaced slices onto an orthogonal, evenly spaced grid.

    Slice ``k`` is shifted in-plane by its offset from the first slice (undoing gantry tilt), then
    the stack is linearly interpolated along the normal at ``dist[0] + j * step``.
    """

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

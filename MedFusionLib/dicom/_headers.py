"""Header values read with errors that name the file and the DICOM tag (shared by the readers)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydicom.datadict import tag_for_keyword

from ..errors import InvalidInputError

# Tolerances for geometry checks, in mm (positions) or direction-cosine units (orientation).
_ORIENTATION_TOL = 1e-4
_POSITION_TOL = 1e-2

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _tag(keyword: str) -> str:
    """``"RescaleSlope"`` -> ``"RescaleSlope (0028,1053)"`` for error messages."""

    t = tag_for_keyword(keyword)
    if t is None:
        return keyword
    return f"{keyword} ({t >> 16:04X},{t & 0xFFFF:04X})"


def _has_pixels(ds) -> bool:
    return any(k in ds for k in _PIXEL_KEYWORDS)


def _n_frames(ds) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


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


def _looks_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"

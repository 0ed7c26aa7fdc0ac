"""Pixel data: decoder check, decoding, and the rescaled voxel stack of a sorted series."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InvalidInputError, MissingDependencyError
from ._headers import _n_frames, _tag
from .compat import decoder_available
from .geometry import _Layout


def _check_decoder(path: Path, ds) -> None:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None or not ts.is_compressed:
        return
    available = decoder_available(ts)
    if not available:
        raise MissingDependencyError(
            f"{path}: the pixel data is compressed as {ts.name} ({_tag('TransferSyntaxUID')} = {ts}) "
            "and no installed decoder handles it. Install a pydicom pixel-data plugin "
            "(pylibjpeg with pylibjpeg-libjpeg or pylibjpeg-openjpeg, or python-gdcm), or decompress "
            "the series first (e.g. `gdcmconv --raw` or DCMTK `dcmdjpls`/`dcmdjpeg`)."
        )


def _check_native_length(path: Path, ds) -> None:
    """Refuse uncompressed pixel data shorter than its header says (a cut-off file), with the
    same message on every pydicom release (their own errors differ between 2.4 and 3.x)."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None or ts.is_compressed or "PixelData" not in ds:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        actual = len(ds.PixelData)
    except Exception as exc:  # a missing tag or an unreadable (deferred) value
        raise InvalidInputError(f"{path}: cannot read {_tag('PixelData')}: {exc}") from None
    expected = (rows * cols * _n_frames(ds) * samples * bits + 7) // 8
    if actual < expected:
        raise InvalidInputError(
            f"{path}: {_tag('PixelData')} holds {actual} bytes, less than expected ({expected} "
            f"bytes for {_n_frames(ds)} frame(s) of {cols}x{rows} at {bits} bits): the file is "
            "cut off or damaged; copy it again."
        )


def _pixels(path: Path, ds) -> np.ndarray:
    """Stored values of every frame as an array (frames, rows, columns)."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InvalidInputError(
            f"{path}: {_tag('SamplesPerPixel')} is {ds.SamplesPerPixel}; only grey-scale (one sample "
            "per pixel) series can be read as a volume."
        )
    _check_decoder(path, ds)
    _check_native_length(path, ds)
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

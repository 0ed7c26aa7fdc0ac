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


#: Uncompressed little-endian transfer syntaxes whose pixel data is read straight from the bytes.
_NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _native_array(path: Path, ds) -> np.ndarray | None:
    """Stored values of an uncompressed little-endian object straight from its bytes (frames,
    rows, columns), or None where pydicom's decoder must run (other syntaxes, bit depths, or high
    bits set beyond BitsStored, which decoders treat differently).

    What it returns equals ``ds.pixel_array`` (read-only: a view of the file's bytes).
    """
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None or str(ts) not in _NATIVE_LE or "PixelData" not in ds:
        return None
    try:
        bits, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return None
    if bits not in (8, 16, 32) or not 1 <= stored <= bits:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    n = _n_frames(ds)
    data = ds.PixelData
    if len(data) < n * rows * cols * dtype.itemsize:
        return None  # _check_native_length has refused it already; let the decoder say more
    arr = np.frombuffer(data, dtype=dtype, count=n * rows * cols).reshape(n, rows, cols)
    if stored < bits and arr.size:
        lo, hi = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
        if arr.min() < lo or arr.max() > hi:
            return None
    return arr


def _pixels(path: Path, ds) -> np.ndarray:
    """Stored values of every frame as an array (frames, rows, columns)."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InvalidInputError(
            f"{path}: {_tag('SamplesPerPixel')} is {ds.SamplesPerPixel}; only grey-scale (one sample "
            "per pixel) series can be read as a volume."
        )
    _check_decoder(path, ds)
    _check_native_length(path, ds)
    arr = _native_array(path, ds)
    if arr is None:
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
    """Rescaled voxel values (z, y, x), integer when rescale keeps integers, else float32.

    Integer results are int16 when every value fits, else int32; the stored frames are read (or
    decoded) once, and the volume is allocated once in its final type.
    """
    frames = layout.frames
    integral = all(
        f.slope == 1.0 and float(f.intercept).is_integer() for f in frames
    )
    decoded: dict[Path, np.ndarray] = {}
    raws = []
    rows = cols = None
    lo, hi = np.inf, -np.inf
    for f in frames:
        if f.path not in decoded:
            decoded[f.path] = _pixels(f.path, datasets[f.path])
        raw = decoded[f.path][0 if f.index is None else f.index]
        if rows is None:
            rows, cols = raw.shape
            integral = integral and np.issubdtype(raw.dtype, np.integer)
        elif raw.shape != (rows, cols):
            raise InvalidInputError(
                f"{f.name()}: image size {raw.shape[1]}x{raw.shape[0]} ({_tag('Columns')} x "
                f"{_tag('Rows')}) differs from {cols}x{rows} in {frames[0].name()}."
            )
        if integral and raw.size:
            lo = min(lo, int(raw.min()) + int(f.intercept))
            hi = max(hi, int(raw.max()) + int(f.intercept))
        raws.append(raw)
    if integral:
        dtype = np.int16 if -32768 <= lo and hi <= 32767 else np.int32
    else:
        dtype = np.float32
    out = np.empty((len(frames), rows, cols), dtype)
    for k, (f, raw) in enumerate(zip(frames, raws)):
        if integral:
            np.add(raw, np.int32(f.intercept), out=out[k], casting="unsafe")
        else:
            np.multiply(raw, np.float32(f.slope), out=out[k], casting="unsafe")
            out[k] += np.float32(f.intercept)
    return out

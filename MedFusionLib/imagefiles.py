"""What an image file declares, checked against what is on disk.

Some formats keep their pixels in other files than the one the user names: a MetaImage header
(``.mhd``) points at ``ElementDataFile`` (``.raw``/``.zraw``, any name), a detached NRRD header
(``.nhdr``) at its ``data file``. Every reader also trusts the header's declared size: ITK reads a
cut-off NIfTI or BMP as if whole, the missing part as zeros. This module answers, without decoding
the pixels through ITK:

- :func:`files_of` -- every file an input consists of (header, detached data files, the files of
  a DICOM folder), so outputs can be checked against all of them;
- :func:`companion_files` -- the data files that writing a header-only format creates;
- :func:`check_complete` -- the bytes a file declares against the bytes it holds (NIfTI, NIfTI
  ``.gz``, NIfTI/Analyze ``.hdr``/``.img`` pairs, MetaImage -- also ``LIST`` and file-pattern data
  files --, NRRD, BMP -- also RLE-compressed, walked code by code --, TIFF, JPEG), the header's
  own consistency (NIfTI: datatype against bitpix, a finite ``vox_offset``); raises
  :class:`~MedFusionLib.errors.InvalidInputError`. Compressed data is inflated in bounded chunks
  and never beyond what the header declares (a small file that inflates to gigabytes is not held
  in memory). ITK's BMP decoder corrupts the heap on a cut-off RLE stream, so that check is what
  stands between a hostile file and the process;
- :func:`nifti_nonfinite` -- the NaN/Inf voxels of a floating-point NIfTI file (ITK's NIfTI reader
  turns them into 0, so they have to be looked up in the raw data), as positions and values.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidInputError

__all__ = ["files_of", "companion_files", "check_complete", "nifti_nonfinite", "NonFinite",
           "nifti_pair", "nifti_pixdim", "nifti_header"]

_CHUNK = 1 << 22

#: MetaImage ElementType -> bytes per component.
_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
              "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8,
              "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}

#: NIfTI datatype code -> numpy dtype (little-endian; swapped for big-endian headers).
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 32: "c8", 64: "f8", 128: "u1", 256: "i1",
                 512: "u2", 768: "u4", 1024: "i8", 1280: "u8", 1792: "c16", 2304: "u1"}
_NIFTI_COMPONENTS = {128: 3, 2304: 4}
#: A NIfTI-1 / Analyze 7.5 header and its data file, in either order.
_NIFTI_PAIR = (".hdr", ".img")


# --------------------------------------------------------------------------------------------
# Which files an image consists of


def _ext(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _read_head(path: Path, limit: int = 65536) -> bytes:
    with path.open("rb") as fh:
        return fh.read(limit)


def _meta_header(path: Path) -> tuple[dict, int]:
    """MetaImage ``Key = Value`` fields (keys lower-case) and the byte offset after the header."""
    head = _read_head(path)
    fields, offset = {}, 0
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        line = raw.decode("latin-1").strip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            if value.split()[:1] and value.split()[0].upper() == "LIST":
                # one file name per line after the header ("LIST" or "LIST 2D")
                fields["_list"] = [ln.strip() for ln in
                                   head[offset:].decode("latin-1").splitlines() if ln.strip()]
            break
    return fields, offset


def _nrrd_header(path: Path) -> tuple[dict, int, list[str]]:
    """NRRD fields (keys lower-case, ``datafile`` spelled ``data file``), the header length and
    the lines after it (the file list of ``data file: LIST``)."""
    head = _read_head(path)
    fields, offset = {}, 0
    lines = head.split(b"\n")
    rest: list[str] = []
    for i, raw in enumerate(lines):
        offset += len(raw) + 1
        line = raw.decode("latin-1").rstrip("\r")
        if i == 0:
            continue
        if not line.strip():
            rest = [ln.decode("latin-1").strip() for ln in lines[i + 1:] if ln.strip()]
            break
        if line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if sep:
            key = key.strip().lower()
            fields["data file" if key == "datafile" else key] = value.lstrip("=").strip()
    return fields, offset, rest


def _pattern_files(folder: Path, spec: str) -> list[Path]:
    """``name%03d.raw MIN MAX STEP`` (MetaImage and NRRD file patterns) -> the file list."""
    parts = spec.split()
    try:
        lo, hi = int(parts[1]), int(parts[2])
        step = int(parts[3]) if len(parts) > 3 else 1
    except (IndexError, ValueError):
        return []
    if step == 0 or abs(hi - lo) // abs(step) > 100000:
        return []
    return [folder / (parts[0] % i) for i in range(lo, hi + (1 if step > 0 else -1), step)]


def _detached_files(path: Path) -> list[Path]:
    ext = _ext(path)
    folder = path.parent
    if ext in (".mhd", ".mha"):
        fields, _ = _meta_header(path)
        name = fields.get("elementdatafile", "LOCAL")
        if name.upper() == "LOCAL":
            return []
        if name.split()[0].upper() == "LIST":
            return [folder / n for n in fields.get("_list", [])]
        if "%" in name:
            return _pattern_files(folder, name)
        return [folder / name]
    if ext in (".nhdr", ".nrrd"):
        fields, _, rest = _nrrd_header(path)
        name = fields.get("data file")
        if not name:
            return []
        if name.split()[0].upper() == "LIST":
            return [folder / n for n in rest]
        if "%" in name:
            return _pattern_files(folder, name)
        return [folder / name]
    if ext in _NIFTI_PAIR:
        return [f for f in nifti_pair(path) if f != path]
    return []


def files_of(path: str | os.PathLike) -> list[Path]:
    """Every file that reading ``path`` touches: the file itself, its detached data files, or all
    files in a (DICOM) folder. Paths are absolute with links resolved; files that do not exist
    are left out."""
    p = Path(path)
    if p.is_dir():
        return sorted(f.resolve() for f in p.rglob("*") if f.is_file())
    if not p.is_file():
        return []
    out = [p.resolve()]
    try:
        out += [f.resolve() for f in _detached_files(p) if f.is_file()]
    except OSError:
        pass
    return out


def companion_files(path: str | os.PathLike) -> list[Path]:
    """The data files that :func:`MedFusionLib.io.write_image` creates next to a header-only
    output: ``X.mhd`` -> ``X.zraw``, ``X.nhdr`` -> ``X.raw``; none for the other formats."""
    p = Path(path)
    ext = _ext(p)
    stem = p.name[: -len(ext)] if ext else p.name
    if ext == ".mhd":
        return [p.with_name(stem + ".zraw")]
    if ext == ".nhdr":
        return [p.with_name(stem + ".raw")]
    return []


# --------------------------------------------------------------------------------------------
# Declared against available bytes


def _inflate_bounded(fh, d, limit: int) -> tuple[int, bool]:
    """Feed ``fh`` (raw bytes) through the decompressor ``d`` in bounded chunks: returns the
    bytes of data produced, at most ``limit`` (never more: a small stream that inflates to
    gigabytes is not followed further), and whether the stream ended."""
    n = 0
    while n < limit:
        chunk = d.unconsumed_tail or fh.read(_CHUNK)
        if not chunk:
            return n, d.eof
        n += len(d.decompress(chunk, min(_CHUNK, limit - n)))
        if d.eof:
            return n, True
    return n, True


def _stream_length(path: Path, offset: int = 0, *, codec: str = "none",
                   limit: int | None = None) -> int:
    """Bytes of data in ``path`` after ``offset``: raw, or a zlib/gzip stream (``codec``).

    A compressed stream is inflated in bounded chunks and only up to ``limit`` bytes (what the
    header declares); the count is then ``limit`` even if the stream holds more.

    Raises EOFError/zlib.error for a cut-off or damaged compressed stream.
    """
    size = path.stat().st_size - offset
    if codec == "none":
        return size
    # zlib (MetaImage) or gzip (NRRD) stream starting at offset
    d = zlib.decompressobj(zlib.MAX_WBITS | 32)
    with path.open("rb") as fh:
        fh.seek(offset)
        n, ended = _inflate_bounded(fh, d, limit if limit is not None else 1 << 62)
    if not ended:
        raise EOFError("compressed stream ends early")
    return n


def _short(name: str, declared: int, available: int) -> InvalidInputError:
    pct = 100.0 * available / declared if declared else 0.0
    return InvalidInputError(
        f"{name}: the file is cut off: its header declares {declared} bytes of pixel data but it "
        f"holds {available} ({pct:.0f} %); copy the file again.")


@dataclass
class NonFinite:
    """The NaN/Inf voxels of a floating-point NIfTI file.

    Attributes
    ----------
    index : ndarray of int64
        Flat indices into the image array in numpy order (the header's dimensions reversed).
    values : ndarray of float64
        The stored values there (NaN, +Inf or -Inf).
    size : int
        Number of voxels (components included) the file declares.
    """

    index: np.ndarray
    values: np.ndarray
    size: int


def nifti_pair(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(header, data file)`` of a NIfTI-1 / Analyze 7.5 pair given by either file: ``X.hdr``
    holds the header, ``X.img`` (or ``X.img.gz``) the voxels."""
    p = Path(path)
    stem = p.name[: -len(p.suffix)]
    hdr = p.with_name(stem + ".hdr")
    img = p.with_name(stem + ".img")
    if not img.exists() and p.with_name(stem + ".img.gz").exists():
        img = p.with_name(stem + ".img.gz")
    return hdr, img


def _open_data(path: Path):
    name = path.name.lower()
    return gzip.open(path, "rb") if name.endswith(".gz") else path.open("rb")


def _nifti_fields(path: Path) -> dict | None:
    """The raw fields of a NIfTI-1 (or Analyze 7.5) or NIfTI-2 header in ``path`` (gzip or
    not): byte order, dims, datatype, bitpix, pixdim, vox_offset and whether it is a single
    file; None when ``path`` holds no such header."""
    try:
        with _open_data(path) as fh:
            head = fh.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            return {"endian": endian, "dims": struct.unpack(endian + "8h", head[40:56]),
                    "datatype": struct.unpack(endian + "h", head[70:72])[0],
                    "bitpix": struct.unpack(endian + "h", head[72:74])[0],
                    "pixdim": struct.unpack(endian + "8f", head[76:108]),
                    "vox_offset": float(struct.unpack(endian + "f", head[108:112])[0]),
                    "single": head[344:348] == b"n+1\x00", "minimum": 352}
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            return {"endian": endian, "dims": struct.unpack(endian + "8q", head[16:80]),
                    "datatype": struct.unpack(endian + "h", head[12:14])[0],
                    "bitpix": struct.unpack(endian + "h", head[14:16])[0],
                    "pixdim": struct.unpack(endian + "8d", head[104:168]),
                    "vox_offset": float(struct.unpack(endian + "q", head[168:176])[0]),
                    "single": True, "minimum": 544}
    return None


def _nifti_header(path: Path) -> dict | None:
    """The fields of a NIfTI-1/-2 (or Analyze 7.5) header that say where the voxels are and how
    many bytes they take; None when ``path`` holds no such header.

    Raises
    ------
    InvalidInputError
        The header contradicts itself: a ``vox_offset`` that is not a finite byte offset, a
        ``bitpix`` other than its ``datatype``'s.
    """
    f = _nifti_fields(path)
    if f is None:
        return None
    dims, datatype, bitpix, vox_offset = f["dims"], int(f["datatype"]), int(f["bitpix"]), \
        f["vox_offset"]
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1:ndim + 1]):
        return None
    if not math.isfinite(vox_offset) or vox_offset < 0 or vox_offset != int(vox_offset):
        raise InvalidInputError(f"{path}: the header's vox_offset ({vox_offset:g}) is not a byte "
                                "offset; the header is damaged.")
    dtype = _NIFTI_DTYPES.get(datatype)
    components = _NIFTI_COMPONENTS.get(datatype, 1)
    if dtype is not None:
        bits = np.dtype(dtype).itemsize * 8 * components
        if bitpix != bits:
            raise InvalidInputError(
                f"{path}: the header contradicts itself: its datatype {datatype} "
                f"({np.dtype(dtype).name}, {bits} bits per voxel) but bitpix {bitpix}; the "
                "file is damaged (its pixels cannot be read reliably).")
        per_voxel = bits // 8
    else:
        per_voxel = max(bitpix, 0) // 8
    shape = tuple(int(d) for d in dims[1:ndim + 1])
    offset = int(vox_offset)
    if f["single"] and path.suffix.lower() != ".hdr":
        offset = max(offset, f["minimum"])
    return {"endian": f["endian"], "shape": shape, "datatype": datatype, "offset": offset,
            "dtype": dtype, "components": components,
            "bytes": int(np.prod(shape, dtype=np.int64)) * per_voxel}


def nifti_header(path: str | os.PathLike) -> dict | None:
    """The layout a NIfTI-1/-2 file's header declares (``.nii`` or ``.nii.gz``): ``endian``
    (``"<"`` or ``">"``), ``shape`` (x, y, z, ...), ``datatype``, ``dtype``, ``offset`` of the
    voxel data and its size in ``bytes``; None when the header is not one this module reads."""
    return _nifti_header(Path(path))


def nifti_pixdim(path: str | os.PathLike) -> list[float] | None:
    """The voxel sizes a NIfTI (or ``.hdr``) header gives for its axes (``pixdim[1:ndim+1]``),
    as stored (0 or negative where the header says so); None for another file."""
    p = Path(path)
    if _ext(p) not in (".nii", ".nii.gz") + _NIFTI_PAIR:
        return None
    f = _nifti_fields(nifti_pair(p)[0] if _ext(p) in _NIFTI_PAIR else p)
    if f is None:
        return None
    ndim = max(1, min(int(f["dims"][0]), 7))
    return [float(v) for v in f["pixdim"][1:ndim + 1]]


def _check_nifti(path: Path) -> NonFinite | None:
    """Declared against held bytes of a NIfTI file (or ``.hdr``/``.img`` pair), in one bounded
    pass over its data; returns the NaN/Inf voxels of a floating-point file, else None."""
    ext = _ext(path)
    if ext in _NIFTI_PAIR:
        header, data = nifti_pair(path)
        if not header.is_file():
            raise InvalidInputError(f"{path}: its header {header.name} is missing.")
        if not data.is_file():
            raise InvalidInputError(f"{path}: its data file {data.name} is missing.")
        name = f"{header} (data file {data.name})"
    else:
        header = data = path
        name = str(path)
    hdr = _nifti_header(header)
    if hdr is None:
        return None  # not a NIfTI header we understand: ITK decides
    offset = hdr["offset"]
    declared = hdr["bytes"]
    floating = hdr["datatype"] in (16, 64)
    compressed = data.name.lower().endswith(".gz")
    if not floating and not compressed:
        available = data.stat().st_size - offset
        if available < declared:
            raise _short(name, declared, max(available, 0))
        return None
    dtype = np.dtype(hdr["dtype"]).newbyteorder(hdr["endian"]) if floating else None
    index, values = [], []
    available, carry = 0, b""
    try:
        with _open_data(data) as fh:
            skipped = 0
            while skipped < offset:
                got = len(fh.read(min(_CHUNK, offset - skipped)))
                if not got:
                    break
                skipped += got
            if skipped < offset:
                raise _short(name, declared, 0)
            while available < declared:
                chunk = fh.read(min(_CHUNK, declared - available))
                if not chunk:
                    break
                if dtype is not None:
                    block = carry + chunk
                    whole = len(block) - len(block) % dtype.itemsize
                    arr = np.frombuffer(block[:whole], dtype=dtype)
                    bad = np.flatnonzero(~np.isfinite(arr))
                    if bad.size:
                        start = (available - len(carry)) // dtype.itemsize
                        index.append(bad + start)
                        values.append(arr[bad].astype(np.float64))
                    carry = block[whole:]
                available += len(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile):
        raise InvalidInputError(f"{name}: the file is cut off or damaged (its gzip stream ends "
                                "early); copy the file again.") from None
    if available < declared:
        raise _short(name, declared, available)
    if not index:
        return None
    return NonFinite(np.concatenate(index).astype(np.int64), np.concatenate(values),
                     declared // dtype.itemsize)


def _check_meta(path: Path) -> None:
    fields, offset = _meta_header(path)
    try:
        dims = [int(v) for v in fields["dimsize"].split()]
        size = _MET_SIZES[fields["elementtype"].upper()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except (KeyError, ValueError):
        return
    declared = int(np.prod(dims, dtype=np.int64)) * size * channels
    name = fields.get("elementdatafile", "LOCAL")
    compressed = fields.get("compresseddata", "False").lower() == "true"
    if name.split()[0].upper() == "LIST" or "%" in name:
        # one data file per slice (or per block of slices): each holds its share
        files = _detached_files(path)
        missing = [f for f in files if not f.is_file()]
        if not files or missing:
            raise InvalidInputError(f"{path}: its data file {missing[0] if missing else name} "
                                    "(ElementDataFile) is missing.")
        if compressed or declared % len(files):
            return
        share = declared // len(files)
        for f in files:
            if f.stat().st_size < share:
                raise _short(f"{path} (data file {f})", share, f.stat().st_size)
        return
    data = path if name.upper() == "LOCAL" else path.parent / name
    if not data.is_file():
        raise InvalidInputError(f"{path}: its data file {data} (ElementDataFile) is missing.")
    start = offset if data == path else max(int(fields.get("headersize", "0") or 0), 0)
    try:
        available = _stream_length(data, start, codec="zlib" if compressed else "none",
                                   limit=declared)
    except (EOFError, zlib.error):
        raise InvalidInputError(f"{path}: the compressed pixel data in {data} is cut off or "
                                "damaged; copy the file again.") from None
    if available < declared:
        raise _short(str(path) if data == path else f"{path} (data file {data})", declared, available)


def _nrrd_type_size(t: str) -> int | None:
    t = t.lower().replace("_t", "")
    if "char" in t or "int8" in t:
        return 1
    if "short" in t or "int16" in t:
        return 2
    if "longlong" in t or "long long" in t or "int64" in t:
        return 8
    if t in ("int", "signed int", "uint", "unsigned int", "int32", "uint32"):
        return 4
    return {"float": 4, "double": 8}.get(t)


def _check_nrrd(path: Path) -> None:
    fields, offset, _ = _nrrd_header(path)
    try:
        sizes = [int(v) for v in fields["sizes"].split()]
    except (KeyError, ValueError):
        return
    size = _nrrd_type_size(fields.get("type", ""))
    encoding = fields.get("encoding", "raw").lower()
    if size is None or encoding not in ("raw", "gzip", "gz"):
        return
    if int(fields.get("line skip", "0") or 0) != 0:
        return
    skip = int(fields.get("byte skip", "0") or 0)
    if skip < 0:
        return
    declared = int(np.prod(sizes, dtype=np.int64)) * size
    name = fields.get("data file")
    if name and (name.split()[0].upper() == "LIST" or "%" in name):
        return
    data = path if not name else path.parent / name
    if not data.is_file():
        raise InvalidInputError(f"{path}: its data file {data} is missing.")
    start = offset if data == path else 0
    try:
        if encoding == "raw":
            available = _stream_length(data, start + skip)
        else:
            available = _stream_length(data, start, codec="zlib", limit=declared + skip) - skip
    except (EOFError, zlib.error):
        raise InvalidInputError(f"{path}: the gzip-compressed pixel data in {data} is cut off or "
                                "damaged; copy the file again.") from None
    if available < declared:
        raise _short(str(path) if data == path else f"{path} (data file {data})", declared, available)


#: BMP compressions: none, RLE8, RLE4, bit fields.
_BMP_COMPRESSIONS = {0: "none", 1: "RLE8", 2: "RLE4", 3: "bit fields"}


def _check_bmp(path: Path) -> None:
    """Header, palette and pixel data of a BMP against the file; an RLE stream walked code by
    code (ITK's BMP decoder corrupts the heap on a cut-off or overrunning one)."""
    size = path.stat().st_size
    head = _read_head(path, 54)
    if len(head) < 2 or head[:2] != b"BM":
        return
    if len(head) < 34:
        raise InvalidInputError(f"{path}: the BMP file is cut off inside its header; copy the "
                                "file again.")
    offbits = struct.unpack("<I", head[10:14])[0]
    width, height = struct.unpack("<ii", head[18:26])
    bits, compression = struct.unpack("<HI", head[28:34])
    if compression not in _BMP_COMPRESSIONS:
        raise InvalidInputError(f"{path}: BMP compression {compression} (JPEG/PNG inside BMP) is "
                                "not supported; save the image as PNG.")
    if width <= 0 or height == 0 or bits not in (1, 4, 8, 16, 24, 32):
        raise InvalidInputError(f"{path}: the BMP header is damaged ({width} x {height} pixels, "
                                f"{bits} bits per pixel).")
    if offbits > size:
        raise InvalidInputError(f"{path}: the BMP file is cut off before its pixel data (they "
                                f"start at byte {offbits}, the file has {size}); copy the file "
                                "again.")
    if compression in (0, 3):
        declared = offbits + ((bits * width + 31) // 32) * 4 * abs(height)
        if size < declared:
            raise _short(str(path), declared - offbits, max(size - offbits, 0))
        return
    if (compression, bits) not in ((1, 8), (2, 4)) or height < 0:
        raise InvalidInputError(f"{path}: the BMP header is damaged ({_BMP_COMPRESSIONS[compression]} "
                                f"with {bits} bits per pixel{', top-down' if height < 0 else ''}).")
    with path.open("rb") as fh:
        fh.seek(offbits)
        data = fh.read()
    _walk_rle(path, data, width, height, four=compression == 2)


def _walk_rle(path: Path, data: bytes, width: int, height: int, *, four: bool) -> None:
    """Walk an RLE8/RLE4 stream: every run inside the bitmap, ending with end-of-bitmap."""
    x = y = pos = 0
    n = len(data)

    def damaged(what: str) -> InvalidInputError:
        return InvalidInputError(f"{path}: the RLE-compressed BMP is damaged ({what}); copy the "
                                 "file again or save it as PNG.")

    while pos + 1 < n:
        count, value = data[pos], data[pos + 1]
        pos += 2
        if count:  # a run of count pixels
            x += count
        elif value == 0:  # end of line
            x, y = 0, y + 1
        elif value == 1:  # end of bitmap
            return
        elif value == 2:  # delta
            if pos + 1 >= n:
                break
            x, y = x + data[pos], y + data[pos + 1]
            pos += 2
        else:  # absolute mode: value pixels follow, padded to an even number of bytes
            length = (value + 1) // 2 if four else value
            pos += length + (length & 1)
            x += value
            if pos > n:
                break
        if x > width or y >= height:
            raise damaged(f"a run reaches pixel ({x}, {y}) of a {width} x {height} image")
    raise InvalidInputError(f"{path}: the RLE-compressed BMP is cut off (its data ends before "
                            "the end-of-bitmap code); copy the file again.")


def _check_tiff(path: Path) -> None:
    """Every strip or tile of the first image directory must lie inside the file."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if head[:4] not in (b"II*\x00", b"MM\x00*"):
            return
        e = "<" if head[:2] == b"II" else ">"
        ifd = struct.unpack(e + "I", head[4:8])[0]
        if ifd + 2 > size:
            raise InvalidInputError(f"{path}: the TIFF file is cut off (its image directory lies "
                                    "beyond the end of the file); copy the file again.")
        fh.seek(ifd)
        (n,) = struct.unpack(e + "H", fh.read(2))
        entries = fh.read(12 * n)
        if len(entries) < 12 * n:
            raise InvalidInputError(f"{path}: the TIFF file is cut off inside its image directory; "
                                    "copy the file again.")
        fields = {}
        for k in range(n):
            tag, typ, count, value = struct.unpack(e + "HHI4s", entries[12 * k:12 * k + 12])
            fields[tag] = (typ, count, value)

        def values(tag):
            if tag not in fields:
                return []
            typ, count, value = fields[tag]
            fmt = {3: "H", 4: "I"}.get(typ)
            if fmt is None:
                return []
            width = struct.calcsize(fmt) * count
            if width <= 4:
                return list(struct.unpack(e + fmt * count, value[:width]))
            (where,) = struct.unpack(e + "I", value)
            fh.seek(where)
            data = fh.read(width)
            if len(data) < width:
                return [size + 1]  # the offsets table itself is cut off
            return list(struct.unpack(e + fmt * count, data))

    for offsets, counts in ((273, 279), (324, 325)):  # strips, tiles
        starts, lengths = values(offsets), values(counts)
        if starts and lengths and len(starts) == len(lengths):
            end = max(a + b for a, b in zip(starts, lengths))
            if end > size:
                raise _short(str(path), sum(lengths), max(0, sum(lengths) - (end - size)))


#: In a JPEG's entropy-coded data, 0xFF followed by anything but a stuffed 0x00, a restart
#: marker (0xD0-0xD7) or a fill byte (0xFF) starts the next marker.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _check_jpeg(path: Path) -> None:
    """Raise if the JPEG ends before its end-of-image marker.

    Walks the marker segments from the start of image (skipping each scan's entropy-coded data)
    to the end-of-image marker, so data that some cameras and tools append after it is accepted.
    """
    data = path.read_bytes()
    if data[:2] != b"\xff\xd8":
        return
    pos, n = 2, len(data)
    while pos + 1 < n:
        if data[pos] != 0xFF:
            if data[pos:].strip(b"\x00"):
                return  # not a marker where one belongs: the decoder's own error will say more
            break  # zeros where the next segment belongs: cut off and zero-padded
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xD9:  # end of image: complete
            return
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # segments without a length
            pos += 2
        else:
            if pos + 4 > n:
                break
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
            if marker == 0xDA:  # start of scan: its entropy-coded data runs to the next marker
                found = _JPEG_MARKER.search(data, min(pos, n))
                if found is None:
                    break
                pos = found.start()
    raise InvalidInputError(f"{path}: the JPEG file is cut off (no end-of-image marker); copy "
                            "the file again.")


def check_complete(path: str | os.PathLike) -> NonFinite | None:
    """Raise if ``path`` holds fewer bytes of pixel data than its header declares, or its header
    contradicts itself.

    Handles NIfTI (``.nii``, ``.nii.gz``, NIfTI-1 and -2, ``.hdr``/``.img`` pairs), MetaImage
    (``.mha``, ``.mhd`` with its data file(s), raw or compressed), NRRD (``.nrrd``, ``.nhdr`` with
    its data file; raw or gzip encoding), BMP (uncompressed and RLE), TIFF (strips and tiles) and
    JPEG; other formats are left to their reader. A header this module does not understand is
    left to ITK too. Compressed data is inflated in bounded chunks, never beyond the declared size.

    Returns
    -------
    NonFinite or None
        For a floating-point NIfTI file with NaN/Inf voxels, where they are (as
        :func:`nifti_nonfinite`; found in the same pass); None otherwise.

    Raises
    ------
    InvalidInputError
        Naming the file (and its data file) with the declared and the available byte counts.
    """
    p = Path(path)
    ext = _ext(p)
    if ext in (".nii", ".nii.gz") + _NIFTI_PAIR:
        return _check_nifti(p)
    if ext in (".mha", ".mhd"):
        _check_meta(p)
    elif ext in (".nrrd", ".nhdr"):
        _check_nrrd(p)
    elif ext == ".bmp":
        _check_bmp(p)
    elif ext in (".tif", ".tiff"):
        _check_tiff(p)
    elif ext in (".jpg", ".jpeg"):
        _check_jpeg(p)
    return None


def nifti_nonfinite(path: str | os.PathLike) -> NonFinite | None:
    """Where a floating-point NIfTI file has NaN or Inf voxels, else None.

    ITK's NIfTI reader returns 0 for those voxels; the caller puts the file's values back at
    the positions given (flat indices in numpy order: the header's dimensions reversed). None
    for a file without non-finite values, of an integer type, or not NIfTI.
    """
    p = Path(path)
    if _ext(p) not in (".nii", ".nii.gz") + _NIFTI_PAIR:
        return None
    return _check_nifti(p)

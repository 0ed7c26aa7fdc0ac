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
  ``.gz``, MetaImage, NRRD, BMP, TIFF, JPEG); raises :class:`~MedFusionLib.errors.InvalidInputError`;
- :func:`nifti_nonfinite` -- the NaN/Inf voxels of a floating-point NIfTI file (ITK's NIfTI reader
  turns them into 0, so they have to be looked up in the raw data).
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import InvalidInputError

__all__ = ["files_of", "companion_files", "check_complete", "nifti_nonfinite", "nifti_header"]

_CHUNK = 1 << 22

#: MetaImage ElementType -> bytes per component.
_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
              "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8,
              "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}

#: NIfTI datatype code -> numpy dtype (little-endian; swapped for big-endian headers).
_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 32: "c8", 64: "f8", 128: "u1", 256: "i1",
                 512: "u2", 768: "u4", 1024: "i8", 1280: "u8", 1792: "c16", 2304: "u1"}
_NIFTI_COMPONENTS = {128: 3, 2304: 4}


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
            if value.strip().upper() == "LIST":
                rest = head[offset:].decode("latin-1").split()
                fields["_list"] = rest
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
        if name.upper() == "LIST":
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


def _stream_length(path: Path, offset: int = 0, *, codec: str = "none") -> int:
    """Bytes of data in ``path`` after ``offset``: raw, a gzip file, or a zlib/gzip stream.

    Raises EOFError/zlib.error for a cut-off or damaged compressed stream.
    """
    if codec == "gzip-file":
        n = 0
        with gzip.open(path, "rb") as fh:
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    return n
                n += len(chunk)
    size = path.stat().st_size - offset
    if codec == "none":
        return size
    # zlib (MetaImage) or gzip (NRRD) stream starting at offset
    d = zlib.decompressobj(zlib.MAX_WBITS | 32)
    n = 0
    with path.open("rb") as fh:
        fh.seek(offset)
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            n += len(d.decompress(chunk))
            if d.eof:
                break
    if not d.eof:
        raise EOFError("compressed stream ends early")
    return n


def _short(name: str, declared: int, available: int) -> InvalidInputError:
    pct = 100.0 * available / declared if declared else 0.0
    return InvalidInputError(
        f"{name}: the file is cut off: its header declares {declared} bytes of pixel data but it "
        f"holds {available} ({pct:.0f} %); copy the file again.")


def _nifti_header(path: Path, ext: str) -> dict | None:
    opener = gzip.open if ext == ".nii.gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(540)
    except (OSError, EOFError):
        return None
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            offset = max(offset, 352)
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = max(int(struct.unpack(endian + "q", head[168:176])[0]), 544)
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1:ndim + 1]):
        return None
    shape = tuple(int(d) for d in dims[1:ndim + 1])
    return {"endian": endian, "shape": shape, "datatype": int(datatype), "bitpix": int(bitpix),
            "offset": offset, "bytes": int(np.prod(shape, dtype=np.int64)) * max(int(bitpix), 0) // 8}


def nifti_header(path: str | os.PathLike) -> dict | None:
    """The layout a NIfTI-1/-2 file's header declares (``.nii`` or ``.nii.gz``): ``endian``
    (``"<"`` or ``">"``), ``shape`` (x, y, z, ...), ``datatype``, ``bitpix``, ``offset`` of the
    voxel data and its size in ``bytes``; None when the header is not one this module reads."""
    p = Path(path)
    return _nifti_header(p, _ext(p))


def _check_nifti(path: Path, ext: str) -> np.ndarray | None:
    """Declared against held bytes of a NIfTI file, in one pass over its data; returns the raw
    data of a floating-point file that holds NaN/Inf (see :func:`nifti_nonfinite`), else None."""
    hdr = _nifti_header(path, ext)
    if hdr is None:
        return None  # not a NIfTI header we understand: ITK decides
    floating = hdr["datatype"] in (16, 64)
    try:
        if ext == ".nii.gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read()
            available = len(data) - hdr["offset"]
        else:
            available = path.stat().st_size - hdr["offset"]
            data = None
            if floating and available >= hdr["bytes"]:
                with path.open("rb") as fh:
                    data = fh.read()
    except (EOFError, zlib.error):
        raise InvalidInputError(f"{path}: the file is cut off or damaged (its gzip stream ends "
                                "early); copy the file again.") from None
    if available < hdr["bytes"]:
        raise _short(str(path), hdr["bytes"], max(available, 0))
    if not floating or data is None:
        return None
    dtype = np.dtype(_NIFTI_DTYPES[hdr["datatype"]]).newbyteorder(hdr["endian"])
    raw = np.frombuffer(data, dtype=dtype, count=hdr["bytes"] // dtype.itemsize,
                        offset=hdr["offset"])
    if np.all(np.isfinite(raw)):
        return None
    return raw.reshape(hdr["shape"][::-1]).astype(np.float64)


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
    if name.upper() in ("LIST",) or "%" in name:
        return
    data = path if name.upper() == "LOCAL" else path.parent / name
    if not data.is_file():
        raise InvalidInputError(f"{path}: its data file {data} (ElementDataFile) is missing.")
    start = offset if data == path else max(int(fields.get("headersize", "0") or 0), 0)
    compressed = fields.get("compresseddata", "False").lower() == "true"
    try:
        available = _stream_length(data, start, codec="zlib" if compressed else "none")
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
            available = _stream_length(data, start, codec="zlib") - skip
    except (EOFError, zlib.error):
        raise InvalidInputError(f"{path}: the gzip-compressed pixel data in {data} is cut off or "
                                "damaged; copy the file again.") from None
    if available < declared:
        raise _short(str(path) if data == path else f"{path} (data file {data})", declared, available)


def _check_bmp(path: Path) -> None:
    head = _read_head(path, 54)
    if len(head) < 34 or head[:2] != b"BM":
        return
    offbits = struct.unpack("<I", head[10:14])[0]
    width, height = struct.unpack("<ii", head[18:26])
    bits, compression = struct.unpack("<HI", head[28:34])
    if compression not in (0, 3) or width <= 0 or bits == 0:
        return
    declared = offbits + ((bits * width + 31) // 32) * 4 * abs(height)
    size = path.stat().st_size
    if size < declared:
        raise _short(str(path), declared - offbits, max(size - offbits, 0))


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


def check_complete(path: str | os.PathLike) -> np.ndarray | None:
    """Raise if ``path`` holds fewer bytes of pixel data than its header declares.

    Handles NIfTI (``.nii``, ``.nii.gz``, NIfTI-1 and -2), MetaImage (``.mha``, ``.mhd`` with its
    data file, raw or compressed), NRRD (``.nrrd``, ``.nhdr`` with its data file; raw or gzip
    encoding), BMP, TIFF (strips and tiles) and JPEG; other formats are left to their reader. A header this module does not
    understand is left to ITK too.

    Returns
    -------
    ndarray or None
        For a floating-point NIfTI file with NaN/Inf voxels, its raw data (as
        :func:`nifti_nonfinite`; read in the same pass); None otherwise.

    Raises
    ------
    InvalidInputError
        Naming the file (and its data file) with the declared and the available byte counts.
    """
    p = Path(path)
    ext = _ext(p)
    if ext in (".nii", ".nii.gz"):
        return _check_nifti(p, ext)
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


def nifti_nonfinite(path: str | os.PathLike) -> np.ndarray | None:
    """The raw data of a floating-point NIfTI file that has NaN or Inf voxels, else None.

    ITK's NIfTI reader returns 0 for those voxels; the caller puts the file's values back at the
    non-finite positions. Returns a float64 array in numpy order (the header's dimensions
    reversed), or None for a file without non-finite values, of an integer type, or not NIfTI.
    """
    p = Path(path)
    ext = _ext(p)
    if ext not in (".nii", ".nii.gz"):
        return None
    return _check_nifti(p, ext)

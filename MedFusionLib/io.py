"""Reading and writing images: 3D volumes (NIfTI, NRRD, MHA/MHD, DICOM folders) and 2D images.

Geometry (origin, spacing, direction) is kept exactly as SimpleITK reads it. 2D raster images
(PNG, JPEG, TIFF, BMP) are read as 2D scalar images; RGB(A) is reduced to luminance
(ITU-R BT.601: Y = 0.299 R + 0.587 G + 0.114 B) and the image is tagged ``MedFusion.Colour``.
Reading checks what ITK takes on trust: a file cut off before the end of the pixel data its header
declares, NaN/Inf voxels of NIfTI files (ITK reads them as 0; they are put back so that the one
NaN/Inf rule of :func:`MedFusionLib.normalize.normalize` applies to every format), complex-valued
pixels, and sheared (non-orthonormal) direction matrices are all refused or reported here.

Writes go through :func:`MedFusionLib.outputs.atomic_output`: the file (with the detached data file
of ``.mhd``/``.nhdr``) appears complete or not at all, is read back and compared before it is
renamed into place (ITK's NIfTI writer does not report a full disk), and gets the user's umask.
Scalar ``.nii``, ``.nii.gz`` and ``.nrrd`` volumes take a faster road with the same checks
(issue #23): ITK writes them uncompressed, the voxel bytes in the file are compared with the
image's, and the compressed forms are deflated on several threads (:mod:`MedFusionLib.gzipped`,
level 1) and checked by the SHA-256 of the bytes written instead of a second decode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import gzipped, optional
from .dicom import read_series
from .errors import InvalidInputError, OutputError
from .imagefiles import NonFinite, check_complete, nifti_header, nifti_pixdim
from .outputs import atomic_output
from .threads import current_threads

__all__ = ["read_image", "write_image", "write_transform", "check_image_output", "check_direction",
           "check_same_grid",
           "check_transform_output", "VOLUME_EXTENSIONS", "RASTER_EXTENSIONS",
           "TRANSFORM_EXTENSIONS", "extension_of", "copy_geometry", "is_2d", "is_colour",
           "to_luminance", "COLOUR_KEY", "INPUT_EXTENSIONS", "warn_far_apart"]

logger = logging.getLogger(__name__)

PIL_Image = optional.lazy("PIL.Image", what="reading a grey+alpha PNG")

VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Lossy formats: a written file is checked by size only, not voxel by voxel.
_LOSSY = (".jpg", ".jpeg")
#: ITK transform file formats (``sitk.WriteTransform``).
TRANSFORM_EXTENSIONS = (".tfm", ".txt", ".h5", ".hdf5", ".mat", ".xfm")
#: Largest deviation of a direction matrix's ``D^T D`` from the identity that counts as orthonormal.
_DIRECTION_TOLERANCE = 1e-3

#: Metadata key set on images read from a colour (RGB/RGBA) file.
COLOUR_KEY = "MedFusion.Colour"

_LUMA = np.array([0.299, 0.587, 0.114])


def extension_of(path: str | os.PathLike) -> str:
    """Lower-case extension of ``path``, with ``.nii.gz`` treated as one extension."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def is_2d(image: sitk.Image) -> bool:
    """True for a 2D image, or a 3D image with a single slice along k."""
    return image.GetDimension() == 2 or (image.GetDimension() == 3 and image.GetSize()[2] == 1)


def copy_geometry(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a numpy array (SimpleITK's (z, y, x) order) as an image with ``reference``'s geometry."""
    image = sitk.GetImageFromArray(array)
    if image.GetSize() != reference.GetSize():
        raise InvalidInputError(
            f"array of shape {array.shape} does not match the reference grid {reference.GetSize()[::-1]}"
        )
    image.CopyInformation(reference)
    return image


def is_colour(image: sitk.Image) -> bool:
    """True for an RGB(A) image whose channels differ (a grey picture stored as RGB is not colour)."""
    if image.GetNumberOfComponentsPerPixel() not in (3, 4):
        return False
    arr = sitk.GetArrayViewFromImage(image)
    return not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]))


def to_luminance(image: sitk.Image, name: str | os.PathLike = "image") -> sitk.Image:
    """Reduce a vector (RGB/RGBA) image to luminance (BT.601); scalar images pass unchanged.

    The result is ``float32`` on the input's scale; an 8-bit input is tagged
    ``MedFusion.BitsStored = 8`` and a real colour input ``MedFusion.Colour = 1``.

    Raises
    ------
    InvalidInputError
        For a vector image with other than 3 or 4 components.
    """
    return _to_scalar(image, Path(name))


def _to_scalar(image: sitk.Image, path: Path) -> sitk.Image:
    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        return image
    if n not in (3, 4):
        raise InvalidInputError(
            f"{path}: a vector image with {n} components per pixel cannot be fused; "
            "give a scalar (greyscale) image or an RGB image."
        )
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    if n == 4:
        arr = arr[..., :3]
    if np.allclose(arr[..., 0], arr[..., 1]) and np.allclose(arr[..., 0], arr[..., 2]):
        lum = arr[..., 0]
        colour = False
    else:
        lum = arr @ _LUMA
        colour = True
    out = sitk.GetImageFromArray(lum.astype(np.float32))
    out.CopyInformation(image)
    if image.GetPixelID() == sitk.sitkVectorUInt8:
        # keep the 8-bit scale known, so normalisation divides by 255 as for grey 8-bit images
        out.SetMetaData("MedFusion.BitsStored", "8")
    if colour:
        out.SetMetaData(COLOUR_KEY, "1")
    return out


@contextlib.contextmanager
def _native_stderr(lines: list[str]):
    """Collect what C/C++ code (ITK, the NIfTI library, libjpeg) prints on stderr into ``lines``.

    Those messages ("** ERROR: NWAD: wrote only ...", "Premature end of JPEG file") are not
    exceptions; the caller turns them into a one-line error or logs them (shown with -v).
    File descriptor 2 belongs to the whole process, so this is done in the main thread only
    (pair jobs on worker threads leave ITK's messages on stderr).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        sink = tempfile.TemporaryFile()
    except (OSError, ValueError):
        yield
        return
    try:
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        sink.seek(0)
        text = sink.read().decode("utf-8", "replace")
        sink.close()
        lines.extend(ln.strip() for ln in text.splitlines() if ln.strip())
        for ln in lines:
            logger.info("ITK: %s", ln)


def _itk_detail(exc: Exception | None, lines: list[str]) -> str:
    text = [ln.strip() for ln in (str(exc).splitlines() if exc else []) + lines if ln.strip()]
    for key in ("Unable", "ERROR", "rror"):
        hit = next((ln for ln in text if key in ln), None)
        if hit:
            return hit[:300]
    return text[0][:300] if text else ""


def _is_dicom_file(path: Path) -> bool:
    """True when the file has the DICOM Part 10 preamble ("DICM" at byte 128)."""
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _shear_degrees(direction: np.ndarray) -> float:
    """Largest deviation, in degrees, of the angle between two grid axes from 90 degrees."""
    cols = direction / np.linalg.norm(direction, axis=0, keepdims=True)
    cos = np.clip(np.abs(cols.T @ cols), 0.0, 1.0)
    np.fill_diagonal(cos, 0.0)
    return float(np.degrees(np.arcsin(cos.max())))


def check_direction(image: sitk.Image, name: str | os.PathLike = "image") -> None:
    """Raise unless ``image``'s direction matrix is orthonormal (a rotation or reflection).

    ITK keeps a sheared direction as read, but its writers and resamplers assume an orthonormal
    one: a fused image would come out on a different (rotated) grid. MedFusion refuses such grids
    rather than resample them silently.

    Raises
    ------
    InvalidInputError
    """
    d = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(d, d)
    if np.abs(direction.T @ direction - np.eye(d)).max() <= _DIRECTION_TOLERANCE:
        return
    if np.any(np.linalg.norm(direction, axis=0) == 0):
        raise InvalidInputError(f"{name}: the direction matrix has a zero axis; the file's geometry "
                                "is broken.")
    raise InvalidInputError(
        f"{name}: the grid is sheared (its axes are {_shear_degrees(direction):.2g} degrees off "
        "perpendicular; the direction matrix is not orthonormal); MedFusion does not fuse sheared "
        "grids (the result would be written on another, rotated grid); resample the image onto "
        "an orthogonal grid first.")


def check_same_grid(reference: sitk.Image, image: sitk.Image, reference_name: str, name: str) -> None:
    """Raise unless ``image`` lies on ``reference``'s grid: same size, and origins within a
    hundredth of a voxel, spacings within 1e-4 relative, directions within 1e-4.

    Raises
    ------
    InvalidInputError
        Naming both inputs and the first property that differs.
    """
    if image.GetSize() != reference.GetSize():
        raise InvalidInputError(f"{name}: its size {image.GetSize()} differs from that of "
                                f"{reference_name} {reference.GetSize()}; resample it onto "
                                f"{reference_name}'s grid first.")
    spacing = np.array(reference.GetSpacing())
    checks = (
        ("spacing", np.allclose(image.GetSpacing(), spacing, rtol=1e-4, atol=0)),
        ("origin", np.allclose(image.GetOrigin(), reference.GetOrigin(), rtol=0,
                               atol=0.01 * float(spacing.min()))),
        ("direction", np.allclose(image.GetDirection(), reference.GetDirection(), rtol=0, atol=1e-4)),
    )
    for what, same in checks:
        if not same:
            got = np.round(getattr(image, f"Get{what.capitalize()}")(), 4).tolist()
            ref = np.round(getattr(reference, f"Get{what.capitalize()}")(), 4).tolist()
            raise InvalidInputError(f"{name}: lies on another grid than {reference_name} ({what} "
                                    f"{got} vs {ref}); resample it onto {reference_name}'s grid "
                                    "first.")


def _restore_nifti_nonfinite(image: sitk.Image, nonfinite: NonFinite | None) -> sitk.Image:
    """Put a NIfTI file's NaN/Inf values (:func:`~MedFusionLib.imagefiles.check_complete`) back
    into ``image``, where ITK's reader made them 0."""
    if nonfinite is None:
        return image
    arr = sitk.GetArrayFromImage(image)
    if nonfinite.size != arr.size or not np.issubdtype(arr.dtype, np.floating):
        return image
    arr.reshape(-1)[nonfinite.index] = nonfinite.values
    out = sitk.GetImageFromArray(arr, isVector=image.GetNumberOfComponentsPerPixel() > 1)
    out.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        out.SetMetaData(key, image.GetMetaData(key))
    return out


#: The ITK reader of each accepted file extension: a file is decoded only by the reader of its
#: own format (the one whose header :func:`~MedFusionLib.imagefiles.check_complete` checked),
#: never by whichever of ITK's many readers claims it first.
_READERS = {".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO", ".hdr": "NiftiImageIO",
            ".img": "NiftiImageIO", ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO",
            ".mha": "MetaImageIO", ".mhd": "MetaImageIO", ".png": "PNGImageIO",
            ".jpg": "JPEGImageIO", ".jpeg": "JPEGImageIO", ".tif": "TIFFImageIO",
            ".tiff": "TIFFImageIO", ".bmp": "BMPImageIO", ".dcm": "GDCMImageIO",
            ".ima": "GDCMImageIO", "": "GDCMImageIO"}

#: Input file extensions :func:`read_image` reads (besides DICOM folders and DICOM files).
INPUT_EXTENSIONS = tuple(e for e in _READERS if e)


def _warn_zero_spacing(path: Path, image: sitk.Image) -> None:
    """Say so when a NIfTI header gives a voxel size of 0 (or none): ITK reads it as 1 mm."""
    pixdim = nifti_pixdim(path)
    if pixdim is None:
        return
    bad = [k for k, v in enumerate(pixdim[:image.GetDimension()]) if not (v > 0)]
    if bad:
        logger.warning("%s: the header gives voxel size %s for axis %s; it is read as %s mm, "
                       "which may be wrong: check the file's geometry", path,
                       ", ".join(f"{pixdim[k]:g}" for k in bad),
                       ", ".join("xyz"[k] if k < 3 else str(k) for k in bad),
                       ", ".join(f"{image.GetSpacing()[k]:g}" for k in bad))


def _extent(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest physical corner (mm) of ``image``'s grid."""
    size = np.array(image.GetSize()) - 1
    corners = [image.TransformContinuousIndexToPhysicalPoint(
        tuple(float(c) for c in size * np.array(bits))) for bits in
        np.ndindex(*(2,) * image.GetDimension())]
    return np.min(corners, axis=0), np.max(corners, axis=0)


#: Gap (mm) between two volumes' fields of view beyond which :func:`warn_far_apart` speaks.
FAR_APART_MM = 100.0


def warn_far_apart(fixed: sitk.Image, moving: sitk.Image, fixed_name: str,
                   moving_name: str) -> float:
    """Warn when two 3D volumes' fields of view lie more than :data:`FAR_APART_MM` apart: often
    an origin lost on the way (registration still starts from their centres of mass). Returns
    the gap in mm (0 when they overlap)."""
    if is_2d(fixed) or is_2d(moving):
        return 0.0
    (lo1, hi1), (lo2, hi2) = _extent(fixed), _extent(moving)
    gap = float(np.linalg.norm(np.maximum(0.0, np.maximum(lo2 - hi1, lo1 - hi2))))
    if gap > FAR_APART_MM:
        logger.warning("%s and %s lie %.0f mm apart (their fields of view do not overlap): is an "
                       "origin in a header wrong? Registration starts from their centres of "
                       "mass; check the result", fixed_name, moving_name, gap)
    return gap


def _png_colour_type(path: Path) -> int | None:
    """The colour type of a PNG's header (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA)."""
    with path.open("rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[25]


def _read_grey_alpha_png(path: Path) -> sitk.Image:
    """A grey+alpha PNG (which SimpleITK cannot read) as its grey channel, alpha dropped as for
    RGBA (decoded by Pillow)."""
    try:
        with PIL_Image.open(path) as im:
            im.load()
            grey = np.asarray(im.getchannel(0))
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInputError(f"{path}: cannot read this grey+alpha PNG ({exc}).") from None
    image = sitk.GetImageFromArray(np.ascontiguousarray(grey))
    if grey.dtype == np.uint8:
        image.SetMetaData("MedFusion.BitsStored", "8")
    return image


def read_image(path: str | os.PathLike, *, series_uid: str | None = None,
               keep_colour: bool = False) -> sitk.Image:
    """Read a 2D image or a 3D volume as a scalar SimpleITK image.

    Parameters
    ----------
    path : str or path-like
        A file (NIfTI ``.nii``/``.nii.gz``, NRRD, MHA/MHD, PNG, JPEG, TIFF, BMP, a single DICOM
        file) or a folder holding a DICOM series.
    series_uid : str, optional
        For a DICOM folder with several series: the SeriesInstanceUID to read.
    keep_colour : bool, optional
        Return a colour (RGB) file as an RGB vector image (alpha dropped) instead of its
        luminance; grey files are scalar either way.

    Returns
    -------
    image : SimpleITK.Image
        2D or 3D, one component per pixel (or three with ``keep_colour`` for colour files),
        geometry as stored in the file (LPS). NaN/Inf voxels are returned as stored (also for
        NIfTI, whose ITK reader turns them into 0); :func:`MedFusionLib.normalize.normalize`
        applies the one rule for them.

    Raises
    ------
    InvalidInputError
        If the file is missing, unreadable, of an unsupported format, empty, cut off (less pixel
        data than its header declares, or a detached data file missing), complex-valued, on a
        sheared grid, or a vector image that is not RGB.
    """
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such file or folder.")
    if p.is_dir():
        return read_series(p, series_uid=series_uid)
    try:
        if p.stat().st_size == 0:
            raise InvalidInputError(f"{p}: the file is empty.")
        if _is_dicom_file(p):
            # one engine for DICOM: rescale to real units, enhanced multi-frame, modality metadata

            return read_series(p, series_uid=series_uid)
        reader_io = _READERS.get(extension_of(p))
        if reader_io is None:
            raise InvalidInputError(
                f"{p}: unsupported input format '{extension_of(p)}'; give one of "
                f"{', '.join(INPUT_EXTENSIONS)}, or a DICOM file or folder.")
        nonfinite = check_complete(p)
        if reader_io == "PNGImageIO" and _png_colour_type(p) == 4:
            return _read_grey_alpha_png(p)
    except OSError as exc:
        raise InvalidInputError(f"{p}: cannot read the file: {exc.strerror or exc}.") from None
    itk_lines: list[str] = []
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.SetImageIO(reader_io)
        with _native_stderr(itk_lines):
            image = reader.Execute()
    except RuntimeError as exc:
        if "orthonormal" in str(exc):  # ITK's NIfTI reader on a sheared sform and no qform
            raise InvalidInputError(
                f"{p}: the grid is sheared (the header's orientation matrix is not orthonormal); "
                "MedFusion does not fuse sheared grids; resample the image onto an orthogonal "
                "grid first.") from None
        raise InvalidInputError(
            f"{p}: cannot read this file as an image (supported: "
            f"{', '.join(VOLUME_EXTENSIONS + RASTER_EXTENSIONS)}, DICOM). {_itk_detail(exc, [])}"
        ) from None
    except MemoryError:
        raise InvalidInputError(f"{p}: the image its header declares is too large for this "
                                "machine's memory.") from None
    image = _restore_nifti_nonfinite(image, nonfinite)
    _warn_zero_spacing(p, image)
    if "complex" in image.GetPixelIDTypeAsString():
        raise InvalidInputError(f"{p}: the pixels are complex-valued; MedFusion fuses real "
                                "images: give the magnitude (or the real part) as a scalar image.")
    if keep_colour and is_colour(image):
        if image.GetNumberOfComponentsPerPixel() == 4:
            image = sitk.Compose(*(sitk.VectorIndexSelectionCast(image, c) for c in range(3)))
    else:
        image = _to_scalar(image, p)
    if image.GetDimension() == 3 and image.GetSize()[2] == 1 and extension_of(p) in RASTER_EXTENSIONS:
        image = image[:, :, 0]
    if image.GetDimension() not in (2, 3):
        raise InvalidInputError(f"{p}: {image.GetDimension()}D images are not supported; give 2D or 3D.")
    if image.GetNumberOfPixels() == 0:
        raise InvalidInputError(f"{p}: the image has no pixels.")
    check_direction(image, p)
    return image


def _raster_array(image: sitk.Image) -> np.ndarray:
    """uint8 array for 2D raster formats: [0, 1] floats are scaled by 255 and rounded (halves up,
    in float64: exactly the 8-bit grey levels the metrics score, :data:`MedFusionLib.metrics.GREY_SCALE`),
    integers are clipped."""
    arr = sitk.GetArrayFromImage(image)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)) * 255.0 + 0.5, 0, 255)
    else:
        arr = np.clip(arr, 0, 255)
    return arr.astype(np.uint8)


def check_image_output(path: str | os.PathLike) -> None:
    """Raise unless ``path`` names a format :func:`write_image` writes (checked before any work).

    Raises
    ------
    InvalidInputError
    """
    p = Path(path)
    ext = extension_of(p)
    if ext not in VOLUME_EXTENSIONS + RASTER_EXTENSIONS:
        raise InvalidInputError(
            f"{p}: unsupported output format '{ext or '(none)'}'; use one of "
            f"{', '.join(VOLUME_EXTENSIONS + RASTER_EXTENSIONS)}."
        )


def check_transform_output(path: str | os.PathLike) -> None:
    """Raise unless ``path`` names an ITK transform format (checked before any work).

    Raises
    ------
    InvalidInputError
    """
    ext = Path(path).suffix.lower()
    if ext not in TRANSFORM_EXTENSIONS:
        raise InvalidInputError(f"{path}: unsupported transform format '{ext or '(none)'}'; use "
                                f"one of {', '.join(TRANSFORM_EXTENSIONS)}.")


def _equal_where_finite(want: np.ndarray, got: np.ndarray, chunk: int = 1 << 22) -> bool:
    """``want == got`` wherever ``want`` is finite, a chunk at a time (no volume-sized masks)."""
    floating = np.issubdtype(want.dtype, np.floating)
    for i in range(0, want.size, chunk):
        w, g = want[i:i + chunk], got[i:i + chunk]
        keep = np.isfinite(w) if floating else Ellipsis
        if not np.array_equal(w[keep], g[keep]):
            return False
    return True


def _verify_written(tmp: Path, expected: sitk.Image, ext: str, name: Path) -> None:
    """Read ``tmp`` back and compare it with what was meant to be written."""
    lines: list[str] = []
    try:
        check_complete(tmp)
    except (InvalidInputError, OSError):
        raise OutputError(f"{name}: the written file is cut off (is the disk full?); nothing was "
                          "written.") from None
    try:
        with _native_stderr(lines):
            back = sitk.ReadImage(str(tmp))
    except (InvalidInputError, RuntimeError, OSError) as exc:
        detail = _itk_detail(exc, lines).replace(str(tmp), name.name)
        raise OutputError(f"{name}: the written file does not read back ({detail}); "
                          "is the disk full? Nothing was written.") from None
    if back.GetSize()[:expected.GetDimension()] != expected.GetSize():
        raise OutputError(f"{name}: the written file reads back with size {back.GetSize()}, not "
                          f"{expected.GetSize()}; nothing was written.")
    if ext in _LOSSY:
        return
    want = sitk.GetArrayViewFromImage(expected).reshape(-1)
    got = sitk.GetArrayViewFromImage(back).reshape(-1)
    if not _equal_where_finite(want, got):
        raise OutputError(f"{name}: the written file reads back with other pixel values ("
                          f"{_itk_detail(None, lines) or 'is the disk full?'}); nothing was written.")


def write_image(image: sitk.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` in the format given by the extension of ``path``, atomically and verified.

    3D volumes keep their geometry and pixel type. 2D raster formats (PNG, JPEG, TIFF, BMP) get
    ``uint8``: floating-point images are taken as [0, 1] and scaled to 0-255. The file (and the
    data file of ``.mhd``: ``X.zraw``, of ``.nhdr``: ``X.raw``) is written in a temporary folder
    next to ``path``, read back and compared (size, and every voxel for lossless formats), and only
    then renamed into place; a failure never leaves a partial file.

    Raises
    ------
    InvalidInputError
        For an unsupported extension or a 3D volume to a 2D raster format.
    OutputError
        For a missing or read-only folder, a full disk or any other failed write.
    """
    p = Path(path)
    ext = extension_of(p)
    check_image_output(p)
    if not p.parent.exists():
        raise OutputError(f"{p}: the output folder {p.parent} does not exist.")
    out = image
    if ext in RASTER_EXTENSIONS:
        if image.GetDimension() == 3 and image.GetSize()[2] > 1:
            raise InvalidInputError(
                f"{p}: a 3D volume cannot be written as {ext}; use .nii.gz, .nrrd or .mha."
            )
        if image.GetNumberOfComponentsPerPixel() == 1:
            out = sitk.GetImageFromArray(_raster_array(image))
        else:
            arr = sitk.GetArrayFromImage(image)
            if np.issubdtype(arr.dtype, np.floating):
                arr = np.clip(arr.astype(np.float64) * 255.0 + 0.5, 0, 255)
            out = sitk.GetImageFromArray(arr.astype(np.uint8), isVector=True)
    with atomic_output(p) as tmp:
        if ext in _STREAMED and out.GetNumberOfComponentsPerPixel() == 1:
            _write_streamed(out, tmp, ext, p)
        else:
            _itk_write(out, tmp, p, compress=ext in (".nrrd", ".mha", ".mhd"))
            _verify_written(tmp, out, ext, p)
    return p


#: Formats written uncompressed by ITK, checked byte for byte and (``.nii.gz``, ``.nrrd``)
#: deflated on several threads by :func:`_write_streamed`.
_STREAMED = (".nii", ".nii.gz", ".nrrd")


def _itk_write(image: sitk.Image, path: Path, name: Path, *, compress: bool) -> None:
    lines: list[str] = []
    try:
        with _native_stderr(lines):
            sitk.WriteImage(image, str(path), useCompression=compress)
    except RuntimeError as exc:
        detail = _itk_detail(exc, lines).replace(str(path), str(name))
        raise OutputError(f"{name}: could not write the image ({detail}); is the disk full? "
                          "Nothing was written.") from None


def _raw_header_ok(raw: Path, ext: str, image: sitk.Image) -> bool:
    """Whether the uncompressed file's header declares ``image``'s size and voxel type."""
    if ext in (".nii", ".nii.gz"):
        hdr = nifti_header(raw)
        size = tuple(image.GetSize())
        return (hdr is not None and hdr["endian"] == "<" and
                tuple(hdr["shape"][:len(size)]) == size and
                all(d == 1 for d in hdr["shape"][len(size):]) and
                hdr["bytes"] == image.GetNumberOfPixels() * image.GetSizeOfPixelComponent())
    text = _nrrd_header(raw)
    sizes = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.lower().startswith("sizes:")), None)
    return sizes == [str(v) for v in image.GetSize()] and "encoding: raw" in text


def _nrrd_header(path: Path) -> str:
    """The text header of an attached-data NRRD file, up to and including its blank line."""
    with path.open("rb") as fh:
        head = fh.read(65536)
    end = head.find(b"\n\n")
    return head[:end + 2].decode("latin-1") if end >= 0 else ""


def _same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether two uint8 arrays hold the same bytes (compared 8 at a time: 20 x faster)."""
    if x.size != y.size:
        return False
    n8 = x.size - x.size % 8
    return (np.array_equal(x[:n8].view(np.uint64), y[:n8].view(np.uint64))
            and np.array_equal(x[n8:], y[n8:]))


def _checked_blocks(raw: Path, image: sitk.Image, name: Path, start: int = 0):
    """The bytes of ``raw`` from ``start``, a block at a time, each compared with the image's
    voxel bytes where it holds them (the data ends the file).

    Raises
    ------
    OutputError
        When the file is shorter than its data or a voxel differs.
    """
    want = sitk.GetArrayViewFromImage(image).reshape(-1).view(np.uint8)
    total = raw.stat().st_size
    first = total - want.size  # where the voxel data starts
    if first < 0 or start > first or (start and start != first):
        raise OutputError(f"{name}: the written file is cut off (is the disk full?); nothing was "
                          "written.")
    pos = start
    with raw.open("rb") as fh:
        fh.seek(start)
        while True:
            block = fh.read(gzipped.BLOCK)
            if not block:
                break
            lo = max(pos, first)
            hi = pos + len(block)
            if hi > lo and not _same_bytes(np.frombuffer(block, np.uint8)[lo - pos:],
                                           want[lo - first:hi - first]):
                raise OutputError(f"{name}: the written file reads back with other pixel values "
                                  "(is the disk full?); nothing was written.")
            pos = hi
            yield block
    if pos != total:
        raise OutputError(f"{name}: the written file changed while it was read back; nothing "
                          "was written.")


def _write_streamed(image: sitk.Image, tmp: Path, ext: str, name: Path) -> None:
    """Write a scalar ``.nii``, ``.nii.gz`` or ``.nrrd`` volume at ``tmp`` (in an
    :func:`~MedFusionLib.outputs.atomic_output` folder), checked.

    ITK writes the uncompressed file (``.nii``, or a raw-encoded NRRD); its header is checked for
    the image's size and type and its voxel bytes against the image's. ``.nii`` is then done; for
    ``.nii.gz`` the whole file, for ``.nrrd`` its data (behind the same header, encoding gzip), is
    deflated on :func:`MedFusionLib.threads.current_threads` threads while it is compared, and the
    written file is checked by size and SHA-256 (:func:`MedFusionLib.gzipped.check_written`).

    Raises
    ------
    OutputError
        When any step fails or a check finds other bytes than were meant (nothing is kept).
    """
    if ext == ".nii":
        raw = tmp
    else:  # X.nii.gz -> uncompressed-X.nii, X.nrrd -> uncompressed-X.nrrd, beside it
        raw = tmp.with_name("uncompressed-" + (tmp.name[:-3] if ext == ".nii.gz" else tmp.name))
    _itk_write(image, raw, name, compress=False)
    if not _raw_header_ok(raw, ext, image):
        raise OutputError(f"{name}: the written file's header does not describe the image (is "
                          "the disk full?); nothing was written.")
    if ext == ".nii":
        for _ in _checked_blocks(raw, image, name):
            pass
        return
    prefix, start = b"", 0
    if ext == ".nrrd":
        header = _nrrd_header(raw)
        prefix, start = header.replace("encoding: raw", "encoding: gzip").encode("latin-1"), len(header)
    try:
        with tmp.open("wb") as fh:
            written = gzipped.write_gzip(_checked_blocks(raw, image, name, start), fh,
                                         workers=current_threads(), prefix=prefix)
    finally:
        raw.unlink(missing_ok=True)
    if not gzipped.check_written(tmp, written):
        raise OutputError(f"{name}: the written file reads back different from what was written "
                          "(is the disk full?); nothing was written.")


def write_transform(transform: sitk.Transform, path: str | os.PathLike) -> Path:
    """Write an ITK transform (``.tfm``, ``.txt``, ``.h5``, ``.mat``, ...) atomically, read back.

    Raises
    ------
    InvalidInputError
        For an unsupported extension.
    OutputError
        For a missing or read-only folder, a full disk or a file that does not read back.
    """
    p = Path(path)
    check_transform_output(p)
    with atomic_output(p) as tmp:
        lines: list[str] = []
        try:
            with _native_stderr(lines):
                sitk.WriteTransform(transform, str(tmp))
                back = sitk.ReadTransform(str(tmp))
        except RuntimeError as exc:
            raise OutputError(f"{p}: could not write the transform ({_itk_detail(exc, lines)}); "
                              "is the disk full? Nothing was written.") from None
        want, got = transform.GetParameters(), back.GetParameters()
        if len(want) == len(got) and not np.allclose(got, want, rtol=1e-6, atol=1e-9):
            raise OutputError(f"{p}: the written transform reads back different; nothing was "
                              "written.")
    return p

"""Reading and writing images: 3D volumes (NIfTI, NRRD, MHA/MHD, DICOM folders) and 2D images.

Geometry (origin, spacing, direction) is kept exactly as SimpleITK reads it. 2D raster images
(PNG, JPEG, TIFF, BMP) are read as 2D scalar images; RGB(A) is reduced to luminance
(ITU-R BT.601: Y = 0.299 R + 0.587 G + 0.114 B) and the image is tagged ``MedFusion.Colour``.
Writes are atomic: the file appears complete or not at all.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InvalidInputError

__all__ = ["read_image", "write_image", "VOLUME_EXTENSIONS", "RASTER_EXTENSIONS", "extension_of",
           "copy_geometry", "is_2d", "is_colour", "to_luminance", "COLOUR_KEY"]

VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

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


def _is_dicom_file(path: Path) -> bool:
    """True when the file has the DICOM Part 10 preamble ("DICM" at byte 128)."""
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


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
        geometry as stored in the file (LPS).

    Raises
    ------
    InvalidInputError
        If the file is missing, unreadable, of an unsupported format, empty, or a vector image that
        is not RGB.
    """
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such file or folder.")
    if p.is_dir():
        from .dicom import read_series

        return read_series(p, series_uid=series_uid)
    if p.stat().st_size == 0:
        raise InvalidInputError(f"{p}: the file is empty.")
    if _is_dicom_file(p):
        # one engine for DICOM: rescale to real units, enhanced multi-frame, modality metadata
        from .dicom import read_series

        return read_series(p, series_uid=series_uid)
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "Unable" in ln or "ERROR" in ln), first[0] if first else "")
        raise InvalidInputError(
            f"{p}: cannot read this file as an image (supported: "
            f"{', '.join(VOLUME_EXTENSIONS + RASTER_EXTENSIONS)}, DICOM). {detail.strip()}"
        ) from None
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
    return image


def _raster_array(image: sitk.Image) -> np.ndarray:
    """uint8 array for 2D raster formats: [0, 1] floats are scaled by 255, integers are clipped."""
    arr = sitk.GetArrayFromImage(image)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255)
    else:
        arr = np.clip(arr, 0, 255)
    return arr.astype(np.uint8)


def write_image(image: sitk.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` in the format given by the extension of ``path``, atomically.

    3D volumes keep their geometry and pixel type. 2D raster formats (PNG, JPEG, TIFF, BMP) get
    ``uint8``: floating-point images are taken as [0, 1] and scaled to 0-255. The file is written
    under a temporary name in the same folder and renamed at the end, so a failure never leaves a
    partial file.

    Raises
    ------
    InvalidInputError
        For an unsupported extension, a 3D volume to a 2D raster format, or a missing folder.
    """
    p = Path(path)
    ext = extension_of(p)
    if ext not in VOLUME_EXTENSIONS + RASTER_EXTENSIONS:
        raise InvalidInputError(
            f"{p}: unsupported output format '{ext or '(none)'}'; use one of "
            f"{', '.join(VOLUME_EXTENSIONS + RASTER_EXTENSIONS)}."
        )
    if not p.parent.exists():
        raise InvalidInputError(f"{p}: the output folder {p.parent} does not exist.")
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
                arr = np.clip(arr * 255.0 + 0.5, 0, 255)
            out = sitk.GetImageFromArray(arr.astype(np.uint8), isVector=True)
    fd, tmp = tempfile.mkstemp(prefix=".medfusion-", suffix=ext, dir=p.parent)
    os.close(fd)
    try:
        if ext == ".mhd":
            # .mhd writes a companion .raw/.zraw named after the header: write it in place
            sitk.WriteImage(out, str(p), useCompression=True)
        else:
            sitk.WriteImage(out, tmp, useCompression=ext in (".nrrd", ".mha"))
            os.replace(tmp, p)
    except RuntimeError as exc:
        raise InvalidInputError(f"{p}: could not write the image: {str(exc).strip().splitlines()[-1]}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p

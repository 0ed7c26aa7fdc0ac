"""The pydicom releases MedFusion supports: 2.4 (bundled with 3D Slicer 5.10) and 3.x (Slicer 5.12).

pydicom 3 moved the pixel-data decoders to :mod:`pydicom.pixels` and renamed the ``dcmwrite``
option that writes a conformant file (``write_like_original=False`` became
``enforce_file_format=True``); pydicom 2.4 also needs the dataset's encoding set by hand. Every
call that differs between the two goes through this module, so the readers and writers stay the
same on both.
"""

from __future__ import annotations

import os

from ..errors import MissingDependencyError

__all__ = ["MIN_PYDICOM", "require_pydicom", "decoder_available", "write_file"]

#: Oldest pydicom release supported: the one bundled with 3D Slicer 5.10 is 2.4.4.
MIN_PYDICOM = (2, 4)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def require_pydicom():
    """Import pydicom, checking that it is a supported release.

    Returns
    -------
    module
        The :mod:`pydicom` module.

    Raises
    ------
    MissingDependencyError
        If pydicom is not installed or older than :data:`MIN_PYDICOM`, naming the version needed.
    """
    needed = ".".join(map(str, MIN_PYDICOM))
    try:
        import pydicom
    except ModuleNotFoundError:
        raise MissingDependencyError(
            f"DICOM support needs pydicom >= {needed}, which is not installed; "
            f"install it with `pip install 'pydicom>={needed}'`."
        ) from None
    if _version_tuple(pydicom.__version__) < MIN_PYDICOM:
        raise MissingDependencyError(
            f"DICOM support needs pydicom >= {needed} (3D Slicer 5.10 bundles 2.4.4), but "
            f"pydicom {pydicom.__version__} is installed; upgrade it with "
            f"`pip install 'pydicom>={needed}'`."
        )
    return pydicom


def _major() -> int:
    return _version_tuple(require_pydicom().__version__)[0]


def decoder_available(transfer_syntax) -> bool:
    """Whether an installed pixel-data decoder can read ``transfer_syntax`` (a pydicom UID).

    Uncompressed transfer syntaxes are always readable.
    """
    if not transfer_syntax.is_compressed:
        return True
    if _major() >= 3:
        from pydicom.pixels import get_decoder

        try:
            return bool(get_decoder(transfer_syntax).is_available)
        except (NotImplementedError, ValueError, KeyError):
            return False
    from pydicom import config

    return any(handler.is_available() and handler.supports_transfer_syntax(transfer_syntax)
               for handler in config.pixel_data_handlers)


def write_file(path: str | os.PathLike, ds) -> None:
    """Write ``ds`` as a conformant DICOM file (preamble, ``DICM`` and File Meta Information).

    ``ds.file_meta`` must hold the TransferSyntaxUID; the dataset is encoded as it says (little
    endian; explicit or implicit VR).
    """
    pydicom = require_pydicom()
    if _major() >= 3:
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        return
    syntax = ds.file_meta.TransferSyntaxUID
    ds.is_little_endian = syntax.is_little_endian
    ds.is_implicit_VR = syntax.is_implicit_VR
    pydicom.dcmwrite(path, ds, write_like_original=False)

"""MedFusionLib: the headless engine of MedFusion, multi-modal medical image fusion.

The engine works on plain numpy arrays and SimpleITK images; it never imports Qt or the Slicer
application. The heavy optional packages (PyTorch, PyWavelets, Dask, matplotlib, nilearn) are
imported only by what needs them, when it runs (:mod:`MedFusionLib.optional`).

>>> import MedFusionLib as mf
>>> result = mf.fuse_images(mf.read_image("mr.nii.gz"), mf.read_image("ct.nii.gz"))  # doctest: +SKIP
>>> mf.write_image(result.fused, "fused.nii.gz")  # doctest: +SKIP
"""

from __future__ import annotations

from ._version import __version__
from .errors import (
    CancelledError,
    DeviceUnavailableError,
    InvalidInputError,
    MedFusionError,
    MissingDependencyError,
    RegistrationError,
    UnknownOptionError,
)
from .methods import METHODS, default_method, get_method, list_methods, register
from .driver import fuse_arrays
from .io import read_image, write_image
from .pipeline import FusionResult, align_pair, fuse_images
from .colour import fuse_colour

__all__ = [
    "__version__",
    "MedFusionError", "InvalidInputError", "UnknownOptionError", "MissingDependencyError",
    "DeviceUnavailableError", "RegistrationError", "CancelledError",
    "METHODS", "register", "get_method", "list_methods", "default_method",
    "fuse_arrays", "read_image", "write_image", "fuse_images", "align_pair", "FusionResult",
    "fuse_colour",
]

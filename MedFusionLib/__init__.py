"""MedFusionLib: the headless engine of MedFusion, multi-modal medical image fusion.

The engine works on plain numpy arrays and SimpleITK images; it never imports Qt or the Slicer
application. torch is imported lazily, only by the methods that need it.

>>> import MedFusionLib as mf
>>> result = mf.fuse_images(mf.read_image("mr.nii.gz"), mf.read_image("ct.nii.gz"))  # doctest: +SKIP
>>> mf.write_image(result.fused, "fused.nii.gz")  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CancelledError,
    DeviceUnavailableError,
    InvalidInputError,
    MedFusionError,
    MissingDependencyError,
    RegistrationError,
    UnknownOptionError,
)
from .methods import METHODS, default_method, get_method, list_methods, register  # noqa: E402
from .driver import fuse_arrays  # noqa: E402
from .io import read_image, write_image  # noqa: E402
from .pipeline import FusionResult, align_pair, fuse_images  # noqa: E402
from .colour import fuse_colour  # noqa: E402

__all__ = [
    "__version__",
    "MedFusionError", "InvalidInputError", "UnknownOptionError", "MissingDependencyError",
    "DeviceUnavailableError", "RegistrationError", "CancelledError",
    "METHODS", "register", "get_method", "list_methods", "default_method",
    "fuse_arrays", "read_image", "write_image", "fuse_images", "align_pair", "FusionResult",
    "fuse_colour",
]

"""Exceptions raised by MedFusionLib.

Every error the engine raises on bad input is a :class:`MedFusionError`, so callers (the CLI, the
Slicer module, the benchmarks) can tell "the user's input is wrong" from "the program is broken".
Messages name the input, say what was expected and what was received, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "MedFusionError",
    "InvalidInputError",
    "UnknownOptionError",
    "MissingDependencyError",
    "DeviceUnavailableError",
    "RegistrationError",
    "CancelledError",
    "OutputError",
]


class MedFusionError(Exception):
    """Base class of every error that MedFusionLib raises on purpose."""


class InvalidInputError(MedFusionError, ValueError):
    """An input image, file or parameter value is unusable (wrong shape, NaN, unreadable, ...)."""


class UnknownOptionError(MedFusionError, ValueError):
    """A name (method, device, modality, registration mode, ...) is not one of the known options."""


class MissingDependencyError(MedFusionError, ImportError):
    """An optional package needed for the requested operation is not installed."""


class DeviceUnavailableError(MedFusionError, RuntimeError):
    """The requested compute device (e.g. ``cuda``) is not available on this machine."""


class RegistrationError(MedFusionError, RuntimeError):
    """Registration could not align the images (e.g. they do not overlap)."""


class CancelledError(MedFusionError):
    """The progress callback asked to stop; no output was written."""


class OutputError(InvalidInputError, OSError):
    """An output cannot be written (folder missing or read-only, disk full, would overwrite an
    input); nothing was left behind."""

"""Compute-device selection: ``auto``, ``cpu`` or ``cuda``."""

from __future__ import annotations

import sys
import threading

from . import optional
from .errors import DeviceUnavailableError
from .options import look_up

__all__ = ["DEVICES", "cuda_available", "resolve_device", "available_devices", "preload_torch"]

DEVICES = ("auto", "cpu", "cuda")

torch = optional.lazy("torch", what="the CUDA device")


def cuda_available() -> bool:
    """True if torch imports and sees a CUDA device. Never imports torch if it is absent; a torch
    that is installed but fails to import counts as no CUDA (the methods that need torch then
    say why, through :func:`MedFusionLib.optional.require`)."""
    if not optional.available("torch") or optional.problem("torch") is not None:
        return False
    return bool(torch.cuda.is_available())


def available_devices() -> list[str]:
    """Devices to offer in a menu, without importing torch: always ``cpu``; ``cuda`` when torch is
    installed and, if it is already imported, sees a GPU (before torch is first used a menu
    cannot know, and a panel must not import a multi-GB package, or a broken one, to draw
    itself: choosing ``cuda`` where there is none then gives :func:`resolve_device`'s error)."""
    if not optional.available("torch"):
        return ["cpu"]
    if "torch" in sys.modules:
        return ["cpu", "cuda"] if cuda_available() else ["cpu"]
    return ["cpu", "cuda"]


def resolve_device(device: str = "auto") -> str:
    """Turn ``auto|cpu|cuda`` (or ``cuda:N``) into a concrete device string.

    Raises
    ------
    UnknownOptionError
        For a name other than auto, cpu, cuda or cuda:N.
    DeviceUnavailableError
        If ``cuda`` is asked for on a machine without a usable CUDA device.
    """
    if isinstance(device, str) and device.strip().lower().startswith("cuda:"):
        base, index = "cuda", device.strip().lower()
    else:
        base = look_up(device, DEVICES, what="device")
        index = base
    if base == "auto":
        return "cuda" if cuda_available() else "cpu"
    if base == "cuda" and not cuda_available():
        raise DeviceUnavailableError(
            f"device '{device}' was asked for, but no CUDA device is available here "
            "(torch missing, a CPU-only torch build, or no GPU); use --device cpu or auto."
        )
    return index


_preload: threading.Thread | None = None


def _import_torch() -> None:
    optional.problem("torch")  # a broken torch is reported by the method's own import


def preload_torch() -> None:
    """Start importing torch on a background thread (issue #23).

    The import takes 1.5-3 s. The pair job starts it when registration starts, so it runs on the
    core that registration leaves free (ITK registers on one thread and releases the GIL); whoever
    imports torch next waits for it to finish (Python's import lock). No-op when torch is imported
    or loading, or not installed. The thread is not a daemon: the interpreter waits for it at exit
    rather than stopping it inside the import.
    """
    global _preload
    if _preload is not None or "torch" in sys.modules or not optional.available("torch"):
        return
    _preload = threading.Thread(target=_import_torch, name="medfusion-import-torch")
    _preload.start()

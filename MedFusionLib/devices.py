"""Compute-device selection: ``auto``, ``cpu`` or ``cuda``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading

from .errors import DeviceUnavailableError
from .methods import look_up

__all__ = ["DEVICES", "cuda_available", "resolve_device", "available_devices", "preload_torch"]

DEVICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    """True if torch is installed and sees a CUDA device. Never imports torch if it is absent."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def available_devices() -> list[str]:
    """Devices that can run here, for menus: always ``cpu``, plus ``cuda`` when present."""
    return ["cpu", "cuda"] if cuda_available() else ["cpu"]


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
    try:
        importlib.import_module("torch")
    except Exception:  # noqa: BLE001 - the method's own import reports a broken torch
        pass


def preload_torch() -> None:
    """Start importing torch on a background thread (issue #23).

    The import takes 1.5-3 s. The pair job starts it when registration starts, so it runs on the
    core that registration leaves free (ITK registers on one thread and releases the GIL); whoever
    imports torch next waits for it to finish (Python's import lock). No-op when torch is imported
    or loading, or not installed. The thread is not a daemon: the interpreter waits for it at exit
    rather than stopping it inside the import.
    """
    global _preload
    if _preload is not None or "torch" in sys.modules or importlib.util.find_spec("torch") is None:
        return
    _preload = threading.Thread(target=_import_torch, name="medfusion-import-torch")
    _preload.start()

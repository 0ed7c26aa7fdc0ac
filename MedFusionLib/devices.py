"""Compute-device selection: ``auto``, ``cpu`` or ``cuda``."""

from __future__ import annotations

from . import optional
from .errors import DeviceUnavailableError
from .options import look_up

__all__ = ["DEVICES", "cuda_available", "resolve_device", "available_devices"]

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

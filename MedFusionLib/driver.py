"""Slice-wise fusion driver: walks a volume along its acquisition axis in batches.

The driver is the one place where a registered method meets real data: it validates the
arrays, picks the batch size from the slice area, calls the method batch by batch on the chosen
device, reports progress (and honours cancellation), and assembles the fused volume.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

import numpy as np

from .devices import resolve_device
from .errors import InvalidInputError, MissingDependencyError
from .methods import get_method
from .progress import ProgressCallback, report

__all__ = ["fuse_arrays", "acquisition_axis", "batch_size_for"]

logger = logging.getLogger("MedFusionLib")

#: Pixels per batch that the default batch sizes are calibrated for (256 x 256).
_REFERENCE_AREA = 256 * 256


def acquisition_axis(spacing_zyx) -> int:
    """Numpy axis along which a volume was acquired, from its spacing in (z, y, x) order.

    The slice axis is the one with the largest spacing (the slice thickness) when it is clearly
    larger (> 1.2x) than the others; for (near-)isotropic volumes it is axis 0 (the image's k
    index, the axial direction of most scans).
    """
    spacing = np.asarray(spacing_zyx, dtype=float)
    k = int(np.argmax(spacing))
    others = np.delete(spacing, k)
    if spacing[k] > 1.2 * others.max():
        return k
    return 0


def batch_size_for(method_batch: int, height: int, width: int) -> int:
    """Scale a method's batch size (given for 256 x 256 slices) to slices of ``height x width``."""
    return max(1, int(method_batch * _REFERENCE_AREA / max(1, height * width)))


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise InvalidInputError(
            f"the two sources must have the same shape after registration, got {a.shape} and "
            f"{b.shape}; resample the moving image onto the fixed grid first."
        )
    if a.ndim not in (2, 3):
        raise InvalidInputError(f"expected 2D or 3D scalar images, got shape {a.shape}.")
    for name, x in (("first source", a), ("second source", b)):
        if not np.all(np.isfinite(x)):
            raise InvalidInputError(f"the {name} contains NaN or Inf values.")


def fuse_arrays(a: np.ndarray, b: np.ndarray, *, method: str, axis: int = 0,
                device: str = "auto", batch_size: int | None = None,
                return_weights: bool = False, progress: ProgressCallback | None = None,
                sink=None, **params):
    """Fuse two co-registered, normalised images slice by slice with a registered method.

    Parameters
    ----------
    a, b : ndarray
        ``(H, W)`` or ``(D, H, W)`` images with values in [0, 1] on the same grid.
    method : str
        A registered method name (see :func:`MedFusionLib.methods.list_methods`).
    axis : int, optional
        Numpy axis of the slices for 3D input (see :func:`acquisition_axis`).
    device : {"auto", "cpu", "cuda"}, optional
        Where torch methods run; numpy methods always run on the CPU.
    batch_size : int, optional
        Slices per call; by default the method's batch size scaled to the slice area, so memory is
        bounded by the batch, not by the volume.
    return_weights : bool, optional
        Also return the per-pixel contribution of ``a`` (needs a method that provides it).
    progress : callable, optional
        ``progress(fraction, message)``; returning False cancels (raises CancelledError).
    sink : callable, optional
        ``sink(start, stop, fused, weights)`` receives each batch instead of the driver
        assembling a volume: ``fused`` (and ``weights``, or None) are ``float32 (k, h, w)`` arrays
        of slices ``start:stop`` along ``axis``, already in [0, 1]. The function then returns
        None; memory stays bounded by one batch (the caller stores the slices where it wants).
    **params
        The method's own parameters.

    Returns
    -------
    fused : ndarray
        ``float32``, same shape as ``a``, values in [0, 1].
    weights : ndarray
        Only with ``return_weights``: ``float32`` contribution of ``a`` in [0, 1].
    """
    info = get_method(method)
    info.validate_params(params)
    if not info.available:
        raise MissingDependencyError(
            f"method '{info.name}' needs {' and '.join(info.missing())}, which is not installed; "
            "install it or choose another method (medfusion list-methods)."
        )
    if return_weights and not info.provides_weights:
        raise InvalidInputError(
            f"method '{info.name}' does not produce a contribution map; choose one of the methods "
            "marked 'weights' in medfusion list-methods."
        )
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    _check_pair(a, b)
    dev = resolve_device(device)
    if dev.startswith("cuda") and not info.supports_cuda:
        logger.info("method '%s' runs on the CPU only; device '%s' ignored", info.name, dev)
        dev = "cpu"

    two_d = a.ndim == 2
    if two_d:
        a3, b3 = a[None], b[None]
    else:
        if axis not in (0, 1, 2):
            raise InvalidInputError(f"slice axis must be 0, 1 or 2, got {axis}.")
        a3, b3 = np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0)
    n, h, w = a3.shape
    bs = batch_size or batch_size_for(info.slices_per_batch, h, w)
    if sink is None:
        fused = np.empty((n, h, w), dtype=np.float32)
        weights = np.empty((n, h, w), dtype=np.float32) if return_weights else None
    kwargs = dict(params)
    if info.provides_weights:
        kwargs["return_weights"] = return_weights

    t0 = time.perf_counter()
    report(progress, 0.0, f"fusing {n} slice{'s' if n != 1 else ''} of {h}x{w} with "
                          f"'{info.name}' on {dev}")
    start = 0
    while start < n:
        stop = min(n, start + bs)
        xa = np.ascontiguousarray(a3[start:stop])
        xb = np.ascontiguousarray(b3[start:stop])
        try:
            out = info.func(xa, xb, device=dev, **kwargs)
        except _cuda_oom_types() as exc:  # pragma: no cover - needs a GPU
            warnings.warn(f"CUDA out of memory in '{info.name}' ({exc}); continuing on the CPU.",
                          RuntimeWarning, stacklevel=2)
            dev = "cpu"
            continue
        out, wa = out if return_weights else (out, None)
        if sink is not None:
            out = np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)
            sink(start, stop, out, None if wa is None else np.asarray(wa, dtype=np.float32))
        else:
            fused[start:stop] = out
            if return_weights:
                weights[start:stop] = wa
        start = stop
        report(progress, stop / n, f"slice {stop}/{n}")
    elapsed = time.perf_counter() - t0
    if sink is not None:
        report(progress, 1.0, f"fusion completed in {elapsed:.2f} s ({n / max(elapsed, 1e-9):.1f} slices/s)")
        return None
    np.clip(fused, 0.0, 1.0, out=fused)
    report(progress, 1.0, f"fusion completed in {elapsed:.2f} s ({n / max(elapsed, 1e-9):.1f} slices/s)")

    if two_d:
        fused = fused[0]
        weights = None if weights is None else weights[0]
    elif axis != 0:
        fused = np.moveaxis(fused, 0, axis)
        weights = None if weights is None else np.moveaxis(weights, 0, axis)
    fused = np.ascontiguousarray(fused)
    if return_weights:
        return fused, np.ascontiguousarray(weights)
    return fused


def _cuda_oom_types() -> tuple:
    """Exception types that mean 'CUDA ran out of memory' (empty when torch is absent)."""

    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "cuda"):
        return ()
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom,) if oom is not None else ()

"""Fusion metrics of 3D volumes: per-slice along the fusion axis, averaged over usable slices."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..progress import ProgressCallback, report
from ._common import check_same_shape
from ._table import METRICS, compute_metrics, resolve_keys

__all__ = ["volume_metrics"]


def _is_constant(x: np.ndarray) -> bool:
    return x.size == 0 or float(x.max()) == float(x.min())


def volume_metrics(a, b, f, *, axis: int = 0, keys=None, mask=None, data_range: float = 1.0,
                   options=None, slice_step: int = 1,
                   progress: ProgressCallback | None = None) -> dict:
    """Fusion metrics of a volume: the mean over its slices along ``axis``.

    The literature's metrics are 2D; as the review and the reference code do, each slice is
    scored on its own and the arithmetic mean over the usable slices is reported.

    Parameters
    ----------
    a, b : ndarray, shape (D, H, W) or (H, W)
        The co-registered sources, values in ``[0, data_range]`` (2D input is one slice).
    f : ndarray
        The fused volume, same shape.
    axis : int, optional
        Numpy axis of the slices (the fusion axis, e.g. ``FusionResult.axis``).
    keys : str or sequence of str, optional
        Metric keys (see :data:`METRICS`); all by default.
    mask : ndarray of bool, optional
        Foreground mask of the same shape. Each slice is then cropped to the bounding box of its
        mask pixels (window-based metrics need a rectangle); slices without mask pixels are
        skipped.
    data_range : float, optional
        Intensity span of the inputs (1.0 for the engine's [0, 1] images).
    options : mapping, optional
        Per-key options, as for :func:`compute_metrics`.
    slice_step : int, optional
        Score every ``slice_step``-th slice only (a quicker estimate on large volumes).
    progress : callable, optional
        ``progress(fraction, message)``; returning False cancels (:class:`CancelledError`).

    Returns
    -------
    dict
        ``{key: mean value}`` for each key, plus ``"slices_used"`` (int) and ``"slices_total"``
        (int, slices visited). Slices where A, B or F is constant, or whose mask crop is smaller
        than a requested metric needs, are skipped. A key whose value is NaN on a slice (undefined
        there) is averaged over the other slices. All values are NaN if no slice is usable.

    Raises
    ------
    InvalidInputError
        On shape mismatch, bad ``axis`` or ``slice_step``, or a mask of another shape.
    """
    keys = resolve_keys(keys)
    a, b, f = np.asarray(a), np.asarray(b), np.asarray(f)
    check_same_shape({"source a": a.shape, "source b": b.shape, "fused": f.shape}, "volume_metrics")
    if a.ndim == 2:
        a, b, f = a[None], b[None], f[None]
        axis = 0
        if mask is not None:
            mask = np.asarray(mask)[None]
    elif a.ndim != 3:
        raise InvalidInputError(f"volume_metrics: expected 2D or 3D images, got shape {a.shape}.")
    if not isinstance(axis, (int, np.integer)) or not -3 <= axis < 3:
        raise InvalidInputError(f"volume_metrics: axis must be 0, 1 or 2, got {axis!r}.")
    if int(slice_step) != slice_step or slice_step < 1:
        raise InvalidInputError(f"volume_metrics: slice_step must be a positive integer, got "
                                f"{slice_step!r}.")
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != a.shape:
            raise InvalidInputError(f"volume_metrics: the mask has shape {mask.shape}, the images "
                                    f"{a.shape}; resample the mask onto the image grid.")
        mask = np.moveaxis(mask, axis, 0)
    a, b, f = (np.moveaxis(x, axis, 0) for x in (a, b, f))
    need = max(METRICS[k].min_side for k in keys)

    indices = range(0, a.shape[0], int(slice_step))
    sums = {k: 0.0 for k in keys}
    counts = {k: 0 for k in keys}
    used = 0
    for n, i in enumerate(indices):
        sa, sb, sf = a[i], b[i], f[i]
        if mask is not None:
            rows = np.flatnonzero(mask[i].any(axis=1))
            cols = np.flatnonzero(mask[i].any(axis=0))
            if rows.size == 0:
                continue
            crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            sa, sb, sf = sa[crop], sb[crop], sf[crop]
        if min(sf.shape) < need or _is_constant(sa) or _is_constant(sb) or _is_constant(sf):
            continue
        values = compute_metrics(sa, sb, sf, keys=keys, data_range=data_range, options=options)
        used += 1
        for k, v in values.items():
            if not np.isnan(v):
                sums[k] += v
                counts[k] += 1
        if progress is not None:
            report(progress, (n + 1) / len(indices), f"metrics: slice {n + 1}/{len(indices)}")
    out: dict = {k: (sums[k] / counts[k] if counts[k] else float("nan")) for k in keys}
    out["slices_used"] = used
    out["slices_total"] = len(indices)
    return out

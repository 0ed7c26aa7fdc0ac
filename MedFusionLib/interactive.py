"""The engine half of an interactive fusion: two images in memory -> fused images, registration and
a sample of quality metrics, with one progress bar from 0 to 1 across every stage.

The Slicer module runs it in a child process (:mod:`MedFusionLib.background`, so that Slicer stays
usable), scripts in process (:func:`MedFusionLib.slicer_bridge.fuse_nodes`); both give the same
result. Nothing here knows about Slicer: images are SimpleITK images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from . import metrics as metrics_module
from .colour import fuse_colour
from .pipeline import FusionResult, fuse_images
from .progress import ProgressCallback, report, scaled

__all__ = ["EngineResult", "run_engine", "sample_metrics", "DEFAULT_METRIC_KEYS", "STAGES"]

logger = logging.getLogger("MedFusionLib")

#: Metrics of an interactive run by default: the set the CNN is judged on (entropy, standard
#: deviation, spatial frequency, mutual information, sum of the correlations of differences, VIF,
#: Q^AB/F and SSIM; see :data:`MedFusionLib.metrics.METRICS` for their definitions).
DEFAULT_METRIC_KEYS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")

#: Where each stage sits on the run's one progress bar: read, register and fuse (the pipeline's
#: own fractions), then the metrics; the rest is left for writing the results.
STAGES = {"fuse": (0.0, 0.90), "metrics": (0.90, 0.97)}


@dataclass
class EngineResult:
    """What :func:`run_engine` computed.

    Attributes
    ----------
    fusion : FusionResult or ColourFusionResult
        The engine's result (``rgb`` set for a colour fusion).
    metrics : dict
        ``{key: value}`` of the sampled metrics (empty when none were asked for).
    directions : dict
        ``{key: "higher" | "lower" | ...}``: which way each metric is better.
    """

    fusion: FusionResult
    metrics: dict = field(default_factory=dict)
    directions: dict = field(default_factory=dict)


def sample_metrics(result: FusionResult, keys=DEFAULT_METRIC_KEYS, *, max_slices: int = 24,
                   progress: ProgressCallback | None = None) -> tuple[dict, dict]:
    """Quality metrics of a fused volume against its two normalised sources, with directions.

    At most ``max_slices`` evenly spaced slices along the fusion axis are scored (the metrics are
    per-slice means; a 256 x 256 slice costs about 0.1 s for the default keys). Metrics that need
    larger slices than the image has are left out with a warning.

    Returns
    -------
    metrics : dict
        ``{key: float}``.
    directions : dict
        ``{key: direction}`` (see :class:`MedFusionLib.metrics.MetricInfo`).
    """
    fused01 = sitk.GetArrayViewFromImage(result.fused)
    n_slices = 1 if fused01.ndim == 2 else fused01.shape[result.axis]
    slice_shape = fused01.shape if fused01.ndim == 2 else np.delete(fused01.shape, result.axis)
    keys = metrics_module.resolve_keys(keys)
    fitting = tuple(k for k in keys if metrics_module.METRICS[k].min_side <= min(slice_shape))
    if len(fitting) < len(keys):
        logger.warning("metrics %s need larger slices than %s and are left out",
                       ", ".join(k for k in keys if k not in fitting), "x".join(map(str, slice_shape)))
    if not fitting:
        return {}, {}
    step = max(1, int(np.ceil(n_slices / max(1, int(max_slices)))))
    report(progress, 0.0, f"computing quality metrics on {int(np.ceil(n_slices / step))} slices")
    values = metrics_module.volume_metrics(
        result.fixed01, result.moving01, np.asarray(fused01), axis=result.axis, keys=fitting,
        data_range=1.0, slice_step=step, progress=progress)  # per slice: shown, and cancellable
    metrics = {k: float(v) for k, v in values.items() if k in metrics_module.METRICS}
    directions = {k: metrics_module.METRICS[k].direction for k in metrics}
    return metrics, directions


def run_engine(fixed: sitk.Image, moving: sitk.Image, *, colour_table=None,
               functional: str | None = None, metric_keys=None, max_metric_slices: int = 24,
               progress: ProgressCallback | None = None, **options) -> EngineResult:
    """Register and fuse ``moving`` onto ``fixed`` and sample the quality metrics.

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        2D or 3D images (an RGB source gives a colour fusion, as in :func:`fuse_colour`).
    colour_table : str or array_like, optional
        Colour fusion with this table for a greyscale PET/SPECT source (``heat``, ``rainbow`` or
        ``(N, 3)`` RGB rows in [0, 1]); None: greyscale fusion.
    functional : {"fixed", "moving"}, optional
        Which source is functional in a colour fusion (default: found from the modalities).
    metric_keys : sequence of str, optional
        Metrics to sample (:func:`sample_metrics`); None or empty: none.
    max_metric_slices : int, optional
        Score at most this many slices.
    progress : callable, optional
        ``progress(fraction, message)``: one bar from 0 to 0.97 across read, registration,
        fusion and metrics (:data:`STAGES`); returning False cancels.
    **options
        :func:`MedFusionLib.pipeline.fuse_images`'s options (``method``, ``registration``,
        ``device``, modalities, ``ct_window``, masks, ``initial_transform``,
        ``strict_registration``, ``return_weights``) and the method's parameters.

    Raises
    ------
    MedFusionError
        As :func:`fuse_images`; :class:`~MedFusionLib.errors.CancelledError` when cancelled.
    """
    span = STAGES["fuse"] if metric_keys else (0.0, STAGES["metrics"][1])
    fuse_progress = scaled(progress, *span)
    if colour_table is not None:
        result = fuse_colour(fixed, moving, table=colour_table, functional=functional,
                             progress=fuse_progress, **options)
    else:
        result = fuse_images(fixed, moving, progress=fuse_progress, **options)
    metrics, directions = {}, {}
    if metric_keys:
        metrics, directions = sample_metrics(result, metric_keys, max_slices=max_metric_slices,
                                             progress=scaled(progress, *STAGES["metrics"]))
    return EngineResult(fusion=result, metrics=metrics, directions=directions)

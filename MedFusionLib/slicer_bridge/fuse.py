"""``fuse_nodes``: register and fuse two volume nodes and write the result nodes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import slicer

from .. import metrics as metrics_module
from ..colour import functional_source, fuse_colour
from ..errors import InvalidInputError
from ..methods import default_method, get_method, list_methods
from ..pipeline import fuse_images
from ..progress import ProgressCallback, report
from .display import _display_range, _show_volume, contribution_color_node, node_colour_table, \
    show_result, write_metrics_table
from .nodes import _check_volume, ijk_to_ras_matrix, image_from_volume, update_volume_from_image
from .placement import _apply_node_transform, _check_output_transform, _placement

__all__ = ["DEFAULT_METRIC_KEYS", "NodeFusionResult", "fuse_nodes"]

logger = logging.getLogger("MedFusionLib")


#: Metrics written to the metrics table by default: the set the CNN is judged on (entropy,
#: standard deviation, spatial frequency, mutual information, sum of the correlations of
#: differences, VIF, Q^AB/F and SSIM; see MedFusionLib.metrics.METRICS for definitions).
DEFAULT_METRIC_KEYS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")


@dataclass
class NodeFusionResult:
    """What :func:`fuse_nodes` did.

    Attributes
    ----------
    fusion : MedFusionLib.pipeline.FusionResult
        The engine's result (fused image, normalised sources, registration, timings).
    metrics : dict
        ``{metric: value}`` written to the metrics table (empty when no table was given).
    seconds : float
        Wall time of the whole call.
    """

    fusion: object
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0


def _check_distinct(**nodes) -> None:
    seen = {}
    for role, node in nodes.items():
        if node is None:
            continue
        key = id(node) if node.GetID() is None else node.GetID()
        role = role.replace("_", " ")
        if key in seen:
            raise InvalidInputError(
                f"the {role} and the {seen[key]} are the same node ('{node.GetName()}'); choose a "
                "different node for each: inputs are never overwritten."
            )
        seen[key] = role


def _check_node_class(node, class_name: str, role: str) -> None:
    if node is not None and not node.IsA(class_name):
        raise InvalidInputError(
            f"the {role} '{node.GetName()}' is a {node.GetClassName()}; a {class_name} is needed."
        )


def _compute_metrics(result, keys, max_slices: int, progress: ProgressCallback | None) -> tuple[dict, dict]:
    """Quality metrics of the fused volume against both normalised sources, with directions.

    At most ``max_slices`` evenly spaced slices along the fusion axis are scored (the metrics are
    per-slice means; a 256 x 256 slice costs about 0.1 s for the default keys).
    """
    fused01 = sitk.GetArrayViewFromImage(result.fused)
    n_slices = 1 if fused01.ndim == 2 else fused01.shape[result.axis]
    slice_shape = fused01.shape if fused01.ndim == 2 else np.delete(fused01.shape, result.axis)
    keys = metrics_module.resolve_keys(keys)
    fitting = tuple(k for k in keys if metrics_module.METRICS[k].min_side <= min(slice_shape))
    if len(fitting) < len(keys):
        logger.warning("metrics %s need larger slices than %s and are left out of the table",
                       ", ".join(k for k in keys if k not in fitting), "x".join(map(str, slice_shape)))
    if not fitting:
        return {}, {}
    step = max(1, int(np.ceil(n_slices / max(1, int(max_slices)))))
    report(progress, None, f"computing quality metrics on {int(np.ceil(n_slices / step))} slices")
    values = metrics_module.volume_metrics(
        result.fixed01, result.moving01, np.asarray(fused01), axis=result.axis, keys=fitting,
        data_range=1.0, slice_step=step, progress=progress)  # per slice: shown, and cancellable
    metrics = {k: float(v) for k, v in values.items() if k in metrics_module.METRICS}
    directions = {k: metrics_module.METRICS[k].direction for k in metrics}
    return metrics, directions


def fuse_nodes(fixedVolume, movingVolume, outputVolume, *, method: str | None = None,
               registration: str | None = "rigid", device: str = "auto", transformNode=None,
               contributionVolume=None, metricsTable=None, progress: ProgressCallback | None = None,
               fixed_modality: str | None = None, moving_modality: str | None = None,
               ct_window=None, metric_keys=DEFAULT_METRIC_KEYS, max_metric_slices: int = 24,
               show: bool = True, colourVolume=None, colour_table=None,
               fixedMask=None, movingMask=None, initial_transform: sitk.Transform | None = None,
               strict_registration: bool = False, **params) -> NodeFusionResult:
    """Register and fuse two volume nodes; write the fused volume and optional outputs as nodes.

    The inputs' voxels and geometry are never modified (only the moving volume's parent
    transform, when ``transformNode`` is given). Nothing is written until the engine has
    finished, so a cancelled or failed run leaves every node as it was.

    Parameters
    ----------
    fixedVolume : vtkMRMLScalarVolumeNode
        Reference (usually anatomical, e.g. MR); the fused volume is written on its exact grid.
    movingVolume : vtkMRMLScalarVolumeNode
        Second source (e.g. CT, PET, SPECT), registered onto ``fixedVolume``.
    outputVolume : vtkMRMLScalarVolumeNode
        Receives the fused volume: float32 in [0, 1], IJK->RAS equal to the fixed volume's world
        matrix, grey colour map and a window of the 0.5-99.5 percentiles.
    method : str, optional
        Fusion method name (``MedFusionLib.list_methods()``); default: ``cnn`` where available,
        else ``maximum``.
    registration : {"rigid", "affine", "bspline", "none"}, optional
        How the moving volume is aligned before fusion (default ``rigid``; None lets the engine
        choose: rigid in 3D, none in 2D).
    device : {"auto", "cpu", "cuda"}, optional
        Where torch-based methods run.
    transformNode : vtkMRMLTransformNode, optional
        Receives the registration result, and ``movingVolume`` is shown through it: afterwards
        the moving volume, as displayed in world coordinates, sits on ``fixedVolume``. If the
        node is already above the moving volume (a second run after the first placed it there,
        or a node higher in its chain), it keeps its place and its transform is refined; else
        the moving volume is put directly under it and the node absorbs the volume's previous
        parent transforms. The node thus holds the whole mapping from the moving volume's own
        coordinates (below the node) to the node's parent, not only the last correction.
        Rigid/affine results are stored as a matrix, B-spline results as a displacement grid
        (from parent). A node above the fixed volume is refused (it would move it too). The
        moving volume's voxels and geometry are never changed.
    contributionVolume : vtkMRMLScalarVolumeNode, optional
        Receives the per-voxel share of the fixed source in [0, 1] (blue = moving source, white =
        equal, orange = fixed source). Only for methods that provide weights.
    metricsTable : vtkMRMLTableNode, optional
        Receives one row per quality metric: ``Metric``, ``Value``, ``Direction``.
    progress : callable, optional
        ``progress(fraction, message) -> bool | None``; returning False cancels
        (:class:`MedFusionLib.errors.CancelledError` is raised and no node is written).
    fixed_modality, moving_modality : str, optional
        ``CT``, ``MR``, ``PET``, ``SPECT`` or ``8BIT`` to override the guess.
    ct_window : str or (float, float), optional
        CT window preset name or ``(level, width)`` in HU.
    metric_keys : sequence of str, optional
        Metrics for ``metricsTable`` (keys of ``MedFusionLib.metrics.METRICS``, or ``"all"``).
    max_metric_slices : int, optional
        Score at most this many evenly spaced slices (default 24).
    show : bool, optional
        Show the result in the slice views with :func:`show_result` (default True): the fused
        volume as background (the colour one when computed) and, as foreground, the contribution
        map at 40 % opacity with a colour legend when computed, else the fixed volume at opacity
        0, ready for the fader; views fitted when the application has a layout manager.
    colourVolume : vtkMRMLVectorVolumeNode, optional
        Receives the colour fusion (RGB, see :mod:`MedFusionLib.colour`): the PET/SPECT source
        keeps its colours over the anatomical detail. ``outputVolume`` then holds the fused
        luminance, and the metrics are computed on luminance.
    colour_table : str or array_like, optional
        Colour table for the functional source: a name (``heat``, ``rainbow``) or ``(N, 3)`` RGB
        rows. Default: the colour table its display node uses in Slicer, else ``heat``.
    fixedMask, movingMask : vtkMRMLLabelMapVolumeNode or vtkMRMLScalarVolumeNode, optional
        Label volumes (non-zero = use) limiting the registration to these regions.
    initial_transform : SimpleITK.Transform, optional
        Start of the registration (fixed -> moving points, LPS) instead of the global search.
    strict_registration : bool, optional
        Raise instead of writing when the registration's self-check gives low confidence.
    **params
        Parameters of the fusion method (e.g. the CNN's fusion level and rule).

    Returns
    -------
    NodeFusionResult
        The registration's confidence (``fusion.registration.confidence`` and its reason) is
        also in the final progress message and the output's ``MedFusion.RegistrationConfidence``
        attribute.

    Raises
    ------
    InvalidInputError
        Missing, non-scalar or empty volumes; an output node that is also an input; a wrong node
        class; a contribution map asked of a method that has none.
    MedFusionError
        Any engine error (unknown method or device, registration failure, cancellation).
    """
    t0 = time.perf_counter()
    _check_volume(fixedVolume, "fixed")
    _check_volume(movingVolume, "moving")
    if outputVolume is None:
        raise InvalidInputError("no output volume was given; select or create one.")
    _check_node_class(outputVolume, "vtkMRMLScalarVolumeNode", "output volume")
    _check_node_class(contributionVolume, "vtkMRMLScalarVolumeNode", "contribution volume")
    _check_node_class(transformNode, "vtkMRMLTransformNode", "transform node")
    _check_node_class(metricsTable, "vtkMRMLTableNode", "metrics table")
    _check_node_class(colourVolume, "vtkMRMLVectorVolumeNode", "colour volume")
    for node, role in ((outputVolume, "output volume"), (contributionVolume, "contribution volume")):
        if node is not None and node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InvalidInputError(f"the {role} '{node.GetName()}' is a labelmap; choose a scalar volume.")
    _check_distinct(fixed_volume=fixedVolume, moving_volume=movingVolume,
                    output_volume=outputVolume, contribution_volume=contributionVolume,
                    colour_volume=colourVolume)
    _check_output_transform(transformNode, fixedVolume, movingVolume)

    method = default_method() if method is None else method
    info = get_method(method)
    if contributionVolume is not None and not info.provides_weights:
        with_weights = [n for n, i in list_methods(details=True).items() if i.provides_weights]
        raise InvalidInputError(
            f"method '{info.name}' gives no contribution map; clear the contribution volume or use "
            f"one of: {', '.join(with_weights) or 'none installed'}."
        )

    fixed_image = image_from_volume(fixedVolume)
    moving_image = image_from_volume(movingVolume)
    fixed_ijk_to_ras = ijk_to_ras_matrix(fixedVolume)
    common = dict(method=info.name, registration=registration, device=device,
                  fixed_modality=fixed_modality, moving_modality=moving_modality,
                  ct_window=ct_window, return_weights=contributionVolume is not None,
                  progress=progress, initial_transform=initial_transform,
                  strict_registration=strict_registration,
                  fixed_mask=None if fixedMask is None else image_from_volume(fixedMask, labelmap=True),
                  moving_mask=None if movingMask is None else image_from_volume(movingMask, labelmap=True))
    if colourVolume is not None:
        which = functional_source(fixed_image, moving_image, fixed_modality=fixed_modality,
                                  moving_modality=moving_modality,
                                  names=(fixedVolume.GetName(), movingVolume.GetName()))
        table = colour_table
        if table is None:
            table = node_colour_table(fixedVolume if which == "fixed" else movingVolume)
        result = fuse_colour(fixed_image, moving_image, table="heat" if table is None else table,
                             functional=which, **common, **params)
    else:
        result = fuse_images(fixed_image, moving_image, **common, **params)

    if contributionVolume is not None and result.weights is None:
        raise InvalidInputError(f"method '{info.name}' returned no contribution map.")
    metrics, directions = ({}, {})
    if metricsTable is not None:
        metrics, directions = _compute_metrics(result, metric_keys, max_metric_slices, progress)
    if transformNode is not None:
        to_parent, from_parent, reparent = _placement(transformNode, movingVolume,
                                                      result.registration.transform, fixed_image)

    # Everything is computed: write the outputs.
    report(progress, None, "writing the results into the scene")
    update_volume_from_image(outputVolume, sitk.Cast(result.fused, sitk.sitkFloat32),
                             ijk_to_ras=fixed_ijk_to_ras)
    lower, upper = _display_range(slicer.util.arrayFromVolume(outputVolume))
    _show_volume(outputVolume, lower, upper, "vtkMRMLColorTableNodeGrey")
    for key, value in (("Method", info.name), ("Device", str(result.device)),
                       ("Registration", result.registration.mode),
                       ("RegistrationConfidence", result.registration.confidence),
                       ("FixedVolume", fixedVolume.GetID() or ""),
                       ("MovingVolume", movingVolume.GetID() or "")):
        outputVolume.SetAttribute(f"MedFusion.{key}", value)

    if transformNode is not None:
        _apply_node_transform(transformNode, to_parent, from_parent)
        if reparent:
            movingVolume.SetAndObserveTransformNodeID(transformNode.GetID())

    if contributionVolume is not None:
        update_volume_from_image(contributionVolume, sitk.Cast(result.weights, sitk.sitkFloat32),
                                 ijk_to_ras=fixed_ijk_to_ras)
        scene = contributionVolume.GetScene() or slicer.mrmlScene
        color = contribution_color_node(scene)
        _show_volume(contributionVolume, 0.0, 1.0, color.GetID())
        contributionVolume.SetAttribute("MedFusion.Meaning", "share of the fixed source in [0, 1]")

    if colourVolume is not None:
        update_volume_from_image(colourVolume, result.rgb, ijk_to_ras=fixed_ijk_to_ras)
        colourVolume.CreateDefaultDisplayNodes()
        colourVolume.SetAttribute("MedFusion.Meaning",
                                  f"colour fusion: {result.functional} source in "
                                  f"{result.colour_table} over the other's detail")

    if metricsTable is not None:
        write_metrics_table(metricsTable, metrics, directions)

    if show:
        show_result(outputVolume, fixedVolume, contributionVolume=contributionVolume,
                    colourVolume=colourVolume)

    seconds = time.perf_counter() - t0
    reg = result.registration
    report(progress, 1.0, f"Fusion completed in {seconds:.2f} seconds; {reg.mode} registration "
                          f"confidence {reg.confidence}"
                          + (f" ({reg.confidence_reason})" if reg.confidence == "low" else ""))
    return NodeFusionResult(fusion=result, metrics=metrics, seconds=seconds)

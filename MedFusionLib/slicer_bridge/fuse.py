"""Fusing two volume nodes: read and check the nodes (:func:`prepare_fusion`), run the engine,
write the result nodes (:func:`write_result`).

:func:`fuse_nodes` does all three in this process and returns when done (scripts);
:func:`MedFusionLib.slicer_bridge.task.fuse_nodes_async` runs the engine in a child process and
writes the same nodes the same way when it has finished (the module panel).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import slicer

from ..errors import InvalidInputError
from ..interactive import DEFAULT_METRIC_KEYS, run_engine
from ..methods import default_method, get_method, list_methods
from ..progress import ProgressCallback, report
from .display import (_display_range, _show_volume, contribution_color_node, node_colour_table,
                      show_result, write_metrics_table)
from .nodes import (_check_volume, dicom_modality, ijk_to_ras_matrix, image_from_volume,
                    single_slice_axis, slice_frame, update_volume_from_image)
from .placement import _ancestors, _apply_node_transform, _check_output_transform, _placement, \
    lift_to_3d

__all__ = ["DEFAULT_METRIC_KEYS", "NodeFusionResult", "FusionRequest", "prepare_fusion",
           "write_result", "fuse_nodes", "functional_role", "CLINICAL_COLOUR_TABLES"]

logger = logging.getLogger("MedFusionLib")

#: The colour table a functional source is shown in when its own display is greyscale: hot iron
#: ("heat": black-red-yellow-white) for PET, the rainbow for SPECT, as nuclear medicine reads them.
CLINICAL_COLOUR_TABLES = {"PET": "heat", "SPECT": "rainbow"}

#: DICOM Modality values of the functional sources.
_FUNCTIONAL_DICOM = {"PT": "PET", "NM": "SPECT"}

#: Node classes in the user's words (messages never show VTK class names).
_KINDS = {"vtkMRMLScalarVolumeNode": "scalar volume", "vtkMRMLTransformNode": "transform",
          "vtkMRMLTableNode": "table", "vtkMRMLVectorVolumeNode": "colour (RGB) volume"}


@dataclass
class NodeFusionResult:
    """What a fusion of two volume nodes did.

    Attributes
    ----------
    fusion : MedFusionLib.pipeline.FusionResult or MedFusionLib.background.RemoteFusion
        The engine's result (fused image, registration, method, device, timings; the normalised
        sources only when the engine ran in this process).
    metrics : dict
        ``{metric: value}`` written to the metrics table (empty when no table was given).
    seconds : float
        Wall time of the whole call.
    outputVolume, colourVolume : vtkMRMLVolumeNode or None
        The nodes that received the fused volume and the colour fusion (created when none was
        given).
    """

    fusion: object
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    outputVolume: object = None
    colourVolume: object = None


@dataclass
class FusionRequest:
    """A checked fusion of two volume nodes: the engine's inputs and options, and the nodes
    that receive the result. Made by :func:`prepare_fusion`; nothing in the scene is changed
    until :func:`write_result`."""

    fixedVolume: object
    movingVolume: object
    outputVolume: object
    transformNode: object
    contributionVolume: object
    metricsTable: object
    colourVolume: object
    colour: bool
    images: dict
    initial_transform: sitk.Transform | None
    options: dict
    fixed_ijk_to_ras: np.ndarray
    fixed_shape: tuple
    frame: object = None
    replace_transform: bool = False
    show: bool = True
    started: float = field(default_factory=time.perf_counter)

    def nodes(self) -> list:
        """Every node the run reads or writes (a run whose node is deleted must stop)."""
        return [n for n in (self.fixedVolume, self.movingVolume, self.outputVolume,
                            self.transformNode, self.contributionVolume, self.metricsTable,
                            self.colourVolume) if n is not None]


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
            f"the {role} '{node.GetName()}' is not a {_KINDS.get(class_name, class_name)}; choose "
            f"a {_KINDS.get(class_name, class_name)} (or create a new one)."
        )


def functional_role(fixedVolume, movingVolume, fixed_modality: str | None = None,
                    moving_modality: str | None = None) -> tuple[str, str] | None:
    """``(role, modality)`` of the functional source of a pair -- ``("moving", "PET")`` -- when
    exactly one of the two is PET or SPECT, by the modality given or else the DICOM header
    (Modality PT or NM); None otherwise (intensities cannot tell PET from MR)."""
    found = []
    for role, node, given in (("fixed", fixedVolume, fixed_modality),
                              ("moving", movingVolume, moving_modality)):
        modality = str(given).upper() if given and str(given).lower() != "auto" else None
        if modality is None and node is not None:
            modality = _FUNCTIONAL_DICOM.get(dicom_modality(node) or "")
        if modality in ("PET", "SPECT"):
            found.append((role, modality))
    return found[0] if len(found) == 1 else None


def prepare_fusion(fixedVolume, movingVolume, outputVolume=None, *, method: str | None = None,
                   registration: str | None = "rigid", device: str = "auto", transformNode=None,
                   contributionVolume=None, metricsTable=None, fixed_modality: str | None = None,
                   moving_modality: str | None = None, ct_window=None,
                   metric_keys=DEFAULT_METRIC_KEYS, max_metric_slices: int = 24,
                   show: bool = True, colour: bool | None = None, colourVolume=None,
                   colour_table=None, fixedMask=None, movingMask=None,
                   initial_transform: sitk.Transform | None = None,
                   strict_registration: bool = False, **params) -> FusionRequest:
    """Check the nodes and options of a fusion and read the inputs (see :func:`fuse_nodes` for
    the parameters); changes nothing in the scene.

    Raises
    ------
    InvalidInputError
        As :func:`fuse_nodes`.
    """
    _check_volume(fixedVolume, "fixed")
    _check_volume(movingVolume, "moving")
    for node, name, role in ((outputVolume, "vtkMRMLScalarVolumeNode", "output volume"),
                             (contributionVolume, "vtkMRMLScalarVolumeNode", "contribution volume"),
                             (transformNode, "vtkMRMLTransformNode", "output transform"),
                             (metricsTable, "vtkMRMLTableNode", "metrics table"),
                             (colourVolume, "vtkMRMLVectorVolumeNode", "colour volume")):
        _check_node_class(node, name, role)
    for node, role in ((outputVolume, "output volume"), (contributionVolume, "contribution volume")):
        if node is not None and node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise InvalidInputError(f"the {role} '{node.GetName()}' is a labelmap; choose a scalar volume.")
    _check_distinct(fixed_volume=fixedVolume, moving_volume=movingVolume,
                    output_volume=outputVolume, contribution_volume=contributionVolume,
                    colour_volume=colourVolume)
    _check_output_transform(transformNode, fixedVolume, movingVolume)

    info = get_method(default_method() if method is None else method)
    if contributionVolume is not None and not info.provides_weights:
        with_weights = [n for n, i in list_methods(details=True).items() if i.provides_weights]
        raise InvalidInputError(
            f"method '{info.name}' gives no contribution map; clear the contribution volume or use "
            f"one of: {', '.join(with_weights) or 'none installed'}."
        )
    # a re-run into the node that holds an earlier non-linear result starts from the moving
    # volume's own position: that transform is left out, and replaced by the new result
    replace = (transformNode is not None and not transformNode.IsLinear()
               and any(t.GetID() == transformNode.GetID() for t in _ancestors(movingVolume)))
    ignore = transformNode if replace else None
    frame = None
    if single_slice_axis(fixedVolume) is not None and single_slice_axis(movingVolume) is not None:
        frame = slice_frame(fixedVolume)
    images = {"fixed": image_from_volume(fixedVolume, frame=frame),
              "moving": image_from_volume(movingVolume, frame=frame, ignore=ignore)}
    for key, node in (("fixed_mask", fixedMask), ("moving_mask", movingMask)):
        if node is not None:
            images[key] = image_from_volume(node, labelmap=True, frame=frame,
                                            ignore=ignore if key == "moving_mask" else None)

    colour = colourVolume is not None if colour is None else bool(colour)
    options = dict(method=info.name, registration=registration, device=device,
                   fixed_modality=fixed_modality, moving_modality=moving_modality,
                   ct_window=ct_window, return_weights=contributionVolume is not None,
                   strict_registration=strict_registration,
                   metric_keys=list(metric_keys or ()) if metricsTable is not None else None,
                   max_metric_slices=max_metric_slices, fixed_name=fixedVolume.GetName(),
                   moving_name=movingVolume.GetName(), **params)
    if colour:
        role = functional_role(fixedVolume, movingVolume, fixed_modality, moving_modality)
        table = colour_table
        if table is None and role is not None:
            node = fixedVolume if role[0] == "fixed" else movingVolume
            shown = node_colour_table(node)
            table = shown.tolist() if shown is not None else CLINICAL_COLOUR_TABLES[role[1]]
        options.update(colour_table=table if table is not None else "heat",
                       functional=role[0] if role else None)
    return FusionRequest(
        fixedVolume=fixedVolume, movingVolume=movingVolume, outputVolume=outputVolume,
        transformNode=transformNode, contributionVolume=contributionVolume,
        metricsTable=metricsTable, colourVolume=colourVolume, colour=colour, images=images,
        initial_transform=initial_transform, options=options,
        fixed_ijk_to_ras=ijk_to_ras_matrix(fixedVolume),
        fixed_shape=tuple(slicer.util.arrayFromVolume(fixedVolume).shape), frame=frame,
        replace_transform=replace, show=show)


def _float32(image: sitk.Image) -> sitk.Image:
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


def write_result(request: FusionRequest, fusion, metrics: dict, directions: dict,
                 progress: ProgressCallback | None = None) -> NodeFusionResult:
    """Write a finished fusion into the request's nodes (creating the output volume, and the
    colour volume of a colour fusion, when none was given), then show it.

    Everything that can fail is computed before the first node is changed.
    """
    if request.contributionVolume is not None and fusion.weights is None:
        raise InvalidInputError(f"method '{fusion.method}' returned no contribution map.")
    placement = None
    if request.transformNode is not None:
        transform = lift_to_3d(fusion.registration.transform, request.frame)
        placement = _placement(request.transformNode, request.movingVolume, transform,
                               None if request.frame is not None else request.images["fixed"],
                               replace=request.replace_transform)

    report(progress, None, "writing the results into the scene")
    scene = request.fixedVolume.GetScene() or slicer.mrmlScene
    output = request.outputVolume
    if output is None:
        output = scene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode",
            scene.GenerateUniqueName(f"{request.movingVolume.GetName()} fused"))
    shape = request.fixed_shape
    update_volume_from_image(output, _float32(fusion.fused), ijk_to_ras=request.fixed_ijk_to_ras,
                             shape=shape)
    lower, upper = _display_range(slicer.util.arrayFromVolume(output))
    _show_volume(output, lower, upper, "vtkMRMLColorTableNodeGrey")
    reg = fusion.registration
    for key, value in (("Method", fusion.method), ("Device", str(fusion.device)),
                       ("Registration", reg.mode), ("RegistrationConfidence", reg.confidence),
                       ("FixedVolume", request.fixedVolume.GetID() or ""),
                       ("MovingVolume", request.movingVolume.GetID() or "")):
        output.SetAttribute(f"MedFusion.{key}", value)

    if placement is not None:
        to_parent, from_parent, reparent = placement
        _apply_node_transform(request.transformNode, to_parent, from_parent)
        if reparent:
            request.movingVolume.SetAndObserveTransformNodeID(request.transformNode.GetID())

    if request.contributionVolume is not None:
        update_volume_from_image(request.contributionVolume, _float32(fusion.weights),
                                 ijk_to_ras=request.fixed_ijk_to_ras, shape=shape)
        color = contribution_color_node(scene)
        _show_volume(request.contributionVolume, 0.0, 1.0, color.GetID())
        request.contributionVolume.SetAttribute("MedFusion.Meaning",
                                                "share of the fixed source in [0, 1]")

    colour_node = request.colourVolume
    if request.colour and getattr(fusion, "rgb", None) is not None:
        if colour_node is None:
            colour_node = scene.AddNewNodeByClass(
                "vtkMRMLVectorVolumeNode",
                scene.GenerateUniqueName(f"{request.movingVolume.GetName()} fused colour"))
        update_volume_from_image(colour_node, fusion.rgb, ijk_to_ras=request.fixed_ijk_to_ras,
                                 shape=shape)
        colour_node.CreateDefaultDisplayNodes()
        colour_node.SetAttribute("MedFusion.Meaning",
                                 f"colour fusion: {fusion.functional} source in "
                                 f"{fusion.colour_table} over the other's detail")

    if request.metricsTable is not None:
        write_metrics_table(request.metricsTable, metrics, directions)
    if request.show:
        show_result(output, request.fixedVolume, contributionVolume=request.contributionVolume,
                    colourVolume=colour_node)
    seconds = time.perf_counter() - request.started
    note = reg.orientation_note()
    report(progress, 1.0, f"Fusion completed in {seconds:.2f} seconds; {reg.mode} registration "
                          f"confidence {reg.confidence}"
                          + (f" ({reg.confidence_reason})" if reg.confidence == "low" else "")
                          + (f"; {note}" if note else ""))
    return NodeFusionResult(fusion=fusion, metrics=metrics, seconds=seconds, outputVolume=output,
                            colourVolume=colour_node)


def fuse_nodes(fixedVolume, movingVolume, outputVolume=None, *, method: str | None = None,
               registration: str | None = "rigid", device: str = "auto", transformNode=None,
               contributionVolume=None, metricsTable=None, progress: ProgressCallback | None = None,
               fixed_modality: str | None = None, moving_modality: str | None = None,
               ct_window=None, metric_keys=DEFAULT_METRIC_KEYS, max_metric_slices: int = 24,
               show: bool = True, colour: bool | None = None, colourVolume=None,
               colour_table=None, fixedMask=None, movingMask=None,
               initial_transform: sitk.Transform | None = None,
               strict_registration: bool = False, **params) -> NodeFusionResult:
    """Register and fuse two volume nodes; write the fused volume and optional outputs as nodes.

    Runs in this process and returns when done (for scripts; the module panel runs the same
    work in a child process with :func:`~MedFusionLib.slicer_bridge.task.fuse_nodes_async`).
    The inputs' voxels and geometry are never modified (only the moving volume's parent
    transform, when ``transformNode`` is given). Nothing is written until the engine has
    finished, so a cancelled or failed run leaves every node as it was.

    Parameters
    ----------
    fixedVolume : vtkMRMLScalarVolumeNode
        Reference (usually anatomical, e.g. MR); the fused volume is written on its exact grid.
        A single slice (axial, coronal, sagittal or oblique) with a parallel single slice as
        ``movingVolume`` is fused in 2D.
    movingVolume : vtkMRMLScalarVolumeNode
        Second source (e.g. CT, PET, SPECT), registered onto ``fixedVolume``.
    outputVolume : vtkMRMLScalarVolumeNode, optional
        Receives the fused volume: float32 in [0, 1], IJK->RAS equal to the fixed volume's world
        matrix, grey colour map and a window of the 0.5-99.5 percentiles. Created ("<moving>
        fused") when not given.
    method : str, optional
        Fusion method name (``MedFusionLib.list_methods()``); default: ``cnn`` where available,
        else ``maximum``.
    registration : {"rigid", "affine", "bspline", "none"} or None, optional
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
        parent transforms. Rigid/affine results are stored as a matrix, B-spline results as a
        displacement grid (from parent). A run into a node that holds an earlier B-spline result
        registers again from the moving volume's own position and replaces that result. A node
        above the fixed volume is refused (it would move it too).
    contributionVolume : vtkMRMLScalarVolumeNode, optional
        Receives the per-voxel share of the fixed source in [0, 1] (blue = moving source, white =
        equal, orange = fixed source). Only for methods that provide weights.
    metricsTable : vtkMRMLTableNode, optional
        Receives one row per quality metric: ``Metric``, ``Value``, ``Direction``.
    progress : callable, optional
        ``progress(fraction, message) -> bool | None``, one bar from 0 to 1 across registration,
        fusion and metrics; returning False cancels (:class:`MedFusionLib.errors.CancelledError`
        is raised and no node is written).
    fixed_modality, moving_modality : str, optional
        ``CT``, ``MR``, ``PET``, ``SPECT`` or ``8BIT`` to override the guess.
    ct_window : str or (float, float), optional
        CT window preset name or ``(level, width)`` in HU.
    metric_keys : sequence of str, optional
        Metrics for ``metricsTable`` (keys of ``MedFusionLib.metrics.METRICS``, or ``"all"``).
    max_metric_slices : int, optional
        Score at most this many evenly spaced slices (default 24).
    show : bool, optional
        Show the result in the slice views with :func:`show_result` (default True).
    colour : bool, optional
        Colour fusion: the PET/SPECT source keeps its colours over the anatomical detail
        (:mod:`MedFusionLib.colour`); ``outputVolume`` then holds the fused luminance and the
        metrics are computed on luminance. Default: when ``colourVolume`` is given.
    colourVolume : vtkMRMLVectorVolumeNode, optional
        Receives the colour fusion (RGB); created ("<moving> fused colour") when ``colour`` is
        True and none is given.
    colour_table : str or array_like, optional
        Colour table for the functional source: a name (``heat``, ``rainbow``) or ``(N, 3)`` RGB
        rows. Default: the table its display node uses in Slicer, else the clinical one
        (:data:`CLINICAL_COLOUR_TABLES`: heat for PET, rainbow for SPECT).
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
    request = prepare_fusion(
        fixedVolume, movingVolume, outputVolume, method=method, registration=registration,
        device=device, transformNode=transformNode, contributionVolume=contributionVolume,
        metricsTable=metricsTable, fixed_modality=fixed_modality, moving_modality=moving_modality,
        ct_window=ct_window, metric_keys=metric_keys, max_metric_slices=max_metric_slices,
        show=show, colour=colour, colourVolume=colourVolume, colour_table=colour_table,
        fixedMask=fixedMask, movingMask=movingMask, initial_transform=initial_transform,
        strict_registration=strict_registration, **params)
    images = dict(request.images)
    engine = run_engine(images.pop("fixed"), images.pop("moving"), progress=progress,
                        initial_transform=request.initial_transform, **images, **request.options)
    return write_result(request, engine.fusion, engine.metrics, engine.directions, progress)

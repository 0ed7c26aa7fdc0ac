"""Run MedFusion on 3D Slicer MRML nodes: the path shared by the Slicer module, scripts and tests.

This is the only MedFusionLib module that talks to Slicer. It imports ``slicer`` and ``vtk``
inside its functions, so ``import MedFusionLib`` never needs Slicer; it works both in the Slicer
application and headless with the ``slicer-core`` wheel (a scene assigned to ``slicer.mrmlScene``).

Coordinate conventions
----------------------
Slicer's world coordinates are RAS (right, anterior, superior); ITK/SimpleITK, DICOM, NIfTI and
NRRD files are LPS. A volume node stores its geometry as one 4x4 IJK->RAS matrix; a SimpleITK image
stores origin, spacing and a direction matrix in LPS. The conversion flips the first two physical
axes: ``IJK->LPS = diag(-1, -1, 1, 1) @ IJK->RAS``. Voxel arrays are indexed ``[k, j, i]`` (z, y, x)
on both sides, so no axis is reordered.

ITK transforms map points of the *fixed* image to the *moving* image (the direction resampling
needs). Slicer transform nodes store the transform *to parent*, which moves the node's content
in the world: a registration result therefore goes into the node as its *from parent* transform
(the ITK transform, in RAS, composed with the moving volume's existing parents), and the moving
volume is shown through the node, aligned on the fixed volume (see :func:`fuse_nodes`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .errors import InvalidInputError
from .progress import ProgressCallback, report

__all__ = [
    "NodeFusionResult",
    "ijk_to_ras_matrix",
    "dicom_modality",
    "image_from_volume",
    "update_volume_from_image",
    "matrix_from_transform",
    "set_transform_node",
    "write_metrics_table",
    "contribution_color_node",
    "node_colour_table",
    "add_colour_legend",
    "show_result",
    "fuse_nodes",
    "headless_scene",
]

logger = logging.getLogger("MedFusionLib")

#: Flips RAS <-> LPS (its own inverse).
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Name of the colour table used for contribution maps (created once per scene).
CONTRIBUTION_COLOR_NAME = "MedFusionContribution"

#: At most this many grid points per axis when a non-linear transform is stored as a grid.
GRID_POINTS_PER_AXIS = 48

#: Metrics written to the metrics table by default: the set the CNN is judged on (entropy,
#: standard deviation, spatial frequency, mutual information, sum of the correlations of
#: differences, VIF, Q^AB/F and SSIM; see MedFusionLib.metrics.METRICS for definitions).
DEFAULT_METRIC_KEYS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")


# -------------------------------------------------------------------------------------------------
# A scene without the Slicer application (slicer-core)
# -------------------------------------------------------------------------------------------------

def headless_scene(views=("Red",)):
    """Create an MRML scene for use without the Slicer application (e.g. with ``slicer-core``).

    Sets ``slicer.mrmlScene`` and ``slicer.appLogic`` so that ``slicer.util`` helpers and
    :func:`fuse_nodes` work, loads the default colour tables, and creates one slice view (slice
    node, composite node and slice logic) per name in ``views``. Inside the Slicer application use
    the application's own scene instead.

    Returns
    -------
    scene : vtkMRMLScene
    slice_logics : dict
        ``{view name: vtkMRMLSliceLogic}``; ``logic.GetImageDataConnection()`` gives the blended
        RGBA slice image that the view would display.
    """
    import slicer

    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()
    # the Colors module registers this class in the application; a bare scene needs it for legends
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    slicer.mrmlScene = scene
    slicer.appLogic = app_logic
    slice_logics = {}
    for name in views:
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        logic.AddSliceNode(name)
        slice_logics[name] = logic
    return scene, slice_logics


# -------------------------------------------------------------------------------------------------
# Volume geometry and voxels
# -------------------------------------------------------------------------------------------------

def _node_label(node, what: str) -> str:
    name = node.GetName() if node is not None and hasattr(node, "GetName") else None
    return f"{what} '{name}'" if name else what


def ijk_to_ras_matrix(volume_node, *, world: bool = True) -> np.ndarray:
    """The 4x4 IJK->RAS matrix of a volume node, optionally including its parent transforms.

    Parameters
    ----------
    volume_node : vtkMRMLVolumeNode
        The volume.
    world : bool, optional
        If True (default) and the node is under a linear transform, return the matrix that places
        its voxels in world coordinates (what the slice views show).

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` float64; columns 0-2 are the i, j, k axes scaled by the spacing (mm), column 3
        is the RAS position of voxel (0, 0, 0).

    Raises
    ------
    InvalidInputError
        If ``world`` is True and the node is under a non-linear transform (harden it first).
    """
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    parent = volume_node.GetParentTransformNode() if world else None
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise InvalidInputError(
                f"{_node_label(volume_node, 'volume')} is under the non-linear transform "
                f"'{parent.GetName()}'; harden the transform (Data module) before fusing."
            )
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        tw = np.array([[to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
        ijk_to_ras = tw @ ijk_to_ras
    return ijk_to_ras


def _check_volume(node, what: str, labelmap: bool = False) -> None:
    """Raise InvalidInputError unless ``node`` is a scalar volume node with voxels (a labelmap
    node too when ``labelmap``)."""
    import slicer

    if node is None:
        raise InvalidInputError(f"no {what} volume was given; select one.")
    if not isinstance(node, slicer.vtkMRMLScalarVolumeNode) or (
            not labelmap and isinstance(node, slicer.vtkMRMLLabelMapVolumeNode)):
        raise InvalidInputError(
            f"{_node_label(node, what + ' volume')} is a {node.GetClassName()}; a scalar volume "
            "(vtkMRMLScalarVolumeNode) is needed."
        )
    image_data = node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise InvalidInputError(f"{_node_label(node, what + ' volume')} has no voxels.")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InvalidInputError(
            f"{_node_label(node, what + ' volume')} has {image_data.GetNumberOfScalarComponents()} "
            "components per voxel; a single-component (greyscale) volume is needed."
        )


def dicom_modality(volume_node) -> str | None:
    """The DICOM Modality (0008,0060) of a volume that Slicer loaded from DICOM, else None.

    Slicer records the SOP instance UIDs of a loaded series in the node attribute
    ``DICOM.instanceUIDs``; the tag is read from the application's DICOM database
    (``slicer.dicomDatabase``), which only exists in the Slicer application.
    """
    import slicer

    uids = volume_node.GetAttribute("DICOM.instanceUIDs")
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return None
    filename = database.fileForInstance(uids.split()[0])
    value = database.fileValue(filename, "0008,0060") if filename else ""
    return value.strip().upper() or None


def image_from_volume(volume_node, *, world: bool = True, labelmap: bool = False) -> sitk.Image:
    """Copy a scalar volume node into a SimpleITK image (LPS geometry, same voxel type).

    A volume with a single slice along k whose k axis is the superior axis becomes a 2D image,
    so that 2D pairs (PNG slices loaded in Slicer) are registered and fused in 2D.

    Parameters
    ----------
    volume_node : vtkMRMLScalarVolumeNode
        The volume; never modified.
    world : bool, optional
        Include the node's (linear) parent transforms in the geometry (default).
    labelmap : bool, optional
        Also accept a labelmap volume node (registration masks).

    Returns
    -------
    SimpleITK.Image
        3D image ``(I, J, K)`` (or 2D ``(I, J)``), voxels deep-copied. For a volume loaded from
        DICOM the Modality tag is copied into the image's ``0008|0060`` metadata, so that the
        engine normalises it by its real modality (PET cannot be told from MR by intensities).

    Raises
    ------
    InvalidInputError
        If the node has no voxels, more than one component, or a non-linear parent transform.
    """
    import slicer

    _check_volume(volume_node, "input", labelmap=labelmap)
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)  # (k, j, i)
    ijk_to_lps = LPS_RAS @ ijk_to_ras_matrix(volume_node, world=world)
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise InvalidInputError(f"{_node_label(volume_node, 'volume')} has a zero voxel spacing.")
    direction = axes / spacing
    origin = ijk_to_lps[:3, 3]
    if array.shape[0] == 1 and np.allclose(np.abs(direction[:, 2]), [0, 0, 1], atol=1e-6) \
            and np.allclose(direction[2, :2], 0.0, atol=1e-6):
        image = sitk.GetImageFromArray(array[0])
        image.SetSpacing(tuple(float(s) for s in spacing[:2]))
        image.SetOrigin(tuple(float(o) for o in origin[:2]))
        image.SetDirection(tuple(float(d) for d in direction[:2, :2].ravel()))
    else:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(float(s) for s in spacing))
        image.SetOrigin(tuple(float(o) for o in origin))
        image.SetDirection(tuple(float(d) for d in direction.ravel()))
    modality = dicom_modality(volume_node)
    if modality:
        image.SetMetaData("0008|0060", modality)
    return image


def _ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK->RAS matrix of a 2D or 3D SimpleITK image (2D: k along S, 1 mm)."""
    dim = image.GetDimension()
    ijk_to_lps = np.eye(4)
    direction = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)
    ijk_to_lps[:dim, :dim] = direction * np.asarray(image.GetSpacing(), dtype=float)
    ijk_to_lps[:dim, 3] = image.GetOrigin()
    return LPS_RAS @ ijk_to_lps


def update_volume_from_image(volume_node, image: sitk.Image, *, ijk_to_ras=None) -> None:
    """Write a SimpleITK image's voxels and geometry into a volume node.

    Parameters
    ----------
    volume_node : vtkMRMLScalarVolumeNode or vtkMRMLVectorVolumeNode
        Destination; its voxels and IJK->RAS matrix are replaced, its parent transform removed.
    image : SimpleITK.Image
        2D or 3D image, scalar (or RGB for a vector volume node); 2D becomes a one-slice volume.
    ijk_to_ras : array_like or None, optional
        ``(4, 4)`` matrix to use instead of the image's own geometry, e.g. the fixed volume's
        exact matrix when ``image`` lies on its grid.
    """
    import slicer

    array = sitk.GetArrayFromImage(image)
    if array.ndim == 2 + (image.GetNumberOfComponentsPerPixel() > 1):
        array = array[np.newaxis]
    matrix = _ijk_to_ras_from_image(image) if ijk_to_ras is None else np.asarray(ijk_to_ras, float)
    volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    volume_node.SetAndObserveTransformNodeID(None)
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(array))


# -------------------------------------------------------------------------------------------------
# Transforms
# -------------------------------------------------------------------------------------------------

def matrix_from_transform(transform: sitk.Transform, *, reference: sitk.Image | None = None,
                          tol: float = 1e-4) -> np.ndarray | None:
    """The 4x4 homogeneous matrix (LPS, mm) of a transform, or None if it is not affine.

    The matrix is read off the transform's action on the origin and the unit vectors, then checked
    at the corners of ``reference`` (or of a 200 mm cube) so that B-spline or displacement-field
    transforms are reported as non-linear. 2D transforms are embedded in 3D (z unchanged).
    """
    dim = transform.GetDimension()
    zero = np.zeros(dim)
    offset = np.asarray(transform.TransformPoint(tuple(zero)))
    linear = np.stack([np.asarray(transform.TransformPoint(tuple(e))) - offset
                       for e in np.eye(dim)], axis=1)
    if reference is not None:
        size = np.asarray(reference.GetSize())
        corners = [reference.TransformContinuousIndexToPhysicalPoint(
            tuple(float(c * (s - 1)) for c, s in zip(corner, size)))
            for corner in np.ndindex(*(2,) * dim)]
    else:
        corners = [tuple(float(v) for v in c) for c in np.ndindex(*(2,) * dim)]
        corners = [tuple(200.0 * v - 100.0 for v in c) for c in corners]
    for p in corners:
        expected = linear @ np.asarray(p) + offset
        if np.linalg.norm(np.asarray(transform.TransformPoint(p)) - expected) > tol:
            return None
    matrix = np.eye(4)
    matrix[:dim, :dim] = linear
    matrix[:dim, 3] = offset
    return matrix


def _grid_transform_from(transform: sitk.Transform, reference: sitk.Image):
    """A vtkOrientedGridTransform (RAS displacements) sampling ``transform`` over ``reference``."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    if reference.GetDimension() != 3:
        raise InvalidInputError("a non-linear 2D transform cannot be stored in a Slicer transform node.")
    size = np.asarray(reference.GetSize())
    spacing = np.asarray(reference.GetSpacing())
    extent = (size - 1) * spacing
    n = np.maximum(np.minimum(size, GRID_POINTS_PER_AXIS), 2)
    grid_spacing = np.where(n > 1, extent / np.maximum(n - 1, 1), spacing)
    grid_spacing = np.where(grid_spacing > 0, grid_spacing, spacing)
    field_filter = sitk.TransformToDisplacementFieldFilter()
    field_filter.SetOutputPixelType(sitk.sitkVectorFloat64)
    field_filter.SetSize([int(v) for v in n])
    field_filter.SetOutputSpacing([float(v) for v in grid_spacing])
    field_filter.SetOutputOrigin(reference.GetOrigin())
    field_filter.SetOutputDirection(reference.GetDirection())
    field = field_filter.Execute(transform)
    disp_lps = sitk.GetArrayFromImage(field)  # (z, y, x, 3) LPS
    disp_ras = disp_lps * np.array([-1.0, -1.0, 1.0])
    grid_to_ras = _ijk_to_ras_from_image(field)  # LPS->RAS of the grid geometry
    ras_spacing = np.linalg.norm(grid_to_ras[:3, :3], axis=0)
    ras_direction = grid_to_ras[:3, :3] / ras_spacing

    image_data = vtk.vtkImageData()
    image_data.SetDimensions([int(v) for v in n])
    image_data.SetOrigin(*grid_to_ras[:3, 3])
    image_data.SetSpacing(*ras_spacing)
    vectors = numpy_support.numpy_to_vtk(
        np.ascontiguousarray(disp_ras.reshape(-1, 3)), deep=True, array_type=vtk.VTK_DOUBLE)
    vectors.SetNumberOfComponents(3)
    vectors.SetName("displacement")
    image_data.GetPointData().SetScalars(vectors)

    direction = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            direction.SetElement(r, c, ras_direction[r, c])
    grid = slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(image_data)
    grid.SetGridDirectionMatrix(direction)
    grid.SetInterpolationModeToCubic()
    return grid


def _node_transform(transform: sitk.Transform, reference: sitk.Image | None):
    """``(to_parent_matrix, from_parent_transform)``: exactly one is set, ready for a node."""
    import slicer

    matrix_lps = matrix_from_transform(transform, reference=reference)
    if matrix_lps is not None:
        from_parent_ras = LPS_RAS @ matrix_lps @ LPS_RAS
        return slicer.util.vtkMatrixFromArray(np.linalg.inv(from_parent_ras)), None
    if reference is None:
        raise InvalidInputError("a non-linear transform needs the fixed image as reference.")
    return None, _grid_transform_from(transform, reference)


def set_transform_node(transform_node, transform: sitk.Transform, *,
                       reference: sitk.Image | None = None) -> None:
    """Store an ITK registration transform (fixed -> moving, LPS) in a Slicer transform node.

    This stores the registration alone: putting a moving volume that has no parent transform
    under the node shows it aligned on the fixed one. :func:`fuse_nodes` also composes the
    result with the moving volume's parents and the node's own place (and re-parents the volume).

    Parameters
    ----------
    transform_node : vtkMRMLTransformNode
        Destination (a linear transform node for rigid/affine results; any transform node class
        accepts a non-linear result, which is stored as a displacement grid).
    transform : SimpleITK.Transform
        2D or 3D transform mapping fixed-image points to moving-image points (mm, LPS).
    reference : SimpleITK.Image, optional
        The fixed image; needed to sample a non-linear transform on a grid.
    """
    _apply_node_transform(transform_node, *_node_transform(transform, reference))


def _matrix_to_world(transform_node) -> np.ndarray:
    """4x4 RAS matrix from a transform node's space to world (identity for None); linear only."""
    import vtk

    if transform_node is None:
        return np.eye(4)
    m = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _ancestors(node) -> list:
    """The transform nodes above ``node`` (a transformable or transform node), nearest first."""
    chain = []
    parent = node.GetParentTransformNode()
    while parent is not None:
        chain.append(parent)
        parent = parent.GetParentTransformNode()
    return chain


def _check_output_transform(transform_node, fixed_volume, moving_volume) -> None:
    """Refuse an output transform node that would move the fixed volume or cannot be composed."""
    if transform_node is None:
        return
    if any(t.GetID() == transform_node.GetID() for t in _ancestors(fixed_volume)):
        raise InvalidInputError(
            f"the transform node '{transform_node.GetName()}' is a parent of the fixed volume "
            f"'{fixed_volume.GetName()}'; writing the registration into it would move the fixed "
            "volume too. Choose another (or a new) transform node."
        )
    parent = transform_node.GetParentTransformNode()
    if parent is not None and not parent.IsTransformToWorldLinear():
        raise InvalidInputError(
            f"the transform node '{transform_node.GetName()}' is under the non-linear transform "
            f"'{parent.GetName()}'; choose a transform node that is not under a non-linear transform."
        )


def _placement(transform_node, moving_volume, registration_transform: sitk.Transform,
               fixed_image: sitk.Image):
    """What to write into ``transform_node`` so that the moving volume sits on the fixed one.

    ``registration_transform`` maps fixed world points to the moving volume's world points as it
    is shown now (LPS, its current parent transforms included). The node receives the mapping
    from its parent's space to its own that makes the moving volume, shown through the node,
    land on the fixed volume:

    - if the node is already above the moving volume (e.g. a second run after applying it), the
      chain below the node is kept and the node's new transform is ``Q^-1 T^-1 Q N``
      (``Q``: the node's parents to world, ``N``: its current transform, ``T``: the registration
      in RAS), so the result of the first run is refined, not replaced;
    - otherwise the moving volume is to be put directly under the node, which then absorbs the
      volume's current parents ``P``: ``Q^-1 T^-1 P``.

    Returns ``(to_parent_matrix, from_parent_transform, reparent)``: one of the first two is set
    (a non-linear registration is sampled on the fixed grid as a displacement field) and
    ``reparent`` says whether the moving volume must be moved under the node.
    """
    in_chain = any(t.GetID() == transform_node.GetID() for t in _ancestors(moving_volume))
    q = _matrix_to_world(transform_node.GetParentTransformNode())
    if in_chain:
        import vtk

        n = vtk.vtkMatrix4x4()
        transform_node.GetMatrixTransformToParent(n)
        current = np.array([[n.GetElement(r, c) for c in range(4)] for r in range(4)])
        local_from_world = np.linalg.inv(q @ current)
    else:
        local_from_world = np.linalg.inv(_matrix_to_world(moving_volume.GetParentTransformNode()))
    # from-parent mapping, in LPS: parent space -Q-> world -T-> moving world -> node's own space
    dim = registration_transform.GetDimension()
    to_lps = LPS_RAS @ local_from_world @ LPS_RAS
    from_lps = LPS_RAS @ q @ LPS_RAS
    if dim == 2:
        to_lps, from_lps = _affine_2d(to_lps), _affine_2d(from_lps)
    composite = sitk.CompositeTransform(dim)
    composite.AddTransform(_sitk_affine(to_lps, dim))  # applied last
    composite.AddTransform(registration_transform)
    composite.AddTransform(_sitk_affine(from_lps, dim))  # applied first
    reference = _reference_in_parent_space(fixed_image, q)
    to_parent, from_parent = _node_transform(composite, reference)
    return to_parent, from_parent, not in_chain


def _affine_2d(matrix: np.ndarray) -> np.ndarray:
    """The in-plane part of a 4x4 matrix, for 2D registrations (which keep z)."""
    out = np.eye(3)
    out[:2, :2], out[:2, 2] = matrix[:2, :2], matrix[:2, 3]
    return out


def _sitk_affine(matrix: np.ndarray, dim: int) -> sitk.AffineTransform:
    affine = sitk.AffineTransform(dim)
    affine.SetMatrix(tuple(float(v) for v in matrix[:dim, :dim].ravel()))
    affine.SetTranslation(tuple(float(v) for v in matrix[:dim, dim]))
    return affine


def _reference_in_parent_space(fixed_image: sitk.Image, q: np.ndarray) -> sitk.Image:
    """The fixed image's grid expressed in the space below ``q`` (a linear RAS matrix to world).

    Used to sample a non-linear result; the grid must stay orthogonal, so ``q`` must be rigid
    when the result is non-linear (checked by the caller's sampling).
    """
    if np.allclose(q, np.eye(4), atol=1e-9):
        return fixed_image
    reference = sitk.Image(fixed_image)
    inverse = np.linalg.inv(LPS_RAS @ q @ LPS_RAS)
    dim = fixed_image.GetDimension()
    linear, shift = inverse[:dim, :dim], inverse[:dim, 3]
    direction = linear @ np.array(fixed_image.GetDirection()).reshape(dim, dim)
    scale = np.linalg.norm(direction, axis=0)
    if not np.allclose(scale, 1.0, atol=1e-6):
        raise InvalidInputError(
            "the output transform node is under a scaling or shearing transform; a non-linear "
            "registration cannot be stored there. Choose a transform node that is not under one."
        )
    reference.SetOrigin(tuple(float(v) for v in linear @ np.array(fixed_image.GetOrigin()) + shift))
    reference.SetDirection(tuple(float(v) for v in direction.ravel()))
    return reference


def _apply_node_transform(transform_node, to_parent, from_parent) -> None:
    if to_parent is not None:
        transform_node.SetMatrixTransformToParent(to_parent)
    else:
        transform_node.SetAndObserveTransformFromParent(from_parent)


# -------------------------------------------------------------------------------------------------
# Display, tables and colours
# -------------------------------------------------------------------------------------------------

def _show_volume(volume_node, lower: float, upper: float, color_node_id: str) -> None:
    volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    if display is None:
        return
    display.SetAndObserveColorNodeID(color_node_id)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(float(lower), float(upper))


def _display_range(array: np.ndarray) -> tuple[float, float]:
    """A window for a [0, 1] volume: the 0.5-99.5 percentiles of its non-zero voxels."""
    values = array[array > 0]
    if values.size < 16:
        return 0.0, 1.0
    if values.size > 2_000_000:
        values = values[:: values.size // 1_000_000]
    lower, upper = np.percentile(values, [0.5, 99.5])
    if upper - lower < 1e-3:
        return 0.0, max(float(upper), 1e-3)
    return float(lower), float(upper)


def node_colour_table(volume_node, n: int = 256) -> np.ndarray | None:
    """The colour table a volume node is displayed with, as ``(n, 3)`` RGB in [0, 1].

    None when the node has no display node or is shown in greyscale (then the caller picks a
    default, e.g. ``heat`` for PET). Works for table and procedural colour nodes alike: the
    table is sampled through the colour node's ``GetScalarsToColors()`` over its range.
    """
    display = volume_node.GetDisplayNode() if volume_node is not None else None
    color = display.GetColorNode() if display is not None else None
    if color is None or (color.GetID() or "").endswith("Grey") or color.GetName() in ("Grey", "Gray"):
        return None
    lut = color.GetScalarsToColors()
    if lut is None:
        return None
    lo, hi = lut.GetRange()
    values = np.linspace(lo, hi, n)
    table = np.zeros((n, 3))
    for row, v in zip(table, values):
        rgb = [0.0, 0.0, 0.0]
        lut.GetColor(float(v), rgb)  # the two-argument form is wrapped for every subclass
        row[:] = rgb
    return None if np.allclose(table, table[:, :1]) else table


def show_result(outputVolume, fixedVolume, *, contributionVolume=None, colourVolume=None) -> None:
    """Show a fusion result in every slice view; the one place that sets MedFusion's display.

    Background: the colour fusion when there is one, else the fused volume. Foreground: the
    contribution map at 40 % opacity with a colour legend when there is one, else the fixed
    volume at opacity 0, so that the slice views' fader compares the fused and the fixed volume.
    With the Slicer application's layout manager the views are then fitted to the result.
    """
    import slicer

    background = colourVolume if colourVolume is not None else outputVolume
    if contributionVolume is not None:
        add_colour_legend(contributionVolume)
        foreground, opacity = contributionVolume, 0.4
    else:
        foreground, opacity = fixedVolume, 0.0
    app = getattr(slicer, "app", None)  # absent with slicer-core alone
    slicer.util.setSliceViewerLayers(background=background, foreground=foreground,
                                     foregroundOpacity=opacity, fit=app is not None)


def add_colour_legend(volume_node):
    """Show a colour legend for a volume node in the views (Slicer's Colors module logic).

    Returns the ``vtkMRMLColorLegendDisplayNode``, or None where the scene cannot create one
    (a bare headless scene without the Colors module's node classes).
    """
    import slicer

    logic_class = getattr(slicer, "vtkSlicerColorLogic", None)
    if logic_class is None:
        return None
    legend = logic_class.AddDefaultColorLegendDisplayNode(volume_node)
    if legend is not None:
        legend.SetTitleText(volume_node.GetAttribute("MedFusion.Meaning") or volume_node.GetName())
    return legend


def contribution_color_node(scene):
    """The diverging colour table for contribution maps: blue (moving source) to orange (fixed).

    Created once per scene under the name :data:`CONTRIBUTION_COLOR_NAME`; 256 entries, value 0
    (all from the moving source) blue, 0.5 (equal shares) white, 1 (all from the fixed source)
    orange.
    """
    import slicer

    existing = scene.GetFirstNodeByName(CONTRIBUTION_COLOR_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    color = slicer.vtkMRMLColorTableNode()
    color.SetName(CONTRIBUTION_COLOR_NAME)
    color.SetTypeToUser()
    color.SetNumberOfColors(256)
    color.SetHideFromEditors(False)
    from .colour import colour_table

    for i, rgb in enumerate(colour_table("contribution", 256)):
        color.SetColor(i, f"{i / 255.0:.3f}", float(rgb[0]), float(rgb[1]), float(rgb[2]), 1.0)
    color.SetAttribute("Category", "MedFusion")
    scene.AddNode(color)
    return color


def write_metrics_table(table_node, metrics: dict, directions: dict | None = None) -> None:
    """Fill a table node with one row per metric: ``Metric`` (text), ``Value``, ``Direction``.

    Parameters
    ----------
    table_node : vtkMRMLTableNode
        Destination; its columns are replaced.
    metrics : dict
        ``{name: value}``; values are converted to float (NaN kept).
    directions : dict, optional
        ``{name: "higher" | "lower"}``: which way is better; missing names get ``""``.
    """
    import vtk

    directions = directions or {}
    was_modifying = table_node.StartModify()
    try:
        table_node.RemoveAllColumns()
        names = vtk.vtkStringArray()
        names.SetName("Metric")
        values = vtk.vtkDoubleArray()
        values.SetName("Value")
        better = vtk.vtkStringArray()
        better.SetName("Direction")
        for key, value in metrics.items():
            names.InsertNextValue(str(key))
            values.InsertNextValue(float(value))
            better.InsertNextValue(str(directions.get(key, "")))
        table_node.AddColumn(names)
        table_node.AddColumn(values)
        table_node.AddColumn(better)
        table_node.SetColumnDescription("Value", "metric value for the fused volume")
        table_node.SetColumnDescription("Direction", "which way is better: higher or lower")
    finally:
        table_node.EndModify(was_modifying)


# -------------------------------------------------------------------------------------------------
# Fusion on nodes
# -------------------------------------------------------------------------------------------------

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
    from . import metrics as metrics_module

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
    import slicer

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

    from .methods import default_method, get_method
    from .pipeline import fuse_images

    method = default_method() if method is None else method
    info = get_method(method)
    if contributionVolume is not None and not info.provides_weights:
        from .methods import list_methods

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
        from .colour import functional_source, fuse_colour

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

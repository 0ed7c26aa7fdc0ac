"""Registration results in Slicer transform nodes, and where the moving volume is placed.

ITK transforms map points of the *fixed* image to the *moving* image. A Slicer transform node
stores the transform *to parent*, which moves the node's content in the world: a registration
result therefore goes into the node as its *from parent* transform (the ITK transform, in RAS,
composed with the moving volume's existing parents), and the moving volume is shown through the
node, aligned on the fixed volume.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ..errors import InvalidInputError
from .nodes import LPS_RAS, _ijk_to_ras_from_image

__all__ = ["matrix_from_transform", "set_transform_node"]


#: At most this many grid points per axis when a non-linear transform is stored as a grid.
GRID_POINTS_PER_AXIS = 48


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

"""Volume nodes <-> SimpleITK images: voxels, IJK->RAS geometry (RAS <-> LPS), DICOM modality."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ..errors import InvalidInputError

__all__ = ["LPS_RAS", "SliceFrame", "ijk_to_ras_matrix", "dicom_modality", "image_from_volume",
           "single_slice_axis", "slice_frame", "update_volume_from_image"]


#: Flips RAS <-> LPS (its own inverse).
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _node_label(node, what: str) -> str:
    name = node.GetName() if node is not None and hasattr(node, "GetName") else None
    return f"{what} '{name}'" if name else what


def _array_of(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras_matrix(volume_node, *, world: bool = True, ignore=None) -> np.ndarray:
    """The 4x4 IJK->RAS matrix of a volume node, optionally including its parent transforms.

    Parameters
    ----------
    volume_node : vtkMRMLVolumeNode
        The volume.
    world : bool, optional
        If True (default) and the node is under linear transforms, return the matrix that places
        its voxels in world coordinates (what the slice views show).
    ignore : vtkMRMLTransformNode, optional
        A transform node of the volume's parent chain whose own transform is left out (taken as
        the identity; the nodes above and below it still count). A re-run into the output
        transform of an earlier B-spline registration starts from where the volume is without it.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` float64; columns 0-2 are the i, j, k axes scaled by the spacing (mm), column 3
        is the RAS position of voxel (0, 0, 0).

    Raises
    ------
    InvalidInputError
        If ``world`` is True and a transform above the node (other than ``ignore``) is
        non-linear, saying what the user can do.
    """
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    ijk_to_ras = _array_of(m)
    parent = volume_node.GetParentTransformNode() if world else None
    while parent is not None:
        if ignore is None or parent.GetID() != ignore.GetID():
            if not parent.IsLinear():
                raise InvalidInputError(
                    f"{_node_label(volume_node, 'volume')} is shown through the non-linear "
                    f"(e.g. B-spline) transform '{parent.GetName()}'. Choose '{parent.GetName()}' "
                    "as the output transform to register again from the volume's own position "
                    "(the new result replaces it), or harden it (Data module: right-click the "
                    "transform, Harden transform) to start from the current alignment."
                )
            to_parent = vtk.vtkMatrix4x4()
            parent.GetMatrixTransformToParent(to_parent)
            ijk_to_ras = _array_of(to_parent) @ ijk_to_ras
        parent = parent.GetParentTransformNode()
    return ijk_to_ras


def _check_volume(node, what: str, labelmap: bool = False) -> None:
    """Raise InvalidInputError unless ``node`` is a scalar volume node with voxels (a labelmap
    node too when ``labelmap``)."""
    if node is None:
        raise InvalidInputError(f"no {what} volume was given; select one.")
    label = _node_label(node, what + " volume")
    if isinstance(node, slicer.vtkMRMLLabelMapVolumeNode) and not labelmap:
        raise InvalidInputError(f"{label} is a label map (a segmentation); choose a greyscale "
                                "image volume.")
    if isinstance(node, (slicer.vtkMRMLVectorVolumeNode, slicer.vtkMRMLTensorVolumeNode)) or \
            not isinstance(node, slicer.vtkMRMLScalarVolumeNode):
        raise InvalidInputError(f"{label} is not a greyscale image volume (a colour, vector or "
                                "tensor volume, or not a volume); convert a colour volume with the "
                                "Vector to Scalar Volume module first.")
    image_data = node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise InvalidInputError(f"{label} has no voxels.")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InvalidInputError(
            f"{label} has {image_data.GetNumberOfScalarComponents()} components per voxel; convert "
            "it to a greyscale volume with the Vector to Scalar Volume module first."
        )


def dicom_modality(volume_node) -> str | None:
    """The DICOM Modality (0008,0060) of a volume that Slicer loaded from DICOM, else None.

    Slicer records the SOP instance UIDs of a loaded series in the node attribute
    ``DICOM.instanceUIDs``; the tag is read from the application's DICOM database
    (``slicer.dicomDatabase``), which only exists in the Slicer application.
    """
    uids = volume_node.GetAttribute("DICOM.instanceUIDs")
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return None
    filename = database.fileForInstance(uids.split()[0])
    value = database.fileValue(filename, "0008,0060") if filename else ""
    return value.strip().upper() or None


@dataclass(frozen=True)
class SliceFrame:
    """The plane of a single-slice pair, in which it is registered and fused as 2D images.

    Points of the plane are ``origin + x * u + y * v`` (LPS, mm). For a slice on a coordinate
    plane (axial, coronal, sagittal) the frame is that plane's two LPS axes through the origin,
    so 2D coordinates are the patient's own; for an oblique slice it is the slice's own axes.
    """

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    normal: np.ndarray

    def matrix(self) -> np.ndarray:
        """4x4 LPS matrix taking plane coordinates ``(x, y, depth)`` to LPS points."""
        out = np.eye(4)
        out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = self.u, self.v, self.normal, self.origin
        return out


def _lps_axes(volume_node, *, world: bool, ignore=None):
    """``(origin, unit axes (3, 3) as columns i, j, k, spacing)`` of a volume in LPS."""
    ijk_to_lps = LPS_RAS @ ijk_to_ras_matrix(volume_node, world=world, ignore=ignore)
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise InvalidInputError(f"{_node_label(volume_node, 'volume')} has a zero voxel spacing.")
    return ijk_to_lps[:3, 3], axes / spacing, spacing


def single_slice_axis(volume_node) -> int | None:
    """The voxel axis (0: i, 1: j, 2: k) along which a volume is one voxel thick when it is a
    single slice (a 2D image loaded in Slicer, one DICOM slice), else None."""
    dims = volume_node.GetImageData().GetDimensions() if volume_node.GetImageData() else ()
    thin = [a for a, n in enumerate(dims) if n == 1]
    return thin[0] if len(thin) == 1 else None


def slice_frame(volume_node, *, world: bool = True) -> SliceFrame:
    """The :class:`SliceFrame` of a single-slice volume (see :func:`single_slice_axis`)."""
    axis = single_slice_axis(volume_node)
    origin, axes, _ = _lps_axes(volume_node, world=world)
    in_plane = [a for a in range(3) if a != axis]
    normal = np.cross(axes[:, in_plane[0]], axes[:, in_plane[1]])
    normal /= np.linalg.norm(normal)
    nearest = int(np.argmax(np.abs(normal)))
    if abs(abs(normal[nearest]) - 1.0) < 1e-6:  # axial, coronal or sagittal
        eye = np.eye(3)
        u, v = (eye[:, a] for a in range(3) if a != nearest)
        return SliceFrame(np.zeros(3), u, v, np.cross(u, v))
    u = axes[:, in_plane[0]]
    return SliceFrame(origin, u, np.cross(normal, u), normal)


def image_from_volume(volume_node, *, world: bool = True, labelmap: bool = False,
                      frame: SliceFrame | None = None, ignore=None) -> sitk.Image:
    """Copy a scalar volume node into a SimpleITK image (LPS geometry, same voxel type).

    A single slice (one voxel thick along any of its axes: axial, coronal, sagittal or oblique)
    becomes a 2D image in ``frame`` (by default its own :func:`slice_frame`), so that 2D pairs
    are registered and fused in 2D.

    Parameters
    ----------
    volume_node : vtkMRMLScalarVolumeNode
        The volume; never modified.
    world : bool, optional
        Include the node's (linear) parent transforms in the geometry (default).
    labelmap : bool, optional
        Also accept a labelmap volume node (registration masks).
    frame : SliceFrame, optional
        The plane both slices of a 2D pair are expressed in (the fixed slice's).
    ignore : vtkMRMLTransformNode, optional
        A parent transform left out of the geometry (see :func:`ijk_to_ras_matrix`).

    Returns
    -------
    SimpleITK.Image
        3D image ``(I, J, K)`` (or 2D), voxels copied. For a volume loaded from DICOM the
        Modality tag is copied into the image's ``0008|0060`` metadata, so that the engine
        normalises it by its real modality (PET cannot be told from MR by intensities).

    Raises
    ------
    InvalidInputError
        If the node has no voxels, more than one component, a non-linear parent transform, or
        is a slice not parallel to ``frame``.
    """
    _check_volume(volume_node, "input", labelmap=labelmap)
    array = slicer.util.arrayFromVolume(volume_node)  # (k, j, i), a view: copied once below
    origin, axes, spacing = _lps_axes(volume_node, world=world, ignore=ignore)
    axis = single_slice_axis(volume_node)
    if axis is None:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(tuple(float(s) for s in spacing))
        image.SetOrigin(tuple(float(o) for o in origin))
        image.SetDirection(tuple(float(d) for d in axes.ravel()))
    else:
        frame = frame or slice_frame(volume_node, world=world)
        in_plane = [a for a in range(3) if a != axis]
        if abs(float(np.cross(axes[:, in_plane[0]], axes[:, in_plane[1]]) @ frame.normal)) < 0.9998:
            raise InvalidInputError(
                f"{_node_label(volume_node, 'slice')} is not parallel to the fixed slice (more than "
                "1 degree apart); a single-slice pair must show the same plane (both axial, both "
                "coronal, ...)."
            )
        basis = np.stack([frame.u, frame.v])  # (2, 3): LPS -> plane coordinates
        image = sitk.GetImageFromArray(np.squeeze(array, axis=2 - axis))
        image.SetSpacing(tuple(float(spacing[a]) for a in in_plane))
        image.SetOrigin(tuple(float(c) for c in basis @ (origin - frame.origin)))
        image.SetDirection(tuple(float(d) for d in (basis @ axes[:, in_plane]).ravel()))
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


def update_volume_from_image(volume_node, image: sitk.Image, *, ijk_to_ras=None,
                             shape: tuple | None = None) -> None:
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
    shape : tuple, optional
        The voxel array's ``(k, j, i)`` shape when ``image`` is a 2D slice of a volume that is
        thin along another axis than k (a coronal or sagittal slice on the fixed grid).
    """
    array = sitk.GetArrayViewFromImage(image)  # updateVolumeFromArray copies it once
    components = image.GetNumberOfComponentsPerPixel()
    if shape is not None:
        array = array.reshape(tuple(shape) + ((components,) if components > 1 else ()))
    elif array.ndim == 2 + (components > 1):
        array = array[np.newaxis]
    matrix = _ijk_to_ras_from_image(image) if ijk_to_ras is None else np.asarray(ijk_to_ras, float)
    volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    volume_node.SetAndObserveTransformNodeID(None)
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(array))

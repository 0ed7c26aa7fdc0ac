"""Volume nodes <-> SimpleITK images: voxels, IJK->RAS geometry (RAS <-> LPS), DICOM modality."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from ..errors import InvalidInputError

__all__ = ["LPS_RAS", "ijk_to_ras_matrix", "dicom_modality", "image_from_volume",
           "update_volume_from_image"]


#: Flips RAS <-> LPS (its own inverse).
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 2 + (image.GetNumberOfComponentsPerPixel() > 1):
        array = array[np.newaxis]
    matrix = _ijk_to_ras_from_image(image) if ijk_to_ras is None else np.asarray(ijk_to_ras, float)
    volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    volume_node.SetAndObserveTransformNodeID(None)
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(array))

"""#20 items 4 and 5 on a real MRML scene: single slices in any orientation are a 2D pair, and a
run into the transform of an earlier B-spline registration starts again instead of being refused."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from MedFusionLib import slicer_bridge as sb
from MedFusionLib.errors import InvalidInputError
from MedFusionLib.slicer_bridge.testing import synthetic_head_pair
from slicer_shim import mrml_scene  # noqa: F401  (fixture)


def _blobs(shape, shift=(0.0, 0.0)):
    """A 2D image with a few Gaussian blobs, moved by ``shift`` pixels (rows, columns)."""
    r, c = np.meshgrid(np.arange(shape[0], dtype=float), np.arange(shape[1], dtype=float), indexing="ij")
    image = np.zeros(shape)
    for (y, x, s, a) in ((0.3, 0.35, 5, 300), (0.6, 0.6, 7, 200), (0.45, 0.7, 4, 260), (0.7, 0.3, 6, 150)):
        image += a * np.exp(-(((r - y * shape[0] - shift[0]) / s) ** 2 + ((c - x * shape[1] - shift[1]) / s) ** 2))
    return (image + 20.0).astype(np.float32)


# IJK->RAS of single slices: k is the one-voxel axis, its direction the slice normal.
PLANES = {
    "axial": np.array([[0.8, 0, 0, -20], [0, 0.8, 0, 15], [0, 0, 3.0, 7], [0, 0, 0, 1.0]]),
    "coronal": np.array([[0.8, 0, 0, -20], [0, 0, 3.0, 12], [0, 0.8, 0, -30], [0, 0, 0, 1.0]]),
    "sagittal": np.array([[0, 0, 3.0, 4], [0.8, 0, 0, -25], [0, 0.8, 0, -30], [0, 0, 0, 1.0]]),
}


def _oblique():
    a = np.radians(25.0)
    rotation = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    m = np.eye(4)
    m[:3, :3] = rotation @ np.diag([0.8, 0.8, 3.0])
    m[:3, 3] = (5.0, -8.0, 11.0)
    return m


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal", "oblique"])
def test_identical_single_slices_fuse_with_rigid_registration(mrml_scene, plane):
    ijk_to_ras = _oblique() if plane == "oblique" else PLANES[plane]
    image = _blobs((64, 72))[np.newaxis]  # (k=1, j, i)
    fixed = slicer.util.addVolumeFromArray(image, ijkToRAS=ijk_to_ras, name="fixed")
    moving = slicer.util.addVolumeFromArray(image.copy(), ijkToRAS=ijk_to_ras, name="moving")
    assert sb.image_from_volume(fixed).GetDimension() == 2
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    result = sb.fuse_nodes(fixed, moving, None, method="average", registration="rigid",
                           transformNode=transform, fixed_modality="MR", moving_modality="MR")
    out = slicer.util.arrayFromVolume(result.outputVolume)
    assert out.shape == image.shape
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), np.eye(4), atol=0.1)


@pytest.mark.parametrize("plane", ["coronal", "sagittal", "oblique"])
def test_a_shifted_slice_is_brought_onto_the_fixed_slice_in_its_own_plane(mrml_scene, plane):
    """The 2D registration of a non-axial pair goes back into Slicer in the slices' plane: the
    moving slice, shown through the transform, lands on the fixed one."""
    ijk_to_ras = _oblique() if plane == "oblique" else PLANES[plane]
    fixed = slicer.util.addVolumeFromArray(_blobs((64, 72))[np.newaxis], ijkToRAS=ijk_to_ras, name="f")
    moving = slicer.util.addVolumeFromArray(_blobs((64, 72), shift=(4.0, -5.0))[np.newaxis],
                                            ijkToRAS=ijk_to_ras, name="m")
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    sb.fuse_nodes(fixed, moving, None, method="average", registration="rigid",
                  transformNode=transform, fixed_modality="MR", moving_modality="MR")
    to_parent = slicer.util.arrayFromTransformMatrix(transform)
    # the blob at moving voxel (i, j) = fixed voxel + (-5, 4) must land on the fixed voxel's point
    for i, j in ((25, 19), (43, 38)):
        in_moving = ijk_to_ras @ np.array([i - 5.0, j + 4.0, 0.0, 1.0])
        in_fixed = ijk_to_ras @ np.array([i, j, 0.0, 1.0])
        np.testing.assert_allclose((to_parent @ in_moving)[:3], in_fixed[:3], atol=0.5)
    normal = ijk_to_ras[:3, 2] / np.linalg.norm(ijk_to_ras[:3, 2])
    np.testing.assert_allclose(to_parent[:3, :3] @ normal, normal, atol=1e-6)  # stays in the plane


def test_slices_that_are_not_parallel_are_refused_in_words(mrml_scene):
    fixed = slicer.util.addVolumeFromArray(_blobs((32, 32))[np.newaxis], ijkToRAS=PLANES["axial"], name="ax")
    moving = slicer.util.addVolumeFromArray(_blobs((32, 32))[np.newaxis], ijkToRAS=PLANES["coronal"], name="cor")
    with pytest.raises(InvalidInputError, match="slice 'cor' is not parallel to the fixed slice"):
        sb.fuse_nodes(fixed, moving, None, method="average", registration="none")


def test_a_run_after_a_bspline_run_registers_again_into_the_same_transform(mrml_scene):
    """#20 item 5: the help promises that a second run works after a B-spline run; it registers
    from the moving volume's own position and replaces the non-linear transform."""
    mr, ct, mr_ijk_to_ras, ct_ijk_to_ras, ct_to_mr = synthetic_head_pair()
    fixed = slicer.util.addVolumeFromArray(mr, ijkToRAS=mr_ijk_to_ras, name="fixed")
    moving = slicer.util.addVolumeFromArray(ct, ijkToRAS=ct_ijk_to_ras, name="moving")
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLTransformNode", "moving to fixed")
    sb.fuse_nodes(fixed, moving, None, method="average", registration="bspline",
                  transformNode=transform, fixed_modality="MR", moving_modality="CT")
    assert not transform.IsLinear() and moving.GetTransformNodeID() == transform.GetID()
    # second run, rigid, into the same node: accepted, and the node becomes the rigid result
    second = sb.fuse_nodes(fixed, moving, None, method="average", registration="rigid",
                           transformNode=transform, fixed_modality="MR", moving_modality="CT")
    assert transform.IsLinear() and moving.GetTransformNodeID() == transform.GetID()
    m = transform.GetMatrixTransformToParent()
    to_parent = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    for point in ([0, 0, 0], [20, -15, 10], [-25, 20, -12]):  # CT content onto the MR's anatomy
        np.testing.assert_allclose((to_parent @ [*point, 1.0])[:3], (ct_to_mr @ [*point, 1.0])[:3],
                                   atol=1.0)
    assert second.fusion.registration.mode == "rigid"
    # another output transform while the volume is shown through the B-spline: said in words
    sb.fuse_nodes(fixed, moving, None, method="average", registration="bspline",
                  transformNode=transform, fixed_modality="MR", moving_modality="CT")
    other = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "other")
    with pytest.raises(InvalidInputError, match="'moving to fixed'.*Choose 'moving to fixed' as the "
                                                "output transform.*Harden transform"):
        sb.fuse_nodes(fixed, moving, None, method="average", registration="rigid", transformNode=other)


def test_lifting_a_2d_transform_keeps_the_normal_and_maps_the_plane():
    frame = sb.nodes.SliceFrame(np.array([1.0, 2.0, 3.0]), np.array([1.0, 0, 0]),
                                np.array([0, 0, 1.0]), np.array([0, -1.0, 0]))
    t2 = sitk.Euler2DTransform((0.0, 0.0), np.radians(10.0), (2.0, -1.0))
    lifted = sb.placement.lift_to_3d(t2, frame)
    p2 = np.array([4.0, 6.0])
    p3 = frame.origin + p2[0] * frame.u + p2[1] * frame.v + 5.0 * frame.normal
    q2 = np.array(t2.TransformPoint(tuple(p2)))
    q3 = frame.origin + q2[0] * frame.u + q2[1] * frame.v + 5.0 * frame.normal
    np.testing.assert_allclose(lifted.TransformPoint(tuple(p3)), q3, atol=1e-9)


def test_a_turned_moving_volume_is_named_in_the_final_status(mrml_scene):
    """#22 through the bridge: a volume found turned 180 degrees about A-P (e.g. a positioning
    or header error) is said in the last progress message, and the panel's status line."""
    mr, ct, mr_ijk_to_ras, ct_ijk_to_ras, _ = synthetic_head_pair()
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])  # 180 degrees about the anterior-posterior axis
    fixed = slicer.util.addVolumeFromArray(mr, ijkToRAS=mr_ijk_to_ras, name="MR")
    moving = slicer.util.addVolumeFromArray(ct, ijkToRAS=flip @ ct_ijk_to_ras, name="CT")
    messages = []
    result = sb.fuse_nodes(fixed, moving, None, method="average", registration="rigid",
                           fixed_modality="MR", moving_modality="CT",
                           progress=lambda f, m: messages.append(m))
    note = result.fusion.registration.orientation_note()
    assert note and "180" in note and "A–P" in note
    assert messages[-1].endswith(note)

"""MRML <-> SimpleITK conversion, transform nodes, tables and colours on a real slicer-core scene."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from MedFusionLib import slicer_bridge as sb
from MedFusionLib.errors import InvalidInputError
from slicer_shim import mrml_scene, oblique_ijk_to_ras  # noqa: F401  (fixture)

RNG = np.random.default_rng(7)


def _volume(shape=(7, 9, 11), ijk_to_ras=None, dtype=np.int16, name="vol"):
    array = (RNG.random(shape) * 1000 - 200).astype(dtype)
    node = slicer.util.addVolumeFromArray(array, ijkToRAS=ijk_to_ras if ijk_to_ras is not None
                                          else oblique_ijk_to_ras(), name=name)
    return node, array


def _matrix(vtk_matrix):
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_image_from_volume_matches_slicer_nrrd_writer(mrml_scene, tmp_path):
    """Independent check of the RAS->LPS conversion: Slicer's own NRRD writer, read by SimpleITK."""
    node, array = _volume()
    image = sb.image_from_volume(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(tmp_path / "vol.nrrd"))
    assert storage.WriteData(node)
    written = sitk.ReadImage(str(tmp_path / "vol.nrrd"))
    np.testing.assert_allclose(image.GetOrigin(), written.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), written.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), written.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(written))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    assert image.GetPixelID() == sitk.sitkInt16
    # the LPS position of voxel (i, j, k) is the RAS position with x and y negated
    ijk = (3, 5, 2)
    ras = oblique_ijk_to_ras() @ np.array([*ijk, 1.0])
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint(ijk),
                               [-ras[0], -ras[1], ras[2]], atol=1e-9)


def test_round_trip_oblique_volume(mrml_scene):
    node, array = _volume(dtype=np.float32)
    image = sb.image_from_volume(node)
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "copy")
    sb.update_volume_from_image(out, image)
    m_in, m_out = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m_in)
    out.GetIJKToRASMatrix(m_out)
    np.testing.assert_allclose(_matrix(m_out), _matrix(m_in), atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out), array)
    # and back again: same SimpleITK geometry
    again = sb.image_from_volume(out)
    np.testing.assert_allclose(again.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(again.GetOrigin(), image.GetOrigin(), atol=1e-12)


def test_linear_parent_transform_is_part_of_world_geometry(mrml_scene):
    node, _ = _volume()
    shift = np.eye(4)
    shift[:3, 3] = (10.0, -5.0, 2.0)
    parent = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    parent.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    node.SetAndObserveTransformNodeID(parent.GetID())
    np.testing.assert_allclose(sb.ijk_to_ras_matrix(node), shift @ oblique_ijk_to_ras(), atol=1e-9)
    np.testing.assert_allclose(sb.ijk_to_ras_matrix(node, world=False), oblique_ijk_to_ras(), atol=1e-9)
    origin = sb.image_from_volume(node).GetOrigin()
    expected = shift @ oblique_ijk_to_ras()[:, 3]
    np.testing.assert_allclose(origin, [-expected[0], -expected[1], expected[2]], atol=1e-9)


def test_non_linear_parent_transform_is_refused(mrml_scene):
    node, _ = _volume()
    grid = sitk.Image([8, 8, 8], sitk.sitkFloat32)
    grid.SetOrigin((-40.0, -40.0, -40.0))
    grid.SetSpacing((10.0, 10.0, 10.0))
    bspline = sitk.BSplineTransformInitializer(grid, [3, 3, 3])
    bspline.SetParameters(tuple(RNG.normal(0, 2.0, len(bspline.GetParameters()))))
    warp = mrml_scene.AddNewNodeByClass("vtkMRMLTransformNode")
    sb.set_transform_node(warp, bspline, reference=grid)
    node.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(InvalidInputError, match="non-linear .*transform .*output transform.*harden"):
        sb.image_from_volume(node)


def test_single_slice_volume_becomes_2d(mrml_scene):
    m = np.diag([-0.5, -0.5, 1.0, 1.0])  # RAS: typical PNG import (i to the left, j posterior)
    m[:3, 3] = (3.0, 4.0, 0.0)
    node, array = _volume(shape=(1, 20, 30), ijk_to_ras=m, dtype=np.uint8)
    image = sb.image_from_volume(node)
    assert image.GetDimension() == 2
    assert image.GetSize() == (30, 20)
    np.testing.assert_allclose(image.GetOrigin(), (-3.0, -4.0))
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 0.5))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array[0])


def test_invalid_volumes_are_named(mrml_scene):
    with pytest.raises(InvalidInputError, match="no input volume"):
        sb.image_from_volume(None)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InvalidInputError, match="'empty' has no voxels"):
        sb.image_from_volume(empty)
    rgb = slicer.util.addVolumeFromArray(np.zeros((2, 3, 4, 3), np.uint8), name="rgb",
                                         nodeClassName="vtkMRMLVectorVolumeNode")
    with pytest.raises(InvalidInputError, match="'rgb' is not a greyscale image volume.*Vector to "
                                                "Scalar Volume") as error:
        sb.image_from_volume(rgb)
    label = slicer.util.addVolumeFromArray(np.zeros((2, 3, 4), np.uint8), name="seg",
                                           nodeClassName="vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InvalidInputError, match="'seg' is a label map") as error2:
        sb.image_from_volume(label)
    assert "vtkMRML" not in str(error.value) + str(error2.value)


def _euler(angles=(0.1, -0.05, 0.2), translation=(4.0, -3.0, 2.5), center=(10.0, 20.0, -5.0)):
    t = sitk.Euler3DTransform()
    t.SetCenter(center)
    t.SetRotation(*angles)
    t.SetTranslation(translation)
    return t


def test_matrix_from_transform_is_exact_for_affine_and_none_for_bspline():
    t = _euler()
    m = sb.matrix_from_transform(t)
    for p in RNG.normal(0, 50, (5, 3)):
        np.testing.assert_allclose((m @ [*p, 1.0])[:3], t.TransformPoint(tuple(p)), atol=1e-9)
    grid = sitk.Image([10, 10, 10], sitk.sitkFloat32)
    bspline = sitk.BSplineTransformInitializer(grid, [2, 2, 2])
    bspline.SetParameters(tuple(RNG.normal(0, 1.0, len(bspline.GetParameters()))))
    assert sb.matrix_from_transform(bspline, reference=grid) is None
    t2 = sitk.Euler2DTransform((1.0, 2.0), 0.2, (3.0, -1.0))
    m2 = sb.matrix_from_transform(t2)
    np.testing.assert_allclose(m2[2], [0, 0, 1, 0])
    np.testing.assert_allclose((m2 @ [5.0, 6.0, 9.0, 1.0])[:2], t2.TransformPoint((5.0, 6.0)))


def test_transform_node_maps_moving_points_onto_fixed(mrml_scene):
    """ITK: fixed point x -> moving point T(x) (LPS). Slicer: the node moves T(x) back onto x (RAS)."""
    t = _euler()
    node = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    sb.set_transform_node(node, t)
    to_parent = node.GetTransformToParent()
    flip = np.array([-1.0, -1.0, 1.0])
    for x_lps in RNG.normal(0, 60, (6, 3)):
        y_lps = np.asarray(t.TransformPoint(tuple(x_lps)))
        np.testing.assert_allclose(to_parent.TransformPoint(tuple(y_lps * flip)), x_lps * flip,
                                   atol=1e-6)
        np.testing.assert_allclose(node.GetTransformFromParent().TransformPoint(tuple(x_lps * flip)),
                                   y_lps * flip, atol=1e-6)


def test_non_linear_transform_is_stored_as_grid(mrml_scene):
    ref = sitk.Image([40, 36, 30], sitk.sitkFloat32)
    ref.SetSpacing((2.0, 2.0, 2.5))
    ref.SetOrigin((-40.0, -30.0, 10.0))
    ref.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.1, 0.0, 0.3).GetMatrix())
    bspline = sitk.BSplineTransformInitializer(ref, [3, 3, 3])
    bspline.SetParameters(tuple(RNG.normal(0, 1.5, len(bspline.GetParameters()))))
    node = mrml_scene.AddNewNodeByClass("vtkMRMLTransformNode")
    sb.set_transform_node(node, bspline, reference=ref)
    assert not node.IsLinear()
    from_parent = node.GetTransformFromParent()
    flip = np.array([-1.0, -1.0, 1.0])
    errors = []
    for idx in [(5, 5, 5), (20, 18, 15), (33, 30, 24), (12, 25, 8)]:
        x = np.asarray(ref.TransformIndexToPhysicalPoint(idx))
        y = np.asarray(bspline.TransformPoint(tuple(x)))
        errors.append(np.linalg.norm(np.asarray(from_parent.TransformPoint(tuple(x * flip))) - y * flip))
    assert max(errors) < 0.05, errors


def test_metrics_table_rows(mrml_scene):
    table = mrml_scene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    table.AddColumn(vtk.vtkStringArray())  # an old column is replaced
    sb.write_metrics_table(table, {"EN": 6.5, "Q_CV": 120.0, "MI": float("nan")},
                           {"EN": "higher", "Q_CV": "lower"})
    assert table.GetNumberOfColumns() == 3
    assert [table.GetColumnName(i) for i in range(3)] == ["Metric", "Value", "Direction"]
    assert table.GetNumberOfRows() == 3
    t = table.GetTable()
    assert [t.GetValue(r, 0).ToString() for r in range(3)] == ["EN", "Q_CV", "MI"]
    assert [t.GetValue(r, 2).ToString() for r in range(3)] == ["higher", "lower", ""]
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "Value"), [6.5, 120.0, np.nan])


def test_contribution_colour_table_is_created_once(mrml_scene):
    color = sb.contribution_color_node(mrml_scene)
    assert sb.contribution_color_node(mrml_scene) is color
    assert color.GetNumberOfColors() == 256
    rgba = [0.0] * 4
    color.GetColor(0, rgba)
    assert rgba[2] > rgba[0]  # blue end: moving source
    color.GetColor(255, rgba)
    assert rgba[0] > rgba[2]  # orange end: fixed source
    color.GetColor(128, rgba)
    assert min(rgba[:3]) > 0.9  # white middle: equal shares

"""The registration's transform node (#14, defect 1): after a run the moving volume, as shown in
world coordinates, sits on the fixed volume, whatever its parent transforms and whichever
transform node receives the result, and a second run refines the first instead of undoing it.

The pair is the module self-test's synthetic MR/CT with a known rigid misalignment; errors are
measured in mm at points spread over the head.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer

from MedFusionLib import slicer_bridge as sb
from MedFusionLib.slicer_bridge.placement import _matrix_to_world
from MedFusionLib.slicer_bridge.testing import synthetic_head_pair
from MedFusionLib.errors import InvalidInputError
from slicer_shim import mrml_scene  # noqa: F401  (fixture)

POINTS = np.array([[0, 0, 0], [20, -15, 10], [-25, 20, -12], [10, 30, 15], [-15, -30, 8]], float)


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_head_pair()


def _pair(synthetic):
    mr, ct, mr_ijk_to_ras, ct_ijk_to_ras, ct_to_mr = synthetic
    fixed = slicer.util.addVolumeFromArray(mr, ijkToRAS=mr_ijk_to_ras, name="MR")
    moving = slicer.util.addVolumeFromArray(ct, ijkToRAS=ct_ijk_to_ras, name="CT")
    return fixed, moving, ct_to_mr


def _linear(matrix):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node


def _error_mm(moving, ct_to_mr, original_parent_to_world=np.eye(4)):
    """Largest distance between where the moving volume's content is shown now and where that
    anatomy is in the fixed volume. ``original_parent_to_world``: the parents the CT had when it
    was built (its content was misaligned by ``ct_to_mr`` without them)."""
    shown = _matrix_to_world(moving.GetParentTransformNode())
    local = np.linalg.inv(original_parent_to_world)
    points = np.c_[POINTS, np.ones(len(POINTS))].T
    expected = ct_to_mr @ local @ points
    actual = shown @ local @ points
    return float(np.max(np.linalg.norm((actual - expected)[:3], axis=0)))


def _run(fixed, moving, transform_node, registration="rigid"):
    out = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    sb.fuse_nodes(fixed, moving, out, method="average", registration=registration,
                  transformNode=transform_node, show=False)


@pytest.mark.slow  # rigid registrations of a 48x56x52 pair
def test_second_run_refines_the_first(mrml_scene, synthetic):
    """The issue's case: run 1, the moving volume under the output transform, run 2 (the old code
    overwrote the node with the small remaining correction: 6.4 mm off)."""
    fixed, moving, ct_to_mr = _pair(synthetic)
    tx = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "CT to MR")
    _run(fixed, moving, tx)
    assert moving.GetTransformNodeID() == tx.GetID()  # placed under the result
    first = _error_mm(moving, ct_to_mr)
    _run(fixed, moving, tx)
    second = _error_mm(moving, ct_to_mr)
    assert moving.GetTransformNodeID() == tx.GetID()
    assert first < 0.5 and second < 0.5, (first, second)


@pytest.mark.slow  # rigid registrations of a 48x56x52 pair
def test_moving_under_its_own_parent_and_output_under_another(mrml_scene, synthetic):
    fixed, moving, ct_to_mr = _pair(synthetic)
    # the CT already sits under a (wrong) manual pre-alignment, the output node under a rotation
    pre = np.eye(4)
    pre[:3, 3] = (3.0, -2.0, 4.0)
    manual = _linear(pre)
    moving.SetAndObserveTransformNodeID(manual.GetID())
    angle = np.deg2rad(15)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    holder = _linear(rotation)
    tx = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "result")
    tx.SetAndObserveTransformNodeID(holder.GetID())
    _run(fixed, moving, tx)
    assert moving.GetTransformNodeID() == tx.GetID()
    assert _error_mm(moving, ct_to_mr) < 0.5


@pytest.mark.slow  # rigid registrations of a 48x56x52 pair
def test_output_node_above_the_moving_parent_is_refined_in_place(mrml_scene, synthetic):
    fixed, moving, ct_to_mr = _pair(synthetic)
    tx = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "result")
    child = _linear(np.eye(4))
    child.SetAndObserveTransformNodeID(tx.GetID())
    moving.SetAndObserveTransformNodeID(child.GetID())
    _run(fixed, moving, tx)
    assert moving.GetTransformNodeID() == child.GetID()  # the chain below the node is kept
    assert _error_mm(moving, ct_to_mr) < 0.5


def test_no_registration_places_without_moving(mrml_scene, synthetic):
    fixed, moving, _ = _pair(synthetic)
    shift = np.eye(4)
    shift[:3, 3] = (1.0, 2.0, 3.0)
    moving.SetAndObserveTransformNodeID(_linear(shift).GetID())
    tx = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "result")
    _run(fixed, moving, tx, registration="none")
    np.testing.assert_allclose(_matrix_to_world(moving.GetParentTransformNode()), shift, atol=1e-9)


def test_output_node_that_moves_the_fixed_volume_is_refused(mrml_scene, synthetic):
    fixed, moving, _ = _pair(synthetic)
    tx = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "fixed's parent")
    fixed.SetAndObserveTransformNodeID(tx.GetID())
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    with pytest.raises(InvalidInputError, match="'fixed's parent' is a parent of the fixed volume"):
        sb.fuse_nodes(fixed, moving, out, method="average", registration="none", transformNode=tx)
    assert out.GetImageData() is None and moving.GetTransformNodeID() is None

"""Registration options and confidence through ``slicer_bridge.fuse_nodes`` (slicer-core scene)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from MedFusionLib import slicer_bridge as sb
from MedFusionLib.datasets import sample_volumes
from MedFusionLib.errors import InvalidInputError
from slicer_shim import mrml_scene  # noqa: F401  (fixture)

#: 3D registrations of several seconds each: not in the quick (pinned-versions) run.
pytestmark = pytest.mark.slow


@pytest.fixture
def head_pair(mrml_scene):
    """The 2 mm MR T1 and synthetic CT as volume nodes, the CT shifted by (6, -4, 5) mm (LPS)."""
    v = sample_volumes()
    mr = sitk.BinShrink(v["mr_t1"], [2, 2, 2])
    ct = sitk.BinShrink(v["ct"], [2, 2, 2])
    ct.SetOrigin(tuple(np.add(ct.GetOrigin(), (6.0, -4.0, 5.0))))
    nodes = []
    for name, img in (("MR", mr), ("CT", ct)):
        node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        sb.update_volume_from_image(node, img)
        nodes.append(node)
    return nodes[0], nodes[1], mr


def test_confidence_reaches_the_status_line_and_the_output(mrml_scene, head_pair):
    fixed, moving, _ = head_pair
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    messages = []
    res = sb.fuse_nodes(fixed, moving, out, method="average", registration="rigid",
                        moving_modality="CT", show=False,
                        progress=lambda f, m: messages.append(m))
    reg = res.fusion.registration
    assert reg.converged and reg.confidence == "high"
    assert "rigid registration confidence high" in messages[-1]
    assert out.GetAttribute("MedFusion.RegistrationConfidence") == "high"
    np.testing.assert_allclose(reg.transform.TransformPoint((0.0, -18.0, 18.0)),
                               (6.0, -22.0, 23.0), atol=0.5)


def test_masks_and_initial_transform_reach_the_engine(mrml_scene, head_pair):
    fixed, moving, mr = head_pair
    out = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "empty mask")
    sb.update_volume_from_image(empty, sitk.Cast(mr * 0, sitk.sitkUInt8))
    with pytest.raises(InvalidInputError, match="fixed mask has no voxel"):
        sb.fuse_nodes(fixed, moving, out, method="average", registration="rigid",
                      fixedMask=empty, show=False)
    given = sitk.Euler3DTransform((0.0, -18.0, 18.0), 0.0, 0.0, 0.0, (6.0, -4.0, 5.0))
    tx = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tx")
    res = sb.fuse_nodes(fixed, moving, out, method="average", registration="none",
                        initial_transform=given, transformNode=tx, show=False)
    assert res.fusion.registration.transform is given
    # the node moves the CT back onto the MR: RAS shift of -(6, -4, 5) LPS = (6, -4, -5) RAS
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(tx)[:3, 3], (6.0, -4.0, -5.0),
                               atol=1e-6)

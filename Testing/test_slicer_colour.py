"""Colour fusion and the contribution overlay in Slicer (issue 8): a vector volume node in the
PET's own Slicer colour table, the contribution map as a foreground layer with a legend."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk

from MedFusionLib import slicer_bridge as sb
from MedFusionLib.colour import apply_colour_table
from MedFusionLib.errors import InvalidInputError
from slicer_shim import node_snapshot


@pytest.fixture
def scene():
    scene, _ = sb.headless_scene()
    yield scene
    scene.Clear(1)


@pytest.fixture
def mr_pet(scene):
    shape = (6, 40, 36)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (j ** 2 + i ** 2) < 0.6
    mr = np.where(head, 300.0 + 200.0 * np.sin(6 * i) * np.cos(5 * j), 0.0).astype(np.float32)
    pet = np.zeros(shape, np.float32)
    pet[:, 1:6, 1:6] = 10.0              # hot, where the MR is background
    pet[:, 18:24, 16:22] = 6.0           # inside the head
    fixed = slicer.util.addVolumeFromArray(mr, name="MR")
    moving = slicer.util.addVolumeFromArray(pet, name="PET")
    moving.CreateDefaultDisplayNodes()
    moving.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLPETProceduralColorNodePET-Heat")
    return fixed, moving, mr, pet


def _matrix(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def test_colour_volume_uses_the_pet_display_colours(scene, mr_pet):
    fixed, moving, mr, pet = mr_pet
    before = [node_snapshot(fixed), node_snapshot(moving)]
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused Y")
    colour = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "fused colour")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none",
                  moving_modality="PET", colourVolume=colour, metricsTable=table)
    rgb = slicer.util.arrayFromVolume(colour)
    assert rgb.shape == mr.shape + (3,) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(_matrix(colour), _matrix(fixed))
    pet_table = sb.node_colour_table(moving)
    expected = apply_colour_table(pet / pet.max(), pet_table)
    np.testing.assert_allclose(rgb[:, 2:5, 2:5] / 255.0, expected[:, 2:5, 2:5], atol=2 / 255)
    assert colour.GetAttribute("MedFusion.Meaning").startswith("colour fusion: moving source")
    assert table.GetNumberOfRows() > 0
    assert [node_snapshot(fixed), node_snapshot(moving)] == before


def test_contribution_is_a_foreground_layer_with_a_legend(scene, mr_pet):
    fixed, moving, _, _ = mr_pet
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    contribution = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "contribution")
    sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none",
                  moving_modality="PET", contributionVolume=contribution)
    composite = scene.GetNthNodeByClass(0, "vtkMRMLSliceCompositeNode")
    assert composite.GetBackgroundVolumeID() == out.GetID()
    assert composite.GetForegroundVolumeID() == contribution.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    legend = sb.add_colour_legend(contribution)  # already created: returns the same node
    assert legend is not None and legend.IsA("vtkMRMLColorLegendDisplayNode")
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 1
    assert contribution.GetDisplayNode().GetColorNode().GetName() == sb.CONTRIBUTION_COLOR_NAME


def test_colour_volume_must_be_a_vector_volume(scene, mr_pet):
    fixed, moving, _, _ = mr_pet
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    wrong = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "not vector")
    with pytest.raises(InvalidInputError, match="colour volume"):
        sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none",
                      moving_modality="PET", colourVolume=wrong)
    colour = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    with pytest.raises(InvalidInputError, match="functional source"):
        sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none",
                      fixed_modality="MR", moving_modality="MR", colourVolume=colour)
    assert colour.GetImageData() is None  # nothing written on failure

"""The parameter node of the module on a real MRML scene (#14): values are stored in the
``vtkMRMLScriptedModuleNode`` in the form Slicer's ``parameterNodeWrapper`` serializers use, so
they survive saving and reloading the scene, and the declared choices are enforced.

``slicer.parameterNodeWrapper`` itself is not part of slicer-core (it imports Qt), so the module's
``@parameterNodeWrapper`` class is built by the stand-in in ``slicer_shim``; what is checked here
is the storage in the real node.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer

import slicer_shim


@pytest.fixture
def module():
    return slicer_shim.import_module_under_shim()


def test_values_live_in_the_mrml_node_as_slicer_serializes_them(module):
    slicer_shim.new_scene()
    a = slicer.util.addVolumeFromArray(np.zeros((2, 3, 4), np.float32), name="a")
    p = module.MedFusionLogic().getParameterNode()
    node = p.parameterNode
    assert node.IsA("vtkMRMLScriptedModuleNode") and node.GetAttribute("ModuleName") == "MedFusion"
    # defaults are written when the wrapper is made
    assert node.GetParameter("method") == "" and node.GetParameter("enhance") == "False"
    assert node.GetParameter("registration") == "auto" and node.GetParameter("display") == "auto"
    p.fixedVolume, p.enhance, p.registration = a, True, "affine"
    assert node.GetParameter("fixedVolume") == "" and node.GetNodeReferenceID("fixedVolume") == a.GetID()
    assert node.GetParameter("enhance") == "True" and node.GetParameter("registration") == "affine"
    p.fixedVolume = None
    assert node.GetNodeReferenceID("fixedVolume") is None and p.fixedVolume is None


def test_choices_and_node_classes_are_enforced(module):
    slicer_shim.new_scene()
    p = module.MedFusionLogic().getParameterNode()
    with pytest.raises(ValueError, match="rigid"):
        p.registration = "elastic"
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode")
    with pytest.raises(ValueError, match="vtkMRMLScalarVolumeNode"):
        p.fixedVolume = table
    with pytest.raises(ValueError, match="colour"):
        p.display = "color"
    assert p.registration == "auto" and p.display == "auto" and p.fixedVolume is None


def test_parameters_survive_saving_and_reloading_the_scene(module, tmp_path):
    scene = slicer_shim.new_scene()
    a = slicer.util.addVolumeFromArray(np.zeros((2, 3, 4), np.float32), name="MR")
    p = module.MedFusionLogic().getParameterNode()
    p.fixedVolume, p.method, p.movingModality = a, "maximum", "PET"
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    reloaded = slicer_shim.new_scene()
    reloaded.SetURL(str(tmp_path / "scene.mrml"))
    assert reloaded.Import()
    q = module.MedFusionLogic().getParameterNode()
    assert (q.method, q.movingModality) == ("maximum", "PET")
    assert q.fixedVolume is not None and q.fixedVolume.GetName() == "MR"

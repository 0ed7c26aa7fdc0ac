"""The module panel's Python logic, driven through fake Qt widgets built from the real .ui file.

The real panel needs Qt; these tests run ``MedFusionWidget`` with stand-ins for the widgets
(``slicer_shim.FakeWidget``/``FakeComboBox``, named and typed as in ``MedFusion.ui``) on a real
MRML scene, so that its own code paths run: list filling, the Apply button's state and tooltip,
method/parameter synchronisation, the Apply flow with progress, Cancel and errors.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import slicer

import MedFusionLib
import slicer_shim
from MedFusionLib.methods import METHODS, MethodInfo


@pytest.fixture
def module():
    return slicer_shim.import_module_under_shim()


@pytest.fixture
def make_widget(module, monkeypatch):
    monkeypatch.setattr(slicer.util, "loadUI", slicer_shim.load_fake_ui)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", slicer_shim.fake_child_widget_variables)

    widgets = []

    def _make():
        widget = module.MedFusionWidget()
        widget.setup()
        widgets.append(widget)
        return widget

    slicer_shim.new_scene()
    yield _make
    for widget in widgets:
        widget.cleanup()  # what Slicer calls when the module is unloaded: drop scene observers


def _volume(name, seed=0, shape=(12, 40, 36)):
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    array = np.where(k ** 2 + j ** 2 + i ** 2 < 0.8, 100 + 50 * np.sin(6 * i + seed), 0)
    array = (array + rng.normal(0, 2, shape)).astype(np.float32)
    return slicer.util.addVolumeFromArray(array, ijkToRAS=np.diag([0.9, 0.9, 2.5, 1.0]), name=name)


def test_lists_come_from_the_engine(make_widget):
    from MedFusionLib.devices import available_devices

    w = make_widget()
    combo = w.ui.methodComboBox
    assert [combo.itemData(i) for i in range(combo.count)] == MedFusionLib.list_methods()
    titles = {n: i.title for n, i in MedFusionLib.list_methods(details=True).items()}
    assert all(combo.items[i][0].startswith(titles[combo.itemData(i)]) for i in range(combo.count))
    assert [w.ui.deviceComboBox.itemData(i) for i in range(w.ui.deviceComboBox.count)] == \
        ["auto"] + available_devices()
    # the stored default "cnn" falls back to the engine's default where cnn is not usable
    p = w.logic.getParameterNode()
    assert p.method == (MedFusionLib.default_method() if "cnn" not in MedFusionLib.list_methods()
                        else "cnn")
    assert combo.itemData(combo.currentIndex) == p.method


def test_apply_enabled_only_for_valid_inputs_and_tooltip_says_why(make_widget):
    w = make_widget()
    apply = w.ui.applyButton
    assert not apply.enabled and "fixed volume" in apply.toolTip and "moving volume" in apply.toolTip
    a, b = _volume("a"), _volume("b", seed=1)
    p = w.logic.getParameterNode()
    p.fixedVolume = a
    assert not apply.enabled and "moving volume" in apply.toolTip and "fixed" not in apply.toolTip
    p.movingVolume = a
    assert not apply.enabled and "two different volumes" in apply.toolTip
    p.movingVolume = b
    assert apply.enabled and "Register" in apply.toolTip
    p.outputVolume = a
    assert not apply.enabled and "not an input" in apply.toolTip


def test_first_two_volumes_are_preselected(make_widget):
    a, b = _volume("a"), _volume("b", seed=1)
    slicer.util.addVolumeFromArray(np.zeros((2, 2, 2), np.uint8), nodeClassName="vtkMRMLLabelMapVolumeNode")
    w = make_widget()
    p = w.logic.getParameterNode()
    assert (p.fixedVolume.GetID(), p.movingVolume.GetID()) == (a.GetID(), b.GetID())


def test_method_choice_drives_parameters_and_options(make_widget, monkeypatch):
    fake_cnn = MethodInfo(name="fakecnn", title="Fake CNN", func=lambda a, b, **k: a,
                          params={"level": "feature", "rule": "learned", "enhance": False},
                          provides_weights=True)
    monkeypatch.setitem(METHODS._entries, "fakecnn", fake_cnn)
    w = make_widget()
    p = w.logic.getParameterNode()
    combo = w.ui.methodComboBox
    combo.currentIndex = combo.findData("dwt")  # the user picks DWT
    assert p.method == "dwt"
    assert not w.ui.fusionLevelComboBox.enabled  # dwt's integer 'level' is not the CNN's
    assert not w.ui.contributionVolumeSelector.enabled
    p.method = "fakecnn"  # e.g. a scene loaded with another method: the list follows
    assert combo.itemData(combo.currentIndex) == "fakecnn"
    assert w.ui.fusionLevelComboBox.enabled and w.ui.fusionRuleComboBox.enabled
    assert w.ui.enhanceCheckBox.enabled and w.ui.contributionVolumeSelector.enabled
    w.ui.deviceComboBox.currentIndex = w.ui.deviceComboBox.findData("cpu")
    assert p.device == "cpu"
    p.device = "cuda:7"  # a scene saved on another machine: falls back to what is here
    assert p.device == "auto" and w.ui.deviceComboBox.itemData(w.ui.deviceComboBox.currentIndex) == "auto"


def test_apply_fuses_creates_the_output_and_reports(make_widget):
    a, _ = _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    p = w.logic.getParameterNode()
    p.method, p.registration = "maximum", "none"
    values = []
    w.ui.progressBar.setValue = values.append
    w.ui.applyButton.click()
    out = p.outputVolume
    assert out is not None and out.GetName() == "PET fused"
    assert slicer.util.arrayFromVolume(out).shape == slicer.util.arrayFromVolume(a).shape
    assert "Fused with 'maximum'" in w.ui.statusLabel.text
    assert values and values[-1] == 100
    assert not w.ui.progressBar.visible and not w.ui.cancelButton.enabled and w.ui.applyButton.enabled


def test_cancel_stops_and_removes_the_output_it_created(make_widget):
    _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    p = w.logic.getParameterNode()
    p.method, p.registration = "maximum", "none"
    n_volumes = len(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))
    slicer.app.processEvents.side_effect = lambda: w.onCancelButton() if w._running else None
    try:
        w.ui.applyButton.click()
    finally:
        slicer.app.processEvents.side_effect = None
    assert w.ui.statusLabel.text.startswith("Cancelled")
    assert p.outputVolume is None
    assert len(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")) == n_volumes
    assert w.ui.applyButton.enabled and not w._running


def test_engine_errors_propagate_after_cleanup(make_widget):
    _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    p = w.logic.getParameterNode()
    p.method, p.registration = "maximum", "none"
    p.contributionVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(MedFusionLib.InvalidInputError, match="'labels' is a labelmap"):
        w.ui.applyButton.click()  # tryWithErrorDisplay re-raises in testing mode
    assert p.outputVolume is None and w.ui.applyButton.enabled


def test_reload_forgets_the_engine(make_widget):
    w = make_widget()
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "MedFusionLib"}
    try:
        w.onReload()
        assert not any(k.split(".")[0] == "MedFusionLib" for k in sys.modules)
        assert w.reloaded
    finally:
        sys.modules.update(saved)

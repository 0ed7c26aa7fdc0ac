"""The module panel's Python logic, driven through fake Qt widgets built from the real .ui file.

The real panel needs Qt; these tests run ``MedFusionWidget`` with stand-ins for the widgets
(``slicer_shim.FakeWidget``/``FakeComboBox``, named and typed as in ``MedFusion.ui``) on a real
MRML scene, so that its own code paths run: list filling, the Apply button's state and tooltip,
method/parameter synchronisation, the Apply flow with progress, Cancel and errors.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

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


# -------------------------------------------------------------------------------------------------
# #14: the defects found by reading the module against Slicer's sources
# -------------------------------------------------------------------------------------------------

def _composite():
    return slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")[0]


def test_apply_leaves_the_display_to_the_logic_and_fits_the_views(make_widget):
    """Defect 2: the bridge shows the contribution map over the fused volume; the widget used to
    overwrite that with the fixed volume at opacity 0. The views are fitted (layout manager)."""
    from MedFusionLib import slicer_bridge as sb

    mr, _ = _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    layout = slicer_shim.with_main_window(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    red = slicer_shim.SLICE_LOGICS["Red"].GetSliceNode()
    fov_before = red.GetFieldOfView()
    p = w.logic.getParameterNode()
    p.method, p.registration = "maximum", "none"
    p.contributionVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "weights")
    w.ui.applyButton.click()
    composite = _composite()
    assert composite.GetBackgroundVolumeID() == p.outputVolume.GetID()
    assert composite.GetForegroundVolumeID() == p.contributionVolume.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    assert red.GetFieldOfView() != fov_before  # FitSliceToBackground ran on the real slice logic
    assert layout.layout == slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView  # no table asked
    # without a contribution map: fused as background, fixed at opacity 0 for the fader
    p.contributionVolume = None
    w.ui.applyButton.click()
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == \
        (p.outputVolume.GetID(), mr.GetID())
    assert composite.GetForegroundOpacity() == 0.0
    assert sb.show_result.__doc__ and "one place" in sb.show_result.__doc__


def test_colour_result_stays_the_background(make_widget):
    _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    p = w.logic.getParameterNode()
    p.method, p.registration, p.movingModality = "maximum", "none", "PET"
    p.colourVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    w.ui.applyButton.click()
    assert _composite().GetBackgroundVolumeID() == p.colourVolume.GetID()


def test_panel_is_locked_during_a_run_and_the_run_keeps_its_settings(make_widget):
    """Defect 4: every section is disabled while the engine runs (processEvents lets the user
    click), and what happens after the run uses the settings the run started with."""
    _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    slicer_shim.with_main_window(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    p = w.logic.getParameterNode()
    p.method, p.registration = "maximum", "none"
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "other")
    p.metricsTable = table
    sections = (w.ui.inputsCollapsibleButton, w.ui.outputsCollapsibleButton,
                w.ui.advancedCollapsibleButton)
    seen = []

    def during_run():
        if w._running:
            seen.append([s.enabled for s in sections] + [w.ui.applyButton.enabled,
                                                          w.ui.cancelButton.enabled])
            p.metricsTable = other  # e.g. a script, or a click that reached a selector

    slicer.app.processEvents.side_effect = during_run
    try:
        w.ui.applyButton.click()
    finally:
        slicer.app.processEvents.side_effect = None
    assert seen and all(s == [False, False, False, False, True] for s in seen)
    assert all(s.enabled for s in sections) and w.ui.applyButton.enabled
    assert table.GetNumberOfRows() > 0 and other.GetNumberOfRows() == 0
    assert slicer.appLogic.GetSelectionNode().GetActiveTableID() == table.GetID()


@pytest.mark.parametrize("current, expected", [
    ("SlicerLayoutOneUp3DView", "SlicerLayout3DTableView"),
    ("SlicerLayoutFourUpTableView", "SlicerLayoutFourUpTableView"),
    ("SlicerLayoutOneUpRedSliceView", None),
])
def test_metrics_table_layout_comes_from_the_tables_module(make_widget, current, expected):
    """Defect 5: the layout is the Tables module's GetLayoutWithTable(current layout), not
    always four-up-table; the table becomes the active one."""
    _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    start = getattr(slicer.vtkMRMLLayoutNode, current)
    layout = slicer_shim.with_main_window(start)
    p = w.logic.getParameterNode()
    p.method, p.registration = "maximum", "none"
    p.metricsTable = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    w.ui.applyButton.click()
    want = slicer.vtkSlicerTablesLogic.GetLayoutWithTable(start) if expected is None else \
        getattr(slicer.vtkMRMLLayoutNode, expected)
    assert layout.layout == want
    assert slicer.appLogic.GetSelectionNode().GetActiveTableID() == p.metricsTable.GetID()


def test_vector_and_tensor_volumes_are_not_inputs(make_widget):
    """Defect 6: vector (RGB) and tensor volumes derive from scalar volumes; they are neither
    preselected nor accepted as inputs (the selectors hide child classes as well)."""
    rgb = np.zeros((4, 8, 8, 3), np.uint8)
    slicer.util.addVolumeFromArray(rgb, nodeClassName="vtkMRMLVectorVolumeNode", name="photo")
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLDiffusionTensorVolumeNode", "dti")
    a, b = _volume("a"), _volume("b", seed=1)
    w = make_widget()
    p = w.logic.getParameterNode()
    assert (p.fixedVolume.GetID(), p.movingVolume.GetID()) == (a.GetID(), b.GetID())
    p.movingVolume = slicer.util.getNode("photo")  # e.g. from a script or a saved scene
    assert not w.ui.applyButton.enabled
    assert "moving volume is a vtkMRMLVectorVolumeNode" in w.ui.applyButton.toolTip
    ui = ET.parse(slicer_shim.MODULE_DIR / "Resources" / "UI" / "MedFusion.ui").getroot()
    for name in ("fixedVolumeSelector", "movingVolumeSelector"):
        widget = ui.find(f".//widget[@name='{name}']")
        assert widget.find("property[@name='showChildNodeTypes']/bool").text == "false"

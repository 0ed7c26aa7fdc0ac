"""The module panel's Python logic, driven through fake Qt widgets built from the real .ui file.

The real panel needs Qt; these tests run ``MedFusionWidget`` with stand-ins for the widgets
(``fake_qt.FakeWidget``/``FakeComboBox``, named and typed as in ``MedFusion.ui``) and for
``qt.QTimer`` (``fake_qt.FakeTimer``: the test fires it as the event loop would) on a real MRML
scene, so that its own code paths run: list filling, the Apply button's state and tooltip,
method/parameter synchronisation, the background run with progress, Cancel, interruptions and
errors. The fusion itself runs in a real child process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import slicer

import MedFusionLib
import fake_qt
import slicer_shim
from MedFusionLib.devices import available_devices
from MedFusionLib.methods import METHODS, MethodInfo
from MedFusionLib.slicer_bridge import show_result

TIMEOUT_S = 180


@pytest.fixture
def module():
    return slicer_shim.import_module_under_shim()


@pytest.fixture
def make_widget(module, monkeypatch):
    monkeypatch.setattr(slicer.util, "loadUI", fake_qt.load_fake_ui)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", fake_qt.fake_child_widget_variables)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kwargs: errors.append(text))

    widgets = []

    def _make():
        widget = module.MedFusionWidget()
        widget.setup()
        widget.errors = errors
        widgets.append(widget)
        return widget

    slicer_shim.new_scene()
    yield _make
    for widget in widgets:
        widget.cleanup()  # what Slicer calls when the module is unloaded: cancels, drops observers


def _volume(name, seed=0, shape=(12, 40, 36)):
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    array = np.where(k ** 2 + j ** 2 + i ** 2 < 0.8, 100 + 50 * np.sin(6 * i + seed), 0)
    array = (array + rng.normal(0, 2, shape)).astype(np.float32)
    return slicer.util.addVolumeFromArray(array, ijkToRAS=np.diag([0.9, 0.9, 2.5, 1.0]), name=name)


def _run_event_loop(widget, until=None, timeout=TIMEOUT_S):
    """Fire the panel's timers as Qt's event loop would, until the run ends (or ``until()``)."""
    deadline = time.monotonic() + timeout
    while widget.task is not None and not (until and until()):
        assert time.monotonic() < deadline, f"the fusion did not end within {timeout} s"
        fake_qt.FakeTimer.fire_all()
        time.sleep(0.02)


def _apply(widget, **parameters):
    p = widget.logic.getParameterNode()
    for key, value in parameters.items():
        setattr(p, key, value)
    widget.ui.applyButton.click()
    return p


def _volumes():
    return {n.GetID() for n in slicer.util.getNodesByClass("vtkMRMLVolumeNode")}


# -------------------------------------------------------------------------------------------------
# Lists, defaults, the Apply button
# -------------------------------------------------------------------------------------------------

def test_lists_come_from_the_engine(make_widget):
    w = make_widget()
    combo = w.ui.methodComboBox
    assert [combo.itemData(i) for i in range(combo.count)] == MedFusionLib.list_methods()
    titles = {n: i.title for n, i in MedFusionLib.list_methods(details=True).items()}
    assert all(combo.items[i][0].startswith(titles[combo.itemData(i)]) for i in range(combo.count))
    assert [w.ui.deviceComboBox.itemData(i) for i in range(w.ui.deviceComboBox.count)] == \
        ["auto"] + available_devices()
    p = w.logic.getParameterNode()
    assert p.method == MedFusionLib.default_method()  # the engine's default, set on first use
    assert combo.itemData(combo.currentIndex) == p.method


def test_methods_that_need_a_missing_package_are_offered_and_marked(make_widget, monkeypatch):
    """#20: a fresh Slicer (no PyTorch, no PyWavelets) offers every method, marks those that need
    a package, and defaults to one that runs with what Slicer bundles."""
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "pywt", None)
    w = make_widget()
    labels = {w.ui.methodComboBox.itemData(i): w.ui.methodComboBox.items[i][0]
              for i in range(w.ui.methodComboBox.count)}
    assert set(labels) == set(MedFusionLib.list_methods())
    assert "[needs PyTorch]" in labels["cnn"] and "[needs PyWavelets]" in labels["dwt"]
    assert "[needs PyTorch and PyWavelets]" in labels["nsct"]
    assert "[needs" not in labels["maximum"] and "[needs" not in labels["pca"]
    assert w.logic.getParameterNode().method == "maximum"
    assert w.ui.deviceComboBox.count == 2  # auto, cpu: no CUDA without PyTorch


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


def test_vector_and_tensor_volumes_are_not_inputs_and_the_message_says_what_to_do(make_widget):
    """Vector (RGB) and tensor volumes derive from scalar volumes; they are neither preselected
    nor accepted, and the tooltip points to Vector to Scalar Volume, without VTK class names."""
    rgb = np.zeros((4, 8, 8, 3), np.uint8)
    slicer.util.addVolumeFromArray(rgb, nodeClassName="vtkMRMLVectorVolumeNode", name="photo")
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLDiffusionTensorVolumeNode", "dti")
    a, b = _volume("a"), _volume("b", seed=1)
    w = make_widget()
    p = w.logic.getParameterNode()
    assert (p.fixedVolume.GetID(), p.movingVolume.GetID()) == (a.GetID(), b.GetID())
    p.movingVolume = slicer.util.getNode("photo")  # e.g. from a script or a saved scene
    assert not w.ui.applyButton.enabled
    assert "'photo' is a colour or multi-component volume" in w.ui.applyButton.toolTip
    assert "Vector to Scalar Volume" in w.ui.applyButton.toolTip
    assert "vtkMRML" not in w.ui.applyButton.toolTip
    ui = ET.parse(slicer_shim.MODULE_DIR / "Resources" / "UI" / "MedFusion.ui").getroot()
    for name in ("fixedVolumeSelector", "movingVolumeSelector"):
        widget = ui.find(f".//widget[@name='{name}']")
        assert widget.find("property[@name='showChildNodeTypes']/bool").text == "false"
    tooltips = [e.text or "" for e in ui.iter("string")
                if not (e.text or "").startswith("vtkMRML") and "vtkMRMLScene*" not in (e.text or "")]
    assert not [t for t in tooltips if "vtkMRML" in t]


# -------------------------------------------------------------------------------------------------
# #20: the work runs in the background
# -------------------------------------------------------------------------------------------------

def test_apply_returns_at_once_and_the_scene_stays_usable_while_it_runs(make_widget):
    mr, _ = _volume("MR"), _volume("PET", seed=1)
    before = slicer.util.arrayFromVolume(mr).copy()
    w = make_widget()
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    progress = []
    show = w.onProgress
    w.onProgress = lambda fraction, status: (progress.append((fraction, status)), show(fraction, status))
    p = _apply(w, method="maximum", registration="rigid", metricsTable=table)
    task = w.task
    assert task is not None and task.state == "running"
    # Apply has returned: nothing written yet, the panel locked but for Cancel
    assert slicer.mrmlScene.GetFirstNodeByName("PET fused") is None and p.outputVolume is None
    assert not w.ui.applyButton.enabled and w.ui.cancelButton.enabled
    assert not w.ui.inputsCollapsibleButton.enabled and w.ui.progressBar.visible
    assert fake_qt.FakeTimer.running and fake_qt.FakeTimer.running[0].interval == 100
    # the user goes on working: window/level, a new node, another module's data
    mr.CreateDefaultDisplayNodes()
    mr.GetDisplayNode().SetWindowLevelMinMax(10, 90)
    slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "a point")
    _run_event_loop(w)
    assert task.state == "done", task.error
    out = task.result.outputVolume
    assert out.GetName() == "PET fused"
    assert slicer.util.arrayFromVolume(out).shape == before.shape
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(mr), before)
    assert "Fused with 'maximum'" in w.ui.statusLabel.text
    assert table.GetNumberOfRows() > 0
    assert not w.ui.progressBar.visible and not w.ui.cancelButton.enabled and w.ui.applyButton.enabled
    assert not fake_qt.FakeTimer.running  # the timer stops with the run
    # one bar, 0 -> 100 % once, across registration, fusion and metrics
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] < 0.1
    stages = [s for _, s in progress]
    first = {key: next(i for i, s in enumerate(stages) if key in s.lower())
             for key in ("registration", "fusing", "metrics", "writing")}
    assert first["registration"] < first["fusing"] < first["metrics"] < first["writing"]
    assert any("left)" in s for s in stages)  # the time left, once it can be estimated


def _standby_child(timeout=30):
    from MedFusionLib import background
    deadline = time.monotonic() + timeout
    while background._standby is None:
        assert time.monotonic() < deadline, "no fusion process waits in standby"
        time.sleep(0.02)
    return background._standby[1]


def test_opening_the_panel_starts_a_fusion_process_in_standby_and_apply_uses_it(make_widget):
    from MedFusionLib import background
    background.discard_standby()
    _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    w.enter()  # the user opens the module
    waiting = _standby_child()
    _apply(w, method="maximum", registration="none")
    task = w.task
    _run_event_loop(w)
    assert w.ui.statusLabel.text.startswith("Fused with 'maximum'")
    assert task.run.pid == waiting.pid  # the run took the waiting process
    next_one = _standby_child()  # a new one waits for the next run
    assert next_one is not waiting and next_one.poll() is None
    w.cleanup()  # Slicer closes: the standby process ends
    assert next_one.wait(timeout=30) == 130


@pytest.mark.parametrize("how", ["cancel", "close the scene", "delete the moving volume",
                                 "delete the output volume"])
def test_interruptions_cancel_and_leave_the_scene_as_it_was(make_widget, how):
    _, pet = _volume("MR", shape=(40, 96, 96)), _volume("PET", seed=1, shape=(40, 96, 96))
    w = make_widget()
    output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "chosen output")
    _apply(w, method="maximum", registration="rigid", outputVolume=output)
    task = w.task
    _run_event_loop(w, until=lambda: task.fraction > 0.0 and task.run.child_alive())
    volumes = _volumes()
    if how == "cancel":
        w.ui.cancelButton.click()
    elif how == "close the scene":
        slicer.mrmlScene.Clear(0)
    elif how == "delete the moving volume":
        slicer.mrmlScene.RemoveNode(pet)
    else:
        slicer.mrmlScene.RemoveNode(output)
    assert task.state == "cancelled" and w.task is None
    deadline = time.monotonic() + 10
    while task.run.child_alive():  # the child is ended at once (the benchmark times it)
        assert time.monotonic() < deadline, "the fusion process goes on after Cancel"
        time.sleep(0.05)
    assert w.ui.statusLabel.text.startswith("Cancelled") and "Fused" not in w.ui.statusLabel.text
    assert "no volume was changed" in w.ui.statusLabel.text
    if how == "delete the moving volume":
        assert "'PET', which this fusion uses, was deleted" in w.ui.statusLabel.text
    if how != "close the scene":
        assert _volumes() <= volumes  # nothing new
        if how != "delete the output volume":
            assert output.GetImageData() is None
    fake_qt.FakeTimer.fire_all()  # late events of the ended child change nothing
    assert task.state == "cancelled" and task.result is None


def test_a_killed_fusion_process_gives_a_clear_error_and_no_nodes(make_widget):
    _volume("MR", shape=(40, 96, 96)), _volume("PET", seed=1, shape=(40, 96, 96))
    w = make_widget()
    volumes = _volumes()
    _apply(w, method="maximum", registration="rigid")
    task = w.task
    _run_event_loop(w, until=lambda: task.run.child_alive())
    os.kill(task.run.pid, signal.SIGKILL)
    _run_event_loop(w)
    assert task.state == "failed"
    assert "the fusion process stopped unexpectedly (exit signal 9: killed" in str(task.error)
    assert "nothing was written" in str(task.error)
    assert w.ui.statusLabel.text.startswith("Fusion failed:") and w.errors
    assert _volumes() == volumes and w.ui.applyButton.enabled


def test_engine_errors_are_reported_and_the_panel_unlocks(make_widget):
    _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    p = w.logic.getParameterNode()
    p.outputVolume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(MedFusionLib.InvalidInputError, match="'labels' is a labelmap"):
        _apply(w, method="maximum", registration="none")  # checked before anything starts
    assert w.task is None and w.ui.applyButton.enabled
    p.outputVolume = None
    _apply(w, method="maximum", registration="none", fixedModality="CT", movingModality="CT",
           display="colour")  # colour fusion needs a PET/SPECT source: the child says so
    _run_event_loop(w)
    assert w.ui.statusLabel.text.startswith("Fusion failed: colour fusion needs one functional source")
    assert w.ui.applyButton.enabled and w.errors


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
# Display, the run's settings, the metrics table
# -------------------------------------------------------------------------------------------------

def _composite():
    return slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")[0]


@pytest.mark.requires_torch  # the CNN's contribution map
def test_the_result_is_shown_by_the_bridge_and_the_views_fitted(make_widget):
    """The bridge shows the contribution map over the fused volume (the one place that sets the
    display); the views are fitted (layout manager)."""
    mr, _ = _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    layout = slicer_shim.with_main_window(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    red = slicer_shim.SLICE_LOGICS["Red"].GetSliceNode()
    fov_before = red.GetFieldOfView()
    weights = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "weights")
    _apply(w, method="cnn", registration="none", contributionVolume=weights)
    _run_event_loop(w)
    p = w.logic.getParameterNode()
    composite = _composite()
    assert composite.GetBackgroundVolumeID() == p.outputVolume.GetID()
    assert composite.GetForegroundVolumeID() == weights.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    assert red.GetFieldOfView() != fov_before  # FitSliceToBackground ran on the real slice logic
    assert layout.layout == slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView  # no table asked
    # without a contribution map: fused as background, fixed at opacity 0 for the fader
    p.contributionVolume = None
    _apply(w, method="maximum")
    _run_event_loop(w)
    assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) == \
        (p.outputVolume.GetID(), mr.GetID())
    assert composite.GetForegroundOpacity() == 0.0
    assert show_result.__doc__ and "one place" in show_result.__doc__


@pytest.mark.parametrize("display, colour", [("auto", True), ("grey", False), ("colour", True)])
def test_pet_and_spect_default_to_the_colour_fusion(make_widget, display, colour):
    """#20: with a PET (or SPECT) source the panel makes a colour fusion in the clinical colour
    table unless grey is asked for; it is shown as the background."""
    _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    _apply(w, method="maximum", registration="none", movingModality="PET", display=display)
    _run_event_loop(w)
    result = w.logic.getParameterNode()
    colour_node = slicer.mrmlScene.GetFirstNodeByName("PET fused colour")
    assert (colour_node is not None) is colour
    if colour:
        assert _composite().GetBackgroundVolumeID() == colour_node.GetID()
        assert "heat" in colour_node.GetAttribute("MedFusion.Meaning")
        rgb = slicer.util.arrayFromVolume(colour_node)
        assert rgb.dtype == np.uint8 and int((np.ptp(rgb.astype(int), axis=-1) > 30).sum()) > 100
    else:
        assert _composite().GetBackgroundVolumeID() == result.outputVolume.GetID()


def test_a_volume_loaded_from_dicom_as_pt_or_nm_is_functional(module, monkeypatch):
    slicer_shim.new_scene()
    mr, spect = _volume("MR"), _volume("SPECT", seed=1)
    for node, uid in ((mr, "1.2.3"), (spect, "1.2.4")):
        node.SetAttribute("DICOM.instanceUIDs", uid)
    database = type("DicomDatabase", (), {
        "fileForInstance": lambda self, uid: f"/dicom/{uid}.dcm",
        "fileValue": lambda self, filename, tag: {"/dicom/1.2.3.dcm": "MR", "/dicom/1.2.4.dcm": "NM"}[filename]})()
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    logic = module.MedFusionLogic()
    p = logic.getParameterNode()
    p.fixedVolume, p.movingVolume = mr, spect
    assert logic.useColour(p)
    assert logic.settingsFromParameterNode(p)["colour"] is True
    p.display = "grey"
    assert not logic.useColour(p)


def test_panel_is_locked_during_a_run_and_the_run_keeps_its_settings(make_widget):
    """Every section is disabled while the engine runs, and what happens after the run uses the
    settings the run started with."""
    _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    slicer_shim.with_main_window(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "other")
    p = _apply(w, method="maximum", registration="none", metricsTable=table)
    sections = (w.ui.inputsCollapsibleButton, w.ui.outputsCollapsibleButton,
                w.ui.advancedCollapsibleButton)
    assert [s.enabled for s in sections] == [False] * 3 and w.ui.cancelButton.enabled
    p.metricsTable = other  # e.g. a script, while the run goes on
    _run_event_loop(w)
    assert all(s.enabled for s in sections) and w.ui.applyButton.enabled
    assert table.GetNumberOfRows() > 0 and other.GetNumberOfRows() == 0
    assert slicer.appLogic.GetSelectionNode().GetActiveTableID() == table.GetID()


@pytest.mark.parametrize("current, expected", [
    ("SlicerLayoutOneUp3DView", "SlicerLayout3DTableView"),
    ("SlicerLayoutFourUpTableView", "SlicerLayoutFourUpTableView"),
    ("SlicerLayoutOneUpRedSliceView", None),
])
def test_metrics_table_layout_comes_from_the_tables_module(make_widget, current, expected):
    """The layout is the Tables module's GetLayoutWithTable(current layout); the table becomes
    the active one."""
    _volume("MR"), _volume("PET", seed=1)
    w = make_widget()
    start = getattr(slicer.vtkMRMLLayoutNode, current)
    layout = slicer_shim.with_main_window(start)
    table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    _apply(w, method="maximum", registration="none", metricsTable=table)
    _run_event_loop(w)
    want = slicer.vtkSlicerTablesLogic.GetLayoutWithTable(start) if expected is None else \
        getattr(slicer.vtkMRMLLayoutNode, expected)
    assert layout.layout == want
    assert slicer.appLogic.GetSelectionNode().GetActiveTableID() == table.GetID()


def test_single_slices_default_to_no_registration(module):
    """#20: a pair of single slices (any orientation) is 2D: auto registration is none."""
    slicer_shim.new_scene()
    logic = module.MedFusionLogic()
    p = logic.getParameterNode()
    coronal = np.diag([0.8, 3.0, 0.8, 1.0])[:, [0, 2, 1, 3]]  # j runs along S, k (1 voxel) along A
    p.fixedVolume = slicer.util.addVolumeFromArray(np.ones((1, 20, 24), np.float32), ijkToRAS=coronal)
    p.movingVolume = slicer.util.addVolumeFromArray(np.ones((1, 20, 24), np.float32), ijkToRAS=coronal)
    assert logic.registrationFor(p) == "none"
    p.registration = "rigid"
    assert logic.registrationFor(p) == "rigid"
    p.registration, p.movingVolume = "auto", _volume("volume")
    assert logic.registrationFor(p) == "rigid"


BROKEN_TORCH_SCRIPT = """
import sys
sys.path.insert(0, {testing!r})
import slicer
import fake_qt, slicer_shim
from MedFusionLib import optional
slicer.util.loadUI = fake_qt.load_fake_ui
slicer.util.childWidgetVariables = fake_qt.fake_child_widget_variables
module = slicer_shim.import_module_under_shim()
slicer_shim.new_scene()
widget = module.MedFusionWidget()
widget.setup()
combo = widget.ui.methodComboBox
assert combo.count == len(module.MedFusionLib.list_methods()) and combo.findData("cnn") >= 0
assert "torch" not in sys.modules or sys.modules["torch"] is None, "the panel imported torch"
import numpy as np
rng = np.random.default_rng(0)
a = slicer.util.addVolumeFromArray(rng.random((4, 24, 24)).astype("float32"), name="a")
b = slicer.util.addVolumeFromArray(rng.random((4, 24, 24)).astype("float32"), name="b")
task = widget.logic.processAsync(a, b, None, method="cnn", registration="none")
try:
    task.wait(timeout=120)
except module.MedFusionLib.MissingDependencyError as exc:
    print("ERROR:", exc)
"""


def test_a_broken_pytorch_leaves_a_working_panel_and_a_message(tmp_path):
    """#20: torch is never imported by the panel; a torch that fails to import (a broken
    binary) only fails the CNN's run, with a message that says so."""
    broken = tmp_path / "torch"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        'raise OSError("libtorch_cpu.so: cannot open shared object file: No such file or directory")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    code = BROKEN_TORCH_SCRIPT.format(testing=str(slicer_shim.ROOT / "Testing"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("needs PyTorch, which is installed but fails to import (OSError: libtorch_cpu.so: "
            "cannot open shared object file") in done.stdout

import hashlib
import importlib.util
import logging
import os
import pathlib
import sys
import time
import unittest
import urllib.parse
import urllib.request
from typing import Annotated, Optional

import numpy as np
import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode, vtkMRMLTransformNode, vtkMRMLVectorVolumeNode

try:  # Slicer 5.12 and newer: packages declared in Resources/requirements.txt
    import slicer.packaging as packaging
except ImportError:  # Slicer 5.10: slicer.util.pip_install, after asking
    packaging = None


def _loadEngineFromSourceCheckout():
    """Make ``MedFusionLib`` importable. An installed extension has it next to this file
    (qt-scripted-modules, on sys.path); a source checkout one folder up, where it is loaded as a
    package by its path, alone, so that the checkout's other folders (models, bench, Testing,
    docs) do not become importable names in Slicer."""
    if importlib.util.find_spec("MedFusionLib") is not None:
        return
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "MedFusionLib")
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        return  # the import below then says that MedFusionLib is missing
    spec = importlib.util.spec_from_file_location(
        "MedFusionLib", os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["MedFusionLib"] = module
    spec.loader.exec_module(module)


_loadEngineFromSourceCheckout()

# The engine imports with what Slicer bundles (numpy, scipy, SimpleITK, pydicom); PyTorch and
# PyWavelets are imported only by the methods that need them, in the fusion's own process.
import MedFusionLib  # noqa: E402
from MedFusionLib import optional  # noqa: E402
from MedFusionLib.devices import available_devices  # noqa: E402
from MedFusionLib.errors import MedFusionError  # noqa: E402
from MedFusionLib.slicer_bridge import (discard_standby, fuse_nodes, fuse_nodes_async,  # noqa: E402
                                        functional_role, prewarm)
from MedFusionLib.slicer_bridge.nodes import single_slice_axis  # noqa: E402
from MedFusionLib.slicer_bridge.testing import mutual_information, synthetic_head_pair  # noqa: E402

#: Volume node classes offered as fusion inputs: scalar volumes only. Vector (RGB) and tensor
#: volumes derive from vtkMRMLScalarVolumeNode but the engine fuses single-component volumes.
INPUT_VOLUME_CLASS = "vtkMRMLScalarVolumeNode"

#: Registration modes, colour choices, CNN fusion levels and rules, and modalities offered in the
#: GUI (the engine validates them again; Testing/test_slicer_module.py checks these lists
#: against it). "auto" registration: rigid for volumes, none for single slices.
REGISTRATION_MODES = ("auto", "rigid", "affine", "bspline", "none")
DISPLAY_MODES = ("auto", "colour", "grey")
CNN_LEVELS = ("feature", "pixel")
CNN_RULES = ("learned", "addition", "average", "maximum", "l1")
MODALITIES = ("auto", "CT", "MR", "PET", "SPECT", "8BIT")

#: Where the help's documentation link points (the extension's homepage, CMakeLists.txt).
DOCUMENTATION_URL = "https://github.com/medfusion-dev/SlicerMedFusion#readme"

#: The user's names of the optional packages, and how Slicer gets each.
PACKAGE_NAMES = {"torch": "PyTorch", "pywt": "PyWavelets"}


def cnnOptions(methodInfo, level: str, rule: str, enhance: bool) -> dict:
    """The CNN options (fusion level, rule, enhancement) that ``methodInfo``'s method accepts.

    An option is passed only when the method has a parameter of that name whose default is one of
    the GUI's choices, so that a method with an unrelated ``level`` (e.g. a wavelet depth) or
    ``rule`` never receives the CNN's values.
    """
    params = methodInfo.params if methodInfo is not None else {}
    options = {}
    if params.get("level") in CNN_LEVELS:
        options["level"] = level
    if params.get("rule") in CNN_RULES:
        options["rule"] = rule
    if isinstance(params.get("enhance"), bool):
        options["enhance"] = bool(enhance)
    return options


#
# MedFusion
#


class MedFusion(ScriptedLoadableModule):
    """Multi-modal image fusion (CT/PET/SPECT with MRI): registration, CNN and classical fusion."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Image Fusion (MedFusion)")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedFusion Developers (medfusion-dev)"]
        self.parent.helpText = _("""
Fuses two volumes of the same patient, for example MR with CT, PET or SPECT, into one volume that
keeps the anatomical detail of one and the information of the other. The work runs in the
background: Slicer stays usable, and Cancel stops it at once.
<ol>
<li>The moving volume is registered onto the fixed volume (rigid, affine or B-spline, mutual
information; <i>auto</i> is rigid for volumes and none for single slices). With an output
transform, the moving volume is shown through it afterwards and sits on the fixed volume. A second
run refines a rigid or affine transform; after a B-spline run, choosing the same transform again
registers from the moving volume's own position and replaces it.</li>
<li>Each source is mapped to [0, 1] according to its modality (CT window, MR/PET percentiles).</li>
<li>The two are fused slice by slice by the chosen method: the CNN (needs PyTorch, installed on
first use through the PyTorch extension) or a classical rule (average, maximum, PCA, MSVD; the
wavelet methods need PyWavelets, installed on first use).</li>
</ol>
With a PET or SPECT source the result is by default a colour fusion: the uptake in its clinical
colours (hot for PET, rainbow for SPECT) over the anatomy; choose <i>grey</i> for a greyscale result.
The fused volume is written on the fixed volume's grid and shown in the slice views. Optional
outputs: the contribution map (which source each voxel came from) and a table of fusion quality
metrics. Supported Slicer versions: 5.10 and 5.12. For research use; not for diagnosis.
See the <a href="{url}">documentation</a>.
""").format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _("""
This module was developed by the MedFusion developers (medfusion-dev). Its fusion follows the
multi-modal medical image fusion review that MedFusion implements; registration uses SimpleITK;
the module follows the 3D Slicer scripted-module template. Sample data: the MNI ICBM152 2009a
T1 template (Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal
Neurological Institute, McGill University) with synthetic CT and PET volumes made from it.
""")
        # Additional initialization step after the application has started
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Register sample data sets in Sample Data module
#

#: The bundled demo volumes (MedFusion/Resources/SampleData): a 2 mm MNI152 T1 and CT- and
#: PET-like volumes made from it, each moved by a known rigid transform (synthetic, offline).
SAMPLE_DATA = (
    ("MedFusionDemoCTMR", ("MedFusionDemo-MR-T1.nrrd", "MedFusionDemo-CT.nrrd"),
     ("MedFusion demo MR T1", "MedFusion demo CT (synthetic)")),
    ("MedFusionDemoPETMR", ("MedFusionDemo-MR-T1.nrrd", "MedFusionDemo-PET.nrrd"),
     ("MedFusion demo MR T1", "MedFusion demo PET (synthetic)")),
)


def registerSampleData():
    """Add the bundled demo pairs to the Sample Data module (offline: the files ship with the
    extension)."""
    import SampleData

    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "SampleData")
    checksums = _sampleDataChecksums(folder)
    for sampleName, fileNames, nodeNames in SAMPLE_DATA:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="MedFusion",
            sampleName=sampleName,
            thumbnailFileName=os.path.join(folder, f"{sampleName}.png"),
            uris=[_fileUri(os.path.join(folder, name)) for name in fileNames],
            fileNames=list(fileNames),
            nodeNames=list(nodeNames),
            checksums=[checksums.get(name) for name in fileNames],
        )


def _fileUri(path: str) -> str:
    """A file:// URI for a local file (SampleData downloads it with urllib, like its own tests)."""
    return pathlib.Path(path).as_uri()


def _pathFromFileUri(uri: str) -> str:
    return urllib.request.url2pathname(urllib.parse.urlparse(uri).path)


def _sampleDataChecksums(folder: str) -> dict:
    """``{file name: "SHA256:<digest>"}`` from the folder's SHA256SUMS."""
    sums = {}
    path = os.path.join(folder, "SHA256SUMS")
    if os.path.isfile(path):
        for line in open(path, encoding="utf-8"):
            digest, _sep, name = line.strip().partition("  ")
            if name:
                sums[name] = f"SHA256:{digest}"
    return sums


#
# MedFusionParameterNode
#


@parameterNodeWrapper
class MedFusionParameterNode:
    """Parameters of the MedFusion module.

    fixedVolume - reference volume; the fused volume is written on its grid.
    movingVolume - volume registered onto the fixed volume and fused with it.
    outputVolume - fused volume (created when the fusion has finished if none is selected).
    method - fusion method name from the MedFusionLib registry ("" until the panel sets the
        engine's default: the CNN where PyTorch is installed, else pixel maximum).
    registration - auto, rigid, affine, bspline or none.
    device - auto, cpu or cuda.
    display - auto (colour when a source is PET or SPECT), colour or grey.
    fusionLevel, fusionRule, enhance - options of the CNN method.
    fixedModality, movingModality - intensity normalisation per source (auto: DICOM or a guess).
    transformNode - optional output: the registration result.
    contributionVolume - optional output: share of the fixed source per voxel.
    metricsTable - optional output: fusion quality metrics.
    colourVolume - optional output: colour fusion (created when needed if none is selected).
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    method: str = ""
    registration: Annotated[str, Choice(list(REGISTRATION_MODES))] = "auto"
    device: str = "auto"
    display: Annotated[str, Choice(list(DISPLAY_MODES))] = "auto"
    fusionLevel: Annotated[str, Choice(list(CNN_LEVELS))] = "feature"
    fusionRule: Annotated[str, Choice(list(CNN_RULES))] = "learned"
    enhance: bool = False
    fixedModality: Annotated[str, Choice(list(MODALITIES))] = "auto"
    movingModality: Annotated[str, Choice(list(MODALITIES))] = "auto"
    transformNode: vtkMRMLTransformNode
    contributionVolume: vtkMRMLScalarVolumeNode
    metricsTable: vtkMRMLTableNode
    colourVolume: vtkMRMLVectorVolumeNode


#
# MedFusionWidget
#


class MedFusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: inputs, method, outputs, Apply/Cancel and progress. It only wires the
    widgets to the logic; the work runs in the background (``MedFusionLogic.processAsync``)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self.task = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingCombos = False

    def setup(self) -> None:
        """Build the panel from the .ui file and connect it to the parameter node."""
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedFusionLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodComboChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceComboChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)

        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.enabled = False
        self.populateMethodsAndDevices()

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        if self.task is not None:
            self.task.cancel(_("because Slicer is closing"))
        discard_standby()
        self.removeObservers()

    def onReload(self) -> None:
        """Developer "Reload": forget the imported engine too, so that edits to it take effect."""
        for name in [n for n in sys.modules if n == "MedFusionLib" or n.startswith("MedFusionLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()
        self._prewarm()

    def _prewarm(self) -> None:
        """A fusion process starts up in standby while the user picks the volumes."""
        if self._parameterNode and self.task is None:
            self.logic.prewarm(self._parameterNode.method)

    def exit(self) -> None:
        """Called each time the user opens a different module (a running fusion goes on)."""
        self._releaseParameterNode()

    def _releaseParameterNode(self) -> None:
        """Unbind the widgets from the parameter node and stop observing it."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed (a running fusion cancels itself)."""
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists and is observed; preselect the first two volumes and
        the engine's default method."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.method:
            self._parameterNode.method = MedFusionLib.default_method()
        if not self._parameterNode.fixedVolume:
            # as the selectors (showChildNodeTypes false): no labelmap, vector or tensor volumes
            volumes = [v for v in slicer.util.getNodesByClass(INPUT_VOLUME_CLASS)
                       if v.GetClassName() == INPUT_VOLUME_CLASS]
            if volumes:
                self._parameterNode.fixedVolume = volumes[0]
            if len(volumes) > 1 and not self._parameterNode.movingVolume:
                self._parameterNode.movingVolume = volumes[1]

    def setParameterNode(self, inputParameterNode: Optional[MedFusionParameterNode]) -> None:
        """Set and observe the parameter node; the .ui widgets with a SlicerParameterName follow it."""
        self._releaseParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # In the .ui file a Qt dynamic property "SlicerParameterName" names the parameter of
            # each widget that connectGui binds.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    # -- method and device lists ---------------------------------------------------------------

    def populateMethodsAndDevices(self) -> None:
        """Offer every method of the engine's registry (marking those that need a package that
        is not installed yet) and the devices, without importing PyTorch or PyWavelets."""
        self._updatingCombos = True
        try:
            self.ui.methodComboBox.clear()
            self.ui.deviceComboBox.clear()
            for name, info in MedFusionLib.list_methods(details=True).items():
                label = info.title
                missing = info.missing()
                if missing:
                    label += _(" [needs {packages}]").format(packages=" and ".join(missing))
                if info.provides_weights:
                    label += _(" [contribution map]")
                self.ui.methodComboBox.addItem(label, name)
                index = self.ui.methodComboBox.count - 1
                tip = info.reference or info.title
                if missing:
                    tip = _("Needs {packages}, which is not installed: Apply offers to install it. ").format(
                        packages=" and ".join(missing)) + tip
                self.ui.methodComboBox.setItemData(index, tip, qt.Qt.ToolTipRole)
            devices = ["auto"] + available_devices()
            for device in devices:
                self.ui.deviceComboBox.addItem(device, device)
            self.ui.deviceComboBox.toolTip = (
                _("Where the CNN runs: auto uses an NVIDIA GPU when PyTorch sees one, else the CPU.")
                + ("" if "cuda" in devices else _(" CUDA needs an NVIDIA GPU and a CUDA build of PyTorch.")))
        finally:
            self._updatingCombos = False
        self._onParameterNodeModified()

    def onMethodComboChanged(self, index: int) -> None:
        if self._updatingCombos or not self._parameterNode or index < 0:
            return
        name = self.ui.methodComboBox.itemData(index)
        if name:
            self._parameterNode.method = name

    def onDeviceComboChanged(self, index: int) -> None:
        if self._updatingCombos or not self._parameterNode or index < 0:
            return
        device = self.ui.deviceComboBox.itemData(index)
        if device:
            self._parameterNode.device = device

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Show the parameter node in the widgets that are not bound by connectGui."""
        if self._parameterNode:
            self._updatingCombos = True
            try:
                for combo, value in ((self.ui.methodComboBox, self._parameterNode.method),
                                     (self.ui.deviceComboBox, self._parameterNode.device)):
                    index = combo.findData(value)
                    if index >= 0 and combo.currentIndex != index:
                        combo.currentIndex = index
            finally:
                self._updatingCombos = False
            if self.ui.methodComboBox.findData(self._parameterNode.method) < 0:
                # e.g. a method stored in a scene but not registered here: the engine's default
                self._parameterNode.method = MedFusionLib.default_method()
                return  # the parameter node's Modified event brings us back here
            if self.ui.deviceComboBox.findData(self._parameterNode.device) < 0:
                # e.g. "cuda" stored in a scene opened on a machine without a GPU
                self._parameterNode.device = "auto"
                return
            info = self.logic.methodInfo(self._parameterNode.method)
            accepted = cnnOptions(info, "feature", "learned", False)
            self.ui.fusionLevelComboBox.enabled = "level" in accepted
            self.ui.fusionRuleComboBox.enabled = "rule" in accepted
            self.ui.enhanceCheckBox.enabled = "enhance" in accepted
            providesWeights = bool(info and info.provides_weights)
            self.ui.contributionVolumeSelector.enabled = providesWeights
            self.ui.contributionVolumeSelector.toolTip = (
                _("Share of the fixed source in each voxel (blue: moving, white: equal, orange: fixed).")
                if providesWeights else _("The selected method gives no contribution map."))
        self._checkCanApply()

    def _checkCanApply(self) -> None:
        """Enable Apply only when the inputs are valid; the tooltip says what is missing."""
        if self.task is not None:
            self.ui.applyButton.enabled = False
            self.ui.applyButton.toolTip = _("Fusion is running")
            return
        problems = self.logic.inputProblems(self._parameterNode)
        self.ui.applyButton.enabled = not problems
        self.ui.applyButton.toolTip = (
            _("Register the moving volume onto the fixed volume and fuse them") if not problems
            else _("To fuse: {problems}.").format(problems="; ".join(problems)))

    # -- running ------------------------------------------------------------------------------

    def _setRunning(self, running: bool) -> None:
        """Lock the panel's inputs during a run: only Cancel stays active (the rest of Slicer
        stays usable)."""
        for section in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton,
                        self.ui.advancedCollapsibleButton):
            section.enabled = not running
        self.ui.cancelButton.enabled = running
        self.ui.progressBar.setVisible(running)
        if running:
            self.ui.progressBar.setValue(0)
        self._checkCanApply()

    def onProgress(self, fraction, status) -> None:
        """Progress of the running fusion: one bar 0-100 %, and the stage with the time left."""
        self.ui.progressBar.setValue(int(round(100 * min(max(fraction, 0.0), 1.0))))
        self.ui.statusLabel.text = status

    def onCancelButton(self) -> None:
        if self.task is not None:
            self.task.cancel(_("by the user"))

    def onApplyButton(self) -> None:
        """Start the fusion with the panel's settings; returns at once (the work runs in the
        background and ``onTaskDone`` shows the outcome)."""
        with slicer.util.tryWithErrorDisplay(_("Fusion failed."), waitCursor=True):
            p = self._parameterNode
            if not self.logic.ensurePackages(p.method, confirm=self._confirm):
                self.ui.statusLabel.text = _("Not started: the method's packages were not installed.")
                return
            self.task = self.logic.processParameterNode(p, progress=self.onProgress,
                                                        done=self.onTaskDone, timer=qt.QTimer)
            self.ui.statusLabel.text = _("Starting...")
            self._setRunning(True)

    def _confirm(self, message: str, title: str) -> bool:
        return slicer.util.confirmOkCancelDisplay(message, windowTitle=title)

    def onTaskDone(self, task) -> None:
        """The background fusion ended: unlock the panel and say how it went."""
        self.task = None
        self._setRunning(False)
        self._prewarm()  # for the next run
        if task.state == "done":
            if self._parameterNode and not self._parameterNode.outputVolume:
                self._parameterNode.outputVolume = task.result.outputVolume  # the next run reuses it
            if task.request.metricsTable:
                self.logic.showTable(task.request.metricsTable)
            self.ui.statusLabel.text = self.logic.describeResult(task.result)
        elif task.state == "cancelled":
            self.ui.statusLabel.text = task.message
        else:
            self.ui.statusLabel.text = _("Fusion failed: {error}").format(error=task.error)
            slicer.util.errorDisplay(_("Fusion failed: {error}").format(error=task.error))


#
# MedFusionLogic
#


class MedFusionLogic(ScriptedLoadableModuleLogic):
    """Fusion without the GUI, through ``MedFusionLib.slicer_bridge``.

    Usable from the Python console, Jupyter in Slicer and scripts::

        logic = MedFusionLogic()
        result = logic.process(mrNode, petNode, outNode, method="cnn")        # blocking
        task = logic.processAsync(mrNode, petNode, outNode, method="cnn",      # background
                                  done=lambda task: print(task.state), timer=qt.QTimer)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedFusionParameterNode(super().getParameterNode())

    # -- methods and their packages ---------------------------------------------------------------

    @staticmethod
    def methodInfo(name):
        """The registry entry of method ``name``, or None for an unknown name."""
        try:
            return MedFusionLib.get_method(name or MedFusionLib.default_method())
        except MedFusionError:
            return None

    def missingPackages(self, method) -> list:
        """Import names (``"torch"``, ``"pywt"``) of the packages ``method`` needs that are not
        installed (nothing is imported to find out)."""
        info = self.methodInfo(method)
        return [name for name in (info.requires if info else ()) if not optional.available(name)]

    def ensurePackages(self, method, confirm=None) -> bool:
        """Install what ``method`` needs and is missing: PyWavelets with pip (Slicer 5.12:
        ``slicer.packaging.pip_ensure``, which asks; 5.10: ``confirm`` first), PyTorch through the
        PyTorch extension (after ``confirm``). Returns False when the user declined. In testing
        mode nothing is installed (returns False if something is missing)."""
        missing = self.missingPackages(method)
        if not missing:
            return True
        if slicer.app.testingEnabled():
            return False
        if "pywt" in missing and not self.installPyWavelets(confirm):
            return False
        if "torch" in missing:
            if confirm is not None and not confirm(
                    _("The method '{method}' needs PyTorch, which is not installed. Download and install "
                      "it now through the PyTorch extension? This can take several minutes and a few GB "
                      "of disk space.").format(method=method), _("Install PyTorch")):
                return False
            self.installTorch()
        importlib.invalidate_caches()
        return not self.missingPackages(method)

    def installPyWavelets(self, confirm=None) -> bool:
        """Install the packages of ``Resources/requirements.txt`` (PyWavelets)."""
        requirements = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "requirements.txt")
        if packaging is not None:
            try:
                packaging.pip_ensure(packaging.load_requirements(requirements), requester="MedFusion")
            except RuntimeError:  # the user declined
                return False
            return True
        lines = [line.strip() for line in open(requirements, encoding="utf-8")
                 if line.strip() and not line.startswith("#")]
        if confirm is not None and not confirm(
                _("The wavelet methods need {packages}, which is not installed. Download and install "
                  "it now?").format(packages=", ".join(lines)), _("Install Python packages")):
            return False
        logging.info(f"Installing Python packages for MedFusion: {', '.join(lines)}")
        slicer.util.pip_install(" ".join(lines))
        return True

    @staticmethod
    def installTorch() -> None:
        """Install PyTorch through the PyTorch extension's logic (no confirmation: the caller asks).

        :raises RuntimeError: if the PyTorch extension is missing or the installation failed.
        """
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(_(
                "The CNN method needs the PyTorch extension. Install 'PyTorch' from the Extensions "
                "Manager, restart Slicer and try again, or choose a method that does not need PyTorch."))
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=">=2.0")
            if torch is None:
                raise RuntimeError(_("PyTorch was not installed; use the 'PyTorch Utils' module to install it."))

    # -- inputs -----------------------------------------------------------------------------------

    @staticmethod
    def inputProblems(p) -> list:
        """What keeps the parameter node's inputs from being fused, in the user's words."""
        problems = []
        if not p or not p.fixedVolume:
            problems.append(_("select a fixed volume"))
        if not p or not p.movingVolume:
            problems.append(_("select a moving volume"))
        if p and p.fixedVolume and p.movingVolume and p.fixedVolume.GetID() == p.movingVolume.GetID():
            problems.append(_("choose two different volumes"))
        for role, volume in ((_("fixed"), p.fixedVolume if p else None),
                             (_("moving"), p.movingVolume if p else None)):
            if volume and volume.GetClassName() != INPUT_VOLUME_CLASS:
                problems.append(_(
                    "the {role} volume '{name}' is a colour or multi-component volume; convert it "
                    "with the Vector to Scalar Volume module").format(role=role, name=volume.GetName()))
        if p and p.outputVolume and any(
                v and v.GetID() == p.outputVolume.GetID() for v in (p.fixedVolume, p.movingVolume)):
            problems.append(_("choose an output volume that is not an input"))
        return problems

    @staticmethod
    def useColour(p) -> bool:
        """Whether the run makes a colour fusion: ``colour``, or ``auto`` with a PET or SPECT
        source (chosen modality or DICOM PT/NM) or a colour volume selected."""
        if p.display == "grey":
            return False
        if p.display == "colour" or p.colourVolume:
            return True
        return functional_role(p.fixedVolume, p.movingVolume, _modality(p.fixedModality),
                               _modality(p.movingModality)) is not None

    @staticmethod
    def registrationFor(p) -> Optional[str]:
        """The engine's registration mode: ``auto`` is rigid for volumes, none for a pair of
        single slices (the engine's own default)."""
        if p.registration != "auto":
            return p.registration
        if p.fixedVolume and p.movingVolume and single_slice_axis(p.fixedVolume) is not None \
                and single_slice_axis(p.movingVolume) is not None:
            return "none"
        return "rigid"

    def settingsFromParameterNode(self, p) -> dict:
        """The options of ``fuse_nodes`` for the parameter node, read once when a run starts."""
        info = self.methodInfo(p.method)
        colour = self.useColour(p)
        return dict(
            method=info.name, registration=self.registrationFor(p), device=p.device,
            transformNode=p.transformNode,
            contributionVolume=p.contributionVolume if info.provides_weights else None,
            metricsTable=p.metricsTable, fixed_modality=_modality(p.fixedModality),
            moving_modality=_modality(p.movingModality), colour=colour,
            colourVolume=p.colourVolume if colour else None,
            **cnnOptions(info, p.fusionLevel, p.fusionRule, p.enhance))

    # -- running ----------------------------------------------------------------------------------

    def process(self, fixedVolume, movingVolume, outputVolume=None, **settings):
        """Register ``movingVolume`` onto ``fixedVolume``, fuse them and write the result nodes;
        returns when done (``MedFusionLib.slicer_bridge.NodeFusionResult``).

        ``settings``: the options of ``MedFusionLib.slicer_bridge.fuse_nodes`` (method,
        registration, device, transformNode, contributionVolume, metricsTable, colour,
        colourVolume, fixed_modality, moving_modality, the method's parameters, progress).
        The input nodes are never modified.
        """
        startTime = time.time()
        logging.info("Fusion started")
        result = fuse_nodes(fixedVolume, movingVolume, outputVolume, **settings)
        logging.info(f"Fusion completed in {time.time() - startTime:.2f} seconds")
        return result

    def processAsync(self, fixedVolume, movingVolume, outputVolume=None, *, progress=None,
                     done=None, timer=None, **settings):
        """As :meth:`process`, but in the background: returns a running
        ``MedFusionLib.slicer_bridge.FusionTask`` at once (``progress(fraction, status)`` and
        ``done(task)`` are called on the main thread; give ``timer=qt.QTimer`` to have the
        application's event loop drive it, or call ``task.wait()``)."""
        logging.info("Fusion started in the background")
        return fuse_nodes_async(fixedVolume, movingVolume, outputVolume, progress=progress,
                                done=done, timer=timer, **settings)

    @staticmethod
    def prewarm(method: str | None = None) -> None:
        """Start a fusion process in standby (the engine, and PyTorch when ``method`` needs it,
        imported), so that the next background run does not wait for those imports."""
        prewarm(method)

    def processParameterNode(self, p, *, progress=None, done=None, timer=None):
        """Start the parameter node's fusion in the background (what Apply does)."""
        return self.processAsync(p.fixedVolume, p.movingVolume, p.outputVolume or None,
                                 progress=progress, done=done, timer=timer,
                                 **self.settingsFromParameterNode(p))

    @staticmethod
    def describeResult(result) -> str:
        """The status line of a finished fusion: method, device, time, registration and its
        confidence (said out loud when low)."""
        registration = result.fusion.registration
        text = _("Fused with '{method}' on {device} in {seconds:.1f} s (registration: {mode}, "
                 "{overlap:.0f}% overlap).").format(
            method=result.fusion.method, device=result.fusion.device, seconds=result.seconds,
            mode=registration.mode, overlap=100 * registration.overlap)
        if registration.confidence == "low":
            text += " " + _("Check the alignment: the registration may have failed ({reason}).").format(
                reason=registration.confidence_reason)
        note = registration.orientation_note()
        if note:  # e.g. head-first against feet-first: often a header or positioning error
            text += " " + note
        return text

    @staticmethod
    def showTable(tableNode) -> None:
        """Show a table node in a table view, switching to the layout that is like the current
        one plus a table view (the Tables module's choice), as Slicer's own modules do."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # no main window (e.g. --no-main-window)
            return
        layoutWithTable = slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout)
        layoutManager.setLayout(layoutWithTable)
        appLogic = slicer.app.applicationLogic()
        appLogic.GetSelectionNode().SetActiveTableID(tableNode.GetID())
        appLogic.PropagateTableSelection()


def _modality(value) -> Optional[str]:
    return None if value in (None, "", "auto") else value


#
# MedFusionTest
#


class MedFusionTest(ScriptedLoadableModuleTest):
    """Self-test on synthetic volumes with a known misalignment (offline, with only the packages
    Slicer bundles: it runs on Slicer's factory machines), plus Slicer's CT-MR brain sample when
    SampleData can download it and the CNN where PyTorch is installed; what cannot run is
    reported as skipped, with the reason.

    ``runTest()`` (Reload & Test, SelfTests) runs every ``test_*`` method after a fresh
    ``setUp()``; ctest discovers the same methods through unittest.
    """

    def setUp(self):
        """Start from an empty scene."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run every test_* method, each after a fresh setUp(); a skipped one is reported."""
        for name in sorted(n for n in dir(self) if n.startswith("test_")):
            self.setUp()
            try:
                getattr(self, name)()
            except unittest.SkipTest as skipped:
                logging.warning(f"{name} skipped: {skipped}")
                self.delayDisplay(f"{name} skipped: {skipped}")

    def _addPair(self):
        mr, ct, mrIjkToRas, ctIjkToRas, ctToMr = synthetic_head_pair()
        fixed = slicer.util.addVolumeFromArray(mr, ijkToRAS=mrIjkToRas, name="MR synthetic")
        moving = slicer.util.addVolumeFromArray(ct, ijkToRAS=ctIjkToRas, name="CT synthetic")
        return fixed, moving, ctToMr

    def test_MedFusionRegistrationAndFusion(self):
        """Rigid registration recovers the known misalignment; outputs land where they belong."""
        self.delayDisplay("Starting the registration and fusion test")
        fixed, moving, ctToMr = self._addPair()
        fixedBefore = slicer.util.arrayFromVolume(fixed).copy()
        movingBefore = slicer.util.arrayFromVolume(moving).copy()
        output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "CT to MR")
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "fusion metrics")

        result = MedFusionLogic().process(fixed, moving, output, method="average",
                                          registration="rigid", transformNode=transform,
                                          metricsTable=table)

        # inputs untouched
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(fixed), fixedBefore)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(moving), movingBefore)
        # output on the fixed grid, values in [0, 1]
        self.assertEqual(output.GetImageData().GetDimensions(), fixed.GetImageData().GetDimensions())
        outMatrix, fixedMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        output.GetIJKToRASMatrix(outMatrix)
        fixed.GetIJKToRASMatrix(fixedMatrix)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(outMatrix),
                                   slicer.util.arrayFromVTKMatrix(fixedMatrix), atol=1e-9)
        low, high = output.GetImageData().GetScalarRange()
        self.assertGreaterEqual(low, 0.0)
        self.assertLessEqual(high, 1.0)
        self.assertGreater(high, 0.5)
        # the transform node moves CT content onto the same anatomy in the MR (within 1 mm)
        toParent = slicer.util.arrayFromTransformMatrix(transform)
        errors = []
        for point in ([0, 0, 0], [20, -15, 10], [-25, 20, -12], [10, 30, 15]):
            expected = ctToMr @ np.array([*point, 1.0])
            actual = toParent @ np.array([*point, 1.0])
            errors.append(np.linalg.norm(actual[:3] - expected[:3]))
        self.assertLess(max(errors), 1.0, f"registration errors (mm): {errors}")
        # metric table: one row per metric, named columns, finite values
        self.assertEqual(table.GetNumberOfColumns(), 3)
        self.assertEqual(table.GetColumnName(0), "Metric")
        self.assertGreater(table.GetNumberOfRows(), 3)
        self.assertEqual(table.GetNumberOfRows(), len(result.metrics))
        values = slicer.util.arrayFromTableColumn(table, "Value")
        self.assertTrue(np.isfinite(values).sum() >= 3)
        self.delayDisplay("Registration and fusion test passed")

    def test_MedFusionBackgroundRun(self):
        """The panel's path: the work runs in a child process; the scene gets the result only at
        the end, and equals the blocking call's."""
        fixed, moving, _ctToMr = self._addPair()
        task = MedFusionLogic().processAsync(fixed, moving, None, method="maximum", registration="none")
        self.assertEqual(task.state, "running")
        self.assertIsNone(slicer.mrmlScene.GetFirstNodeByName(f"{moving.GetName()} fused"))
        result = task.wait(timeout=300)
        blocking = MedFusionLogic().process(fixed, moving, None, method="maximum", registration="none")
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.outputVolume),
                                      slicer.util.arrayFromVolume(blocking.outputVolume))
        self.delayDisplay("Background fusion test passed")

    def test_MedFusionEveryBundledMethod(self):
        """Every method that needs no extra package fuses the synthetic pair into [0, 1]."""
        fixed, moving, _ctToMr = self._addPair()
        for name, info in MedFusionLib.list_methods(details=True).items():
            if info.requires:
                continue
            result = MedFusionLogic().process(fixed, moving, None, method=name, registration="none")
            low, high = result.outputVolume.GetImageData().GetScalarRange()
            self.assertGreaterEqual(low, 0.0, name)
            self.assertLessEqual(high, 1.0, name)
            self.assertGreater(high, 0.3, name)

    def test_MedFusionSampleDataCTMRBrain(self):
        """Slicer's CT-MR brain sample (one patient): the CT registered onto the T1 MR and fused.

        Downloaded through SampleData as Slicer's own tests do; skipped, with the reason, when it
        cannot be downloaded (e.g. offline). The CT is rigidly registered: its mutual information
        with the MR grows over the unregistered pair, the transform is rigid, and the CT, shown
        through it, is where the fused volume is.
        """
        import SampleData

        self.delayDisplay("Loading the CTMRBrain sample data")
        try:
            nodes = SampleData.downloadSamples("CTMRBrain")
        except Exception as exc:
            self.skipTest(f"SampleData could not download CTMRBrain ({type(exc).__name__}: {exc})")
        if not nodes or any(n is None for n in nodes):
            self.skipTest("SampleData could not download CTMRBrain (no network?)")
        ct, mrT1, _mrT2 = nodes
        logic = MedFusionLogic()
        before = logic.process(mrT1, ct, None, method="average", registration="none", moving_modality="CT")
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "CT to MR")
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "CT-MR metrics")
        after = logic.process(mrT1, ct, None, method="average", registration="rigid",
                              moving_modality="CT", transformNode=transform, metricsTable=table)
        miBefore = mutual_information(before.fusion.fixed01, before.fusion.moving01)
        miAfter = mutual_information(after.fusion.fixed01, after.fusion.moving01)
        self.assertGreater(miAfter, miBefore, f"MI before {miBefore:.3f}, after {miAfter:.3f}")
        rotation = slicer.util.arrayFromTransformMatrix(transform)[:3, :3]
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-6)
        self.assertEqual(ct.GetTransformNodeID(), transform.GetID())
        self.assertEqual(after.outputVolume.GetImageData().GetDimensions(),
                         mrT1.GetImageData().GetDimensions())
        self.assertGreater(table.GetNumberOfRows(), 3)
        self.delayDisplay(f"CT-MR brain: mutual information {miBefore:.3f} -> {miAfter:.3f}")

    def test_MedFusionCancelLeavesOutputsUntouched(self):
        """A progress callback that returns False stops the run before any node is written."""
        fixed, moving, _ctToMr = self._addPair()
        output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
        with self.assertRaises(MedFusionLib.CancelledError):
            MedFusionLogic().process(fixed, moving, output, method="maximum", registration="none",
                                     progress=lambda fraction, message: False)
        self.assertIsNone(output.GetImageData())

    def test_MedFusionRejectsOutputThatIsAnInput(self):
        fixed, moving, _ctToMr = self._addPair()
        with self.assertRaises(MedFusionLib.InvalidInputError):
            MedFusionLogic().process(fixed, moving, moving, method="maximum", registration="none")

    def test_MedFusionColour(self):
        """Colour fusion: an RGB vector volume on the fixed grid, the moving source's colours kept."""
        fixed, moving, _ctToMr = self._addPair()
        moving.CreateDefaultDisplayNodes()
        moving.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeRainbow")
        result = MedFusionLogic().process(fixed, moving, None, method="maximum", registration="none",
                                          moving_modality="SPECT", colour=True)
        rgb = slicer.util.arrayFromVolume(result.colourVolume)
        self.assertEqual(rgb.shape, slicer.util.arrayFromVolume(fixed).shape + (3,))
        self.assertEqual(rgb.dtype, np.uint8)
        # some voxels are coloured (channels differ), as the rainbow table makes them
        self.assertGreater(int((np.ptp(rgb.astype(int), axis=-1) > 30).sum()), 100)
        self.delayDisplay("Colour fusion test passed")

    def test_MedFusionCNN(self):
        """CNN fusion with the shipped weights and its contribution map (where PyTorch works)."""
        problem = optional.problem("torch", what="The CNN self-test")
        if problem:
            self.skipTest(problem)
        fixed, moving, _ctToMr = self._addPair()
        contribution = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "contribution")
        result = MedFusionLogic().process(fixed, moving, None, method="cnn", registration="none",
                                          device="cpu", contributionVolume=contribution)
        low, high = result.outputVolume.GetImageData().GetScalarRange()
        self.assertGreaterEqual(low, 0.0)
        self.assertLessEqual(high, 1.0)
        weights = slicer.util.arrayFromVolume(contribution)
        self.assertEqual(weights.shape, slicer.util.arrayFromVolume(fixed).shape)
        self.assertGreaterEqual(float(weights.min()), 0.0)
        self.assertLessEqual(float(weights.max()), 1.0)
        self.assertEqual(contribution.GetDisplayNode().GetColorNode().GetName(), "MedFusionContribution")
        self.delayDisplay("CNN fusion test passed")

    def test_MedFusionSampleDataRegistered(self):
        """The bundled demo pairs are registered with SampleData, from files that ship with the
        module and match their checksums."""
        registerSampleData()
        sources = {s.sampleName: s for s in slicer.modules.sampleDataSources.get("MedFusion", [])}
        for sampleName, fileNames, _nodeNames in SAMPLE_DATA:
            self.assertIn(sampleName, sources)
            source = sources[sampleName]
            for uri, checksum in zip(source.uris, source.checksums):
                with open(_pathFromFileUri(uri), "rb") as fh:
                    self.assertEqual(checksum, "SHA256:" + hashlib.sha256(fh.read()).hexdigest())

    def test_MedFusionWidget(self):
        """Drive the module panel like a user (only with a main window)."""
        if slicer.app.commandOptions().noMainWindow:
            self.skipTest("the panel needs Slicer's main window")
        fixed, moving, _ctToMr = self._addPair()
        slicer.util.selectModule("MedFusion")
        widget = slicer.modules.MedFusionWidget
        parameters = widget.logic.getParameterNode()
        parameters.fixedVolume = fixed
        parameters.movingVolume = moving
        parameters.method = "maximum"
        parameters.registration = "none"
        parameters.outputVolume = None
        self.assertTrue(widget.ui.applyButton.enabled)
        widget.ui.applyButton.click()
        task = widget.task
        self.assertIsNotNone(task)
        task.wait(timeout=300)
        self.assertIsNotNone(task.result.outputVolume.GetImageData())


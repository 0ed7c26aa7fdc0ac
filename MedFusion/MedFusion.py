import importlib
import importlib.util
import logging
import os
import sys
import time
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

# In an installed extension MedFusionLib sits next to this file (qt-scripted-modules); in a source
# checkout it sits one folder up. The engine itself is imported lazily: it needs PyWavelets, which
# Slicer does not bundle and which is installed on first use, after asking.
_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if importlib.util.find_spec("MedFusionLib") is None:
    _SOURCE_ROOT = os.path.dirname(_MODULE_DIR)
    if os.path.isdir(os.path.join(_SOURCE_ROOT, "MedFusionLib")):
        sys.path.append(_SOURCE_ROOT)

#: Python packages the engine needs beyond what Slicer bundles: {import name: pip requirement}.
#: numpy, scipy, pydicom and SimpleITK come with Slicer (5.10 and 5.12) and must never be
#: pip-installed there.
ENGINE_REQUIREMENTS = {"pywt": "PyWavelets>=1.5"}

#: Volume node classes offered as fusion inputs: scalar volumes only. Vector (RGB) and tensor
#: volumes derive from vtkMRMLScalarVolumeNode but the engine fuses single-component volumes.
INPUT_VOLUME_CLASS = "vtkMRMLScalarVolumeNode"

#: Registration modes, CNN fusion levels and rules, and modalities offered in the GUI (the engine
#: validates them again; Testing/test_slicer_module.py checks these lists against it).
REGISTRATION_MODES = ("rigid", "affine", "bspline", "none")
CNN_LEVELS = ("feature", "pixel")
CNN_RULES = ("learned", "addition", "average", "maximum", "l1")
MODALITIES = ("auto", "CT", "MR", "PET", "SPECT", "8BIT")


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
keeps the anatomical detail of one and the information of the other.
<ol>
<li>The moving volume is registered onto the fixed volume (rigid, affine or B-spline, mutual
information). With an output transform, the moving volume is shown through it afterwards and sits
on the fixed volume; the transform holds the whole alignment (a second run refines it).</li>
<li>Each source is mapped to [0, 1] according to its modality (CT window, MR/PET percentiles).</li>
<li>The two are fused slice by slice by the chosen method: the CNN (needs PyTorch, installed on
first use through the PyTorch extension) or a classical rule (average, maximum, PCA, wavelets,
...).</li>
</ol>
The fused volume is written on the fixed volume's grid and shown in the slice views as
background, with the fixed volume as foreground at opacity 0 (use the fader to compare) or, when
computed, the contribution map at 40 % with a legend. Optional outputs: the contribution map
(which source each voxel came from), a colour fusion and a table of fusion quality metrics.
Supported Slicer versions: 5.10 and 5.12. For research use; not for diagnosis.
""")
        self.parent.acknowledgementText = _("""
The fusion method follows the multi-modal medical image fusion review that MedFusion implements.
Registration uses SimpleITK; the module structure follows the 3D Slicer scripted-module template.
""")


#
# MedFusionParameterNode
#


@parameterNodeWrapper
class MedFusionParameterNode:
    """Parameters of the MedFusion module.

    fixedVolume - reference volume; the fused volume is written on its grid.
    movingVolume - volume registered onto the fixed volume and fused with it.
    outputVolume - fused volume (created on Apply if none is selected).
    method - fusion method name from the MedFusionLib registry.
    registration - rigid, affine, bspline or none.
    device - auto, cpu or cuda.
    fusionLevel, fusionRule, enhance - options of the CNN method.
    fixedModality, movingModality - intensity normalisation per source (auto: guessed).
    transformNode - optional output: the registration result.
    contributionVolume - optional output: share of the fixed source per voxel.
    metricsTable - optional output: fusion quality metrics.
    colourVolume - optional output: colour fusion (PET/SPECT colours over the anatomy), RGB.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    method: str = "cnn"
    registration: Annotated[str, Choice(list(REGISTRATION_MODES))] = "rigid"
    device: str = "auto"
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
    """The module panel: inputs, method, outputs, Apply/Cancel and progress."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False
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
        self.removeObservers()

    def onReload(self) -> None:
        """Developer "Reload": forget the imported engine too, so that edits to it take effect."""
        for name in [n for n in sys.modules if n == "MedFusionLib" or n.startswith("MedFusionLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        self._releaseParameterNode()

    def _releaseParameterNode(self) -> None:
        """Unbind the widgets from the parameter node and stop observing it."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists and is observed; preselect the first two volumes."""
        self.setParameterNode(self.logic.getParameterNode())
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
        """Fill the method list from the engine's registry and the device list from what is here."""
        self._updatingCombos = True
        try:
            self.ui.methodComboBox.clear()
            self.ui.deviceComboBox.clear()
            missing = self.logic.missingPythonRequirements()
            if missing:
                # The registry cannot be read before the engine's packages are installed.
                self.ui.methodComboBox.addItem(_("(installed on first Apply: {packages})").format(
                    packages=", ".join(missing)), "")
                self.ui.deviceComboBox.addItem("auto", "auto")
                return
            import MedFusionLib
            from MedFusionLib.devices import available_devices

            torchInstalled = importlib.util.find_spec("torch") is not None
            for name, info in MedFusionLib.list_methods(details=True).items():
                label = info.title
                if info.needs_torch and not torchInstalled:
                    label += _(" [installs PyTorch]")
                if info.provides_weights:
                    label += _(" [contribution map]")
                self.ui.methodComboBox.addItem(label, name)
                index = self.ui.methodComboBox.count - 1
                self.ui.methodComboBox.setItemData(index, info.reference or info.title, qt.Qt.ToolTipRole)
            devices = ["auto"] + available_devices()
            for device in devices:
                self.ui.deviceComboBox.addItem(device, device)
            self.ui.deviceComboBox.toolTip = (
                _("Where the CNN runs. Available here: {devices}.").format(devices=", ".join(devices[1:]))
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

    def _methodInfo(self):
        """The registry entry of the selected method, or None before the engine is installed."""
        if not self._parameterNode or self.logic.missingPythonRequirements():
            return None
        import MedFusionLib

        try:
            return MedFusionLib.get_method(self._parameterNode.method)
        except MedFusionLib.MedFusionError:
            return MedFusionLib.get_method(MedFusionLib.default_method())

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
            if self.ui.methodComboBox.findData(self._parameterNode.method) < 0 and self.ui.methodComboBox.itemData(0):
                # e.g. "cnn" stored in a scene but not registered here: fall back to the engine's default
                import MedFusionLib

                self._parameterNode.method = MedFusionLib.default_method()
                return  # the parameter node's Modified event brings us back here
            if self.ui.deviceComboBox.findData(self._parameterNode.device) < 0:
                # e.g. "cuda" stored in a scene opened on a machine without a GPU
                self._parameterNode.device = "auto"
                return
            info = self._methodInfo()
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
        p = self._parameterNode
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
                problems.append(_("the {role} volume is a {kind}; choose a scalar volume").format(
                    role=role, kind=volume.GetClassName()))
        if p and p.outputVolume and any(
                v and v.GetID() == p.outputVolume.GetID() for v in (p.fixedVolume, p.movingVolume)):
            problems.append(_("choose an output volume that is not an input"))
        if self._running:
            self.ui.applyButton.enabled = False
            self.ui.applyButton.toolTip = _("Fusion is running")
            return
        self.ui.applyButton.enabled = not problems
        self.ui.applyButton.toolTip = (
            _("Register the moving volume onto the fixed volume and fuse them") if not problems
            else _("To fuse: {problems}.").format(problems="; ".join(problems)))

    # -- running ------------------------------------------------------------------------------

    def _setRunning(self, running: bool) -> None:
        """Lock the panel during a run: only Cancel stays active, so no selector can change the
        parameter node while ``processEvents`` runs inside the engine's progress callback."""
        self._running = running
        self._cancelRequested = False
        for section in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton,
                        self.ui.advancedCollapsibleButton):
            section.enabled = not running
        self.ui.cancelButton.enabled = running
        self.ui.progressBar.setVisible(running)
        if running:
            self.ui.progressBar.setValue(0)
        self._checkCanApply()
        slicer.app.processEvents()

    def onProgress(self, fraction, message) -> bool:
        """Progress callback of the engine: update the bar and the status; False cancels."""
        if fraction is not None:
            self.ui.progressBar.setValue(int(round(100 * min(max(fraction, 0.0), 1.0))))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()
        return not self._cancelRequested

    def onCancelButton(self) -> None:
        self._cancelRequested = True
        self.ui.statusLabel.text = _("Cancelling...")

    def _confirmAndInstallRequirements(self, info) -> bool:
        """Install the engine's missing packages and, for torch methods, PyTorch, after asking."""
        missing = self.logic.missingPythonRequirements()
        if missing:
            if not slicer.util.confirmOkCancelDisplay(
                    _("MedFusion needs these Python packages, which are not installed yet: {packages}. "
                      "Download and install them now?").format(packages=", ".join(missing)),
                    windowTitle=_("Install Python packages")):
                return False
            self.ui.statusLabel.text = _("Installing {packages}...").format(packages=", ".join(missing))
            slicer.app.processEvents()
            self.logic.installPythonRequirements()
            self.populateMethodsAndDevices()
            info = self._methodInfo()
        if info is not None and info.needs_torch and not self.logic.torchInstalled():
            if not self.installTorch():
                return False
            self.populateMethodsAndDevices()
        return True

    def installTorch(self) -> bool:
        """Ask, then install PyTorch through the logic (the PyTorch extension)."""
        if not slicer.util.confirmOkCancelDisplay(
                _("The CNN method needs PyTorch, which is not installed. Download and install it now? "
                  "This can take several minutes and a few GB of disk space."),
                windowTitle=_("Install PyTorch")):
            return False
        self.ui.statusLabel.text = _("Installing PyTorch (this can take several minutes)...")
        slicer.app.processEvents()
        self.logic.installTorch()
        return True

    def onApplyButton(self) -> None:
        """Run the fusion with the panel's settings."""
        with slicer.util.tryWithErrorDisplay(_("Fusion failed."), waitCursor=True):
            p = self._parameterNode
            if not self._confirmAndInstallRequirements(self._methodInfo()):
                self.ui.statusLabel.text = _("Cancelled: the required packages were not installed.")
                return
            info = self._methodInfo()
            createdOutput = None
            if not p.outputVolume:
                createdOutput = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLScalarVolumeNode",
                    slicer.mrmlScene.GenerateUniqueName(f"{p.movingVolume.GetName()} fused"))
                p.outputVolume = createdOutput
            # The run's settings are read once, here: the panel is locked while it runs and what
            # follows uses these values, not whatever the parameter node holds afterwards.
            metricsTable = p.metricsTable
            settings = dict(
                method=info.name, registration=p.registration, device=p.device,
                transformNode=p.transformNode,
                contributionVolume=p.contributionVolume if info.provides_weights else None,
                metricsTable=metricsTable, fixedModality=p.fixedModality,
                movingModality=p.movingModality, colourVolume=p.colourVolume,
                **cnnOptions(info, p.fusionLevel, p.fusionRule, p.enhance))
            inputs = (p.fixedVolume, p.movingVolume, p.outputVolume)

            import MedFusionLib

            self._setRunning(True)
            succeeded = False
            try:
                # the logic shows the result in the slice views (fuse_nodes' show=True)
                result = self.logic.process(*inputs, progress=self.onProgress, **settings)
                succeeded = True
            except MedFusionLib.CancelledError:
                self.ui.statusLabel.text = _("Cancelled; no output was changed.")
                return
            finally:
                if not succeeded and createdOutput is not None:
                    p.outputVolume = None
                    slicer.mrmlScene.RemoveNode(createdOutput)
                self._setRunning(False)

            if metricsTable:
                self.logic.showTable(metricsTable)
            registration = result.fusion.registration
            self.ui.statusLabel.text = _(
                "Fused with '{method}' on {device} in {seconds:.1f} s (registration: {mode}, "
                "{overlap:.0f}% overlap).").format(
                    method=info.name, device=result.fusion.device, seconds=result.seconds,
                    mode=registration.mode, overlap=100 * registration.overlap)


#
# MedFusionLogic
#


class MedFusionLogic(ScriptedLoadableModuleLogic):
    """Fusion without the GUI: a thin delegate to ``MedFusionLib.slicer_bridge.fuse_nodes``.

    Usable from the Python console, Jupyter in Slicer and scripts::

        logic = MedFusionLogic()
        logic.process(mrNode, petNode, outNode, method="cnn", registration="rigid")
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedFusionParameterNode(super().getParameterNode())

    @staticmethod
    def missingPythonRequirements() -> list:
        """pip requirements of the engine that are not installed (never numpy or SimpleITK)."""
        return [req for module, req in ENGINE_REQUIREMENTS.items()
                if importlib.util.find_spec(module) is None]

    def installPythonRequirements(self) -> None:
        """pip-install the engine's missing requirements (no confirmation: the caller asks)."""
        missing = self.missingPythonRequirements()
        if missing:
            logging.info(f"Installing Python packages for MedFusion: {', '.join(missing)}")
            slicer.util.pip_install(" ".join(missing))
            importlib.invalidate_caches()

    @staticmethod
    def torchInstalled() -> bool:
        return importlib.util.find_spec("torch") is not None

    def installTorch(self) -> None:
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
        importlib.invalidate_caches()

    def process(self, fixedVolume, movingVolume, outputVolume, *, method="cnn", registration="rigid",
                device="auto", transformNode=None, contributionVolume=None, metricsTable=None,
                progress=None, fixedModality="auto", movingModality="auto", colourVolume=None,
                **methodParams):
        """Register ``movingVolume`` onto ``fixedVolume``, fuse them and write the result nodes.

        Can be used without the GUI. See ``MedFusionLib.slicer_bridge.fuse_nodes`` for every
        option; the input nodes are never modified.

        :param fixedVolume: reference volume; the fused volume is written on its grid.
        :param movingVolume: volume registered onto the fixed volume and fused with it.
        :param outputVolume: receives the fused volume (float32 in [0, 1]).
        :param method: fusion method name (``MedFusionLib.list_methods()``).
        :param registration: ``rigid``, ``affine``, ``bspline`` or ``none``.
        :param device: ``auto``, ``cpu`` or ``cuda``.
        :param transformNode: optional transform node for the registration result.
        :param contributionVolume: optional volume for the per-voxel share of the fixed source.
        :param metricsTable: optional table node for the quality metrics.
        :param progress: optional ``progress(fraction, message)``; returning False cancels.
        :param fixedModality: ``auto`` or CT, MR, PET, SPECT, 8BIT.
        :param movingModality: ``auto`` or CT, MR, PET, SPECT, 8BIT.
        :param colourVolume: optional vector volume for the colour fusion (the PET/SPECT source
            keeps the colour table it is displayed with); metrics are then on luminance.
        :return: ``MedFusionLib.slicer_bridge.NodeFusionResult``.
        """
        from MedFusionLib.slicer_bridge import fuse_nodes

        startTime = time.time()
        logging.info("Fusion started")
        result = fuse_nodes(
            fixedVolume, movingVolume, outputVolume, method=method, registration=registration,
            device=device, transformNode=transformNode, contributionVolume=contributionVolume,
            metricsTable=metricsTable, progress=progress, colourVolume=colourVolume,
            fixed_modality=None if fixedModality in (None, "", "auto") else fixedModality,
            moving_modality=None if movingModality in (None, "", "auto") else movingModality,
            **methodParams)
        logging.info(f"Fusion completed in {time.time() - startTime:.2f} seconds")
        return result

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


#
# MedFusionTest
#


def makeSyntheticPair(shape=(48, 56, 52), spacing=(2.0, 1.8, 1.6), shiftMm=(4.0, -3.0, 2.5),
                      rotationDeg=6.0):
    """Synthetic head-like MR and CT arrays with a known rigid misalignment (no downloads).

    Returns ``(mrArray, ctArray, mrIjkToRas, ctIjkToRas, ctToMrMm)``: ``(k, j, i)`` arrays, their
    4x4 IJK->RAS matrices (the MR one oblique), and the 4x4 RAS matrix that maps a point of the
    CT's content onto the same anatomy in the MR, i.e. the transform that aligns the CT on the MR.
    """
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    sx, sy, sz = spacing[0], spacing[1], spacing[2]
    mrIjkToRas = np.eye(4)
    angle = np.deg2rad(8.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    mrIjkToRas[:3, :3] = rot @ np.diag([sx, sy, sz])
    center = np.array([(shape[2] - 1) * sx, (shape[1] - 1) * sy, (shape[0] - 1) * sz]) / 2
    mrIjkToRas[:3, 3] = -rot @ center

    # anatomy in RAS mm, relative to the head centre
    def anatomy(ras):
        x, y, z = ras
        r = np.sqrt((x / 38) ** 2 + (y / 46) ** 2 + (z / 34) ** 2)
        brain = r < 0.86
        skull = (r >= 0.86) & (r < 1.0)
        ventricles = ((x - 6) / 7) ** 2 + (y / 14) ** 2 + ((z - 4) / 8) ** 2 < 1
        lesion = ((x + 14) / 6) ** 2 + ((y - 12) / 6) ** 2 + ((z + 6) / 6) ** 2 < 1
        grey = brain & (np.sin(x / 5) * np.cos(y / 6) > 0.3)
        return brain, skull, ventricles, lesion, grey

    def rasOfVoxels(ijkToRas):
        ijk = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
        return (ijkToRas @ ijk)[:3].reshape(3, *shape)

    brain, skull, ventricles, lesion, grey = anatomy(rasOfVoxels(mrIjkToRas))
    mr = np.zeros(shape, np.float32)
    mr[brain] = 420
    mr[grey] = 300
    mr[ventricles] = 120
    mr[lesion] = 560
    mr[skull] = 60
    mr += np.random.default_rng(0).normal(0, 8, shape).astype(np.float32)

    # The CT's content is the anatomy moved by ctToMr^-1: a CT voxel at RAS p shows the anatomy at
    # ctToMr @ p.
    a = np.deg2rad(rotationDeg)
    ctToMr = np.eye(4)
    ctToMr[:3, :3] = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ctToMr[:3, 3] = shiftMm
    ctIjkToRas = np.eye(4)
    ctIjkToRas[:3, :3] = np.diag([-sx, -sy, sz])
    ctIjkToRas[:3, 3] = center * np.array([1, 1, -1])
    brain, skull, ventricles, lesion, grey = anatomy(
        (ctToMr @ np.vstack([rasOfVoxels(ctIjkToRas).reshape(3, -1), np.ones((1, i.size))]))[:3].reshape(3, *shape))
    ct = np.full(shape, -1000.0, np.float32)
    ct[brain] = 35
    ct[ventricles] = 5
    ct[lesion] = 70
    ct[skull] = 1200
    ct += np.random.default_rng(1).normal(0, 5, shape).astype(np.float32)
    return mr, ct.astype(np.int16), mrIjkToRas, ctIjkToRas, ctToMr


def mutualInformation(a, b, bins: int = 32) -> float:
    """Mutual information (nats) of two arrays' joint intensity histogram, voxel by voxel."""
    joint, _xEdges, _yEdges = np.histogram2d(np.ravel(a), np.ravel(b), bins=bins)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1, keepdims=True), joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    return float(np.sum(joint[nonzero] * np.log(joint[nonzero] / (pa @ pb)[nonzero])))


class MedFusionTest(ScriptedLoadableModuleTest):
    """Self-test: synthetic volumes with a known misalignment, and Slicer's CT-MR brain sample.

    ``runTest()`` (Reload & Test, SelfTests) runs every ``test_*`` method after a fresh
    ``setUp()``; ctest discovers the same methods through unittest. The engine needs PyWavelets,
    which Slicer does not bundle: ``runTest()`` asks before installing it, and in testing mode
    (ctest, factory machines) nothing is installed and the tests are skipped with a message that
    says so. The CNN part runs only where PyTorch and the CNN method are present.
    """

    @staticmethod
    def _skipMessage(missing) -> str:
        return (f"MedFusion self-test skipped: the engine needs {', '.join(missing)}, which is not "
                "installed. Install it from the MedFusion module (Apply asks first) or with "
                f"slicer.util.pip_install({' '.join(missing)!r}), then run the test again.")

    def _engineReady(self) -> bool:
        """Whether the engine's packages are installed; outside testing mode, offer to install."""
        missing = MedFusionLogic.missingPythonRequirements()
        if not missing:
            return True
        if slicer.app.testingEnabled():
            return False  # never install unasked (confirm dialogs auto-accept in testing mode)
        if not slicer.util.confirmOkCancelDisplay(
                _("The MedFusion self-test needs these Python packages, which are not installed "
                  "yet: {packages}. Download and install them now?").format(packages=", ".join(missing)),
                windowTitle=_("Install Python packages")):
            return False
        MedFusionLogic().installPythonRequirements()
        return not MedFusionLogic.missingPythonRequirements()

    def setUp(self):
        """Start from an empty scene. Without the engine's packages the test is skipped (unittest,
        as ctest runs it, reports the reason); ``runTest`` offers to install them first."""
        slicer.mrmlScene.Clear()
        missing = MedFusionLogic.missingPythonRequirements()
        if missing:
            self.skipTest(self._skipMessage(missing))

    def runTest(self):
        """Run every test_* method, each after a fresh setUp()."""
        if not self._engineReady():
            message = self._skipMessage(MedFusionLogic.missingPythonRequirements())
            logging.warning(message)
            self.delayDisplay(message)
            return
        for name in sorted(n for n in dir(self) if n.startswith("test_")):
            self.setUp()
            getattr(self, name)()

    def _addPair(self):
        mr, ct, mrIjkToRas, ctIjkToRas, ctToMr = makeSyntheticPair()
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

    def test_MedFusionSampleDataCTMRBrain(self):
        """Slicer's CT-MR brain sample (one patient): the CT registered onto the T1 MR and fused.

        Downloaded through SampleData as Slicer's own tests do. The CT is rigidly registered: its
        mutual information with the MR grows over the unregistered pair, the transform is rigid,
        and the CT, shown through it, is where the fused volume is.
        """
        import SampleData

        self.delayDisplay("Loading the CTMRBrain sample data")
        ct, mrT1, _mrT2 = SampleData.downloadSamples("CTMRBrain")
        logic = MedFusionLogic()
        unregistered = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "not registered")
        before = logic.process(mrT1, ct, unregistered, method="average", registration="none",
                               movingModality="CT")
        output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT-MR fused")
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "CT to MR")
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "CT-MR metrics")
        after = logic.process(mrT1, ct, output, method="average", registration="rigid",
                              movingModality="CT", transformNode=transform, metricsTable=table)
        miBefore = mutualInformation(before.fusion.fixed01, before.fusion.moving01)
        miAfter = mutualInformation(after.fusion.fixed01, after.fusion.moving01)
        self.assertGreater(miAfter, miBefore, f"MI before {miBefore:.3f}, after {miAfter:.3f}")
        rotation = slicer.util.arrayFromTransformMatrix(transform)[:3, :3]
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-6)
        self.assertEqual(ct.GetTransformNodeID(), transform.GetID())
        self.assertEqual(output.GetImageData().GetDimensions(), mrT1.GetImageData().GetDimensions())
        self.assertGreater(table.GetNumberOfRows(), 3)
        self.delayDisplay(f"CT-MR brain: mutual information {miBefore:.3f} -> {miAfter:.3f}")

    def test_MedFusionCancelLeavesOutputsUntouched(self):
        """A progress callback that returns False stops the run before any node is written."""
        import MedFusionLib

        fixed, moving, _ctToMr = self._addPair()
        output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
        with self.assertRaises(MedFusionLib.CancelledError):
            MedFusionLogic().process(fixed, moving, output, method="maximum", registration="none",
                                     progress=lambda fraction, message: False)
        self.assertIsNone(output.GetImageData())

    def test_MedFusionRejectsOutputThatIsAnInput(self):
        import MedFusionLib

        fixed, moving, _ctToMr = self._addPair()
        with self.assertRaises(MedFusionLib.InvalidInputError):
            MedFusionLogic().process(fixed, moving, moving, method="maximum", registration="none")

    def test_MedFusionColour(self):
        """Colour fusion: an RGB vector volume on the fixed grid, the moving source's colours kept."""
        fixed, moving, _ctToMr = self._addPair()
        moving.CreateDefaultDisplayNodes()
        moving.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeRainbow")
        output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused luminance")
        colour = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "fused colour")
        MedFusionLogic().process(fixed, moving, output, method="maximum", registration="none",
                                 movingModality="SPECT", colourVolume=colour)
        rgb = slicer.util.arrayFromVolume(colour)
        self.assertEqual(rgb.shape, slicer.util.arrayFromVolume(fixed).shape + (3,))
        self.assertEqual(rgb.dtype, np.uint8)
        # some voxels are coloured (channels differ), as the rainbow table makes them
        self.assertGreater(int((np.ptp(rgb.astype(int), axis=-1) > 30).sum()), 100)
        self.delayDisplay("Colour fusion test passed")

    def test_MedFusionCNN(self):
        """CNN fusion with the shipped weights and its contribution map (only where torch exists)."""
        if not MedFusionLogic.torchInstalled():
            logging.warning("PyTorch is not installed: the CNN part of the MedFusion self-test is not run.")
            return
        import MedFusionLib

        if "cnn" not in MedFusionLib.list_methods():
            logging.warning("The CNN method is not registered: the CNN part of the self-test is not run.")
            return
        fixed, moving, _ctToMr = self._addPair()
        output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused CNN")
        contribution = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "contribution")
        MedFusionLogic().process(fixed, moving, output, method="cnn", registration="none",
                                 device="cpu", contributionVolume=contribution)
        low, high = output.GetImageData().GetScalarRange()
        self.assertGreaterEqual(low, 0.0)
        self.assertLessEqual(high, 1.0)
        weights = slicer.util.arrayFromVolume(contribution)
        self.assertEqual(weights.shape, slicer.util.arrayFromVolume(fixed).shape)
        self.assertGreaterEqual(float(weights.min()), 0.0)
        self.assertLessEqual(float(weights.max()), 1.0)
        self.assertEqual(contribution.GetDisplayNode().GetColorNode().GetName(), "MedFusionContribution")
        self.delayDisplay("CNN fusion test passed")

    def test_MedFusionWidget(self):
        """Drive the module panel like a user (only with a main window)."""
        if slicer.app.commandOptions().noMainWindow:
            return
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
        self.assertIsNotNone(parameters.outputVolume)
        self.assertIsNotNone(parameters.outputVolume.GetImageData())

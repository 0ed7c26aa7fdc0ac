"""Test-only support for running MedFusion's Slicer code headless on the ``slicer-core`` wheel.

Everything real that slicer-core provides is used as is: MRML scenes and nodes, the application,
slice, colour and Tables logics, and ``slicer.util`` (slicer-core 5.13 ships ``slicer/util.py``
and the compiled ``vtkMRML*``/``vtkSlicer*`` classes, nothing else). Stand-ins exist only for
what it lacks, each written from the API shape Slicer documents:

- :func:`new_scene`: a real scene with application logic, default colours and real slice views
  (``SLICE_LOGICS``); the fixture :func:`mrml_scene` wraps it for pytest;
- :func:`import_module_under_shim` imports ``MedFusion/MedFusion.py`` with stand-ins for the
  Qt-dependent modules: ``qt``/``ctk`` (mocks), ``slicer.app`` (a mock in testing mode, no main
  window), ``slicer.i18n``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``
  (values stored in the real parameter node as Slicer's serializers store them) and
  ``SampleData`` (its ``CTMRBrain`` replaced by the synthetic pair: no network);
- :func:`with_main_window`: a layout manager on a real ``vtkMRMLLayoutNode`` with the real slice
  logics, the real application logic and ``slicer.modules.tables.logic()``;
- :func:`load_fake_ui`: the ``.ui`` file's widgets as plain Python objects (names, classes,
  properties, signals), so the Widget's own Python code runs.

Nothing here is used by the product.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import slicer  # the slicer-core wheel (test dependency)

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "MedFusion"


#: The slice logics of the current scene's views (``{name: vtkMRMLSliceLogic}``).
SLICE_LOGICS: dict = {}


def new_scene(views=("Red",)):
    """A fresh MRML scene with application logic, default colours and slice views ("Red")."""
    from MedFusionLib.slicer_bridge import headless_scene

    scene, logics = headless_scene(views=views)
    SLICE_LOGICS.clear()
    SLICE_LOGICS.update(logics)
    return scene


class LayoutManager:
    """Stand-in for ``qSlicerLayoutManager`` (a Qt widget): the current layout is the real
    ``vtkMRMLLayoutNode``'s view arrangement, and the slice logics are the scene's real ones.

    Only what MedFusion and ``slicer.util.setSliceViewerLayers`` use: ``layout``,
    ``setLayout``, ``mrmlSliceLogics``.
    """

    def __init__(self, scene, layout):
        self.layoutNode = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
        self.layoutNode.SetViewArrangement(layout)

    @property
    def layout(self):
        return self.layoutNode.GetViewArrangement()

    def setLayout(self, layout):
        self.layoutNode.SetViewArrangement(layout)

    def mrmlSliceLogics(self):
        import vtk

        collection = vtk.vtkCollection()
        for logic in SLICE_LOGICS.values():
            collection.AddItem(logic)
        return collection


def with_main_window(layout):
    """Make ``slicer.app`` look like an application with a main window: a layout manager in
    ``layout`` (a ``vtkMRMLLayoutNode.SlicerLayout*`` value), the real application logic and the
    Tables module's real logic as ``slicer.modules.tables.logic()``. Returns the layout manager."""
    manager = LayoutManager(slicer.mrmlScene, layout)
    slicer.app.layoutManager.return_value = manager
    slicer.app.applicationLogic.return_value = slicer.appLogic
    tables_logic = slicer.vtkSlicerTablesLogic()
    tables_logic.SetMRMLScene(slicer.mrmlScene)
    slicer.modules = types.SimpleNamespace(tables=types.SimpleNamespace(logic=lambda: tables_logic))
    return manager


@pytest.fixture
def mrml_scene():
    """A real MRML scene assigned to ``slicer.mrmlScene`` for the duration of one test."""
    scene = new_scene()
    yield scene
    scene.Clear(1)


def oblique_ijk_to_ras(spacing=(1.2, 0.9, 2.0), origin=(12.5, -30.0, 7.25), angles_deg=(10, -20, 35)):
    """A 4x4 IJK->RAS matrix with a non-axis-aligned direction and anisotropic spacing."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def node_snapshot(node):
    """Everything about a volume node that fusion must not change: voxels, geometry, references."""
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return {
        "voxels": np.array(slicer.util.arrayFromVolume(node), copy=True).tobytes(),
        "dtype": str(slicer.util.arrayFromVolume(node).dtype),
        "matrix": tuple(m.GetElement(r, c) for r in range(4) for c in range(4)),
        "parent": node.GetTransformNodeID(),
        "name": node.GetName(),
        "mtime_image": node.GetImageData().GetMTime(),
        "display": node.GetDisplayNodeID(),
    }


# -------------------------------------------------------------------------------------------------
# Stand-ins for the Qt-dependent parts of Slicer
# -------------------------------------------------------------------------------------------------

class _ShimModule:
    """``ScriptedLoadableModule`` stand-in: keeps ``parent``, registers nothing."""

    def __init__(self, parent):
        self.parent = parent
        self.moduleName = self.__class__.__name__


class _ShimWidget:
    """``ScriptedLoadableModuleWidget`` stand-in: a layout that accepts widgets, resource paths."""

    def __init__(self, parent=None):
        self.parent = parent if parent is not None else types.SimpleNamespace(isEntered=True)
        self.moduleName = self.__class__.__name__[: -len("Widget")]
        self.layout = types.SimpleNamespace(addWidget=lambda widget: None)
        self.reloaded = False

    def resourcePath(self, filename):
        return str(MODULE_DIR / "Resources" / filename)

    def setup(self):
        pass

    def onReload(self):
        self.reloaded = True


class _ShimLogic:
    """``ScriptedLoadableModuleLogic`` stand-in: a singleton ``vtkMRMLScriptedModuleNode``."""

    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__[: -len("Logic")]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(self.moduleName)
            node = scene.AddNode(node)
        return node


class _ShimTest(unittest.TestCase):
    def delayDisplay(self, message, requestedDelay=None, msec=None):
        logging.info(message)


class _WrappedParameterNode:
    """Stand-in for an instance of a ``@parameterNodeWrapper`` class (``slicer.parameterNodeWrapper``
    is not in slicer-core: it imports Qt). Values live in the MRML parameter node itself, in the
    form Slicer's serializers use, so that a saved or reloaded scene, the node's parameters and
    its events are the real ones:

    - a node: an empty parameter plus the node reference of the same name (``None``: no reference);
    - ``bool``: ``"True"``/``"False"``; ``str``: the string; ``int``/``float``: ``str(value)``.

    Missing parameters get their defaults when the wrapper is made. Writes are checked as the
    real validators do (the node class, a ``Choice`` list) and fire one ModifiedEvent.
    ``connectGui`` binds the widgets that carry a ``SlicerParameterName`` and refuses a name
    that is not a parameter.
    """

    def __init__(self, fields, node):
        object.__setattr__(self, "parameterNode", node)
        object.__setattr__(self, "_fields", fields)
        object.__setattr__(self, "_guis", {})
        with slicer.util.NodeModify(node):
            for name, field in fields.items():
                if not node.HasParameter(name):
                    self._write(name, field["default"])

    def _write(self, name, value):
        node, kind = self.parameterNode, self._fields[name]["kind"]
        if kind == "node":
            node.SetParameter(name, "")
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        elif kind is bool:
            node.SetParameter(name, "True" if value else "False")
        else:
            node.SetParameter(name, str(value))

    def __getattr__(self, name):
        fields = object.__getattribute__(self, "_fields")
        if name not in fields:
            raise AttributeError(name)
        node, kind = self.parameterNode, fields[name]["kind"]
        if kind == "node":
            return node.GetNodeReference(name)
        text = node.GetParameter(name)
        return text == "True" if kind is bool else kind(text)

    def __setattr__(self, name, value):
        if name not in self._fields:
            raise AttributeError(f"'{name}' is not a parameter of the parameter node")
        field = self._fields[name]
        if field["kind"] == "node":
            if value is not None and not isinstance(value, field["type"]):
                raise ValueError(f"{name}: expected a {field['type'].__name__}, got {type(value).__name__}")
        elif not isinstance(value, field["type"]):
            raise ValueError(f"{name}: expected {field['type'].__name__}, got {type(value).__name__}")
        for validator in field["validators"]:
            validator.validate(value)
        with slicer.util.NodeModify(self.parameterNode):
            self._write(name, value)

    def AddObserver(self, event, callback, priority=0.0):
        return self.parameterNode.AddObserver(event, callback, priority)

    def RemoveObserver(self, tag):
        self.parameterNode.RemoveObserver(tag)

    def StartModify(self):
        return self.parameterNode.StartModify()

    def EndModify(self, wasModified):
        return self.parameterNode.EndModify(wasModified)

    def Modified(self):
        self.parameterNode.Modified()

    def connectGui(self, gui):
        bound = {}
        for widget in vars(gui).values():
            name = widget.property("SlicerParameterName")
            if name:
                if name not in self._fields:
                    raise ValueError(f"Cannot find a param with the given name: {name}")
                bound[name] = widget
        tag = object()
        self._guis[tag] = bound
        return tag

    def disconnectGui(self, tag):
        self._guis.pop(tag, None)


def _parameter_node_wrapper(cls):
    import typing

    fields = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        validators = ()
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extras = typing.get_args(hint)
            validators = tuple(e for e in extras if hasattr(e, "validate"))
        if isinstance(hint, type) and issubclass(hint, slicer.vtkMRMLNode):
            kind, default = "node", None
        elif hint in (bool, str, int, float):
            kind, default = hint, hint()
        else:
            raise TypeError(f"the parameter node stand-in has no serializer for {name}: {hint}")
        fields[name] = {"kind": kind, "type": (int, float) if hint is float else hint,
                        "default": getattr(cls, name, default), "validators": validators}
    return lambda node: _WrappedParameterNode(fields, node)


class _Choice:
    """``slicer.parameterNodeWrapper.Choice`` stand-in: the value must be one of ``choices``."""

    def __init__(self, choices):
        self.choices = list(choices)

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value '{value}' is not in the valid choices {self.choices}")


class _WithinRange:
    """``slicer.parameterNodeWrapper.WithinRange`` stand-in."""

    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value):
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value {value} is not within [{self.minimum}, {self.maximum}]")


# -------------------------------------------------------------------------------------------------
# Fake Qt widgets built from the .ui file, for driving the module panel's Python logic
# -------------------------------------------------------------------------------------------------

class FakeWidget:
    """The Qt properties and signals the module uses, on plain Python attributes."""

    def __init__(self, name, class_name, properties):
        self.objectName = name
        self.className = class_name
        self._properties = properties
        self._slots = {}
        self.enabled = properties.get("enabled", "true") != "false"
        self.toolTip = properties.get("toolTip", "")
        self.text = properties.get("text", "") or ""
        self.visible = True
        self.value = 0

    def property(self, name):
        return self._properties.get(name)

    def connect(self, signal, slot):
        self._slots.setdefault(signal, []).append(slot)

    def emit(self, signal, *args):
        """Call the connected slots; like PythonQt, pass only as many arguments as a slot takes."""
        import inspect

        for slot in self._slots.get(signal, []):
            params = inspect.signature(slot).parameters.values()
            if any(p.kind is p.VAR_POSITIONAL for p in params):
                slot(*args)
            else:
                n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
                slot(*args[:n])

    def setVisible(self, visible):
        self.visible = bool(visible)

    def setValue(self, value):
        self.value = value

    def click(self):
        if self.enabled:
            self.emit("clicked(bool)", False)


class FakeComboBox(FakeWidget):
    def __init__(self, name, class_name, properties):
        super().__init__(name, class_name, properties)
        self.items = []  # [text, data, tooltip]
        self._index = -1

    def clear(self):
        self.items = []
        self.currentIndex = -1

    def addItem(self, text, data=None):
        self.items.append([text, data, None])
        if self._index < 0:
            self.currentIndex = 0

    @property
    def count(self):
        return len(self.items)

    def itemData(self, index):
        return self.items[index][1] if 0 <= index < len(self.items) else None

    def setItemData(self, index, value, role):
        self.items[index][2] = value

    def findData(self, data):
        return next((i for i, item in enumerate(self.items) if item[1] == data), -1)

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        if index != self._index:
            self._index = index
            self.emit("currentIndexChanged(int)", index)


def load_fake_ui(path):
    """``slicer.util.loadUI`` stand-in: the .ui file's widgets as fake widgets, by name."""
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot().find("widget")
    children = {}
    for element in root.iter("widget"):
        if element is root:
            continue
        properties = {}
        for prop in element.findall("property"):
            value = list(prop)[0] if len(prop) else None
            if value is not None and value.tag in ("string", "bool", "number"):
                properties[prop.get("name")] = value.text
        cls = FakeComboBox if element.get("class") == "QComboBox" else FakeWidget
        children[element.get("name")] = cls(element.get("name"), element.get("class"), properties)
    return types.SimpleNamespace(children=children, setMRMLScene=lambda scene: None)


def fake_child_widget_variables(ui_root):
    return types.SimpleNamespace(**ui_root.children)


def import_module_under_shim(name: str = "MedFusion"):
    """Import ``MedFusion/<name>.py`` under the stand-ins; returns the module object.

    ``sys.modules`` entries that are added for ``qt``/``ctk`` and the ``slicer`` sub-modules are
    left in place for the session (they only exist in test processes).
    """
    sys.modules.setdefault("qt", mock.MagicMock(name="qt"))
    sys.modules.setdefault("ctk", mock.MagicMock(name="ctk"))

    app = mock.MagicMock(name="slicer.app")
    app.testingEnabled.return_value = True
    app.commandOptions.return_value.noMainWindow = True
    app.processEvents.return_value = None
    app.layoutManager.return_value = None  # as with --no-main-window
    slicer.app = app

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    sys.modules["slicer.i18n"] = i18n
    slicer.i18n = i18n

    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = _ShimModule
    slm.ScriptedLoadableModuleWidget = _ShimWidget
    slm.ScriptedLoadableModuleLogic = _ShimLogic
    slm.ScriptedLoadableModuleTest = _ShimTest
    slm.__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget",
                   "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"]
    sys.modules["slicer.ScriptedLoadableModule"] = slm
    slicer.ScriptedLoadableModule = slm

    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = _parameter_node_wrapper

    pnw.WithinRange = _WithinRange
    pnw.Choice = _Choice
    sys.modules["slicer.parameterNodeWrapper"] = pnw
    slicer.parameterNodeWrapper = pnw

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(name, MODULE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    sys.modules["SampleData"] = _sample_data_stand_in(module)
    return module


def _sample_data_stand_in(module):
    """``SampleData`` stand-in (a Slicer module, absent from slicer-core; its data would need the
    network): ``downloadSamples("CTMRBrain")`` returns the nodes CTBrain, MRBrainT1, MRBrainT2 in
    the order and with the names of Slicer's sample, made from the module's synthetic pair (the
    CT misaligned on the MR by a known rigid transform)."""
    sample_data = types.ModuleType("SampleData")

    def downloadSamples(sampleName):
        if sampleName != "CTMRBrain":
            raise ValueError(f"the test stand-in of SampleData has no sample '{sampleName}'")
        mr, ct, mr_ijk_to_ras, ct_ijk_to_ras, _ = module.makeSyntheticPair(
            shape=(30, 34, 32), spacing=(3.0, 3.0, 2.6))
        return [slicer.util.addVolumeFromArray(ct, ijkToRAS=ct_ijk_to_ras, name="CTBrain"),
                slicer.util.addVolumeFromArray(mr, ijkToRAS=mr_ijk_to_ras, name="MRBrainT1"),
                slicer.util.addVolumeFromArray(mr[:, :, ::-1].copy(), ijkToRAS=mr_ijk_to_ras,
                                               name="MRBrainT2")]

    sample_data.downloadSamples = downloadSamples
    sample_data.downloadSample = lambda sampleName: downloadSamples(sampleName)[0]
    return sample_data

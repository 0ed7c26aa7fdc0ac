"""Stand-ins for the Slicer Python modules that slicer-core lacks (they import Qt or need the
application), for tests. Each is written from the API shape Slicer documents:

- ``slicer.ScriptedLoadableModule``: the module, widget, logic and test base classes;
- ``slicer.parameterNodeWrapper``: ``parameterNodeWrapper`` (values stored in the real parameter
  node as Slicer's serializers store them), ``Choice``, ``WithinRange``;
- ``SampleData``: ``SampleDataLogic.registerCustomSampleDataSource`` (into
  ``slicer.modules.sampleDataSources``, as the real one) and ``downloadSamples("CTMRBrain")``
  (the synthetic head pair: no network), or a download that fails (``offline=True``);
- ``slicer.packaging`` (Slicer 5.12): ``load_requirements`` and a ``pip_ensure`` that records
  what it was asked for.

Nothing here is used by the product.
"""

from __future__ import annotations

import logging
import types
import typing
import unittest
from pathlib import Path

import slicer  # the slicer-core wheel (test dependency)

from MedFusionLib.slicer_bridge.testing import synthetic_head_pair

MODULE_DIR = Path(__file__).resolve().parents[1] / "MedFusion"



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


def scripted_loadable_module():
    """``slicer.ScriptedLoadableModule`` stand-in."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")
    module.ScriptedLoadableModule = _ShimModule
    module.ScriptedLoadableModuleWidget = _ShimWidget
    module.ScriptedLoadableModuleLogic = _ShimLogic
    module.ScriptedLoadableModuleTest = _ShimTest
    module.__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget",
                      "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"]
    return module


def parameter_node_wrapper_module():
    """``slicer.parameterNodeWrapper`` stand-in."""
    module = types.ModuleType("slicer.parameterNodeWrapper")
    module.parameterNodeWrapper = _parameter_node_wrapper
    module.WithinRange = _WithinRange
    module.Choice = _Choice
    return module


def sample_data_module(offline: bool = False):
    """``SampleData`` stand-in: custom sources registered as the real module does;
    ``downloadSamples("CTMRBrain")`` gives the nodes CTBrain, MRBrainT1, MRBrainT2 in the order
    and with the names of Slicer's sample, made from the synthetic head pair (the CT misaligned
    on the MR by a known rigid transform); with ``offline`` the download fails as without
    network (urllib's URLError is an OSError)."""
    sample_data = types.ModuleType("SampleData")

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None,
                                           fileNames=None, nodeNames=None, thumbnailFileName=None,
                                           checksums=None, **kwargs):
            sources = getattr(slicer.modules, "sampleDataSources", None)
            if sources is None:
                sources = slicer.modules.sampleDataSources = {}
            sources.setdefault(category, []).append(types.SimpleNamespace(
                sampleName=sampleName, uris=uris, fileNames=fileNames, nodeNames=nodeNames,
                thumbnailFileName=thumbnailFileName, checksums=checksums))

    def downloadSamples(sampleName):
        if sampleName != "CTMRBrain":
            raise ValueError(f"the test stand-in of SampleData has no sample '{sampleName}'")
        if offline:
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
        mr, ct, mr_ijk_to_ras, ct_ijk_to_ras, _ = synthetic_head_pair(
            shape=(30, 34, 32), spacing=(3.0, 3.0, 2.6))
        return [slicer.util.addVolumeFromArray(ct, ijkToRAS=ct_ijk_to_ras, name="CTBrain"),
                slicer.util.addVolumeFromArray(mr, ijkToRAS=mr_ijk_to_ras, name="MRBrainT1"),
                slicer.util.addVolumeFromArray(mr[:, :, ::-1].copy(), ijkToRAS=mr_ijk_to_ras,
                                               name="MRBrainT2")]

    sample_data.SampleDataLogic = SampleDataLogic
    sample_data.downloadSamples = downloadSamples
    sample_data.downloadSample = lambda sampleName: downloadSamples(sampleName)[0]
    return sample_data


def packaging_module():
    """``slicer.packaging`` (Slicer 5.12) stand-in: ``load_requirements`` reads the file as the
    real one (comments, blank and option lines skipped); ``pip_ensure`` records its calls in
    ``ensured`` and raises RuntimeError when ``decline`` is set (the user said no)."""
    module = types.ModuleType("slicer.packaging")
    module.ensured = []
    module.decline = False

    def load_requirements(path):
        return [line.strip() for line in open(path, encoding="utf-8")
                if line.strip() and not line.strip().startswith(("#", "-"))]

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True,
                   prompt_restart=True, requester=None, skip_in_testing=True, show_progress=True):
        module.ensured.append({"requirements": [str(r) for r in requirements], "requester": requester})
        if module.decline:
            raise RuntimeError("the user declined the installation")

    module.load_requirements = load_requirements
    module.pip_ensure = pip_ensure
    return module

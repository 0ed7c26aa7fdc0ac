"""Test-only support for running MedFusion's Slicer code headless on the ``slicer-core`` wheel.

Two things live here:

- :func:`new_scene` builds a real MRML scene with an application logic and the default colour
  tables (the pieces of the Slicer application that MRML logic needs) and makes it
  ``slicer.mrmlScene``. The fixture :func:`mrml_scene` wraps it for pytest.
- :func:`import_module_under_shim` imports ``MedFusion/MedFusion.py`` with minimal stand-ins for
  the parts of Slicer that need Qt (``qt``, ``ctk``, ``slicer.app``, ``slicer.i18n``,
  ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``). The stand-ins are written
  from the documented API shape; they let the module's Logic and Test classes run on a real scene.
  The Widget is not exercised by them (it needs the real application).

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


def new_scene():
    """A fresh MRML scene with application logic, default colours and one slice view ("Red")."""
    from MedFusionLib.slicer_bridge import headless_scene

    scene, _ = headless_scene(views=("Red",))
    return scene


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
    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = self.__class__.__name__[: -len("Widget")]

    def setup(self):
        pass


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
    """Attribute holder standing in for a ``@parameterNodeWrapper`` instance."""

    def __init__(self, cls, node):
        object.__setattr__(self, "parameterNode", node)
        for name, value in cls._shim_defaults.items():
            object.__setattr__(self, name, value)


def _parameter_node_wrapper(cls):
    defaults = {}
    for name in getattr(cls, "__annotations__", {}):
        defaults[name] = getattr(cls, name, None)
    cls._shim_defaults = defaults
    return lambda node: _WrappedParameterNode(cls, node)


def _identity(*args):
    return args[-1] if args else None


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

    class _Validator:
        def __init__(self, *args, **kwargs):
            self.args = args

    pnw.WithinRange = _Validator
    pnw.Choice = _Validator
    pnw.Default = _Validator
    sys.modules["slicer.parameterNodeWrapper"] = pnw
    slicer.parameterNodeWrapper = pnw

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(name, MODULE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

"""Test-only support for running MedFusion's Slicer code headless on the ``slicer-core`` wheel.

Everything real that slicer-core provides is used as is: MRML scenes and nodes, the application,
slice, colour and Tables logics, and ``slicer.util`` (slicer-core 5.13 ships ``slicer/util.py``
and the compiled ``vtkMRML*``/``vtkSlicer*`` classes, nothing else). Stand-ins exist only for
what it lacks, each written from the API shape Slicer documents:

- :func:`new_scene`: a real scene with application logic, default colours and real slice views
  (``SLICE_LOGICS``); the fixture :func:`mrml_scene` wraps it for pytest;
- :func:`import_module_under_shim` imports ``MedFusion/MedFusion.py`` with stand-ins for the
  Qt-dependent modules: ``qt`` (:mod:`fake_qt`: fake timer, mocks), ``ctk`` (a mock),
  ``slicer.app`` (a mock in testing mode, no main window), ``slicer.i18n`` and the modules of
  :mod:`fake_slicer` (``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``,
  ``SampleData``);
- :func:`with_main_window`: a layout manager on a real ``vtkMRMLLayoutNode`` with the real slice
  logics, the real application logic and ``slicer.modules.tables.logic()``.

Nothing here is used by the product.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import slicer  # the slicer-core wheel (test dependency)
import vtk

import fake_qt
import fake_slicer
from MedFusionLib.slicer_bridge import headless_scene

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "MedFusion"


#: The slice logics of the current scene's views (``{name: vtkMRMLSliceLogic}``).
SLICE_LOGICS: dict = {}


def new_scene(views=("Red",)):
    """A fresh MRML scene with application logic, default colours and slice views ("Red")."""
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


def import_module_under_shim(name: str = "MedFusion", *, offline: bool = False):
    """Import ``MedFusion/<name>.py`` under the stand-ins; returns the module object.

    ``sys.modules`` entries that are added for ``qt``/``ctk`` and the ``slicer`` sub-modules are
    left in place for the session (they only exist in test processes). ``offline``: SampleData's
    downloads fail as without network.
    """
    sys.modules["qt"] = fake_qt.fake_qt_module()
    sys.modules.setdefault("ctk", mock.MagicMock(name="ctk"))
    fake_qt.FakeTimer.running.clear()

    app = mock.MagicMock(name="slicer.app")
    app.testingEnabled.return_value = True
    app.commandOptions.return_value.noMainWindow = True
    app.processEvents.return_value = None
    app.layoutManager.return_value = None  # as with --no-main-window
    slicer.app = app
    slicer.modules = types.SimpleNamespace()

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    sys.modules["slicer.i18n"] = i18n
    slicer.i18n = i18n

    for attr, stand_in in (("ScriptedLoadableModule", fake_slicer.scripted_loadable_module()),
                           ("parameterNodeWrapper", fake_slicer.parameter_node_wrapper_module())):
        sys.modules[f"slicer.{attr}"] = stand_in
        setattr(slicer, attr, stand_in)
    sys.modules.pop("slicer.packaging", None)  # slicer-core is 5.10-like: no slicer.packaging
    sys.modules["SampleData"] = fake_slicer.sample_data_module(offline=offline)

    spec = importlib.util.spec_from_file_location(name, MODULE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

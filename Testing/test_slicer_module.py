"""The Slicer module itself: its self-test under slicer-core, and the contracts that the real
application relies on but cannot be exercised here (.ui bindings, CMake packaging lists)."""

from __future__ import annotations

import ast
import fnmatch
import re
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import slicer_shim

ROOT = slicer_shim.ROOT
MODULE_PY = ROOT / "MedFusion" / "MedFusion.py"
UI_FILE = ROOT / "MedFusion" / "Resources" / "UI" / "MedFusion.ui"
MODULE_CMAKE = ROOT / "MedFusion" / "CMakeLists.txt"
TOP_CMAKE = ROOT / "CMakeLists.txt"


@pytest.fixture(scope="module")
def module():
    slicer_shim.new_scene()
    return slicer_shim.import_module_under_shim()


# -------------------------------------------------------------------------------------------------
# The module's own self-test, run as Slicer's Reload & Test / SelfTests would (runTest)
# -------------------------------------------------------------------------------------------------

@pytest.mark.slow  # registrations of the synthetic pairs, as Reload & Test runs them
def test_runtest_runs_every_test_method_and_they_pass(module):
    slicer_shim.new_scene()
    case = module.MedFusionTest()
    names = sorted(n for n in dir(case) if n.startswith("test_"))
    assert len(names) >= 5
    called = []
    for name in names:
        original = getattr(case, name)

        def recorder(original=original, name=name):
            called.append(name)
            return original()

        setattr(case, name, recorder)
    case.runTest()  # raises on any failed assertion inside the module's tests
    assert called == names


@pytest.mark.requires_torch
def test_cnn_part_of_the_self_test_runs_where_torch_is_installed(module, caplog):
    """The CNN part is skipped only where torch or the CNN is missing; here both are present
    (torch is a dependency of the package), so it must really run."""
    import logging

    import slicer

    import MedFusionLib

    assert "cnn" in MedFusionLib.list_methods() and module.MedFusionLogic.torchInstalled()
    slicer_shim.new_scene()
    case = module.MedFusionTest()
    case.setUp()
    with caplog.at_level(logging.WARNING):
        case.test_MedFusionCNN()
    assert "not run" not in caplog.text
    contribution = slicer.util.getNode("contribution")
    assert contribution.GetImageData() is not None


def test_logic_process_signature(module):
    import inspect

    sig = inspect.signature(module.MedFusionLogic.process)
    expected = {"method": "cnn", "registration": "rigid", "device": "auto", "transformNode": None,
                "contributionVolume": None, "metricsTable": None, "progress": None}
    for name, default in expected.items():
        assert sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert sig.parameters[name].default == default
    assert list(sig.parameters)[:4] == ["self", "fixedVolume", "movingVolume", "outputVolume"]


def test_parameter_node_round_trips_through_the_logic(module):
    slicer_shim.new_scene()
    logic = module.MedFusionLogic()
    p = logic.getParameterNode()
    assert p.method == "cnn" and p.registration == "rigid" and p.device == "auto"
    assert logic.getParameterNode().parameterNode is p.parameterNode  # singleton


def test_cnn_options_only_reach_methods_that_take_them(module):
    import MedFusionLib

    dwt = MedFusionLib.get_method("dwt")  # has an integer 'level': must not get "feature"
    assert module.cnnOptions(dwt, "pixel", "l1", True) == {}
    assert module.cnnOptions(MedFusionLib.get_method("average"), "pixel", "l1", True) == {}
    from MedFusionLib.methods import cnn

    info = MedFusionLib.methods.MethodInfo(name="cnn", title="CNN", func=cnn.cnn_fusion,
                                           params={"level": "feature", "rule": "learned",
                                                   "model": "default", "enhance": False})
    assert module.cnnOptions(info, "pixel", "l1", True) == {"level": "pixel", "rule": "l1",
                                                            "enhance": True}


def test_gui_choices_match_the_engine(module):
    from MedFusionLib import normalize, registration
    from MedFusionLib.methods import cnn

    assert set(module.REGISTRATION_MODES) == set(registration.REGISTRATION_MODES)
    assert module.CNN_LEVELS == cnn.LEVELS
    assert module.CNN_RULES == cnn.RULES
    assert module.MODALITIES[0] == "auto" and module.MODALITIES[1:] == normalize.MODALITIES


def test_synthetic_pair_has_the_stated_misalignment(module):
    import numpy as np

    mr, ct, mr_m, ct_m, ct_to_mr = module.makeSyntheticPair()
    assert mr.shape == ct.shape and ct.dtype == np.int16
    # the CT voxel showing the lesion centre (anatomy at RAS (-14, 12, -6)) sits at
    # ct_to_mr^-1 applied to that point
    lesion_ct_ras = np.linalg.inv(ct_to_mr) @ np.array([-14.0, 12.0, -6.0, 1.0])
    ijk = np.round(np.linalg.inv(ct_m) @ lesion_ct_ras).astype(int)[:3]
    assert ct[ijk[2], ijk[1], ijk[0]] > 50  # lesion (70 HU), not brain (35 HU)
    ijk_mr = np.round(np.linalg.inv(mr_m) @ np.array([-14.0, 12.0, -6.0, 1.0])).astype(int)[:3]
    assert mr[ijk_mr[2], ijk_mr[1], ijk_mr[0]] > 500


# -------------------------------------------------------------------------------------------------
# .ui contract
# -------------------------------------------------------------------------------------------------

def _ui_widgets():
    tree = ET.parse(UI_FILE)
    widgets = {}
    for w in tree.iter("widget"):
        props = {}
        for prop in w.findall("property"):
            child = list(prop)[0] if len(prop) else None
            if child is None:
                continue
            if child.tag == "stringlist":
                props[prop.get("name")] = [s.text for s in child.findall("string")]
            else:
                props[prop.get("name")] = child.text
        widgets[w.get("name")] = (w.get("class"), props)
    return tree, widgets


def _parameter_fields():
    """{field: annotation source} of MedFusionParameterNode, read from the source (no shim)."""
    tree = ast.parse(MODULE_PY.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "MedFusionParameterNode":
            return {stmt.target.id: ast.unparse(stmt.annotation) for stmt in node.body
                    if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError("MedFusionParameterNode not found")


def test_every_slicer_parameter_name_is_a_parameter_and_fits_its_widget():
    _, widgets = _ui_widgets()
    fields = _parameter_fields()
    bound = {props["SlicerParameterName"]: (name, cls, props)
             for name, (cls, props) in widgets.items() if "SlicerParameterName" in props}
    assert bound, "no widget is bound to the parameter node"
    for param, (name, cls, props) in bound.items():
        assert param in fields, f"{name}: SlicerParameterName '{param}' is not a parameter"
        annotation = fields[param]
        if annotation.startswith("vtkMRML"):
            assert cls == "qMRMLNodeComboBox", name
            assert props["nodeTypes"] == [annotation], name
        elif cls == "QComboBox":  # str <-> QComboBox needs a Choice annotation in Slicer
            assert "Choice(" in annotation, f"{param}: a QComboBox binding needs Choice"
        elif cls == "QCheckBox":
            assert annotation == "bool", param
        else:
            raise AssertionError(f"{name}: no GUI connector binds {cls} to {annotation}")
    # node parameters are all editable in the panel
    for field, annotation in fields.items():
        if annotation.startswith("vtkMRML"):
            assert field in bound, f"node parameter {field} has no widget"


def test_every_ui_name_used_by_the_code_exists():
    _, widgets = _ui_widgets()
    used = set(re.findall(r"\bui\.(\w+)", MODULE_PY.read_text()))
    assert {"applyButton", "cancelButton", "progressBar", "methodComboBox"} <= used
    missing = used - set(widgets)
    assert not missing, f"self.ui names not in the .ui file: {sorted(missing)}"


def test_every_mrml_widget_receives_the_scene():
    tree, widgets = _ui_widgets()
    receivers = {c.findtext("receiver") for c in tree.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
                 and c.findtext("sender") == "MedFusion"}
    mrml = {name for name, (cls, _) in widgets.items() if cls.startswith("qMRML") and cls != "qMRMLWidget"}
    assert mrml and mrml <= receivers
    root = tree.getroot().find("widget")
    assert root.get("class") == "qMRMLWidget" and root.get("name") == "MedFusion"


def test_module_file_imports_no_engine_or_torch_at_top_level():
    """Slicer loads every module at start-up: MedFusion.py must import without torch, scipy or
    PyWavelets (installed on first use), so MedFusionLib is imported inside functions only."""
    tree = ast.parse(MODULE_PY.read_text())
    top = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            top += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            top.append((node.module or "").split(".")[0])
    assert not {"MedFusionLib", "torch", "scipy", "pywt", "PyTorchUtils"} & set(top), top


# -------------------------------------------------------------------------------------------------
# CMake packaging contract
# -------------------------------------------------------------------------------------------------

def _cmake_set(text: str, var: str) -> list[str]:
    m = re.search(rf"set\(\s*{var}\s+(.*?)\)", text, re.S)
    assert m, var
    return [t for t in m.group(1).split() if not t.startswith("#")]


def test_module_cmake_lists_existing_files():
    text = MODULE_CMAKE.read_text()
    name = _cmake_set(text, "MODULE_NAME")[0]
    assert name == "MedFusion"
    for var in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        for entry in _cmake_set(text, var):
            path = MODULE_CMAKE.parent / entry.replace("${MODULE_NAME}", name)
            assert path.is_file(), f"{var} lists {entry}, which does not exist"
    assert re.search(r"slicerMacroBuildScriptedModule\((?s:.*?)WITH_GENERIC_TESTS", text)
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)


def _globs(text: str, var: str) -> list[str]:
    m = re.search(rf"file\(GLOB(?:_RECURSE)?\s+{var}\s+RELATIVE\s+\S+\s+CONFIGURE_DEPENDS(.*?)\)", text, re.S)
    assert m, var
    return [g.replace("${MEDFUSION_SOURCE_ROOT}/", "") for g in m.group(1).split()]


def test_every_engine_and_model_file_is_packaged():
    """Every file Slicer needs from MedFusionLib/ and models/ is matched by the CMake globs."""
    text = MODULE_CMAKE.read_text()
    lib_globs = _globs(text, "MEDFUSIONLIB_FILES")
    model_globs = _globs(text, "MEDFUSION_MODEL_FILES")
    assert lib_globs == ["MedFusionLib/*"]
    assert "GLOB_RECURSE MEDFUSIONLIB_FILES" in text
    lib_files = [p.relative_to(ROOT).as_posix() for p in (ROOT / "MedFusionLib").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    assert "MedFusionLib/slicer_bridge/fuse.py" in lib_files
    assert all(fnmatch.fnmatch(f, lib_globs[0]) for f in lib_files)
    model_files = [p.relative_to(ROOT).as_posix() for p in (ROOT / "models").iterdir() if p.is_file()]
    unmatched = [f for f in model_files if not any(fnmatch.fnmatch(f, g) for g in model_globs)]
    assert not unmatched, f"model files the extension would not ship: {unmatched}"
    # the engine is copied with SOURCE_DIR = repository root, so relative paths are kept:
    # qt-scripted-modules/MedFusionLib/... and qt-scripted-modules/models/...
    assert re.search(r"ctkMacroCompilePythonScript\((?s:.*?)SOURCE_DIR \$\{MEDFUSION_SOURCE_ROOT\}", text)
    from MedFusionLib.nets import weights

    assert Path(weights.__file__).resolve().parents[2] / "models" == (ROOT / "models").resolve()


def test_extension_cmake_metadata():
    text = TOP_CMAKE.read_text()
    assert re.search(r"^project\(MedFusion\)", text, re.M)
    assert re.search(r"add_subdirectory\(MedFusion\)", text)
    meta = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                "EXTENSION_DEPENDS"):
        assert meta.get(key), key
    assert "PyTorch" in meta["EXTENSION_DEPENDS"].split()
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in meta[key].split():
            local = url.split("/main/", 1)[1]
            assert (ROOT / local).is_file(), f"{key} points at {local}, which is not in the repository"
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


# "Firstname Lastname (Organization)", comma separated: the form of Slicer's extension template
_CONTRIBUTOR = r"[^,()]+ \([^()]+\)"


def test_metadata_follows_the_extension_index_conventions(module):
    """#14 defect 8: contributors in Slicer's "Name (Organization)" form, only variables that
    Slicer's extension description template and catalog know, supported versions stated."""
    text = TOP_CMAKE.read_text()
    meta = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    assert re.fullmatch(rf"{_CONTRIBUTOR}(, {_CONTRIBUTOR})*", meta["EXTENSION_CONTRIBUTORS"])
    known = {"EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
             "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
             "EXTENSION_DEPENDS", "EXTENSION_STATUS", "EXTENSION_ENABLED", "EXTENSION_TIER",
             "EXTENSION_BUILD_SUBDIRECTORY", "EXTENSION_DICOM_SUPPORT_RULE"}
    assert set(re.findall(r"set\((EXTENSION_\w+)", text)) <= known
    assert "5.10 and 5.12" in meta["EXTENSION_DESCRIPTION"]
    assert re.search(r'VERSION_LESS "5\.10"\)\s*\n\s*message\(FATAL_ERROR', text)
    parent = types.SimpleNamespace()
    module.MedFusion(parent)
    assert all(re.fullmatch(_CONTRIBUTOR, c) for c in parent.contributors)
    assert "5.10 and 5.12" in parent.helpText
    # Slicer bundles scipy: the module must not say otherwise, nor install it
    source = MODULE_PY.read_text()
    assert "scipy" not in module.ENGINE_REQUIREMENTS
    assert not re.search(r"scipy[^\n]*(not bundle|lacks|does not (ship|have))", source, re.I)


def test_engine_imports_with_only_what_slicer_has_plus_engine_requirements(module):
    """Slicer bundles numpy, scipy and SimpleITK; the module installs ENGINE_REQUIREMENTS on first use.
    The engine path the module runs must import with nothing else (no torch, matplotlib, ...)."""
    import subprocess
    import sys

    # Slicer 5.10 and 5.12 bundle numpy, scipy, pydicom and SimpleITK; only PyWavelets is missing
    assert set(module.ENGINE_REQUIREMENTS) == {"pywt"}
    blocked = ["torch", "torchvision", "matplotlib", "nilearn", "PIL", "tqdm", "pandas",
               "skimage", "requests"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import MedFusionLib, MedFusionLib.slicer_bridge, MedFusionLib.pipeline, MedFusionLib.metrics\n"
        "assert 'maximum' in MedFusionLib.list_methods()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# -------------------------------------------------------------------------------------------------
# #14 defect 7: the self-test never installs unasked
# -------------------------------------------------------------------------------------------------

@pytest.fixture
def engine_missing(module, monkeypatch):
    """As in a Slicer without PyWavelets: the engine requirement is not importable; installing
    is recorded instead of done."""
    monkeypatch.setattr(module, "ENGINE_REQUIREMENTS", {"medfusion_absent_for_test": "PyWavelets>=1.5"})
    installs = []
    monkeypatch.setattr(module.MedFusionLogic, "installPythonRequirements",
                        lambda self: installs.append("install"))
    return installs


def test_self_test_in_testing_mode_skips_with_a_message_and_installs_nothing(module, engine_missing, caplog):
    import logging
    import unittest

    slicer_shim.new_scene()
    case = module.MedFusionTest()
    with caplog.at_level(logging.WARNING):
        case.runTest()  # Reload & Test / SelfTests path
    assert "self-test skipped" in caplog.text and "PyWavelets>=1.5" in caplog.text
    # ctest path (unittest): reported as skipped, with the reason
    result = unittest.TestResult()
    module.MedFusionTest("test_MedFusionColour").run(result)
    assert len(result.skipped) == 1 and "PyWavelets" in result.skipped[0][1]
    assert not result.errors and not result.failures
    assert engine_missing == []


@pytest.mark.parametrize("answer", [False, True])
def test_self_test_outside_testing_mode_asks_before_installing(module, engine_missing, monkeypatch,
                                                               answer):
    import slicer

    asked = []
    monkeypatch.setattr(slicer.app.testingEnabled, "return_value", False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay",
                        lambda text, **kwargs: asked.append(text) or answer)
    slicer_shim.new_scene()
    case = module.MedFusionTest()
    assert case._engineReady() is False  # declined, or installed but still not importable here
    assert len(asked) == 1 and "PyWavelets>=1.5" in asked[0]
    assert engine_missing == (["install"] if answer else [])

"""The Slicer module itself: its self-test under slicer-core, and the contracts that the real
application relies on but cannot be exercised here (.ui bindings, CMake packaging lists)."""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import inspect
import json
import logging
import re
import subprocess
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import slicer

import MedFusionLib
import slicer_shim
from MedFusionLib import normalize, registration
from MedFusionLib.methods import cnn
from MedFusionLib.nets import weights
from MedFusionLib.slicer_bridge.testing import synthetic_head_pair

ROOT = slicer_shim.ROOT
MODULE_PY = ROOT / "MedFusion" / "MedFusion.py"
UI_FILE = ROOT / "MedFusion" / "Resources" / "UI" / "MedFusion.ui"
MODULE_CMAKE = ROOT / "MedFusion" / "CMakeLists.txt"
TOP_CMAKE = ROOT / "CMakeLists.txt"


@pytest.fixture(scope="module")
def module():
    slicer_shim.new_scene()
    return slicer_shim.import_module_under_shim()


@pytest.fixture
def offline_module():
    """The module as on a factory machine without network: SampleData cannot download."""
    slicer_shim.new_scene()
    yield slicer_shim.import_module_under_shim(offline=True)
    slicer_shim.import_module_under_shim()


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


@pytest.mark.slow
@pytest.mark.requires_torch  # without torch the CNN part is skipped too (with its reason)
def test_self_test_offline_skips_only_the_download_and_says_why(offline_module, caplog):
    """On a machine without network (Slicer's factory machines) every test but the CTMRBrain
    download runs; that one is reported as skipped with the reason, through runTest and unittest."""
    slicer_shim.new_scene()
    case = offline_module.MedFusionTest()
    with caplog.at_level(logging.WARNING):
        case.runTest()
    assert "test_MedFusionSampleDataCTMRBrain skipped: SampleData could not download CTMRBrain" in caplog.text
    skipped = [line.split(" skipped: ")[0].split()[-1] for line in caplog.text.splitlines()
               if " skipped: " in line]
    # torch is installed here, so the CNN part ran; the panel test needs the main window
    assert skipped == ["test_MedFusionSampleDataCTMRBrain", "test_MedFusionWidget"]
    result = unittest.TestResult()
    offline_module.MedFusionTest("test_MedFusionSampleDataCTMRBrain").run(result)
    assert len(result.skipped) == 1
    assert "could not download CTMRBrain" in result.skipped[0][1] and "name resolution" in result.skipped[0][1]
    assert not result.errors and not result.failures


@pytest.mark.requires_torch
def test_cnn_part_of_the_self_test_runs_where_torch_is_installed(module):
    """The CNN part is skipped only where torch does not import; here it does (torch is a
    dependency of the package), so it must really run."""
    slicer_shim.new_scene()
    case = module.MedFusionTest()
    case.setUp()
    case.test_MedFusionCNN()
    assert slicer.util.getNode("contribution").GetImageData() is not None


def test_logic_process_signatures(module):
    sig = inspect.signature(module.MedFusionLogic.process)
    assert list(sig.parameters)[:4] == ["self", "fixedVolume", "movingVolume", "outputVolume"]
    assert sig.parameters["outputVolume"].default is None
    sig = inspect.signature(module.MedFusionLogic.processAsync)
    for name in ("progress", "done", "timer"):
        assert sig.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert sig.parameters[name].default is None


def test_parameter_node_round_trips_through_the_logic(module):
    slicer_shim.new_scene()
    logic = module.MedFusionLogic()
    p = logic.getParameterNode()
    assert p.method == "" and p.registration == "auto" and p.device == "auto" and p.display == "auto"
    assert logic.getParameterNode().parameterNode is p.parameterNode  # singleton


def test_cnn_options_only_reach_methods_that_take_them(module):
    dwt = MedFusionLib.get_method("dwt")  # has an integer 'level': must not get "feature"
    assert module.cnnOptions(dwt, "pixel", "l1", True) == {}
    assert module.cnnOptions(MedFusionLib.get_method("average"), "pixel", "l1", True) == {}
    info = MedFusionLib.methods.MethodInfo(name="cnn", title="CNN", func=cnn.cnn_fusion,
                                           params={"level": "feature", "rule": "learned",
                                                   "model": "default", "enhance": False})
    assert module.cnnOptions(info, "pixel", "l1", True) == {"level": "pixel", "rule": "l1",
                                                            "enhance": True}


def test_gui_choices_match_the_engine(module):
    assert set(module.REGISTRATION_MODES) == {"auto"} | set(registration.REGISTRATION_MODES)
    assert module.CNN_LEVELS == cnn.LEVELS
    assert module.CNN_RULES == cnn.RULES
    assert module.MODALITIES[0] == "auto" and module.MODALITIES[1:] == normalize.MODALITIES


def test_synthetic_pair_has_the_stated_misalignment():
    mr, ct, mr_m, ct_m, ct_to_mr = synthetic_head_pair()
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


def test_module_file_imports_no_torch_or_pywavelets_at_top_level():
    """Slicer loads every module at start-up: MedFusion.py imports the engine (which needs only
    what Slicer bundles) but never torch, PyWavelets or the PyTorch extension at its top."""
    tree = ast.parse(MODULE_PY.read_text())
    top = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            top += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            top.append((node.module or "").split(".")[0])
    assert "MedFusionLib" in top
    assert not {"torch", "pywt", "PyTorchUtils", "SampleData"} & set(top), top


def test_module_file_holds_module_parameter_node_widget_logic_test_only():
    """As Slicer's template: the classes Module, ParameterNode, Widget, Logic, Test, in that
    order; test helpers live in MedFusionLib.slicer_bridge.testing."""
    tree = ast.parse(MODULE_PY.read_text())
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == ["MedFusion", "MedFusionParameterNode", "MedFusionWidget", "MedFusionLogic",
                       "MedFusionTest"]
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert not {"makeSyntheticPair", "mutualInformation"} & functions


def test_a_source_checkout_exposes_only_the_engine(tmp_path):
    """#21: MedFusion.py finds MedFusionLib in a source checkout without putting the repository
    root on sys.path (models, bench, Testing, docs stay unimportable)."""
    tree = ast.parse(MODULE_PY.read_text())
    loader = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                  and n.name == "_loadEngineFromSourceCheckout")
    code = "\n".join([
        "import importlib.util, os, sys",
        # hide the editable install, as in a Slicer that has only the checkout
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()"
        " and 'editable' not in repr(f).lower()]",
        "sys.path = [p for p in sys.path if os.path.abspath(p or '.') != %r]" % str(ROOT),
        "assert importlib.util.find_spec('MedFusionLib') is None",
        "__file__ = %r" % str(MODULE_PY),
        ast.unparse(loader),
        "_loadEngineFromSourceCheckout()",
        "import MedFusionLib, MedFusionLib.slicer_bridge",
        "assert MedFusionLib.__file__.startswith(%r)" % str(ROOT / "MedFusionLib"),
        "print([n for n in ('models', 'bench', 'Testing', 'docs') if importlib.util.find_spec(n)])",
    ])
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


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
    requirements = (ROOT / "MedFusion" / "Resources" / "requirements.txt").read_text()
    assert not re.search(r"^(scipy|numpy|SimpleITK|pydicom|torch)", requirements, re.M | re.I)
    assert not re.search(r"scipy[^\n]*(not bundle|lacks|does not (ship|have))", source, re.I)


def test_engine_imports_with_only_what_slicer_bundles(module):
    """Slicer bundles numpy, scipy, pydicom and SimpleITK; nothing else is needed to load the
    panel and fuse with the methods that need no extra package (#20: a fresh Slicer works)."""
    assert module.MedFusionLogic().missingPackages("maximum") == []
    requirements = (ROOT / "MedFusion" / "Resources" / "requirements.txt").read_text().splitlines()
    assert [r for r in requirements if r and not r.startswith("#")] == ["PyWavelets>=1.5"]
    blocked = ["torch", "torchvision", "matplotlib", "nilearn", "pywt", "PIL", "tqdm", "pandas",
               "skimage", "requests", "dask", "distributed"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import MedFusionLib, MedFusionLib.slicer_bridge, MedFusionLib.pipeline, MedFusionLib.metrics\n"
        "import numpy as np, SimpleITK as sitk\n"
        "names = MedFusionLib.list_methods()\n"
        "assert {'cnn', 'dwt', 'nsct', 'maximum'} <= set(names), names\n"
        "assert MedFusionLib.default_method() == 'maximum'\n"
        "a = sitk.GetImageFromArray(np.random.default_rng(0).random((4, 32, 32)).astype('float32'))\n"
        "for m in ('average', 'maximum', 'pca', 'msvd'):\n"
        "    MedFusionLib.fuse_images(a, a, method=m, registration='none', fixed_modality='MR', moving_modality='MR')\n"
        "try:\n"
        "    MedFusionLib.fuse_images(a, a, method='dwt', registration='none', fixed_modality='MR', moving_modality='MR')\n"
        "except MedFusionLib.MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "method 'dwt' needs PyWavelets, which is not installed" in done.stdout


# -------------------------------------------------------------------------------------------------
# #20: packages are asked for only when a method that needs them is applied
# -------------------------------------------------------------------------------------------------

@pytest.fixture
def without(monkeypatch):
    """Make optional packages look absent (as in a fresh Slicer)."""
    def _without(*names):
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
    return _without


def test_nothing_is_installed_for_a_method_that_needs_nothing(module, without, monkeypatch):
    without("pywt", "torch")
    monkeypatch.setattr(slicer.app.testingEnabled, "return_value", False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: pytest.fail("installed"))
    assert module.MedFusionLogic().ensurePackages("maximum", confirm=lambda *a: pytest.fail("asked"))


def test_testing_mode_never_installs(module, without, monkeypatch):
    without("pywt")
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: pytest.fail("installed"))
    assert module.MedFusionLogic().ensurePackages("dwt", confirm=lambda *a: True) is False


@pytest.mark.parametrize("answer", [False, True])
def test_slicer_5_10_asks_before_installing_pywavelets(module, without, monkeypatch, answer):
    without("pywt")
    monkeypatch.setattr(slicer.app.testingEnabled, "return_value", False)
    monkeypatch.setattr(module, "packaging", None)
    installed, asked = [], []
    monkeypatch.setattr(slicer.util, "pip_install", lambda req, **k: installed.append(req))
    ok = module.MedFusionLogic().ensurePackages(
        "dwt", confirm=lambda text, title: asked.append(text) or answer)
    assert len(asked) == 1 and "PyWavelets>=1.5" in asked[0]
    assert installed == (["PyWavelets>=1.5"] if answer else [])
    assert ok is False  # declined, or "installed" by the stand-in but still not importable here


@pytest.mark.parametrize("decline", [False, True])
def test_slicer_5_12_uses_pip_ensure_with_the_requirements_file(module, without, monkeypatch, decline):
    import fake_slicer

    without("pywt")
    monkeypatch.setattr(slicer.app.testingEnabled, "return_value", False)
    packaging = fake_slicer.packaging_module()
    packaging.decline = decline
    monkeypatch.setattr(module, "packaging", packaging)
    module.MedFusionLogic().ensurePackages("dwt", confirm=lambda *a: pytest.fail("pip_ensure asks"))
    assert packaging.ensured == [{"requirements": ["PyWavelets>=1.5"], "requester": "MedFusion"}]


def test_pytorch_comes_through_the_pytorch_extension_after_asking(module, without, monkeypatch):
    without("torch")
    monkeypatch.setattr(slicer.app.testingEnabled, "return_value", False)
    installed = []
    extension = types.ModuleType("PyTorchUtils")
    extension.PyTorchUtilsLogic = lambda: types.SimpleNamespace(
        torchInstalled=lambda: False,
        installTorch=lambda **kwargs: installed.append(kwargs) or object())
    monkeypatch.setitem(sys.modules, "PyTorchUtils", extension)
    logic = module.MedFusionLogic()
    assert logic.ensurePackages("cnn", confirm=lambda text, title: False) is False
    assert installed == []
    logic.ensurePackages("cnn", confirm=lambda text, title: "PyTorch" in text)
    assert installed == [{"askConfirmation": False, "torchVersionRequirement": ">=2.0"}]


# -------------------------------------------------------------------------------------------------
# #20: sample data, extension index entry, Slicer 5.10 pins
# -------------------------------------------------------------------------------------------------

def test_demo_pairs_are_registered_with_sample_data_offline(module):
    """The bundled demo pairs ship with the module (CMake resources) and are registered from
    local files with their SHA-256, so a user can try the module offline in one click."""
    slicer_shim.new_scene()
    module.registerSampleData()
    sources = {s.sampleName: s for s in slicer.modules.sampleDataSources["MedFusion"]}
    resources = _cmake_set(MODULE_CMAKE.read_text(), "MODULE_PYTHON_RESOURCES")
    for sampleName, fileNames, nodeNames in module.SAMPLE_DATA:
        source = sources[sampleName]
        assert source.fileNames == list(fileNames) and source.nodeNames == list(nodeNames)
        for uri, name, checksum in zip(source.uris, fileNames, source.checksums):
            path = ROOT / "MedFusion" / "Resources" / "SampleData" / name
            assert uri == path.as_uri()
            assert checksum == "SHA256:" + hashlib.sha256(path.read_bytes()).hexdigest()
            assert f"Resources/SampleData/{name}" in resources
        assert Path(source.thumbnailFileName).is_file()


def test_extension_index_entry_agrees_with_cmake():
    """MedFusion.json (the ExtensionsIndex entry draft, catalog schema 1.0.x) names what
    CMakeLists.txt does: category, build dependencies, the repository."""
    entry = json.loads((ROOT / "MedFusion.json").read_text())
    meta = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', TOP_CMAKE.read_text()))
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-v1.0.")
    assert entry["category"] == meta["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == meta["EXTENSION_DEPENDS"].split() == ["PyTorch"]
    assert entry["scm_url"].startswith("https://github.com/") and entry["scm_url"].endswith(".git")
    assert meta["EXTENSION_HOMEPAGE"].startswith(entry["scm_url"][:-len(".git")])
    assert entry["scm_revision"] and entry["tier"] in (1, 3, 5)
    # the properties of schema v1.0.1 (the newest that both the 5.10 and 5.12 indexes know)
    assert set(entry) <= {"$schema", "category", "scm_url", "scm_revision", "scm_type",
                          "build_dependencies", "build_subdirectory", "enabled", "tier"}


def test_slicer_5_10_pins_are_what_5_10_bundles():
    pins = dict(line.split("==") for line in (ROOT / "Testing" / "slicer-5.10-pins.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins == {"numpy": "2.0.2", "scipy": "1.13.1", "pydicom": "2.4.4", "SimpleITK": "2.5.2"}

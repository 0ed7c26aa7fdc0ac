"""Shared pytest fixtures: seeded RNG, small 2D/3D phantoms, the ITK example slices.

Tests marked ``requires_gpu`` run only where torch sees a CUDA device (the lent GPU machine);
elsewhere they are reported as skipped with the reason, never silently passed.

Tests marked ``requires_torch`` need PyTorch. Torch is a dependency of the package, so a run
without it is refused unless those tests are deselected explicitly (``-m "not requires_torch"``,
as the Makefile's run against 3D Slicer 5.10's package versions does); they are never skipped.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


# dicom3tools fetched by `make data` (Testing/fetch-dicom3tools.sh) live here, not on the system
_TOOLS = Path(os.environ.get("MEDFUSION_DATA", Path(__file__).resolve().parent.parent / ".data")) / "tools" / "bin"
if _TOOLS.is_dir():
    os.environ["PATH"] = f"{_TOOLS}{os.pathsep}{os.environ.get('PATH', '')}"


_NO_TORCH = importlib.util.find_spec("torch") is None
_TOP_LEVEL_TORCH = ("import torch", "from torch", 'torch = pytest.importorskip("torch")')


@functools.lru_cache(maxsize=None)
def _module_needs_torch(path: str) -> bool:
    """A test module that imports torch at its top level needs torch for every test in it."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    return any(line.startswith(_TOP_LEVEL_TORCH) for line in lines)


def pytest_configure(config):
    if _NO_TORCH and "not requires_torch" not in (config.getoption("markexpr") or ""):
        raise pytest.UsageError(
            "torch is not installed, so the tests marked requires_torch cannot run; install the "
            "package's dependencies (make setup), or deselect them with -m 'not requires_torch'."
        )


def pytest_ignore_collect(collection_path, config):
    if _NO_TORCH and collection_path.suffix == ".py" and _module_needs_torch(str(collection_path)):
        return True  # it cannot even be imported, and this run deselects requires_torch
    return None


@pytest.hookimpl(tryfirst=True)  # markers first, so that -m sees them
def pytest_collection_modifyitems(config, items):
    from MedFusionLib.devices import cuda_available

    for item in items:
        if _module_needs_torch(str(item.path)):
            item.add_marker(pytest.mark.requires_torch)

    if cuda_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA device (run on the GPU machine)")
    for item in items:
        if "requires_gpu" in item.keywords:
            item.add_marker(no_gpu)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def make_phantom_2d(shape=(96, 80), seed=0) -> np.ndarray:
    """A head-like 2D phantom in [0, 1]: an ellipse with inner structures and texture."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    cy, cx = shape[0] / 2, shape[1] / 2
    head = ((yy - cy) / (0.42 * shape[0])) ** 2 + ((xx - cx) / (0.40 * shape[1])) ** 2 <= 1
    img = 0.5 * head.astype(np.float32)
    for dy, dx, rad, val in ((-0.15, -0.1, 0.08, 0.9), (0.1, 0.12, 0.1, 0.25), (0.2, -0.15, 0.05, 0.7)):
        blob = (yy - cy - dy * shape[0]) ** 2 + (xx - cx - dx * shape[1]) ** 2 <= (rad * min(shape)) ** 2
        img[blob] = val
    img += 0.03 * r.standard_normal(shape).astype(np.float32) * head
    return np.clip(img, 0, 1).astype(np.float32)


def make_phantom_3d(shape=(24, 64, 56), seed=0) -> np.ndarray:
    """A 3D phantom in [0, 1]: the 2D phantom with structures that change along z."""
    r = np.random.default_rng(seed)
    vol = np.stack([make_phantom_2d(shape[1:], seed + k) for k in range(shape[0])])
    zz = np.arange(shape[0])[:, None, None]
    vol *= (0.6 + 0.4 * np.sin(np.pi * (zz + 1) / (shape[0] + 1))).astype(np.float32)
    return np.clip(vol + 0.01 * r.standard_normal(shape), 0, 1).astype(np.float32)


@pytest.fixture
def phantom2d():
    return make_phantom_2d()


@pytest.fixture
def phantom3d():
    return make_phantom_3d()


@pytest.fixture
def volume_image(phantom3d):
    """The 3D phantom as a SimpleITK image with anisotropic spacing and an oblique direction."""
    img = sitk.GetImageFromArray(phantom3d * 1000.0)
    img.SetSpacing((0.9, 0.9, 2.5))
    img.SetOrigin((-30.0, 12.5, 40.0))
    rot = sitk.VersorTransform((0.1, 0.2, 0.3), 0.3).GetMatrix()
    img.SetDirection(rot)
    return img


@pytest.fixture(scope="session")
def itk_data():
    """Folder of the ITK example slices (fetched by `make data`); fails loudly when missing."""
    from MedFusionLib.datasets import itk_example

    return itk_example("BrainT1Slice.png").parent


@pytest.fixture
def small_inputs(tmp_path, monkeypatch) -> Path:
    """A folder (also the current one) with two small volumes and two 8-bit PNGs, the inputs of
    the integrity tests (issue #25): ``a.nii.gz`` and ``b.nii.gz`` (5 x 24 x 24 float32),
    ``p.png`` and ``q.png`` (32 x 32)."""
    for name, seed, scale in (("a.nii.gz", 0, 1000.0), ("b.nii.gz", 1, 800.0)):
        arr = (make_phantom_3d((5, 24, 24), seed) * scale).astype(np.float32)
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / name))
    for name, seed in (("p.png", 2), ("q.png", 3)):
        arr = (make_phantom_2d((32, 32), seed) * 255).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / name))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def closed_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Cases of the synthetic atlas folder (:func:`make_atlas_folder`): ``(case, slices)``.
ATLAS_CASES = ((1, (3, 4, 5)), (2, (3, 4)), (3, (6, 7)), (14, (10, 11)))


def make_atlas_folder(root, size: int = 64) -> dict:
    """A small folder in the Harvard atlas layout (:mod:`MedFusionLib.aanlib`), synthetic images.

    Every pair type gets the cases :data:`ATLAS_CASES` (file ``<case><slice:03d>.png``): an 8-bit
    grey MR-like phantom with a CT-like partner (bright ring) and a pseudo-colour (heat table)
    PET/SPECT-like partner with a hot spot. The first slice of each case is also copied to the
    repository-style ``MyDatasets/<folder>/test`` and the others to ``.../train``. Returns the
    split (case 1 and 14 train, 2 val, 3 test) as a dict.
    """
    from MedFusionLib.colour import apply_colour_table

    root = Path(root)
    folders = (("CT-MRI", "CT"), ("PET-MRI", "PET"), ("SPECT-MRI", "SPECT"))
    for folder, other in folders:
        for case, slices in ATLAS_CASES:
            for k, z in enumerate(slices):
                mr = make_phantom_2d((size, size), seed=case * 100 + z)
                yy, xx = np.mgrid[:size, :size]
                r = np.hypot(yy - size / 2, xx - size / 2)
                if other == "CT":
                    img = np.where(np.abs(r - 0.4 * size) < 2, 1.0, 0.3 * mr)
                    arr = np.round(255 * img).astype(np.uint8)
                    vector = False
                else:
                    spot = np.hypot(yy - size / 2 - case, xx - size / 3) < 5
                    uptake = np.clip(0.5 * (mr > 0.1) + 0.5 * spot, 0, 1)
                    arr = np.round(255 * apply_colour_table(uptake, "heat")).astype(np.uint8)
                    vector = True
                name = f"{case}{z:03d}.png"
                for sub, data, vec in (("MRI", np.round(255 * mr).astype(np.uint8), False),
                                       (other, arr, vector)):
                    paths = [root / folder / sub,
                             root / "MyDatasets" / folder / ("test" if k == 0 else "train") / sub]
                    for d in paths:
                        d.mkdir(parents=True, exist_ok=True)
                        sitk.WriteImage(sitk.GetImageFromArray(data, isVector=vec), str(d / name))
    parts = {"train": [1, 14], "val": [2], "test": [3]}
    return {"pair_types": {key: dict(parts) for key in ("ct-mr", "pet-mr", "spect-mr")}}

"""3D registration converges on large misalignments and says when it did not.

Pairs built from the shipped sample data (MNI152 T1, synthetic CT and PET; the Colin27 T1 that
`make data` fetches against a T2-like contrast from its tissue classes), down-sampled to 2 mm
to stay fast: large combined rotations and translations (the issue's (-9, 7, -15) deg with
(-15, 12, -10) mm, others near 30 deg / 50 mm and beyond, to 88 deg / 80 mm), a CT with neck, spine,
shoulders and couch
against a brain-only MR, anisotropic oblique 5 mm slices; misalignments outside the search are
flagged. The target error is the mean distance
over brain points between the transform found and the truth. The full grid of seeded random
transforms is bench/bench_registration.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MedFusionLib.datasets import data_dir, sample_volumes
from MedFusionLib.io import copy_geometry
from MedFusionLib.normalize import normalize
from MedFusionLib.registration import cases, register

#: 3D registrations of several seconds each: not in the quick (pinned-versions) run.
pytestmark = pytest.mark.slow

TOLERANCE_MM = 0.5


def _norm(img, modality):
    arr, _ = normalize(img, modality)
    return copy_geometry(arr, img)


@pytest.fixture(scope="module")
def vols():
    """The sample volumes at 2 mm, normalised to [0, 1] as the pipeline registers them."""
    v = sample_volumes()
    ct = sitk.BinShrink(v["ct"], [2, 2, 2])
    # Colin27 (a different subject; fetched by `make data`) and its T2-like contrast
    colin_t1, colin_t2 = cases.colin_t1_t2(data_dir() / "mricron" / "ch2bet.nii.gz")
    return {"mr": sitk.BinShrink(v["mr_t1"], [2, 2, 2]), "ct": ct, "pet": sitk.BinShrink(v["pet"], [2, 2, 2]),
            "ct_neck": cases.ct_with_neck_and_couch(ct),
            "colin_t1": sitk.BinShrink(colin_t1, [2, 2, 2]), "colin_t2": sitk.BinShrink(colin_t2, [2, 2, 2])}


@pytest.fixture(scope="module")
def brain(vols):
    return cases.brain_points(vols["mr"], step=40)


OBLIQUE = sitk.VersorTransform((0.2, 0.1, 0.9), np.radians(12)).GetMatrix()

CASES = {
    # name: (fixed, moving source, moving modality, angles deg, shift mm, moving grid)
    "ct-mr issue case": ("mr", "ct", "CT", (-9, 7, -15), (-15, 12, -10), dict(spacing=(2.0, 2.0, 3.0))),
    "ct-mr near 30 deg / 50 mm": ("mr", "ct", "CT", (28, -26, 29), (30, -28, 26), dict(spacing=(2.0, 2.0, 3.0))),
    "pet-mr near 30 deg / 50 mm": ("mr", "pet", "PET", (-27, 24, -22), (-35, 20, 28), dict(spacing=(2.5, 2.5, 2.5))),
    "brain-only mr vs ct with neck and couch": ("mr_brain", "ct_neck", "CT", (22, -18, 26), (-25, 30, 27),
                                                dict(spacing=(2.0, 2.0, 3.0))),
    "colin27 t1 vs t2-like": ("colin_t1", "colin_t2", "MR", (19, 27, -24), (-28, -30, 25),
                              dict(spacing=(2.0, 2.0, 3.0))),
    "anisotropic oblique 5 mm mr vs ct": ("ct", "mr", "MR", (-24, 17, 21), (33, -22, -28),
                                          dict(spacing=(1.0, 1.0, 5.0), direction=OBLIQUE)),
    # beyond the 30 deg / 50 mm: the search covers every orientation (#22)
    "ct-mr near 55 deg / 80 mm": ("mr", "ct", "CT", (-52, 48, 41), (-46, 50, 44), dict(spacing=(2.0, 2.0, 3.0))),
    "ct-mr 88 / 73 deg, gimbal lock of the Euler angles": ("mr", "ct", "CT", (88, 73, 13), (20, -25, 22),
                                                         dict(spacing=(2.0, 2.0, 3.0))),
    "brain-only mr vs ct with neck tilted 49 deg": ("mr_brain", "ct_neck", "CT", (-8, -49, 3), (-18, -12, -6),
                                                    dict(spacing=(2.0, 2.0, 3.0))),
    "brain-only mr vs ct with neck, 45 deg / 70 mm": ("mr_brain", "ct_neck", "CT", (40, -44, 33), (38, -41, -43),
                                                      dict(spacing=(2.0, 2.0, 3.0))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_large_misalignment_converges_within_half_a_mm(vols, brain, name):
    fixed_key, source, modality, angles, shift, grid = CASES[name]
    truth = cases.rigid(angles, shift)
    fixed_src = cases.brain_only(vols["mr"]) if fixed_key == "mr_brain" else vols[fixed_key]
    fixed = _norm(fixed_src, "CT" if fixed_key == "ct" else "MR")
    moving = _norm(cases.moved_copy(vols[source], truth, **grid), modality)
    result = register(fixed, moving, mode="rigid")
    points = cases.brain_points(vols["colin_t1"], step=40) if fixed_key == "colin_t1" else brain
    mean, worst = cases.tre(result.transform, truth, points)
    assert mean < TOLERANCE_MM, f"{name}: mean TRE {mean:.2f} mm (max {worst:.2f})"
    assert result.converged and result.confidence == "high", result.confidence_reason
    assert result.start == "global search"


def test_a_misalignment_beyond_the_search_is_flagged_not_passed_off(vols, brain):
    """A half turn about the vertical axis plus 60 deg (beyond the 90 deg grid): whatever the
    optimiser finds, a result off by more than the tolerance must say low confidence."""
    truth = cases.rigid((60, -20, 160), (20, -30, 25))
    fixed = _norm(vols["mr"], "MR")
    moving = _norm(cases.moved_copy(vols["ct"], truth, spacing=(2.0, 2.0, 3.0)), "CT")
    result = register(fixed, moving, mode="rigid")
    mean, _ = cases.tre(result.transform, truth, brain)
    assert mean < TOLERANCE_MM or result.confidence == "low", (mean, result.confidence_reason)


def _unrelated(shape=(80, 100, 90), seed=5) -> sitk.Image:
    """A textured ellipsoid: something of head size that is not a head."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ell = ((zz - 40) / 34.0) ** 2 + ((yy - 50) / 45.0) ** 2 + ((xx - 45) / 38.0) ** 2 <= 1
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 3) > 0
    img = sitk.GetImageFromArray(((0.8 * texture + 0.2) * ell).astype(np.float32))
    img.SetSpacing((2.0, 2.0, 2.0))
    img.SetOrigin((-90.0, -80.0, -50.0))
    return img


def test_unrelated_images_are_flagged(vols):
    result = register(_norm(vols["mr"], "MR"), _unrelated(), mode="rigid")
    assert not result.converged and result.confidence == "low"
    assert result.confidence_reason and "may have failed" in result.warning()
    d = result.to_dict()
    assert d["converged"] is False and d["confidence"] == "low" and d["confidence_reason"]


def test_same_transform_with_one_and_two_itk_threads(vols, brain):
    truth = cases.rigid((12, -8, 15), (10, -14, 8))
    fixed = _norm(vols["mr"], "MR")
    moving = _norm(cases.moved_copy(vols["ct"], truth, spacing=(2.0, 2.0, 3.0)), "CT")
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    found = []
    try:
        for threads in (1, 2):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            found.append(register(fixed, moving, mode="rigid", seed=7).transform)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
    diff = max(np.linalg.norm(np.subtract(found[0].TransformPoint(tuple(p)), found[1].TransformPoint(tuple(p))))
               for p in brain)
    assert diff < 1e-6, f"1 vs 2 ITK threads differ by {diff:.2e} mm"
    assert cases.tre(found[0], truth, brain)[0] < TOLERANCE_MM

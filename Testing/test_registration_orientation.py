"""Registration finds any orientation (180 degree flips, 90 degree turns), says which, and words
its self-check so that a radiologist understands it, without nonsense percentages (#22).

The 3D cases are built from the shipped sample data down-sampled to 2 mm (as in
test_registration_capture.py); the full tables (24 orientations, 40+ random moves per pair) are
bench/bench_registration.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.datasets import data_dir, sample_volumes
from MedFusionLib.io import copy_geometry
from MedFusionLib.normalize import normalize
from MedFusionLib.pipeline import align_pair
from MedFusionLib.registration import cases, register
from MedFusionLib.registration.search import axis_aligned_orientations
from MedFusionLib.registration.selfcheck import MIN_INFORMATION, assess, orientation, percent

TOLERANCE_MM = 0.5


def _norm(img, modality):
    arr, _ = normalize(img, modality)
    return copy_geometry(arr, img)


def _turn(axis: int, degrees: float) -> np.ndarray:
    """The rotation matrix of ``degrees`` about LPS axis ``axis`` (0 = L-R, 1 = A-P, 2 = S-I)."""
    v = np.zeros(3)
    v[axis] = 1.0
    return np.asarray(sitk.VersorTransform(tuple(v), np.radians(degrees)).GetMatrix()).reshape(3, 3)


# ---------------------------------------------------------------- fast: wording and orientation

def test_axis_aligned_orientations_are_the_24_proper_turns():
    mats = axis_aligned_orientations(3)
    assert len(mats) == 24 and np.allclose(mats[0], np.eye(3))
    assert all(np.isclose(np.linalg.det(m), 1.0) for m in mats)
    assert len({m.tobytes() for m in mats}) == 24
    assert len(axis_aligned_orientations(2)) == 4


@pytest.mark.parametrize("axis, degrees, words, anterior, superior", [
    (1, 180, "180° about A–P", "anterior", "inferior"),
    (0, 180, "180° about L–R", "posterior", "inferior"),
    (2, 180, "180° about S–I", "posterior", "superior"),
    (2, 90, "90° about S–I", None, "superior"),
])
def test_orientation_names_the_turn_and_where_the_anatomy_points(axis, degrees, words, anterior, superior):
    tx = sitk.Euler3DTransform()
    small = _turn(0, 7) @ _turn(2, -5)  # a few degrees off the axis-aligned turn
    tx.SetMatrix(tuple((small @ _turn(axis, degrees)).ravel()))
    found = orientation(tx, 3)
    assert found["axis_aligned"] == words
    assert f"rotated {words}" in found["description"]
    assert (f"superior points {superior}" if superior != "superior" else "superior stays superior") \
        in found["description"]
    if anterior:
        assert (f"anterior points {anterior}" if anterior != "anterior" else "anterior stays anterior") \
            in found["description"]
    assert 170 <= found["rotation_deg"] <= 190 if degrees == 180 else 80 <= found["rotation_deg"] <= 100


def test_orientation_near_identity_has_no_description():
    tx = cases.rigid((20, -30, 25), (10, 0, 0))
    found = orientation(tx, 3)
    assert found["axis_aligned"] == "none" and found["description"] == ""
    assert 0 < found["rotation_deg"] < 50


def test_percent_never_prints_nonsense():
    assert percent(0.123) == "12%"
    assert percent(0.004) == "0.4%"
    assert percent(-0.071) == "7.1%"
    assert percent(276772587886746.36) == "over 1000%"
    assert percent(float("nan")) == "over 1000%"


def _assess(final_value, rivals=None, probe_base=None, probe_values=None):
    points = np.random.default_rng(0).uniform(-60, 60, (200, 3))
    start = sitk.Euler3DTransform()
    return assess(final_value=final_value, rivals=rivals, transform=sitk.Euler3DTransform(),
                  probe_base=probe_base, probe_values=probe_values, points=points,
                  containment=0.95, trace=[], start=start, dim=3, stop_reason="step too small")


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"(-?\d+(?:\.\d+)?)%", text)]


def test_near_zero_metric_is_worded_without_ratios():
    far = cases.rigid((0, 0, 0), (40, 0, 0))
    # the cases: a rival metric / a result metric of about -1e-17, and a flat probe
    result = _assess(-3.6e-17, rivals=[(-3.6e-17, -1.0, far)], probe_base=-3.6e-17,
                     probe_values=[-1e-3] * 12)
    assert result.confidence == "low" and not result.converged
    assert "share almost no information" in result.reason
    assert "%" not in result.reason.split("mutual information")[0]
    assert all(abs(n) <= 1000 for n in _numbers(result.reason))
    assert "runner_up_ratio" not in result.checks and "sharpness" not in result.checks
    assert result.checks["information"] < MIN_INFORMATION


def test_probes_that_improve_the_metric_are_worded_as_not_at_the_best_alignment():
    result = _assess(-0.5, probe_base=-0.5, probe_values=[-0.53] * 8 + [-0.45] * 4)
    assert result.confidence == "low"
    assert "not the best alignment nearby" in result.reason
    assert "hardly changes" not in result.reason  # a negative median is not "flat"
    assert "-" not in "".join(re.findall(r"-?\d+(?:\.\d+)?%", result.reason))


def test_flat_metric_and_ambiguous_rival_are_worded_in_plain_terms():
    far = cases.rigid((0, 0, 0), (40, 0, 0))
    result = _assess(-0.5, rivals=[(-0.5, -0.48, far)], probe_base=-0.5,
                     probe_values=[-0.48] * 12)
    reason = result.reason
    assert "fits almost as well (96% of the result's similarity)" in reason
    assert "hardly changes" in reason and "4.0% on median" in reason
    assert result.checks["runner_up_ratio"] == pytest.approx(0.96)


def test_a_rival_that_beats_the_result_is_never_passed_off():
    far = cases.rigid((0, 0, 0), (40, 0, 0))
    result = _assess(-0.5, rivals=[(-0.5, -0.55, far)], probe_base=-0.5, probe_values=[-0.3] * 12)
    assert result.confidence == "low"
    assert "fits better than the result" in result.reason
    assert "110%" not in result.reason


def test_a_clear_result_passes_with_words():
    far = cases.rigid((0, 0, 0), (40, 0, 0))
    result = _assess(-0.8, rivals=[(-0.8, -0.4, far)], probe_base=-0.8, probe_values=[-0.5] * 12)
    assert result.confidence == "high", result.reason
    assert "the next-best alignment fits 50% worse" in result.reason


# ---------------------------------------------------------------- slow: 3D registrations

@pytest.fixture(scope="module")
def vols():
    v = sample_volumes()
    return {"mr": sitk.BinShrink(v["mr_t1"], [2, 2, 2]), "ct": sitk.BinShrink(v["ct"], [2, 2, 2])}


@pytest.fixture(scope="module")
def brain(vols):
    return cases.brain_points(vols["mr"], step=40)


FLIPS = {
    # name: (axis, degrees, small extra angles (deg), shift (mm), the words expected)
    "180 about A-P (the issue's phantom)": (1, 180, (4, -6, 3), (8, -12, 6), "180° about A–P"),
    "180 about L-R (prone vs supine)": (0, 180, (-5, 3, 6), (-10, 7, 12), "180° about L–R"),
    "180 about S-I": (2, 180, (6, 5, -4), (12, 9, -8), "180° about S–I"),
    "90 about L-R": (0, 90, (-3, -7, 5), (-6, 14, -9), "90° about L–R"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FLIPS))
def test_a_turned_pair_converges_with_high_confidence_and_reports_the_turn(vols, brain, name):
    axis, degrees, small, shift, words = FLIPS[name]
    truth = cases.turned(_turn(axis, degrees), small, shift)
    fixed = _norm(vols["mr"], "MR")
    moving = _norm(cases.moved_copy(vols["ct"], truth, spacing=(2.0, 2.0, 3.0)), "CT")
    result = register(fixed, moving, mode="rigid")
    mean, worst = cases.tre(result.transform, truth, brain)
    assert mean < TOLERANCE_MM, f"{name}: mean TRE {mean:.2f} mm (max {worst:.2f})"
    assert result.confidence == "high", result.confidence_reason
    assert result.orientation["axis_aligned"] == words
    note = result.orientation_note()
    assert note and words in note
    d = result.to_dict()
    assert d["orientation"]["axis_aligned"] == words and words in d["orientation_note"]


@pytest.mark.slow
def test_align_pair_warns_that_the_moving_image_was_found_turned(vols, caplog):
    """What `fuse` prints (the pipeline's warning) and what the metrics JSON holds."""
    truth = cases.turned(_turn(1, 180), (3, -4, 5), (6, -8, 4))
    moving = cases.moved_copy(vols["ct"], truth, spacing=(2.0, 2.0, 3.0))
    with caplog.at_level("WARNING", logger="MedFusionLib.pipeline"):
        aligned = align_pair(vols["mr"], moving, registration="rigid", fixed_modality="MR",
                             moving_modality="CT", moving_name="ct.nii.gz", fixed_name="mr.nii.gz")
    assert aligned.registration.confidence == "high", aligned.registration.confidence_reason
    notes = [r.getMessage() for r in caplog.records if "rotated 180° about A–P" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith("ct.nii.gz onto mr.nii.gz")
    assert "rotated 180° about A–P" in aligned.registration.to_dict()["orientation_note"]


#: The issue's style: angles uniform in +-45 deg about each axis, shifts up to 90 mm (seeded).
RANDOM_MOVES = 3


@pytest.mark.slow
@pytest.mark.parametrize("pair", ["ct-mr", "colin27 t1-t2"])
def test_random_moves_within_45_degrees_and_90_mm_converge(vols, brain, pair):
    rng = np.random.default_rng(22)
    if pair == "ct-mr":
        fixed, source, modality, points = _norm(vols["mr"], "MR"), vols["ct"], "CT", brain
    else:
        t1, t2 = cases.colin_t1_t2(data_dir() / "mricron" / "ch2bet.nii.gz")
        t1, source = sitk.BinShrink(t1, [2, 2, 2]), sitk.BinShrink(t2, [2, 2, 2])
        fixed, modality, points = _norm(t1, "MR"), "MR", cases.brain_points(t1, step=40)
    for _ in range(RANDOM_MOVES):
        d = rng.standard_normal(3)
        truth = cases.rigid(rng.uniform(-45, 45, 3), d / np.linalg.norm(d) * rng.uniform(0, 90))
        moving = _norm(cases.moved_copy(source, truth, spacing=(2.0, 2.0, 3.0)), modality)
        result = register(fixed, moving, mode="rigid")
        mean, worst = cases.tre(result.transform, truth, points)
        assert mean < TOLERANCE_MM, (pair, np.degrees(truth.GetParameters()[:3]), mean, worst)
        assert result.confidence == "high", result.confidence_reason
        assert result.orientation["axis_aligned"] == "none"

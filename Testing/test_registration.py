"""Registration recovers known transforms: ITK MR slices (2D) and the 3D sample pair."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.datasets import sample_pair
from MedFusionLib.errors import InvalidInputError, RegistrationError, UnknownOptionError
from MedFusionLib.io import read_image
from MedFusionLib.registration import register, resample_to

# The shifted/rotated ITK slices are 221 x 257 (the 181 x 217 slice plus a 20-pixel border), so a
# fixed point p of BrainT1Slice maps to p + (20, 20) + shift in the moving image.
BORDER = 20.0


def _angle_deg(tx):
    return float(np.degrees(sitk.Euler2DTransform(tx).GetAngle()))


def test_recovers_itk_shift_13_17(itk_data):
    fixed = read_image(itk_data / "BrainT1Slice.png")
    moving = read_image(itk_data / "BrainProtonDensitySliceShifted13x17y.png")
    result = register(fixed, moving, mode="rigid")
    tx = sitk.Euler2DTransform(result.transform)
    np.testing.assert_allclose(tx.GetTranslation(), (BORDER + 13, BORDER + 17), atol=0.5)
    assert abs(_angle_deg(tx)) < 0.5
    assert result.mode == "rigid" and result.stop_reason and result.overlap > 0.9


def test_recovers_itk_rotation_10_degrees(itk_data):
    fixed = read_image(itk_data / "BrainT1Slice.png")
    moving = read_image(itk_data / "BrainProtonDensitySliceRotated10.png")
    result = register(fixed, moving, mode="rigid")
    assert _angle_deg(result.transform) == pytest.approx(10.0, abs=0.5)
    # the rotation is about the slice centre: the centre must land on the moving slice's centre
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    moved = moving.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in moving.GetSize()])
    np.testing.assert_allclose(result.transform.TransformPoint(centre), moved, atol=0.5)


def test_same_seed_same_transform(itk_data):
    fixed = read_image(itk_data / "BrainT1Slice.png")
    moving = read_image(itk_data / "BrainProtonDensitySliceShifted13x17y.png")
    a = register(fixed, moving, mode="rigid", seed=3).transform.GetParameters()
    b = register(fixed, moving, mode="rigid", seed=3).transform.GetParameters()
    np.testing.assert_allclose(a, b, atol=1e-3)


@pytest.mark.slow
def test_recovers_3d_rigid_transform_within_1mm():
    fixed, moving, truth = sample_pair("ct-mr")
    result = register(fixed, moving, mode="rigid")
    arr = sitk.GetArrayViewFromImage(fixed)
    idx = np.argwhere(arr > 100)[::997]  # points inside the head
    err = [np.linalg.norm(np.subtract(result.transform.TransformPoint(p), truth.TransformPoint(p)))
           for p in (fixed.TransformIndexToPhysicalPoint([int(x), int(y), int(z)]) for z, y, x in idx)]
    assert len(err) > 500
    assert max(err) < 1.0, f"target registration error up to {max(err):.2f} mm"


@pytest.mark.parametrize("mode", ["affine", "bspline"])
def test_affine_and_bspline_refine_a_rigid_result(itk_data, mode):
    fixed = read_image(itk_data / "BrainT1Slice.png")
    moving = read_image(itk_data / "BrainProtonDensitySliceShifted13x17y.png")
    result = register(fixed, moving, mode=mode)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([90, 108])
    np.testing.assert_allclose(result.transform.TransformPoint(centre),
                               np.add(centre, (BORDER + 13, BORDER + 17)), atol=1.0)
    assert result.mode == mode


def test_none_keeps_an_aligned_pair_pixel_exact(phantom2d):
    img = sitk.GetImageFromArray(phantom2d)
    result = register(img, img, mode="none")
    assert result.mode == "none"
    assert resample_to(img, img, result.transform) is img


def test_bad_inputs():
    a2 = sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32))
    a3 = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 32, 32)).astype(np.float32))
    with pytest.raises(InvalidInputError, match="2D fixed"):
        register(a2, a3)
    with pytest.raises(UnknownOptionError, match="Did you mean 'rigid'"):
        register(a2, a2, mode="rigdi")
    far = sitk.Image(a2)
    far.SetOrigin((5000.0, 5000.0))
    with pytest.raises(RegistrationError, match="does not overlap"):
        register(a2, far, mode="none")
    tiny = sitk.GetImageFromArray(np.random.default_rng(1).random((4, 4)).astype(np.float32))
    with pytest.raises(RegistrationError, match="do not overlap after centring"):
        register(a2, tiny, mode="rigid")


def test_cancel_during_registration_raises_cancelled(itk_data):
    from MedFusionLib.errors import CancelledError

    fixed = read_image(itk_data / "BrainT1Slice.png")
    moving = read_image(itk_data / "BrainProtonDensitySliceRotated10.png")
    calls = []

    def stop_at_first_iteration(fraction, message):
        calls.append(message)
        return "iteration" not in message

    with pytest.raises(CancelledError, match="cancelled by the user"):
        register(fixed, moving, mode="rigid", progress=stop_at_first_iteration)
    assert any("iteration" in m for m in calls)


@pytest.mark.parametrize("threads", [1, 3])
def test_affine_refinement_is_stable_across_seeds_and_thread_counts(itk_data, threads):
    """Regression: with 3 ITK threads and seed 0 the affine stage once drifted 35 px away from the
    rigid result it started from (first step 2 mm at the coarsest level)."""
    fixed = read_image(itk_data / "BrainT1Slice.png")
    moving = read_image(itk_data / "BrainProtonDensitySliceShifted13x17y.png")
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        for seed in range(4):
            tx = register(fixed, moving, mode="affine", seed=seed).transform
            for p in (fixed.TransformContinuousIndexToPhysicalPoint([x, y])
                      for x in (20, 90, 160) for y in (20, 108, 196)):
                np.testing.assert_allclose(tx.TransformPoint(p), np.add(p, (BORDER + 13, BORDER + 17)),
                                           atol=0.5, err_msg=f"seed {seed}, {threads} threads")
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def test_2d_registration_is_deterministic(itk_data):
    """Regression: with ITK's threaded random sampler about 1 run in 20 of the rotated ITK slice
    ended at 45.5 degrees instead of 10. 2D images now use every pixel, deterministically."""
    fixed = read_image(itk_data / "BrainT1Slice.png")
    moving = read_image(itk_data / "BrainProtonDensitySliceRotated10.png")
    angles = {round(_angle_deg(register(fixed, moving, mode="rigid", seed=s).transform), 2)
              for s in range(6)}
    assert all(abs(a - 10.0) < 0.1 for a in angles), angles

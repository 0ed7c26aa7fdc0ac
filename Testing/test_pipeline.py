"""fuse_images: geometry of the result, alignment, inputs untouched, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.errors import InvalidInputError, RegistrationError
from MedFusionLib.pipeline import fuse_images


def test_result_has_fixed_geometry_exactly(volume_image):
    moving = sitk.Image(volume_image)
    result = fuse_images(volume_image, moving, method="average", registration="none")
    fused = result.fused
    assert fused.GetSize() == volume_image.GetSize()
    assert fused.GetOrigin() == volume_image.GetOrigin()
    assert fused.GetSpacing() == volume_image.GetSpacing()
    assert fused.GetDirection() == volume_image.GetDirection()
    arr = sitk.GetArrayFromImage(fused)
    assert arr.dtype == np.float32 and arr.min() >= 0 and arr.max() <= 1
    np.testing.assert_allclose(arr, result.fixed01, atol=1e-6)  # same image twice
    assert result.axis == 0  # 2.5 mm slices along k


def test_aligned_2d_pair_stays_pixel_aligned(phantom2d):
    a8 = (phantom2d * 255).astype(np.uint8)
    b8 = ((1 - phantom2d) * 255).astype(np.uint8)
    a, b = sitk.GetImageFromArray(a8), sitk.GetImageFromArray(b8)
    result = fuse_images(a, b, method="maximum", return_weights=True)
    assert result.registration.mode == "none"
    expected = np.maximum(a8, b8) / 255.0
    np.testing.assert_allclose(sitk.GetArrayFromImage(result.fused), expected, atol=1e-6)
    assert result.fixed_norm.modality == "8BIT"
    assert result.weights is not None and result.weights.GetSize() == a.GetSize()


def test_registered_2d_pair_is_aligned(itk_data):
    from MedFusionLib.io import read_image

    fixed = read_image(itk_data / "BrainT1Slice.png")
    moving = read_image(itk_data / "BrainProtonDensitySliceShifted13x17y.png")
    aligned = read_image(itk_data / "BrainProtonDensitySlice.png")
    result = fuse_images(fixed, moving, method="average", registration="rigid")
    truth = sitk.GetArrayFromImage(aligned) / 255.0
    inner = (slice(10, -10), slice(10, -10))
    err = np.abs(result.moving01[inner] - truth[inner]).mean()
    assert err < 0.02, f"mean abs difference to the aligned slice {err:.3f}"


def test_inputs_are_not_modified(volume_image):
    moving = sitk.Image(volume_image)
    before = [sitk.GetArrayFromImage(i).copy() for i in (volume_image, moving)]
    geometry = volume_image.GetOrigin(), volume_image.GetDirection()
    fuse_images(volume_image, moving, method="pca", registration="none", fixed_modality="MR")
    for img, arr in zip((volume_image, moving), before):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), arr)
    assert (volume_image.GetOrigin(), volume_image.GetDirection()) == geometry


def test_bad_inputs_are_named(volume_image, phantom2d):
    img2d = sitk.GetImageFromArray(phantom2d)
    with pytest.raises(InvalidInputError, match="3D a.nii.gz with a 2D b.png"):
        fuse_images(img2d, volume_image, method="average", fixed_name="b.png", moving_name="a.nii.gz")
    const = sitk.Image(volume_image.GetSize(), sitk.sitkFloat32)
    const.CopyInformation(volume_image)
    with pytest.raises(InvalidInputError, match="c.nii: the image is constant"):
        fuse_images(volume_image, const, method="average", moving_name="c.nii")
    far = sitk.Image(volume_image)
    far.SetOrigin((4000.0, 0.0, 0.0))
    with pytest.raises(RegistrationError, match="does not overlap"):
        fuse_images(volume_image, far, method="average", registration="none")
    with pytest.raises(InvalidInputError, match="neither source is CT"):
        fuse_images(volume_image, volume_image, method="average", registration="none",
                    fixed_modality="MR", moving_modality="MR", ct_window="bone")
    with pytest.raises(InvalidInputError, match="expected a SimpleITK image"):
        fuse_images(phantom2d, img2d, method="average")

"""Reading and writing images: geometry kept exactly, RGB to luminance, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.errors import InvalidInputError
from MedFusionLib.io import COLOUR_KEY, read_image, write_image


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_volume_round_trip_keeps_geometry(tmp_path, volume_image, ext):
    path = write_image(volume_image, tmp_path / f"vol{ext}")
    back = read_image(path)
    assert back.GetSize() == volume_image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), volume_image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), volume_image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), volume_image.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(volume_image), rtol=1e-6)


def test_png_grey_round_trip_is_pixel_exact(tmp_path, phantom2d):
    img = sitk.GetImageFromArray(phantom2d)
    path = write_image(img, tmp_path / "a.png")
    back = read_image(path)
    assert back.GetDimension() == 2 and back.GetSize() == img.GetSize()
    assert sitk.GetArrayFromImage(back).dtype == np.uint8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back),
                                  np.round(phantom2d * 255).astype(np.uint8))


def test_rgb_is_reduced_to_luminance(tmp_path):
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = 50
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "c.png"))
    img = read_image(tmp_path / "c.png")
    assert img.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_allclose(sitk.GetArrayFromImage(img), 0.299 * 200 + 0.114 * 50, rtol=1e-5)
    assert img.GetMetaData(COLOUR_KEY) == "1"
    assert img.GetMetaData("MedFusion.BitsStored") == "8"


def test_grey_stored_as_rgb_is_not_flagged_colour(itk_data):
    img = read_image(itk_data / "BrainT1Slice.png")  # grey values in an RGB PNG
    assert img.GetDimension() == 2 and img.GetSize() == (181, 217)
    assert not img.HasMetaDataKey(COLOUR_KEY)


def test_read_errors_name_the_input(tmp_path):
    with pytest.raises(InvalidInputError, match="no such file"):
        read_image(tmp_path / "missing.nii.gz")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty.nii.gz: the file is empty"):
        read_image(empty)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not an image" * 10)
    with pytest.raises(InvalidInputError, match="junk.nii.gz: cannot read"):
        read_image(junk)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InvalidInputError, match="notes.txt"):
        read_image(txt)


def test_vector_image_that_is_not_rgb_is_rejected(tmp_path):
    vec = sitk.GetImageFromArray(np.zeros((4, 5, 6, 2), np.float32), isVector=True)
    sitk.WriteImage(vec, str(tmp_path / "field.nrrd"))
    with pytest.raises(InvalidInputError, match="2 components"):
        read_image(tmp_path / "field.nrrd")


def test_write_errors_and_no_partial_file(tmp_path, volume_image):
    with pytest.raises(InvalidInputError, match="unsupported output format"):
        write_image(volume_image, tmp_path / "out.xyz")
    with pytest.raises(InvalidInputError, match="cannot be written as .png"):
        write_image(volume_image, tmp_path / "out.png")
    with pytest.raises(InvalidInputError, match="does not exist"):
        write_image(volume_image, tmp_path / "nope" / "out.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_single_dicom_file_goes_through_the_dicom_reader():
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    img = read_image(path)
    ds = dcmread(path)
    assert img.GetMetaData("0008|0060") == "CT"
    assert img.GetSize() == (ds.Columns, ds.Rows, 1)
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(sitk.GetArrayFromImage(img)[0], hu)

"""Colour PET/SPECT fusion (issue 8): chroma kept, anatomy in the luminance, grey path untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.cli import main
from MedFusionLib.colour import (COLOUR_TABLES, apply_colour_table, colour_table, fuse_colour,
                                 rgb_to_ycbcr, ycbcr_to_rgb)
from MedFusionLib.errors import InvalidInputError, UnknownOptionError
from MedFusionLib.figures import contribution_overlay
from MedFusionLib.pipeline import fuse_images


@pytest.fixture
def mr_pet(phantom2d):
    """MR: the phantom. PET: a hot lesion where the MR is black (outside the head) and one inside."""
    mr = phantom2d
    pet = np.zeros_like(mr)
    pet[5:15, 5:15] = 1.0          # corner: MR is background there
    pet[40:50, 30:40] = 0.6        # inside the head
    mr_img = sitk.GetImageFromArray(mr * 1000)
    pet_img = sitk.GetImageFromArray(pet * 12.0)
    return mr, pet, mr_img, pet_img


def test_ycbcr_round_trip_and_tables(rng):
    rgb = rng.random((20, 30, 3)).astype(np.float32)
    np.testing.assert_allclose(ycbcr_to_rgb(*rgb_to_ycbcr(rgb)), rgb, atol=1e-5)
    y, cb, cr = rgb_to_ycbcr(np.ones((2, 2, 3)))
    np.testing.assert_allclose((y, cb, cr), (np.ones((2, 2)), np.zeros((2, 2)), np.zeros((2, 2))), atol=1e-6)
    for name in COLOUR_TABLES:
        t = colour_table(name)
        assert t.shape == (256, 3) and t.min() >= 0 and t.max() <= 1
    assert np.all(np.diff(rgb_to_ycbcr(colour_table("heat"))[0]) >= -1e-6)  # heat is monotonic in Y
    np.testing.assert_allclose(colour_table([[0, 0, 0], [255, 255, 255]], n=3)[1], [0.5, 0.5, 0.5])
    with pytest.raises(UnknownOptionError, match="Did you mean 'heat'"):
        colour_table("haet")
    with pytest.raises(InvalidInputError, match=r"\(N, 3\)"):
        colour_table(np.zeros((4, 2)))


def test_colour_preserved_where_anatomy_is_dark(mr_pet):
    mr, pet, mr_img, pet_img = mr_pet
    result = fuse_colour(mr_img, pet_img, method="maximum", moving_modality="PET")
    rgb = sitk.GetArrayFromImage(result.rgb) / 255.0
    expected = apply_colour_table(pet / pet.max(), "heat")
    np.testing.assert_allclose(rgb[6:14, 6:14], expected[6:14, 6:14], atol=2 / 255)
    assert result.functional == "moving" and result.colour_table == "heat"


def test_anatomical_detail_is_in_the_luminance(mr_pet):
    mr, pet, mr_img, pet_img = mr_pet
    result = fuse_colour(mr_img, pet_img, method="average", moving_modality="PET")
    y = rgb_to_ycbcr(sitk.GetArrayFromImage(result.rgb) / 255.0)[0]
    head = (mr > 0.1) & (pet == 0)
    assert np.corrcoef(y[head], mr[head])[0, 1] > 0.95
    # no chroma where the PET is zero: the colour image's luminance is exactly the fused plane
    np.testing.assert_allclose(y[pet == 0], sitk.GetArrayFromImage(result.fused)[pet == 0], atol=1 / 255)


def test_rgb_output_shape_type_and_geometry(volume_image):
    pet = sitk.Image(volume_image)
    result = fuse_colour(volume_image, pet, method="maximum", registration="none",
                         moving_modality="PET", table="rainbow")
    assert result.rgb.GetNumberOfComponentsPerPixel() == 3
    assert result.rgb.GetPixelID() == sitk.sitkVectorUInt8
    assert result.rgb.GetSize() == volume_image.GetSize()
    assert result.rgb.GetDirection() == volume_image.GetDirection()
    assert result.summary()["colour"]["metrics_on"].startswith("luminance")


def test_greyscale_inputs_are_unchanged_by_the_colour_path(tmp_path, phantom2d):
    a = tmp_path / "a.png"
    b = tmp_path / "b.png"
    sitk.WriteImage(sitk.GetImageFromArray((phantom2d * 255).astype(np.uint8)), str(a))
    sitk.WriteImage(sitk.GetImageFromArray(((1 - phantom2d) * 255).astype(np.uint8)), str(b))
    assert main(["fuse", str(a), str(b), "-o", str(tmp_path / "f.png"), "--method", "average", "--quiet"]) == 0
    out = sitk.ReadImage(str(tmp_path / "f.png"))
    assert out.GetNumberOfComponentsPerPixel() == 1
    ref = fuse_images(sitk.ReadImage(str(a)), sitk.ReadImage(str(b)), method="average").fused
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out),
                                  np.clip(sitk.GetArrayFromImage(ref) * 255 + 0.5, 0, 255).astype(np.uint8))


def test_rgb_pseudocolour_input_gives_colour_by_default_and_grey_on_request(tmp_path, mr_pet, capsys):
    mr, pet, _, _ = mr_pet
    mr_path, pet_path = tmp_path / "mr.png", tmp_path / "pet.png"
    sitk.WriteImage(sitk.GetImageFromArray((mr * 255).astype(np.uint8)), str(mr_path))
    pet_rgb = (apply_colour_table(pet, "rainbow") * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(pet_rgb, isVector=True), str(pet_path))
    metrics = tmp_path / "m.json"
    assert main(["fuse", str(mr_path), str(pet_path), "-o", str(tmp_path / "c.png"),
                 "--method", "maximum", "--metrics", str(metrics), "--quiet"]) == 0
    colour = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c.png")))
    assert colour.shape == mr.shape + (3,) and colour.dtype == np.uint8
    np.testing.assert_allclose(colour[6:14, 6:14].astype(int), pet_rgb[6:14, 6:14].astype(int), atol=3)
    report = json.loads(metrics.read_text())
    assert report["colour"]["colour_table"] == "input RGB"
    assert report["colour"]["metrics_on"].startswith("luminance")
    assert main(["fuse", str(mr_path), str(pet_path), "-o", str(tmp_path / "g.png"),
                 "--method", "maximum", "--grey", "--quiet"]) == 0
    grey = sitk.ReadImage(str(tmp_path / "g.png"))
    assert grey.GetNumberOfComponentsPerPixel() == 1


def test_colour_errors(mr_pet, tmp_path, capsys):
    mr, pet, mr_img, pet_img = mr_pet
    with pytest.raises(InvalidInputError, match="needs one functional source"):
        fuse_colour(mr_img, mr_img, method="average")
    rgb = sitk.GetImageFromArray((apply_colour_table(pet, "heat") * 255).astype(np.uint8), isVector=True)
    with pytest.raises(InvalidInputError, match="both .* are colour images"):
        fuse_colour(rgb, rgb, method="average")
    a = tmp_path / "a.nrrd"
    sitk.WriteImage(mr_img, str(a))
    assert main(["fuse", str(a), str(a).replace("a.nrrd", "a.nrrd"), "-o", str(tmp_path / "o.png"),
                 "--color", "--quiet"]) == 2
    assert "functional source" in capsys.readouterr().err


def test_contribution_overlay_tints_by_source():
    fused = np.full((4, 4), 0.8, np.float32)
    w = np.zeros((4, 4), np.float32)
    w[:, 2:] = 1.0
    rgb = contribution_overlay(fused, w)
    assert rgb.shape == (4, 4, 3)
    assert rgb[0, 0, 2] > rgb[0, 0, 0]   # moving source: blue
    assert rgb[0, 3, 0] > rgb[0, 3, 2]   # fixed source: orange
    np.testing.assert_array_equal(contribution_overlay(np.zeros((2, 2)), np.ones((2, 2))), 0)

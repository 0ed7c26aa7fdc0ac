"""Modality-aware normalisation to [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.errors import InvalidInputError, UnknownOptionError
from MedFusionLib.normalize import CT_WINDOWS, guess_modality, normalize, parse_window


def _img(arr, dtype=np.float32):
    return sitk.GetImageFromArray(np.asarray(arr, dtype=dtype))


def test_ct_bone_window_maps_hounsfield_exactly():
    hu = np.array([[-1000.0, -500.0, 400.0], [1300.0, 2000.0, 40.0]])
    out, info = normalize(_img(hu), "CT")
    np.testing.assert_allclose(out, [[0, 0, 0.5], [1, 1, 540 / 1800]], atol=1e-6)
    assert info.modality == "CT" and info.modality_source == "user"
    assert "bone" in info.rule and (info.lower, info.upper) == (-500.0, 1300.0)


@pytest.mark.parametrize("window, lower, upper", [("brain", 0, 80), ("soft-tissue", -150, 250),
                                                  ("40,80", 0, 80), ((100, 50), 75, 125)])
def test_ct_windows(window, lower, upper):
    hu = np.linspace(-1000, 1000, 50).reshape(5, 10)
    _, info = normalize(_img(hu), "CT", window=window)
    assert (info.lower, info.upper) == (lower, upper)


def test_window_errors():
    with pytest.raises(UnknownOptionError, match="Did you mean 'bone'"):
        parse_window("bones")
    with pytest.raises(InvalidInputError, match="width must be positive"):
        parse_window("40,0")
    with pytest.raises(InvalidInputError, match="modality is MR"):
        normalize(_img(np.arange(20).reshape(4, 5)), "MR", window="brain")
    assert set(CT_WINDOWS) == {"brain", "soft-tissue", "bone"}


def test_mr_uses_robust_percentiles(rng):
    arr = rng.normal(100, 10, (40, 40))
    arr[0, 0] = 1e6  # one hot outlier must not squash the rest
    out, info = normalize(_img(arr), "MR")
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    assert 0.3 < np.median(out) < 0.7
    assert info.rule.startswith("robust percentiles")


def test_pet_keeps_zero_and_hot_spots(rng):
    arr = np.abs(rng.normal(2, 0.5, (50, 50)))
    arr[20:23, 20:23] = 30  # a lesion
    out, info = normalize(_img(arr), "PET")
    assert info.lower == 0.0
    assert out[21, 21] == 1.0 and np.median(out) < 0.2


def test_8bit_divides_by_255():
    arr = np.array([[0, 51, 255], [102, 204, 0]], np.uint8)
    out, info = normalize(_img(arr, np.uint8))
    assert info.modality == "8BIT" and info.modality_source == "guess"
    np.testing.assert_allclose(out, arr / 255.0, atol=1e-7)


def test_guess_modality():
    ct = _img(np.r_[np.full(50, -1000.0), np.full(50, 1200.0), np.zeros(100)].reshape(10, 20))
    assert guess_modality(ct) == ("CT", "guess")
    assert guess_modality(_img(np.arange(200.0).reshape(10, 20))) == ("MR", "guess")
    tagged = _img(np.arange(200.0).reshape(10, 20))
    tagged.SetMetaData("0008|0060", "PT")
    assert guess_modality(tagged) == ("PET", "dicom")
    tagged.SetMetaData("0008|0060", "NM")
    assert guess_modality(tagged) == ("SPECT", "dicom")


def test_bad_images_are_rejected_with_their_name():
    arr = np.ones((5, 5), np.float32)
    with pytest.raises(InvalidInputError, match="scan.nii: the image is constant"):
        normalize(_img(arr), name="scan.nii")
    arr[:] = np.nan
    with pytest.raises(InvalidInputError, match="scan.nii: every voxel is NaN or Inf"):
        normalize(_img(arr), name="scan.nii")
    with pytest.raises(UnknownOptionError, match="Did you mean 'pet'"):
        normalize(_img(np.arange(25.0).reshape(5, 5)), "PTE")
    ct = _img(np.full((5, 5), 3000.0) + np.arange(25).reshape(5, 5))  # all above the bone window
    with pytest.raises(InvalidInputError, match="outside the window"):
        normalize(ct, "CT")


def test_input_image_is_not_modified(volume_image):
    before = sitk.GetArrayFromImage(volume_image).copy()
    normalize(volume_image, "MR")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume_image), before)


def test_nan_and_inf_follow_one_rule_and_are_counted(caplog):
    arr = np.arange(25.0, dtype=np.float32).reshape(5, 5) + 10
    arr[0, 0], arr[1, 1], arr[2, 2] = np.nan, np.inf, -np.inf
    out, info = normalize(_img(arr), "MR", name="scan.nii")
    assert info.nonfinite_voxels == 3 and info.to_dict()["nonfinite_voxels"] == 3
    ref, _ = normalize(_img(np.where(np.isnan(arr) | (arr < 0), 11.0, np.where(arr > 1e9, 34.0, arr))
                            .astype(np.float32)), "MR")
    np.testing.assert_array_equal(out, ref)
    assert "scan.nii: 3 voxel(s) are NaN or Inf" in caplog.text


def test_float64_beyond_float32_is_not_called_inf():
    arr = np.linspace(0, 1e300, 25).reshape(5, 5)
    out, info = normalize(_img(arr, np.float64), "MR", name="big.nrrd")
    assert info.nonfinite_voxels == 0 and np.all(np.isfinite(out)) and out.max() == 1.0


# --- fast percentiles and the one-pass normalisation (issue #23) --------------------------------
def _arrays():
    rng = np.random.default_rng(23)
    n = 600_000
    yield rng.normal(0, 1, n).astype(np.float32)                     # no ties
    yield np.where(rng.random(n) < 0.8, 0, rng.random(n) * 900).astype(np.float32)  # MR background
    yield np.clip(rng.normal(0, 400, n), -1024, 3071).astype(np.int16)  # CT, many -1024
    yield rng.integers(0, 5, n).astype(np.uint16)                      # few values, heavy ties
    yield rng.exponential(1.0, n)                                       # float64 long tail
    yield rng.random(1000).astype(np.float32)                          # small: plain partition
    yield np.full(n, 7, np.int16)                                      # constant


@pytest.mark.parametrize("qs", [[0.5, 99.5], [99.9], [1, 99.9], [0, 100], [50], [0.001, 99.999]])
def test_percentiles_are_numpys_linear_percentiles(qs):
    from MedFusionLib.normalize import percentiles

    for arr in _arrays():
        want = np.percentile(arr.astype(np.float64), qs)
        assert percentiles(arr, qs) == list(want), (arr.dtype, arr.size, qs)
        assert percentiles(arr.reshape(-1, 100) if arr.size % 100 == 0 else arr, qs) == list(want)


def test_order_statistics_fall_back_to_a_full_partition(monkeypatch):
    """Ranks a tail threshold does not cover come from partitioning a copy: still exact."""
    from MedFusionLib import normalize as N

    arr = np.random.default_rng(1).random(400_000).astype(np.float32)
    monkeypatch.setattr(N, "_tail_statistics", lambda *a, **k: {})
    ks = [10, 200_000, 399_990]
    got = N._order_statistics(arr, ks)
    assert [got[k] for k in ks] == list(np.sort(arr)[ks])


def test_normalised_volume_is_unchanged_by_the_one_pass_rewrite(rng):
    """Same float32 values as the straightforward formula, extremes taken from the input's."""
    from MedFusionLib.normalize import percentiles

    arr = (rng.random((20, 70, 80)) * 3000 - 1000).astype(np.float32)
    arr[3] = 0
    img = sitk.GetImageFromArray(arr)
    for modality in ("CT", "MR", "PET"):
        out, info = normalize(img, modality)
        a64 = arr.astype(np.float32)
        want = np.clip((a64 - np.float32(info.lower)) * np.float32(1.0 / (info.upper - info.lower)),
                       0, 1)
        assert np.array_equal(out, want.astype(np.float32))
    lo, hi = percentiles(arr, [0.5, 99.5])
    assert normalize(img, "MR")[1].lower == lo and normalize(img, "MR")[1].upper == hi

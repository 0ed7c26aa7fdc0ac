"""The pair job's record, and the memory-lean pipeline giving the same numbers as the plain one."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.driver import fuse_arrays
from MedFusionLib.job import PairSpec, run_pair
from MedFusionLib.nets.weights import model_entry, sha256_of
from MedFusionLib.normalize import normalize
from MedFusionLib.pipeline import align_pair, fuse_images


@pytest.mark.requires_torch  # the record names the CNN weights' digest
def test_record_names_model_digest_stages_and_versions(tmp_path, phantom2d):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    sitk.WriteImage(sitk.GetImageFromArray((phantom2d * 255).astype(np.uint8)), str(a))
    sitk.WriteImage(sitk.GetImageFromArray(((1 - phantom2d) * 200).astype(np.uint8)), str(b))
    rec = run_pair(PairSpec(str(a), str(b), str(tmp_path / "f.png"), fusion={"method": "cnn"},
                            score=True, metrics_keys="EN,SSIM"))
    assert rec.status == "ok" and rec.method == "cnn" and rec.outputs == [str(tmp_path / "f.png")]
    path, entry = model_entry(rec.model)
    assert rec.model_sha256 == entry["sha256"] == sha256_of(path)
    assert {"read", "normalise", "register", "resample", "fuse", "metrics", "write"} <= set(rec.stages)
    assert rec.registration["mode"] == "none" and set(rec.metrics) >= {"EN", "SSIM"}
    assert rec.versions["medfusion"] and rec.versions["SimpleITK"] and rec.versions["numpy"]
    failed = run_pair(PairSpec(str(a), str(tmp_path / "none.png"), str(tmp_path / "g.png")),
                      errors="record")
    assert failed.status == "failed" and "none.png: no such file" in failed.error
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("spacing, axis", [((1, 1, 3), 0), ((1, 3, 1), 1), ((3, 1, 1), 2)])
def test_batches_pasted_into_the_result_equal_the_assembled_volume(phantom3d, spacing, axis):
    img = sitk.GetImageFromArray(phantom3d * 1000.0)
    img.SetSpacing(spacing)
    moved = sitk.GetImageFromArray(np.roll(phantom3d, 3, 2) * 500.0)
    moved.SetSpacing(spacing)
    result = fuse_images(img, moved, method="maximum", registration="none", return_weights=True)
    assert result.axis == axis
    pair = align_pair(img, moved, registration="none")
    fused, weights = fuse_arrays(pair.fixed01, pair.moving01, method="maximum", axis=axis,
                                 return_weights=True, batch_size=5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.fused), fused)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.weights), weights)
    assert result.fused.GetSpacing() == img.GetSpacing() and result.fused.GetOrigin() == img.GetOrigin()


@pytest.mark.parametrize("dtype, modality", [(np.int16, "MR"), (np.float64, "MR"), (np.int16, "CT"),
                                             (np.float32, "PET")])
def test_normalize_without_copies_matches_the_whole_array_formula(rng, dtype, modality):
    arr = (rng.standard_normal((6, 300, 200)) * 400 + 100).astype(dtype)  # > one 1M-voxel chunk
    out, info = normalize(sitk.GetImageFromArray(arr), modality)
    t = np.float64 if dtype == np.float64 else np.float32  # float64 data is worked on in float64
    ref = arr.astype(t)
    expected = np.clip(((ref - t(info.lower)) * t(1.0 / (info.upper - info.lower))).astype(np.float32), 0, 1)
    np.testing.assert_array_equal(out, expected)
    if modality == "MR":
        assert (info.lower, info.upper) == tuple(float(v) for v in np.percentile(ref, [0.5, 99.5]))

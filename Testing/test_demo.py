"""`medfusion demo` on the bundled sample data, and `fuse --metrics`."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.cli import main
from MedFusionLib.datasets import SYNTHETIC_NOTE, sample_volumes
from MedFusionLib.metrics import ALL_KEYS


def test_sample_volumes_are_labelled_and_plausible():
    vols = sample_volumes()
    assert set(vols) == {"mr_t1", "ct", "pet"}
    ct = sitk.GetArrayViewFromImage(vols["ct"])
    assert ct.min() <= -990 and ct.max() >= 1200  # air and bone in HU
    assert vols["ct"].GetMetaData("MedFusion.Synthetic") == "1"
    assert vols["pet"].GetMetaData("0008|0060") == "PT"
    assert not vols["mr_t1"].HasMetaDataKey("MedFusion.Synthetic")
    assert vols["mr_t1"].GetSize() == (197, 233, 189)


@pytest.mark.slow
def test_demo_writes_volume_figure_and_metrics(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path), "--kind", "pet-mr", "--method", "maximum", "--quiet"])
    assert rc == 0
    report = json.loads((tmp_path / "pet-mr_metrics.json").read_text())
    assert report["note"] == SYNTHETIC_NOTE
    assert report["registration_error_vs_truth"]["max_mm"] < 1.0
    assert report["method"] == "maximum" and report["registration"]["mode"] == "rigid"
    m = report["metrics"]
    assert 0 < m["Qabf"] <= 1 and m["slices_used"] > 100
    assert report["moving_normalization"]["modality"] == "PET"
    fused = sitk.ReadImage(str(tmp_path / "pet-mr_fused.nii.gz"))
    mr = sitk.ReadImage(str(tmp_path / "mr_t1.nii.gz"))
    assert fused.GetSize() == mr.GetSize()
    np.testing.assert_allclose(fused.GetOrigin(), mr.GetOrigin(), atol=1e-4)
    fig = sitk.ReadImage(str(tmp_path / "pet-mr_demo.png"))
    assert fig.GetWidth() > 600 and fig.GetHeight() > 600
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out
    assert "SSIM(A,F)+SSIM(B,F)=" in out  # issue #25: the sum is labelled as one
    # issue #25: every image file says in its own header that the data are synthetic
    for name in ("mr_t1.nii.gz", "pet_moved_synthetic.nii.gz", "pet-mr_fused.nii.gz",
                 "pet-mr_weights.nii.gz"):
        with gzip.open(tmp_path / name) as fh:
            assert b"SYNTHETIC" in fh.read(348)[148:228], name  # NIfTI descrip
    head = (tmp_path / "pet-mr_fused_colour.nrrd").read_bytes()[:2000]
    assert b"content: MedFusion demo" in head and b"SYNTHETIC" in head
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_demo_out_naming_a_file_is_one_line(tmp_path, capsys):
    """Issue #25: demo --out naming an existing file was a FileExistsError traceback."""
    (tmp_path / "taken").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "taken"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "taken: exists and is not a folder" in err[0], err
    assert (tmp_path / "taken").read_text() == "x"


def test_fuse_metrics_json_has_every_key(tmp_path, itk_data):
    out = tmp_path / "m.json"
    rc = main(["fuse", str(itk_data / "BrainT1Slice.png"), str(itk_data / "BrainProtonDensitySlice.png"),
               "-o", str(tmp_path / "f.png"), "--method", "average", "--metrics", str(out), "--quiet"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(ALL_KEYS) <= set(report["metrics"])
    assert report["fixed_normalization"]["modality"] == "8BIT"
    assert report["registration"]["mode"] == "none"
    assert all(np.isfinite(report["metrics"][k]) for k in ALL_KEYS)

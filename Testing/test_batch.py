"""Batch = the fuse pair job on every manifest row: byte-identical outputs, per-row options,
cross-row collision refusal, the results file and resume (in this process; Dask in
test_batch_dask.py)."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.cli import main


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def grey_pair(tmp_path, phantom2d):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    sitk.WriteImage(sitk.GetImageFromArray((phantom2d * 255).astype(np.uint8)), str(a))
    sitk.WriteImage(sitk.GetImageFromArray(((1 - phantom2d) * 200).astype(np.uint8)), str(b))
    return a, b


@pytest.fixture
def colour_pair(tmp_path, phantom2d):
    """An MR-like grey PNG and a pseudo-colour (RGB) PET-like PNG."""
    mr, pet = tmp_path / "mr.png", tmp_path / "pet.png"
    sitk.WriteImage(sitk.GetImageFromArray((phantom2d * 255).astype(np.uint8)), str(mr))
    rgb = np.zeros(phantom2d.shape + (3,), np.uint8)
    hot = np.roll(phantom2d, 7, axis=1)
    rgb[..., 0] = (hot * 255).astype(np.uint8)
    rgb[..., 1] = (hot ** 2 * 180).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(pet))
    return mr, pet


@pytest.fixture
def vol_pair(tmp_path, volume_image):
    a, b = tmp_path / "v1.nii.gz", tmp_path / "v2.nrrd"
    sitk.WriteImage(volume_image, str(a))
    moved = sitk.Resample(volume_image, sitk.Euler3DTransform((0, 0, 0), 0.0, 0.02, 0.0, (1.5, -1, 0.5)))
    sitk.WriteImage(sitk.Cast(moved * 0.5 + 20, sitk.sitkInt16), str(b))
    return a, b


def _write_manifest(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def _metrics_without_timings(path):
    data = json.loads(path.read_text())
    data.pop("timings_s")
    data["registration"].pop("seconds", None)
    return data


def test_batch_rows_are_byte_identical_to_fuse(tmp_path, grey_pair, colour_pair, vol_pair):
    (a, b), (mr, pet), (v1, v2) = grey_pair, colour_pair, vol_pair
    for d in ("fuse", "batch"):
        (tmp_path / d).mkdir()
    # the fuse runs, one per kind of pair
    assert main(["fuse", str(a), str(b), "-o", str(tmp_path / "fuse/grey.png"),
                 "--method", "dwt", "--quiet"]) == 0
    assert main(["fuse", str(mr), str(pet), "-o", str(tmp_path / "fuse/colour.png"),
                 "--method", "dwt", "--quiet"]) == 0
    assert main(["fuse", str(v1), str(v2), "-o", str(tmp_path / "fuse/vol.nii.gz"),
                 "--method", "dwt", "--register", "rigid", "--metrics", str(tmp_path / "fuse/vol.json"),
                 "--metrics-keys", "EN,SSIM,Qabf", "--transform", str(tmp_path / "fuse/vol.tfm"),
                 "--moving-modality", "CT", "--quiet"]) == 0
    # the same three as rows of one manifest, per-row options in columns
    manifest = _write_manifest(
        tmp_path / "pairs.csv",
        ["fixed", "moving", "output", "register", "moving_modality", "metrics", "metrics_keys", "transform"],
        [[a.name, b.name, "batch/grey.png", "", "", "", "", ""],
         [mr.name, pet.name, "batch/colour.png", "", "", "", "", ""],
         [v1.name, v2.name, "batch/vol.nii.gz", "rigid", "CT", "batch/vol.json", '"EN,SSIM,Qabf"', "batch/vol.tfm"]])
    assert main(["batch", str(manifest), "--method", "dwt", "--quiet"]) == 0
    for name in ("grey.png", "colour.png", "vol.nii.gz", "vol.tfm"):
        assert _digest(tmp_path / "fuse" / name) == _digest(tmp_path / "batch" / name), name
    colour = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "batch/colour.png")))
    assert colour.shape == (96, 80, 3) and np.ptp(colour[..., 0].astype(int) - colour[..., 2]) > 50
    f, b_ = (_metrics_without_timings(tmp_path / d / "vol.json") for d in ("fuse", "batch"))
    for d in (f, b_):
        d.pop("fixed"), d.pop("moving"), d.pop("output")
    assert f == b_ and set(f["metrics"]) >= {"EN", "SSIM", "Qabf"}


def test_manifest_per_row_options_and_unknown_columns(tmp_path, grey_pair, capsys):
    a, b = grey_pair
    (tmp_path / "out").mkdir()
    manifest = _write_manifest(tmp_path / "m.csv", ["fixed", "moving", "output", "method", "param", "weights_map"],
                               [[a.name, b.name, "out/1.png", "dwt", "wavelet=db2;level=2", ""],
                                [a.name, b.name, "out/2.png", "", "", "out/w2.nii.gz"]])
    assert main(["batch", str(manifest), "--method", "maximum", "--quiet"]) == 0
    ref = tmp_path / "ref.png"
    assert main(["fuse", str(a), str(b), "-o", str(ref), "--method", "dwt", "--param", "wavelet=db2",
                 "--param", "level=2", "--quiet"]) == 0
    assert _digest(ref) == _digest(tmp_path / "out/1.png")
    assert main(["fuse", str(a), str(b), "-o", str(ref), "--method", "maximum", "--weights-map",
                 str(tmp_path / "w.nii.gz"), "--quiet"]) == 0
    assert _digest(ref) == _digest(tmp_path / "out/2.png")
    assert _digest(tmp_path / "w.nii.gz") == _digest(tmp_path / "out/w2.nii.gz")
    capsys.readouterr()
    # a misspelt option column is refused, not ignored
    bad = _write_manifest(tmp_path / "bad.csv", ["fixed", "moving", "output", "moving_modalty"],
                          [[a.name, b.name, "out/3.png", "PET"]])
    assert main(["batch", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown column 'moving_modalty' (did you mean 'moving_modality'?)" in err
    # a bad value fails its own row only (issue #25), named with its line and column
    bad.write_text(f"fixed,moving,output,register\n{a.name},{b.name},out/3.png,rigd\n"
                   f"{a.name},{b.name},out/4.png,none\n")
    assert main(["batch", str(bad), "--quiet", "--method", "average"]) == 3
    assert "line 2: failed: column register: 'rigd' is not one of" in capsys.readouterr().err
    assert not (tmp_path / "out/3.png").exists() and (tmp_path / "out/4.png").is_file()


@pytest.mark.parametrize("rows, expected", [
    ([["a.png", "b.png", "out/same.png"], ["b.png", "a.png", "out/same.png"]], "written by lines 2 and 3"),
    ([["a.png", "b.png", "out/x.png"], ["b.png", "a.png", "b.png"]], "line 3 writes"),
    ([["a.png", "b.png", "c.png"], ["c.png", "a.png", "out/y.png"]], "which line 3 reads"),
])
def test_manifest_rows_that_overwrite_each_other_are_refused(tmp_path, grey_pair, capsys, rows, expected):
    a, b = grey_pair
    (tmp_path / "out").mkdir()
    c = tmp_path / "c.png"
    c.write_bytes(a.read_bytes())
    before = {p: _digest(p) for p in (a, b, c)}
    manifest = _write_manifest(tmp_path / "m.csv", ["fixed", "moving", "output"], rows)
    assert main(["batch", str(manifest), "--method", "average", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert list((tmp_path / "out").iterdir()) == []
    assert {p: _digest(p) for p in (a, b, c)} == before


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_results_file_and_resume(tmp_path, grey_pair, capsys, suffix):
    a, b = grey_pair
    (tmp_path / "out").mkdir()
    manifest = _write_manifest(tmp_path / "m.csv", ["fixed", "moving", "output"],
                               [[a.name, b.name, "out/1.png"], ["late.png", b.name, "out/2.png"],
                                [b.name, a.name, "out/3.png"]])
    results = tmp_path / f"results{suffix}"
    argv = ["batch", str(manifest), "--method", "average", "--metrics", "--metrics-keys", "EN,SSIM",
            "--results", str(results), "--quiet"]
    assert main(argv) == 3

    def read():
        if suffix == ".csv":
            with results.open() as fh:
                return list(csv.DictReader(fh))
        return [json.loads(ln) for ln in results.read_text().splitlines()]

    recs = {int(r["line"]): r for r in read()}
    assert sorted(recs) == [2, 3, 4]
    assert [recs[k]["status"] for k in (2, 3, 4)] == ["ok", "failed", "ok"]
    assert "late.png: no such file" in recs[3]["error"]
    for k in ("fixed", "moving", "output", "seconds", "error"):
        assert k in recs[2]
    en = recs[2]["EN"] if suffix == ".csv" else recs[2]["metrics"]["EN"]
    assert float(en) > 0
    # an existing results file is not replaced without --resume
    capsys.readouterr()
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    # resume: the done rows are skipped (not rewritten), the failed one runs again
    (tmp_path / "late.png").write_bytes(a.read_bytes())
    stamp = (tmp_path / "out/1.png").stat().st_mtime_ns
    (tmp_path / "out/3.png").unlink()  # a done row whose output is gone runs again
    assert main(argv + ["--resume"]) == 0
    assert "1 already done" in capsys.readouterr().out
    assert (tmp_path / "out/1.png").stat().st_mtime_ns == stamp
    recs = read()
    assert sorted(int(r["line"]) for r in recs) == [2, 3, 4]
    assert {int(r["line"]): r["status"] for r in recs} == {2: "skipped", 3: "ok", 4: "ok"}
    assert all((tmp_path / f"out/{i}.png").is_file() for i in (1, 2, 3))


def test_resume_needs_results_and_bad_values_are_one_line(tmp_path, grey_pair, capsys):
    a, b = grey_pair
    manifest = _write_manifest(tmp_path / "m.csv", ["fixed", "moving", "output"], [[a.name, b.name, "o.png"]])
    assert main(["batch", str(manifest), "--resume", "--quiet"]) == 2
    assert "--resume needs --results" in capsys.readouterr().err
    assert main(["batch", str(manifest), "--results", str(tmp_path / "r.txt"), "--quiet"]) == 2
    assert ".csv or .jsonl" in capsys.readouterr().err
    (tmp_path / "latin1.csv").write_bytes("fixed,moving,output\nä.png,b.png,o.png\n".encode("latin-1"))
    assert main(["batch", str(tmp_path / "latin1.csv"), "--quiet"]) == 2
    assert "not UTF-8" in capsys.readouterr().err

"""The medfusion command: exit codes, one-line errors naming the input, no partial output,
inputs untouched."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib import __version__
from MedFusionLib.cli import main
from MedFusionLib.devices import cuda_available


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pair(tmp_path, phantom2d):
    a = tmp_path / "a.png"
    b = tmp_path / "b.png"
    sitk.WriteImage(sitk.GetImageFromArray((phantom2d * 255).astype(np.uint8)), str(a))
    sitk.WriteImage(sitk.GetImageFromArray(((1 - phantom2d) * 200).astype(np.uint8)), str(b))
    return a, b


@pytest.fixture
def vol(tmp_path, volume_image):
    path = tmp_path / "vol.nii.gz"
    sitk.WriteImage(volume_image, str(path))
    return path


def test_fuse_writes_every_output(tmp_path, pair):
    a, b = pair
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["fuse", str(a), str(b), "-o", str(out / "f.png"), "--method", "maximum", "--quiet",
               "--transform", str(out / "t.tfm"), "--weights-map", str(out / "w.nii.gz")])
    assert rc == 0
    fused = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "f.png")))
    assert fused.shape == (96, 80) and fused.dtype == np.uint8
    assert sitk.ReadTransform(str(out / "t.tfm")).GetDimension() == 2
    w = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "w.nii.gz")))
    assert set(np.unique(w)) <= {0.0, 1.0}


def test_fuse_with_method_parameters(tmp_path, vol):
    rc = main(["fuse", str(vol), str(vol), "-o", str(tmp_path / "f.nrrd"), "--method", "average",
               "--register", "none", "--quiet"])
    assert rc == 0
    out = sitk.ReadImage(str(tmp_path / "f.nrrd"))
    assert out.GetSpacing() == pytest.approx((0.9, 0.9, 2.5))


def _bad_inputs(tmp_path, pair, vol):
    a, b = pair
    nan = tmp_path / "nan.mha"
    arr = np.random.default_rng(0).random((6, 20, 20)).astype(np.float32)
    arr[:] = np.nan  # a few NaN voxels are replaced (normalize.replace_nonfinite); all NaN is refused
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(nan))
    const = tmp_path / "const.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((30, 30), 7, np.uint8)), str(const))
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image at all" * 20)
    vec = tmp_path / "field.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6, 7, 2), np.float32), isVector=True), str(vec))
    far = tmp_path / "far.png"
    far_img = sitk.ReadImage(str(b))
    far_img.SetOrigin((9999.0, 9999.0))
    sitk.WriteImage(far_img, str(far.with_suffix(".nrrd")))
    far = far.with_suffix(".nrrd")
    cases = [
        ([str(tmp_path / "missing.png"), str(b)], "missing.png: no such file"),
        ([str(junk), str(b)], "junk.nii.gz: cannot read"),
        ([str(a), str(vol)], "3D"),
        ([str(a), str(far)], "does not overlap"),
        ([str(const), str(b)], "const.png: the image is constant"),
        ([str(nan), str(nan)], "nan.mha: every voxel is NaN or Inf"),
        ([str(vec), str(vec)], "field.nrrd: a vector image with 2 components"),
        ([str(a), str(b), "--method", "maxmum"], "Did you mean 'maximum'"),
        ([str(a), str(b), "--device", "tpu"], "unknown device 'tpu'"),
        ([str(a), str(b), "--method", "average", "--param", "levels=3"], "no parameter 'levels'"),
    ]
    if not cuda_available():
        cases.append(([str(a), str(b), "--device", "cuda"], "no CUDA device"))
    return cases


def test_bad_input_gives_one_line_error_and_leaves_nothing(tmp_path, pair, vol, capsys):
    cases = _bad_inputs(tmp_path, pair, vol)
    inputs = sorted(p for p in tmp_path.iterdir() if p.is_file())
    digests = {p: _digest(p) for p in inputs}
    out = tmp_path / "out"
    out.mkdir()
    for argv, expected in cases:
        rc = main(["fuse", *argv, "-o", str(out / "f.nii.gz"), "--metrics", str(out / "m.json"),
                   "--transform", str(out / "t.tfm"), "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, (argv, err)
        assert len(err) == 1 and err[0].startswith("medfusion fuse: error:"), err
        assert expected in err[0], (expected, err[0])
        assert list(out.iterdir()) == [], f"partial output left by {argv}"
    assert {p: _digest(p) for p in inputs} == digests


def test_output_never_overwrites_an_input(pair, capsys):
    a, b = pair
    before = _digest(a)
    rc = main(["fuse", str(a), str(b), "-o", str(a), "--method", "average", "--quiet"])
    assert rc == 2 and "is one of the inputs" in capsys.readouterr().err
    assert _digest(a) == before


def test_failed_late_output_removes_earlier_ones(tmp_path, pair, capsys):
    a, b = pair
    rc = main(["fuse", str(a), str(b), "-o", str(tmp_path / "f.png"), "--method", "average",
               "--weights-map", str(tmp_path / "w.xyz"), "--quiet"])
    assert rc == 2 and "unsupported output format" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


def test_batch_skips_bad_rows_and_summarises(tmp_path, pair, capsys):
    a, b = pair
    (tmp_path / "res").mkdir()
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("fixed,moving,output\n"
                        f"{a.name},{b.name},res/one.png\n"
                        f"missing.png,{b.name},res/two.png\n"
                        f"{b.name},{a.name},res/three.nii.gz\n")
    rc = main(["batch", str(manifest), "--method", "average", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 3
    assert "1 failed" in captured.out and "2 fused" in captured.out
    assert "line 3" in captured.err and "missing.png" in captured.err
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["one.png", "three.nii.gz"]


def test_batch_manifest_errors(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["batch", str(bad)]) == 2
    assert "missing: fixed, moving, output" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "none.csv")]) == 2


def test_list_methods_version_and_help(capsys):
    assert main(["list-methods"]) == 0
    out = capsys.readouterr().out
    assert "maximum" in out and "pca" in out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out
    for cmd in ("fuse", "batch", "list-methods", "demo"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: medfusion" in capsys.readouterr().out


def test_console_script_runs_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "MedFusionLib.cli", "list-methods", "--json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert '"maximum"' in proc.stdout

"""Issue #25, unclear messages: each says what is wrong with which file, on one line, without
library reprs (``np.float64(...)``), numpy warnings or tracebacks; and the warnings that were
missing (pixdim 0, volumes a metre apart, --max-tries with --scheduler) are given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.cli import main
from MedFusionLib.errors import OutputError, UnknownOptionError
from test_bad_inputs import FAST, ROOT, png, snapshot, vol, write


@pytest.fixture
def kit(small_inputs) -> Path:
    return small_inputs


def error_line(capfd, argv, code=2) -> str:
    got = main(argv)
    err = capfd.readouterr().err
    assert got == code, err
    assert "Traceback" not in err and "np.float64" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------------------------
# inputs that were refused with a misleading message


def test_metaimage_with_list_2d_data_files_reads_and_its_slices_are_inputs(kit, capfd):
    """ElementDataFile = LIST 2D was refused as 'its data file .../LIST 2D is missing'."""
    from MedFusionLib.imagefiles import files_of
    from MedFusionLib.io import read_image

    arr = vol(3)
    names = []
    for k, plane in enumerate(arr):
        plane.tofile(kit / f"s{k}.raw")
        names.append(f"s{k}.raw")
    (kit / "list.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 24 24 5\nElementType = MET_FLOAT\n"
        "ElementSpacing = 1 1 1\nElementDataFile = LIST 2D\n" + "\n".join(names) + "\n")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(kit / "list.mhd")), arr)
    assert [p.name for p in files_of(kit / "list.mhd")] == ["list.mhd"] + names
    before = snapshot(kit)
    line = error_line(capfd, ["fuse", "list.mhd", "b.nii.gz", "-o", "f.nii.gz", "--metrics",
                              "s2.raw", *FAST])
    assert "s2.raw" in line and "list.mhd" in line and "one of the inputs" in line
    assert snapshot(kit) == before
    (kit / "s3.raw").write_bytes((kit / "s3.raw").read_bytes()[:1000])
    line = error_line(capfd, ["fuse", "list.mhd", "b.nii.gz", "-o", "f.nii.gz", *FAST])
    assert "s3.raw" in line and "cut off" in line


def test_grey_alpha_png_reads_as_its_grey_channel(kit):
    """A grey+alpha PNG failed with 'Unknown PixelType'."""
    from MedFusionLib.io import read_image

    grey = png(5)
    la = np.stack([grey, np.full_like(grey, 200)], -1)
    sitk.WriteImage(sitk.GetImageFromArray(la, isVector=True), str(kit / "la.png"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(kit / "la.png")), grey)
    assert main(["fuse", "la.png", "q.png", "-o", "f.png", *FAST]) == 0


@pytest.mark.parametrize("window", ["40,inf", "1e308,1e308", "nan,80"])
def test_a_ct_window_must_be_finite(kit, capfd, window):
    """--ct-window 40,inf was accepted, then a numpy warning and a misleading 'do not overlap'."""
    line = error_line(capfd, ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--ct-window",
                              window, "--fixed-modality", "CT", *FAST])
    assert f"CT window '{window}'" in line and "finite" in line


def test_a_dicom_write_error_is_one_line(kit, capfd, monkeypatch):
    """The DICOM-write error on a full disk embedded a multi-line traceback."""
    from test_bad_inputs import dicom_pair

    from MedFusionLib.dicom import derived

    dicom_pair(kit)

    def full(path, ds):
        raise OSError("Traceback (most recent call last):\n  File x\nOSError: [Errno 28] No "
                      "space left on device")

    monkeypatch.setattr(derived, "write_file", full)
    before = snapshot(kit)
    line = error_line(capfd, ["fuse", "ct", "mr", "--dicom", "-o", "series", *FAST])
    assert "series: could not write the DICOM series (" in line
    assert "[Errno 28] No space left on device); is the disk full?" in line
    assert snapshot(kit) == before


def test_an_existing_registration_object_is_found_before_the_run(kit, capfd, monkeypatch):
    """An existing REG00001.dcm was found only after the whole run."""
    from test_bad_inputs import dicom_pair

    from MedFusionLib import job

    dicom_pair(kit)
    (kit / "series").mkdir()
    (kit / "series/REG00001.dcm").write_bytes(b"an earlier run's")

    def no_reading(spec):
        raise AssertionError("the sources were read before the output folder was checked")

    monkeypatch.setattr(job, "read_sources", no_reading)
    line = error_line(capfd, ["fuse", "ct", "mr", "--dicom", "-o", "series", *FAST])
    assert "series/REG00001.dcm: exists already" in line


def test_a_written_file_that_does_not_read_back_is_named(tmp_path, monkeypatch):
    """The read-back error named the file 'it'."""
    from MedFusionLib import io

    def unreadable(name, *a, **kw):
        raise RuntimeError(f"ERROR: Could not open {name} for reading")

    monkeypatch.setattr(io.sitk, "ReadImage", unreadable)
    with pytest.raises(OutputError) as info:
        io.write_image(sitk.GetImageFromArray(vol(2)), tmp_path / "f.mha")
    msg = str(info.value)
    assert "Could not open f.mha" in msg and " it " not in msg and ".medfusion-" not in msg


def test_dicom_spacing_mismatch_has_no_numpy_reprs(kit, capfd):
    import pydicom

    from test_bad_inputs import dicom_pair

    dicom_pair(kit)
    one = kit / "ct" / "IM0002.dcm"
    ds = pydicom.dcmread(one)
    ds.PixelSpacing = [0.5, 0.5]
    ds.save_as(one)
    line = error_line(capfd, ["fuse", "ct", "mr", "-o", "f.nii.gz", *FAST])
    assert "[0.5, 0.5]" in line


NUMPY_WARNING = textwrap.dedent("""
    import sys
    import numpy as np
    from MedFusionLib.methods import register
    def noisy(a, b, *, device="cpu"):
        np.log(np.zeros(3))               # RuntimeWarning: divide by zero encountered in log
        return ((a + b) * np.float32(0.5)).astype(np.float32)
    register("test-noisy", title="average with a numpy warning (tests only)")(noisy)
    from MedFusionLib.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_numpy_warnings_do_not_reach_the_user(kit):
    argv = ["fuse", "p.png", "q.png", "-o", "f.png", "--method", "test-noisy", "--register",
            "none", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", NUMPY_WARNING, *argv], cwd=kit, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = subprocess.run([sys.executable, "-c", NUMPY_WARNING, "-v", *argv[:-1]], cwd=kit,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    said = [ln for ln in r.stderr.splitlines() if "divide by zero" in ln]
    assert said == ["WARNING MedFusionLib: divide by zero encountered in log"], r.stderr


# --------------------------------------------------------------------------------------------
# warnings that were missing


def test_pixdim_zero_is_said(kit, caplog):
    import struct

    path = write(vol(4), kit / "z.nii")
    data = bytearray(path.read_bytes())
    data[80:84] = struct.pack("<f", 0.0)  # pixdim[1]: the x voxel size
    path.write_bytes(bytes(data))
    assert main(["fuse", "z.nii", "b.nii.gz", "-o", "f.nii.gz", *FAST]) == 0
    assert "z.nii: the header gives voxel size 0 for axis x; it is read as 1 mm" in caplog.text


def test_volumes_a_metre_apart_are_said(kit, caplog):
    from MedFusionLib.io import warn_far_apart

    a = sitk.GetImageFromArray(vol(0))
    b = sitk.GetImageFromArray(vol(1))
    assert warn_far_apart(a, b, "a", "b") == 0 and caplog.text == ""
    b.SetOrigin((1000.0, 0.0, 0.0))
    assert 970 < warn_far_apart(a, b, "a.nii.gz", "b.nii.gz") < 1000
    assert "a.nii.gz and b.nii.gz lie 977 mm apart" in caplog.text


def test_max_tries_with_a_scheduler_is_said(kit, capfd, closed_port):
    pytest.importorskip("distributed")
    (kit / "m.csv").write_text("fixed,moving,output\np.png,q.png,o.png\n")
    assert main(["batch", "m.csv", "--scheduler", f"tcp://127.0.0.1:{closed_port}", "--max-tries", "5",
                 *FAST]) == 2
    err = capfd.readouterr().err
    assert "warning: --max-tries is not applied with --scheduler" in err
    assert "allowed-failures" in err


# --------------------------------------------------------------------------------------------
# did you mean


@pytest.mark.parametrize("typed, supported, meant", [
    ("max", ["average", "maximum", "pca", "swt"], "maximum"),       # a prefix first
    ("maxmum", ["average", "maximum", "pca"], "maximum"),
    ("XRAY", ["ct", "mr", "pet", "spect", "8bit"], None),           # not 'mr'
    ("moving_modalty", ["moving_modality", "method"], "moving_modality"),
])
def test_did_you_mean(typed, supported, meant):
    from MedFusionLib.options import look_up, suggest

    assert suggest(typed, supported) == meant
    with pytest.raises(UnknownOptionError) as info:
        look_up(typed, supported, what="thing")
    assert ("Did you mean" in str(info.value)) == (meant is not None)


def test_unknown_method_max_suggests_maximum(kit, capfd):
    line = error_line(capfd, ["fuse", "p.png", "q.png", "-o", "f.png", "--method", "max",
                              "--register", "none", "--quiet"])
    assert "unknown fusion method 'max'. Did you mean 'maximum'?" in line


def test_killed_worker_message_counts_right():
    from MedFusionLib.executors import _times

    assert [_times(n) for n in (1, 2, 4)] == ["once", "2 times", "4 times"]

"""Registration through the medfusion command: confidence in the metrics JSON and on stderr,
--strict-registration, masks and initial transforms, Ctrl-C during registration (exit 130)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from MedFusionLib.cli import main
from MedFusionLib.datasets import sample_volumes

REPO = Path(__file__).resolve().parent.parent

#: 3D registrations of several seconds each: not in the quick (pinned-versions) run.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 2 mm MR T1, the synthetic CT slightly moved, and an unrelated textured ellipsoid."""
    d = tmp_path_factory.mktemp("reg")
    v = sample_volumes()
    mr = sitk.BinShrink(v["mr_t1"], [2, 2, 2])
    ct = sitk.BinShrink(v["ct"], [2, 2, 2])
    ct.SetOrigin(tuple(np.add(ct.GetOrigin(), (6.0, -4.0, 5.0))))
    rng = np.random.default_rng(5)
    shape = (80, 100, 90)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ell = ((zz - 40) / 34.0) ** 2 + ((yy - 50) / 45.0) ** 2 + ((xx - 45) / 38.0) ** 2 <= 1
    blob = sitk.GetImageFromArray(((0.8 * (ndimage.gaussian_filter(rng.standard_normal(shape), 3) > 0)
                                    + 0.2) * ell * 1000).astype(np.float32))
    blob.SetSpacing((2.0, 2.0, 2.0))
    blob.SetOrigin((-90.0, -80.0, -50.0))
    paths = {}
    for name, img in (("mr", mr), ("ct", ct), ("blob", blob)):
        paths[name] = d / f"{name}.nii.gz"
        sitk.WriteImage(img, str(paths[name]))
    return paths


def _fuse(files, tmp_path, moving, *extra):
    out = tmp_path / "fused.nii.gz"
    rc = main(["fuse", str(files["mr"]), str(files[moving]), "-o", str(out), "--method", "average",
               "--quiet", "--fixed-modality", "MR",
               "--moving-modality", "CT" if moving == "ct" else "MR", *extra])
    return rc, out


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "MedFusionLib.cli", *map(str, args)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            cwd=cwd)


def test_unrelated_pair_warns_once_on_stderr_and_reports_low_confidence(files, tmp_path):
    metrics = tmp_path / "m.json"
    out = tmp_path / "fused.nii.gz"
    proc = _cli("fuse", files["mr"], files["blob"], "-o", out, "--method", "average", "--quiet",
                "--metrics", metrics, "--metrics-keys", "EN", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and out.exists(), err
    warnings = [line for line in err.splitlines() if "registration may have failed" in line]
    assert len(warnings) == 1 and "low confidence" in warnings[0], err
    reg = json.loads(metrics.read_text())["registration"]
    assert reg["converged"] is False and reg["confidence"] == "low" and reg["confidence_reason"]


def test_strict_registration_exits_2_and_writes_nothing(files, tmp_path, capfd):
    rc, out = _fuse(files, tmp_path, "blob", "--strict-registration",
                    "--transform", str(tmp_path / "t.tfm"))
    assert rc == 2
    assert list(tmp_path.iterdir()) == []
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not trustworthy" in err[0] and "Traceback" not in err[0]


def test_initial_transform_and_masks_from_files(files, tmp_path):
    # --register none with an initial transform applies it as is
    given = sitk.Euler3DTransform((0.0, -18.0, 18.0), 0.01, -0.02, 0.03, (6.0, -4.0, 5.0))
    tfm = tmp_path / "in.tfm"
    sitk.WriteTransform(given, str(tfm))
    rc, _ = _fuse(files, tmp_path, "ct", "--register", "none", "--initial-transform", str(tfm),
                  "--transform", str(tmp_path / "out.tfm"))
    assert rc == 0
    np.testing.assert_allclose(sitk.ReadTransform(str(tmp_path / "out.tfm")).GetParameters(),
                               given.GetParameters(), atol=1e-9)
    # a missing or unreadable file is a one-line input error
    assert _fuse(files, tmp_path, "ct", "--initial-transform", str(tmp_path / "nope.tfm"))[0] == 2
    assert _fuse(files, tmp_path, "ct", "--fixed-mask", str(tmp_path / "nope.nii.gz"))[0] == 2


#: Runs the CLI with SIGINT sent to itself from inside ITK's optimiser (at the first
#: progress report of a registration iteration), as a Ctrl-C in the middle of registration.
CTRL_C_DRIVER = """
import os, signal, sys
from MedFusionLib.registration import optimise
_report = optimise.report
def report(progress, fraction, message):
    if "iteration" in message or "poses" in message:
        os.kill(os.getpid(), signal.SIGINT)
    return _report(progress, fraction, message)
optimise.report = report
from MedFusionLib.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_during_registration_exits_130_without_output(files, tmp_path):
    out = tmp_path / "fused.nii.gz"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", CTRL_C_DRIVER, "fuse", str(files["mr"]), str(files["ct"]), "-o",
         str(out), "--method", "average", "--moving-modality", "CT", "--transform",
         str(tmp_path / "t.tfm")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
        # the Ctrl-C must reach Python's handler even when the suite runs with SIGINT ignored
        # (nohup ... &): children inherit that, and Python respects it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, proc.stderr
    assert "cancelled" in proc.stderr
    assert "Traceback" not in proc.stderr and "Python Callable" not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_batch_rows_take_initial_transform_and_mask_columns(itk_data, tmp_path, capfd):
    """Per-row registration inputs reach the pair job: an initial transform applied as is, and a
    missing mask failing only its own row with a one-line error naming it."""
    given = sitk.Euler2DTransform((90.0, 108.0), 0.05, (33.0, 37.0))
    sitk.WriteTransform(given, str(tmp_path / "in.tfm"))
    fixed = itk_data / "BrainT1Slice.png"
    moving = itk_data / "BrainProtonDensitySliceShifted13x17y.png"
    (tmp_path / "m.csv").write_text(
        "fixed,moving,output,register,initial_transform,transform,fixed_mask\n"
        f"{fixed},{moving},a.png,none,in.tfm,a.tfm,\n"
        f"{fixed},{moving},b.png,rigid,,,no-such-mask.nii.gz\n")
    rc = main(["batch", str(tmp_path / "m.csv"), "--method", "average", "--quiet"])
    assert rc == 3  # one row failed
    np.testing.assert_allclose(sitk.ReadTransform(str(tmp_path / "a.tfm")).GetParameters(),
                               given.GetParameters(), atol=1e-9)
    assert (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()
    assert "no-such-mask.nii.gz" in capfd.readouterr().err


def test_compare_registers_as_fuse_and_honours_strict_registration(files, tmp_path, capfd):
    """compare runs the pair job's registration: the same transform as fuse's, to 1e-9; and
    with --strict-registration an unrelated pair is an error (exit 2) with no report written."""
    rc, _ = _fuse(files, tmp_path, "ct", "--transform", str(tmp_path / "t.tfm"))
    assert rc == 0
    out = tmp_path / "cmp"
    assert main(["compare", str(files["mr"]), str(files["ct"]), "--out", str(out), "--methods",
                 "average", "--metrics", "SCD", "--fixed-modality", "MR", "--moving-modality",
                 "CT", "--max-slices", "2", "--quiet"]) == 0
    reg = json.loads((out / "results.json").read_text())["pairs"][0]["settings"]["registration"]
    np.testing.assert_allclose(reg["transform_parameters"],
                               sitk.ReadTransform(str(tmp_path / "t.tfm")).GetParameters(),
                               atol=1e-9)
    capfd.readouterr()
    out2 = tmp_path / "cmp-unrelated"
    assert main(["compare", str(files["mr"]), str(files["blob"]), "--out", str(out2), "--methods",
                 "average", "--strict-registration", "--quiet"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not trustworthy" in err[0]
    assert not out2.exists()

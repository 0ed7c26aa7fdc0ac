"""MedFusionLib.background: the engine in a child process (what the Slicer panel runs)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib import background
from MedFusionLib.errors import CancelledError, InvalidInputError, MedFusionError
from MedFusionLib.interactive import run_engine


def _pair(shape=(6, 48, 40)):
    """Two head-like volumes (an ellipsoid with texture), the second shifted by a few voxels."""
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    rng = np.random.default_rng(3)

    def head(shift):
        r = np.sqrt(k ** 2 + (j - shift) ** 2 + i ** 2)
        inside = np.where(r < 0.8, 150 + 60 * np.sin(7 * i) * np.cos(5 * (j - shift)), 5)
        return (inside + rng.normal(0, 2, shape)).astype(np.float32)

    a, b = sitk.GetImageFromArray(head(0.0)), sitk.GetImageFromArray(head(0.1))
    for image in (a, b):
        image.SetSpacing((0.9, 0.8, 2.5))
        image.SetOrigin((-10.0, 4.0, 2.0))
        image.SetMetaData("0008|0060", "MR")
    return a, b


def test_the_child_gives_what_the_engine_gives_in_process():
    a, b = _pair()
    options = dict(method="maximum", registration="none", return_weights=False,
                   metric_keys=["EN", "SSIM"], max_metric_slices=4)
    run = background.start(a, b, **options)
    fusion, metrics, directions = run.wait(timeout=120)
    here = run_engine(a, b, **options)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(fusion.fused),
                                  sitk.GetArrayViewFromImage(here.fusion.fused))
    assert fusion.fused.GetSpacing() == a.GetSpacing() and fusion.fused.GetOrigin() == a.GetOrigin()
    assert metrics == pytest.approx(here.metrics) and directions == here.directions
    assert fusion.method == "maximum" and fusion.registration.mode == "none"
    assert run.state == "done" and run.fraction >= 0.97 and not run.job.exists()


def test_progress_is_one_bar_that_never_goes_back():
    a, b = _pair((40, 96, 80))
    run = background.start(a, b, method="average", registration="rigid", metric_keys=["EN"],
                           fixed_modality="MR", moving_modality="MR")
    seen = []
    while not run.finished:
        seen += [e[1] for e in run.poll() if e[0] == "progress" and e[1] is not None]
        time.sleep(0.02)
    assert run.state == "done", run.error
    assert seen[0] < 0.05 and max(seen) >= 0.97
    assert run.fraction == max(seen)  # the run's own bar is the running maximum


def test_the_childs_one_line_error_keeps_its_type():
    a, _ = _pair()
    two_d = sitk.GetImageFromArray(np.ones((32, 32), np.float32))
    run = background.start(a, two_d, method="maximum", registration="none")
    with pytest.raises(InvalidInputError, match="give two 2D images or two 3D volumes"):
        run.wait(timeout=120)
    assert run.state == "failed" and not run.job.exists()


def test_a_bug_in_the_child_is_named_with_where_it_happened():
    a, b = _pair()
    run = background.start(a, b, method="maximum", registration="none", metric_keys=["EN"],
                           max_metric_slices="many")  # a wrong type reaches the engine: a bug
    with pytest.raises(MedFusionError, match=r"the fusion failed: (TypeError|ValueError): .*\(\w+\.py:\d+\)"):
        run.wait(timeout=120)


def test_cancel_ends_the_child_and_removes_its_files():
    a, b = _pair((40, 160, 160))
    run = background.start(a, b, method="average", registration="rigid",
                           fixed_modality="MR", moving_modality="MR")
    while not run.child_alive():
        run.poll()
        time.sleep(0.02)
    run.cancel()
    assert run.state == "cancelled"
    deadline = time.monotonic() + 10
    while run.child_alive() or run.job.exists():
        assert time.monotonic() < deadline, "the child or its files outlived Cancel"
        time.sleep(0.05)
    with pytest.raises(CancelledError):
        run.wait(timeout=1)


def test_an_interpreter_that_cannot_start_is_a_clear_error():
    a, b = _pair()
    run = background.start(a, b, launcher=background.Launcher(python=("/nonexistent/python",)),
                           method="maximum", registration="none")
    with pytest.raises(MedFusionError, match="the fusion process could not run: FileNotFoundError"):
        run.wait(timeout=30)


def test_a_child_given_no_job_does_nothing_and_exits_130(tmp_path):
    # A child starts before its job folder is complete (or waits in standby); it reads nothing
    # until it is given the folder, and an input closed without one ends it.
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", background.BOOTSTRAP, str(background.LIBRARY),
                           "maximum"], stdin=subprocess.DEVNULL, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stdout + done.stderr
    assert background.PROTOCOL_PREFIX not in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_run_takes_the_child_waiting_in_standby_and_discard_ends_it():
    launcher = background.Launcher()
    background.prewarm(launcher, "maximum")
    deadline = time.monotonic() + 30
    while background._standby is None:
        assert time.monotonic() < deadline, "no standby child was started"
        time.sleep(0.02)
    waiting = background._standby[1]
    a, b = _pair()
    run = background.start(a, b, launcher=launcher, method="maximum", registration="none")
    run.wait(timeout=120)
    assert run.state == "done" and run.pid == waiting.pid and background._standby is None
    background.prewarm(launcher, "maximum")  # the next one
    while background._standby is None:
        time.sleep(0.02)
    spare = background._standby[1]
    background.prewarm(launcher, "maximum")  # one waits at most: this keeps it
    time.sleep(0.5)
    assert background._standby[1] is spare
    background.discard_standby()
    assert spare.wait(timeout=30) == 130 and background._standby is None


def test_inputs_that_cannot_be_written_are_a_clear_error_and_the_child_stops(monkeypatch):
    a, b = _pair()

    def full_disk(image, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(background, "_save_array", full_disk)
    run = background.start(a, b, method="maximum", registration="none")
    with pytest.raises(MedFusionError, match="the fusion's inputs could not be written to .*"
                                             "No space left on device"):
        run.wait(timeout=60)
    deadline = time.monotonic() + 30
    while run.child_alive() or run.job.exists():
        assert time.monotonic() < deadline, "the child or its folder outlived the failure"
        time.sleep(0.05)


def test_images_go_through_the_job_folder_unchanged(tmp_path):
    rgb = sitk.GetImageFromArray(np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3), isVector=True)
    rgb.SetSpacing((0.5, 2.0))
    rgb.SetOrigin((3.0, -1.0))
    rgb.SetDirection((0.0, 1.0, 1.0, 0.0))
    rgb.SetMetaData("0008|0060", "PT")
    background._save_array(rgb, tmp_path / "rgb.npy")
    back = background._load_image(tmp_path / "rgb.npy", background._geometry(rgb))
    (tmp_path / "rgb.npy").unlink()  # nothing maps the file any more
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(rgb))
    assert back.GetNumberOfComponentsPerPixel() == 3
    assert (back.GetSpacing(), back.GetOrigin(), back.GetDirection()) == \
        (rgb.GetSpacing(), rgb.GetOrigin(), rgb.GetDirection())
    assert back.GetMetaData("0008|0060") == "PT"


def test_job_folders_go_to_shared_memory_only_when_it_has_room(monkeypatch, tmp_path):
    import tempfile
    a, b = _pair()
    inputs = {"fixed": a, "moving": b}
    monkeypatch.setattr(background, "SHARED_MEMORY", tmp_path)  # room: a real disk with space
    roomy = background._job_folder(inputs, a)
    assert roomy.parent == tmp_path
    monkeypatch.setattr(background.shutil, "disk_usage",
                        lambda path: type("Usage", (), {"free": 64 * 2 ** 20})())  # a 64 MB /dev/shm
    small = background._job_folder(inputs, a)
    monkeypatch.setattr(background, "SHARED_MEMORY", tmp_path / "absent")
    absent = background._job_folder(inputs, a)
    assert small.parent == absent.parent == Path(tempfile.gettempdir())
    for folder in (small, absent):
        folder.rmdir()

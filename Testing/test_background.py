"""MedFusionLib.background: the engine in a child process (what the Slicer panel runs)."""

from __future__ import annotations

import time

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

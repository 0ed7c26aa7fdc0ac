"""volume_metrics: per-slice scoring along the fusion axis, skipped slices, masks, 2D input."""

from __future__ import annotations

import numpy as np
import pytest

from MedFusionLib.errors import CancelledError, InvalidInputError
from MedFusionLib.metrics import compute_metrics, volume_metrics

KEYS = ["SCD", "EN", "MI", "SSIM", "Qabf", "FS"]


@pytest.fixture
def volumes(rng):
    """(6, 40, 48) sources in [0, 1] with a black slab at slices 0 and 5 and a constant F slice."""
    a = rng.random((6, 40, 48))
    b = np.clip(a * 0.5 + 0.5 * rng.random((6, 40, 48)), 0, 1)
    a[0] = 0.0
    b[5] = 0.0
    f = (a + b) / 2
    f[3] = 0.25
    return a, b, f


def test_mean_over_usable_slices(volumes):
    a, b, f = volumes
    out = volume_metrics(a, b, f, keys=KEYS)
    assert out["slices_total"] == 6 and out["slices_used"] == 3  # 0, 3, 5 skipped
    per_slice = [compute_metrics(a[i], b[i], f[i], keys=KEYS) for i in (1, 2, 4)]
    for k in KEYS:
        assert out[k] == pytest.approx(np.mean([p[k] for p in per_slice]), rel=1e-12)
    assert list(out)[:len(KEYS)] == KEYS


def test_axis_selects_the_slicing_direction(volumes):
    a, b, f = volumes
    moved = [np.moveaxis(x, 0, 2) for x in volumes]
    assert volume_metrics(*moved, axis=2, keys=KEYS) == pytest.approx(
        volume_metrics(a, b, f, axis=0, keys=KEYS))
    along_rows = volume_metrics(a, b, f, axis=1, keys=["EN"])
    assert along_rows["slices_total"] == 40


def test_two_d_input_is_one_slice(volumes):
    a, b, f = (x[1] for x in volumes)
    out = volume_metrics(a, b, f, keys=KEYS)
    assert out["slices_used"] == 1 and out["slices_total"] == 1
    assert out["SCD"] == pytest.approx(compute_metrics(a, b, f, keys=["SCD"])["SCD"])


def test_mask_crops_each_slice_to_its_foreground(volumes):
    a, b, f = volumes
    mask = np.zeros(a.shape, bool)
    mask[1:3, 5:30, 10:40] = True  # slices 1 and 2 only
    out = volume_metrics(a, b, f, keys=KEYS, mask=mask)
    assert out["slices_used"] == 2
    crop = (slice(5, 30), slice(10, 40))
    expected = np.mean([compute_metrics(a[i][crop], b[i][crop], f[i][crop], keys=["EN"])["EN"]
                        for i in (1, 2)])
    assert out["EN"] == pytest.approx(expected)


def test_no_usable_slice_gives_nan_and_zero_used():
    z = np.zeros((3, 20, 20))
    out = volume_metrics(z, z, z, keys=["EN", "SCD"])
    assert out["slices_used"] == 0 and out["slices_total"] == 3
    assert np.isnan(out["EN"]) and np.isnan(out["SCD"])


def test_slice_step_and_progress(volumes):
    a, b, f = volumes
    seen = []
    out = volume_metrics(a, b, f, keys=["EN"], slice_step=2,
                         progress=lambda frac, msg: seen.append((frac, msg)))
    assert out["slices_total"] == 3 and out["slices_used"] == 2  # slices 0, 2, 4; 0 is black
    assert seen and seen[-1][0] == pytest.approx(1.0)
    with pytest.raises(CancelledError):
        volume_metrics(a, b, f, keys=["EN"], progress=lambda frac, msg: False)


def test_invalid_volume_input(volumes):
    a, b, f = volumes
    with pytest.raises(InvalidInputError, match="same shape"):
        volume_metrics(a, b, f[:, :-1])
    with pytest.raises(InvalidInputError, match="mask"):
        volume_metrics(a, b, f, keys=["EN"], mask=np.ones((2, 2), bool))
    with pytest.raises(InvalidInputError, match="axis"):
        volume_metrics(a, b, f, keys=["EN"], axis=3)
    with pytest.raises(InvalidInputError, match="2D or 3D"):
        volume_metrics(a[None], b[None], f[None], keys=["EN"])
    with pytest.raises(InvalidInputError, match="outside"):
        volume_metrics(a * 300, b, f, keys=["EN"])

"""A 3D pair small enough for a single registration level (found by the Slicer self-test, #14):
the global search's best start is still refined, and the result reports why it stopped."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from MedFusionLib.registration import register


def _blob(shift_mm=(0.0, 0.0, 0.0)):
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in (30, 34, 32)), indexing="ij")
    x, y, z = (i - 15.5) * 3.0 - shift_mm[0], (j - 16.5) * 3.0 - shift_mm[1], (k - 14.5) * 2.6 - shift_mm[2]
    r = np.sqrt((x / 38) ** 2 + (y / 44) ** 2 + (z / 30) ** 2)
    vol = np.where(r < 0.85, 400.0, np.where(r < 1.0, 80.0, 0.0))
    vol += np.where(((x - 8) / 7) ** 2 + (y / 12) ** 2 + (z / 8) ** 2 < 1, -250.0, 0.0)
    image = sitk.GetImageFromArray(vol.astype(np.float32))
    image.SetSpacing((3.0, 3.0, 2.6))
    return image


def test_single_level_rigid_registration_is_refined_and_reports_its_stop():
    result = register(_blob(), _blob((4.0, -3.0, 2.0)), mode="rigid")
    assert result.stop_reason
    moved = np.array(result.transform.TransformPoint((0.0, 0.0, 0.0)))
    np.testing.assert_allclose(moved, (4.0, -3.0, 2.0), atol=1.5)

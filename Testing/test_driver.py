"""The slice-wise driver: axes, batching, progress/cancel, validation, devices."""

from __future__ import annotations

import numpy as np
import pytest

from MedFusionLib.devices import cuda_available, resolve_device
from MedFusionLib.driver import acquisition_axis, batch_size_for, fuse_arrays
from MedFusionLib.errors import (CancelledError, DeviceUnavailableError, InvalidInputError,
                                 UnknownOptionError)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_fused_volume_keeps_shape_for_every_axis(phantom3d, axis):
    b = phantom3d[::-1].copy()
    fused = fuse_arrays(phantom3d, b, method="maximum", axis=axis, device="cpu")
    assert fused.shape == phantom3d.shape and fused.dtype == np.float32
    np.testing.assert_array_equal(fused, np.maximum(phantom3d, b))


def test_pca_is_per_slice_along_the_chosen_axis(phantom3d, rng):
    b = rng.random(phantom3d.shape).astype(np.float32)
    whole = fuse_arrays(phantom3d, b, method="pca", axis=1, device="cpu")
    one = fuse_arrays(phantom3d[:, 5], b[:, 5], method="pca", device="cpu")
    np.testing.assert_allclose(whole[:, 5], one, atol=1e-6)


def test_batches_give_the_same_result_as_one_batch(phantom3d, rng):
    b = rng.random(phantom3d.shape).astype(np.float32)
    one, w1 = fuse_arrays(phantom3d, b, method="pca", device="cpu", batch_size=100, return_weights=True)
    many, w3 = fuse_arrays(phantom3d, b, method="pca", device="cpu", batch_size=5, return_weights=True)
    np.testing.assert_array_equal(one, many)
    np.testing.assert_array_equal(w1, w3)


def test_2d_input_and_weights(phantom2d):
    b = 1 - phantom2d
    fused, w = fuse_arrays(phantom2d, b, method="maximum", device="cpu", return_weights=True)
    assert fused.shape == phantom2d.shape
    np.testing.assert_array_equal(w, (phantom2d >= b).astype(np.float32))


def test_progress_reports_slices_and_cancel_stops(phantom3d):
    seen = []
    fuse_arrays(phantom3d, phantom3d, method="average", device="cpu", batch_size=10,
                progress=lambda f, m: seen.append((f, m)))
    assert seen[0][0] == 0.0 and seen[-1][0] == 1.0
    assert any(m == f"slice 20/{phantom3d.shape[0]}" for _, m in seen)
    assert "fusion completed" in seen[-1][1]
    with pytest.raises(CancelledError, match="cancelled"):
        fuse_arrays(phantom3d, phantom3d, method="average", device="cpu", batch_size=4,
                    progress=lambda f, m: not (f is not None and f > 0.3))


def test_invalid_arrays_are_rejected(phantom3d):
    with pytest.raises(InvalidInputError, match="same shape"):
        fuse_arrays(phantom3d, phantom3d[:-1], method="average", device="cpu")
    bad = phantom3d.copy()
    bad[3, 4, 5] = np.inf
    with pytest.raises(InvalidInputError, match="second source contains NaN or Inf"):
        fuse_arrays(phantom3d, bad, method="average", device="cpu")
    with pytest.raises(InvalidInputError, match="2D or 3D"):
        fuse_arrays(phantom3d[None], phantom3d[None], method="average", device="cpu")
    with pytest.raises(InvalidInputError, match="does not produce a contribution map"):
        fuse_arrays(phantom3d, phantom3d, method="dwt", device="cpu", return_weights=True)
    with pytest.raises(InvalidInputError, match="no parameter 'levels'"):
        fuse_arrays(phantom3d, phantom3d, method="average", device="cpu", levels=2)


def test_devices():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if cuda_available() else "cpu")
    with pytest.raises(UnknownOptionError, match="Did you mean 'cuda'"):
        resolve_device("cdua")
    if not cuda_available():
        with pytest.raises(DeviceUnavailableError, match="no CUDA device"):
            resolve_device("cuda")


def test_acquisition_axis_and_batch_size():
    assert acquisition_axis((1.0, 1.0, 1.0)) == 0
    assert acquisition_axis((2.5, 0.9, 0.9)) == 0
    assert acquisition_axis((1.0, 1.0, 5.0)) == 2  # sagittal stack stored along x
    assert batch_size_for(64, 256, 256) == 64
    assert batch_size_for(64, 512, 512) == 16
    assert batch_size_for(1, 4096, 4096) == 1

"""Tests of the NSCT and NSST transforms: perfect reconstruction, frame identities, directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MedFusionLib.errors import InvalidInputError
from MedFusionLib.transforms import nsct_decompose, nsct_reconstruct, nsst_decompose, nsst_reconstruct
from MedFusionLib.transforms import _frame, _responses

TRANSFORMS = {
    "nsst": (nsst_decompose, nsst_reconstruct),
    "nsct": (nsct_decompose, nsct_reconstruct),
}


def _relative_error(y, x):
    return float(np.abs(np.asarray(y) - x).max() / np.abs(x).max())


@pytest.mark.parametrize("shape", [(2, 64, 64), (3, 37, 50), (1, 51, 24), (1, 1, 9), (1, 130, 97)])
@pytest.mark.parametrize("kind", sorted(TRANSFORMS))
def test_perfect_reconstruction(kind, shape):
    decompose, reconstruct = TRANSFORMS[kind]
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    coeffs = decompose(x)
    y = reconstruct(coeffs)
    assert tuple(y.shape) == shape and y.dtype == torch.float32
    assert _relative_error(y, x) < 1e-5


@pytest.mark.parametrize("kind", sorted(TRANSFORMS))
@pytest.mark.parametrize("levels,pfilt", [((1,), "maxflat"), ((0, 2, 5), "9-7"), ((3, 3, 4, 4, 4), "maxflat")])
def test_perfect_reconstruction_for_other_settings(kind, levels, pfilt):
    decompose, reconstruct = TRANSFORMS[kind]
    x = np.random.default_rng(1).random((2, 45, 60)).astype(np.float32) * 200.0 - 50.0
    coeffs = decompose(x, levels=levels, pfilt=pfilt)
    assert [b.shape[1] for b in coeffs.bands] == [2 ** l for l in levels]
    assert _relative_error(reconstruct(coeffs), x) < 1e-5


@pytest.mark.parametrize("kind", sorted(TRANSFORMS))
def test_default_structure_and_2d_input(kind):
    decompose, _ = TRANSFORMS[kind]
    x = np.random.default_rng(2).random((40, 33)).astype(np.float32)
    coeffs = decompose(x)
    expected = [8, 8, 16, 16] if kind == "nsst" else [4, 8, 8, 16]
    assert [b.shape[1] for b in coeffs.bands] == expected
    hp, wp = coeffs.bank.padded
    assert coeffs.lowpass.shape == (1, hp, wp)
    assert all(b.shape == (1, n, hp, wp) for b, n in zip(coeffs.bands, expected))
    assert coeffs.crop(coeffs.lowpass).shape == (1, 40, 33)


@pytest.mark.parametrize("kind", sorted(TRANSFORMS))
def test_constant_image_goes_to_the_lowpass(kind):
    decompose, _ = TRANSFORMS[kind]
    coeffs = decompose(np.full((1, 30, 40), 0.7, dtype=np.float32))
    np.testing.assert_allclose(coeffs.crop(coeffs.lowpass).numpy(), 0.7, atol=1e-5)
    for band in coeffs.bands:
        assert band.abs().max() < 1e-5


@pytest.mark.parametrize("kind", sorted(TRANSFORMS))
@pytest.mark.parametrize("k", [0, 3, 6, 9, 13, 15])
def test_oriented_texture_lands_in_the_matching_direction(kind, k):
    """A plane wave whose slope is the centre of window ``k`` puts its energy in subband ``k``."""
    decompose, _ = TRANSFORMS[kind]
    theta = (k + 0.5) / 4.0  # centre of window k of 16 on the [0, 4) slope circle
    if theta <= 2.0:  # horizontal cone: slope w_y / w_x = theta - 1
        direction = np.array([theta - 1.0, 1.0])
    else:  # vertical cone: w_x / w_y = 3 - theta
        direction = np.array([1.0, 3.0 - theta])
    wy, wx = 2.2 * direction / np.linalg.norm(direction)  # inside the finest band-pass level
    n = 96
    yy, xx = np.mgrid[0:n, 0:n]
    x = np.cos(wy * yy + wx * xx).astype(np.float32)
    coeffs = decompose(x)
    finest = coeffs.crop(coeffs.bands[-1])[0, :, 24:-24, 24:-24]
    energy = (finest ** 2).sum(dim=(-2, -1)).numpy()
    assert energy.size == 16
    assert int(np.argmax(energy)) == k
    assert energy[k] > 0.8 * energy.sum()


@pytest.mark.parametrize("pfilt", _responses.PYRAMID_FILTERS)
def test_pyramid_satisfies_the_bezout_identity(pfilt):
    wy, wx = _responses.frequency_grid(40, 54)
    low_a, low_s, bands = _responses.pyramid_responses(pfilt, wy, wx, 4)
    total = low_a * low_s + sum(a * s for a, s in bands)
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    # Low-pass at DC, band-pass vanishes there; the finest band holds the highest frequency.
    assert low_a[0, 0] == pytest.approx(1.0) and all(a[0, 0] == 0 for a, _ in bands)
    assert bands[-1][0][20, -1] > 0.9


def test_nine_seven_pyramid_product_is_the_maxflat_halfband():
    w = np.linspace(0, np.pi, 33)
    h0, g0 = _responses.pyramid_filters_1d("9-7", w)
    np.testing.assert_allclose(h0 * g0, _responses._maxflat_halfband(np.sin(w / 2) ** 2, 4), atol=1e-12)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32])
def test_directional_windows_are_power_complementary(n):
    theta = np.linspace(0, 4, 1001, endpoint=False)
    shear = _responses.partition_windows(theta, n)
    tree = _responses.tree_windows(theta, int(np.log2(n)))
    np.testing.assert_allclose((shear ** 2).sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose((tree ** 2).sum(axis=0), 1.0, atol=1e-12)
    # Each window peaks (at 1) in its own slope interval.
    centres = (np.arange(n) + 0.5) * 4 / n
    for k, c in enumerate(centres):
        i = int(np.argmin(np.abs(theta - c)))
        assert shear[k, i] == pytest.approx(1.0)
        assert tree[k, i] == pytest.approx(1.0)


def test_pseudo_polar_coordinate():
    wy = np.array([0.0, 1.0, 1.0, 1.0, -1.0, 0.0])
    wx = np.array([1.0, 1.0, 0.0, -1.0, 1.0, 0.0])
    np.testing.assert_allclose(_responses.pseudo_polar_coordinate(wy, wx), [1.0, 2.0, 3.0, 0.0, 0.0, 0.0])
    # Invariant to w -> -w.
    np.testing.assert_allclose(_responses.pseudo_polar_coordinate(-wy, -wx),
                               _responses.pseudo_polar_coordinate(wy, wx))


@pytest.mark.parametrize("n,before,after", [(5, 3, 4), (3, 7, 2), (1, 2, 2), (8, 0, 0)])
def test_symmetric_indices_match_numpy_pad(n, before, after):
    x = np.arange(n)
    np.testing.assert_array_equal(x[_responses.symmetric_indices(n, before, after)],
                                  np.pad(x, (before, after), mode="symmetric"))


def test_fft_size_is_even_and_smooth():
    for n in (1, 7, 65, 97, 257, 289, 1000):
        m = _responses.fft_size(n)
        assert m >= n and m % 2 == 0 and m < 1.2 * n + 4
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        assert k == 1


@pytest.mark.parametrize("kind", sorted(TRANSFORMS))
def test_invalid_transform_parameters(kind):
    decompose, _ = TRANSFORMS[kind]
    x = np.zeros((1, 16, 16), dtype=np.float32)
    with pytest.raises(InvalidInputError, match="'levels'"):
        decompose(x, levels=[2, 7])
    with pytest.raises(InvalidInputError, match="'pfilt'"):
        decompose(x, pfilt="pkva")
    with pytest.raises(InvalidInputError, match="shape"):
        decompose(np.zeros((1, 1, 4, 4), dtype=np.float32))


@pytest.mark.parametrize("chunk_pixels", [None, 1, 5000, -1])
def test_streamed_fusion_is_independent_of_chunking(chunk_pixels):
    from MedFusionLib.methods._rules import select_maxabs_torch
    from MedFusionLib.transforms.nsst import nsst_bank

    rng = np.random.default_rng(5)
    a = torch.from_numpy(rng.random((3, 30, 41), dtype=np.float32))
    b = torch.from_numpy(rng.random((3, 30, 41), dtype=np.float32))
    bank = nsst_bank((30, 41), levels=(1, 2, 3))

    def keep_a(x, y, level=None):
        return x

    # Taking every coefficient of the first source reconstructs it, whatever the chunking.
    out = _frame.fuse(bank, a, b, fuse_low=keep_a, fuse_band=keep_a, chunk_pixels=chunk_pixels)
    assert _relative_error(out, a.numpy()) < 1e-5

    def low(x, y):
        return 0.5 * (x + y)

    def band(x, y, level):
        return select_maxabs_torch(x, y, consistency=True)

    whole = _frame.fuse(bank, a, b, fuse_low=low, fuse_band=band, chunk_pixels=None)
    chunked = _frame.fuse(bank, a, b, fuse_low=low, fuse_band=band, chunk_pixels=chunk_pixels)
    np.testing.assert_allclose(chunked.numpy(), whole.numpy(), atol=1e-6)

"""Tests of the review's classical fusion baselines (PCA, MSVD, DWT, SWT, WPD, NSCT, NSST)."""

from __future__ import annotations

import numpy as np
import pytest
import pywt

from MedFusionLib.errors import InvalidInputError
from MedFusionLib.methods import get_method
from MedFusionLib.methods._rules import majority_filter, select_maxabs
from MedFusionLib.methods.msvd import align_basis, msvd_decompose

# NSCT and NSST run on torch: marked so that the torch-less run (Slicer 5.10 pins) deselects them
_TORCH = pytest.mark.requires_torch
BASELINES = ["pca", "msvd", "dwt", "swt", "wpd", pytest.param("nsct", marks=_TORCH),
             pytest.param("nsst", marks=_TORCH)]
MULTISCALE = BASELINES[1:]


def _phantom(shape, seed=0):
    """Smooth head-like slices in [0, 1]: an ellipse with two blobs and mild texture."""
    n, h, w = shape
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    y = (y - h / 2) / (h / 2)
    x = (x - w / 2) / (w / 2)
    out = np.empty(shape, dtype=np.float32)
    for i in range(n):
        head = ((x / 0.85) ** 2 + (y / 0.9) ** 2 < 1).astype(np.float32) * 0.4
        blob = 0.3 * np.exp(-((x - 0.2 * (i % 3)) ** 2 + (y + 0.2) ** 2) / 0.05)
        tex = 0.05 * rng.standard_normal((h, w)).astype(np.float32)
        out[i] = np.clip(head + blob + tex * (head > 0), 0.0, 1.0)
    return out


def _fuse(name, a, b, **params):
    info = get_method(name)
    info.validate_params(params)
    return info.func(a, b, device="cpu", **params)


@pytest.mark.parametrize("name", BASELINES)
def test_registered_with_metadata(name):
    info = get_method(name)
    assert info.name == name
    assert info.reference
    assert info.family == ("pixel" if name == "pca" else "multiscale")


@pytest.mark.parametrize("shape", [(2, 64, 64), (1, 37, 50), (1, 51, 24)])
@pytest.mark.parametrize("name", BASELINES)
def test_self_fusion_returns_the_image(name, shape):
    a = _phantom(shape)
    fused = _fuse(name, a, a)
    assert fused.shape == a.shape
    assert fused.dtype == np.float32
    assert np.abs(fused - a).max() <= 1e-4


@pytest.mark.parametrize("shape", [(3, 48, 48), (2, 33, 61)])
@pytest.mark.parametrize("name", BASELINES)
def test_output_shape_range_and_finite(name, shape):
    a = _phantom(shape, seed=1)
    b = np.random.default_rng(2).random(shape, dtype=np.float32)
    fused = _fuse(name, a, b)
    assert fused.shape == shape
    assert fused.dtype == np.float32
    assert np.all(np.isfinite(fused))
    assert fused.min() >= 0.0 and fused.max() <= 1.0
    # The fusion is neither source: both contributed.
    assert not np.allclose(fused, a) and not np.allclose(fused, b)


@pytest.mark.parametrize("name", BASELINES)
def test_structure_from_one_source_survives(name):
    shape = (1, 96, 80)
    a = _phantom(shape)
    b = _phantom(shape, seed=5)
    a[:, 40:52, 30:44] = 1.0  # bright lesion only in the first source
    ring = np.zeros(shape[1:], dtype=bool)
    ring[34:58, 24:50] = True
    ring[40:52, 30:44] = False
    fused = _fuse(name, a, b)
    contrast_a = a[0, 40:52, 30:44].mean() - a[0][ring].mean()
    contrast_f = fused[0, 40:52, 30:44].mean() - fused[0][ring].mean()
    # Averaging keeps half the contrast; every baseline must keep at least that much.
    assert contrast_f >= 0.45 * contrast_a
    # ... and the same lesion in the second source survives too.
    fused_swapped = _fuse(name, b, a)
    contrast_s = fused_swapped[0, 40:52, 30:44].mean() - fused_swapped[0][ring].mean()
    assert contrast_s >= 0.45 * contrast_a


BAD_PARAMS = [
    ("dwt", {"wavelet": "db99"}, "wavelet"),
    ("dwt", {"wavelet": 3}, "wavelet"),
    ("dwt", {"level": 0}, "level"),
    ("dwt", {"level": 2.5}, "level"),
    ("dwt", {"level": True}, "level"),
    ("dwt", {"mode": "wrap-around"}, "mode"),
    ("dwt", {"consistency": "yes"}, "consistency"),
    ("swt", {"wavelet": "haarr"}, "wavelet"),
    ("swt", {"level": 9}, "level"),
    ("wpd", {"level": -1}, "level"),
    ("wpd", {"mode": "per"}, "mode"),
    ("msvd", {"level": 0}, "level"),
    ("msvd", {"consistency": 1}, "consistency"),
    ("nsst", {"levels": [3, 3, 9]}, "levels"),
    ("nsst", {"levels": []}, "levels"),
    ("nsst", {"levels": "3,x"}, "levels"),
    ("nsst", {"rule": "pcnn"}, "rule"),
    ("nsst", {"pfilt": "pyrexc"}, "pfilt"),
    ("nsst", {"consistency": None}, "consistency"),
    ("nsct", {"levels": 4}, "levels"),
    ("nsct", {"levels": [2, -1]}, "levels"),
    ("nsct", {"pfilt": "dmaxflat7"}, "pfilt"),
]


@pytest.mark.parametrize("name,params,word", BAD_PARAMS)
def test_invalid_parameters_are_rejected_clearly(name, params, word):
    a = _phantom((1, 16, 16))
    with pytest.raises(InvalidInputError) as err:
        _fuse(name, a, a, **params)
    message = str(err.value)
    assert name in message and f"'{word}'" in message


@pytest.mark.parametrize("name", MULTISCALE)
def test_unknown_parameter_rejected_by_registry(name):
    with pytest.raises(InvalidInputError, match="has no parameter"):
        get_method(name).validate_params({"levelz": 2})


def test_documented_defaults():
    assert get_method("dwt").params == {"wavelet": "db1", "level": 4, "mode": "periodization",
                                        "consistency": True}
    assert get_method("swt").params["wavelet"] == "sym2"
    assert get_method("wpd").params == {"wavelet": "db1", "level": 2, "mode": "symmetric",
                                        "consistency": False}
    assert get_method("msvd").params == {"level": 1, "consistency": False}
    assert tuple(get_method("nsct").params["levels"]) == (2, 3, 3, 4)
    assert tuple(get_method("nsst").params["levels"]) == (3, 3, 4, 4)
    assert get_method("nsst").params["rule"] == "avg_maxabs"
    for name in ("nsct", "nsst"):
        info = get_method(name)
        assert info.needs_torch and info.supports_cuda
        assert info.params["consistency"] is True


def test_dwt_matches_a_direct_pywavelets_fusion():
    rng = np.random.default_rng(3)
    a = rng.random((2, 40, 40), dtype=np.float32)
    b = rng.random((2, 40, 40), dtype=np.float32)
    fused = _fuse("dwt", a, b, wavelet="db2", level=2, mode="symmetric", consistency=False)
    for i in range(2):
        ca = pywt.wavedec2(a[i].astype(np.float64), "db2", mode="symmetric", level=2)
        cb = pywt.wavedec2(b[i].astype(np.float64), "db2", mode="symmetric", level=2)
        cf = [(ca[0] + cb[0]) / 2]
        for da, db in zip(ca[1:], cb[1:]):
            cf.append(tuple(np.where(np.abs(x) >= np.abs(y), x, y) for x, y in zip(da, db)))
        ref = np.clip(pywt.waverec2(cf, "db2", mode="symmetric"), 0, 1)
        np.testing.assert_allclose(fused[i], ref, atol=1e-5)


@_TORCH
def test_consistency_option_changes_the_result():
    rng = np.random.default_rng(4)
    a = rng.random((1, 64, 64), dtype=np.float32)
    b = rng.random((1, 64, 64), dtype=np.float32)
    for name in ("dwt", "swt", "wpd", "msvd", "nsct", "nsst"):
        on = _fuse(name, a, b, consistency=True)
        off = _fuse(name, a, b, consistency=False)
        assert np.abs(on - off).max() > 1e-3, name


def test_majority_filter_removes_isolated_decisions():
    choose = np.zeros((1, 7, 7), dtype=bool)
    choose[0, 3, 3] = True  # an isolated pick of source a
    choose[0, :, :2] = True  # and a solid region that must stay
    voted = majority_filter(choose)
    assert not voted[0, 3, 3]
    assert voted[0, :, 0].all()
    ca = np.where(choose, 2.0, 1.0)
    cb = np.where(choose, 1.0, 2.0)
    assert np.all(select_maxabs(ca, cb) == 2.0)
    assert select_maxabs(ca, cb, consistency=True)[0, 3, 3] == 1.0


def test_msvd_decomposition_is_orthogonal_and_exact():
    x = _phantom((2, 32, 24)).astype(np.float64)
    u, t = msvd_decompose(x)
    eye = np.broadcast_to(np.eye(4), u.shape)
    np.testing.assert_allclose(np.einsum("nji,njk->nik", u, u), eye, atol=1e-10)
    blocks = np.einsum("nij,njkl->nikl", u, t)
    np.testing.assert_allclose(blocks[:, 0], x[:, 0::2, 0::2], atol=1e-10)
    np.testing.assert_allclose(blocks[:, 3], x[:, 1::2, 1::2], atol=1e-10)
    # Canonical sign: the largest-magnitude entry of each basis vector is positive.
    lead = np.take_along_axis(u, np.abs(u).argmax(axis=1)[:, None, :], axis=1)
    assert np.all(lead > 0)


def test_msvd_sign_alignment_undoes_flipped_singular_vectors():
    x = _phantom((1, 32, 32))
    u, t = msvd_decompose(x)
    flip = np.array([1.0, -1.0, 1.0, -1.0])
    u_flipped, t_flipped = u * flip[None, None, :], t * flip[None, :, None, None]
    u_aligned, t_aligned = align_basis(u, u_flipped, t_flipped)
    np.testing.assert_allclose(u_aligned, u)
    np.testing.assert_allclose(t_aligned, t)
    # Without alignment, the average of the two bases would lose two columns entirely.
    assert np.abs(0.5 * (u + u_flipped)[0][:, 1]).max() < 1e-12


@_TORCH
def test_levels_accept_a_command_line_string():
    a = _phantom((1, 40, 40))
    b = _phantom((1, 40, 40), seed=3)
    np.testing.assert_array_equal(_fuse("nsst", a, b, levels="2,3"), _fuse("nsst", a, b, levels=[2, 3]))


@_TORCH
def test_nsst_papcnn_rule():
    shape = (1, 40, 36)
    a = _phantom(shape)
    assert np.abs(_fuse("nsst", a, a, rule="papcnn", levels=[2, 3]) - a).max() <= 1e-4
    b = _phantom(shape, seed=5)
    a[:, 16:24, 12:20] = 1.0
    fused = _fuse("nsst", a, b, rule="papcnn", levels=[2, 3])
    assert fused.shape == shape and fused.dtype == np.float32
    assert np.all(np.isfinite(fused)) and fused.min() >= 0 and fused.max() <= 1
    assert fused[0, 16:24, 12:20].mean() >= 0.5 * (a + b)[0, 16:24, 12:20].mean()
    assert not np.allclose(fused, _fuse("nsst", a, b, levels=[2, 3]))


@_TORCH
@pytest.mark.requires_gpu
@pytest.mark.parametrize("name", ["nsct", "nsst"])
def test_cuda_matches_cpu(name):
    a = _phantom((3, 64, 48))
    b = _phantom((3, 64, 48), seed=4)
    cpu = get_method(name).func(a, b, device="cpu")
    gpu = get_method(name).func(a, b, device="cuda")
    assert gpu.dtype == np.float32 and gpu.shape == cpu.shape
    # Max-abs ties may break differently under different FFT rounding: compare on average.
    assert np.abs(gpu - cpu).mean() < 1e-4
    assert np.abs(gpu - cpu).max() < 0.05


@pytest.mark.parametrize("name", BASELINES)
def test_batch_result_equals_slice_by_slice(name):
    a = _phantom((3, 40, 36))
    b = _phantom((3, 40, 36), seed=9)
    batch = _fuse(name, a, b)
    single = np.concatenate([_fuse(name, a[i:i + 1], b[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(batch, single, atol=1e-6)


def test_wpd_matches_pywavelets_wavelet_packet_fusion():
    rng = np.random.default_rng(6)
    a = rng.random((1, 37, 50), dtype=np.float32)
    b = rng.random((1, 37, 50), dtype=np.float32)
    fused = _fuse("wpd", a, b, wavelet="db2", level=2, mode="symmetric")
    pa = pywt.WaveletPacket2D(a[0].astype(np.float64), "db2", mode="symmetric", maxlevel=2)
    pb = pywt.WaveletPacket2D(b[0].astype(np.float64), "db2", mode="symmetric", maxlevel=2)
    pf = pywt.WaveletPacket2D(None, "db2", mode="symmetric", maxlevel=2)
    for node in pa.get_level(2, "natural"):
        ca, cb = node.data, pb[node.path].data
        if node.path == "aa":
            pf[node.path] = (ca + cb) / 2
        else:
            pf[node.path] = np.where(np.abs(ca) >= np.abs(cb), ca, cb)
    ref = np.clip(pf.reconstruct(update=False)[:37, :50], 0, 1)
    np.testing.assert_allclose(fused[0], ref, atol=1e-5)


def test_swt_matches_a_direct_pywavelets_fusion():
    rng = np.random.default_rng(8)
    a = rng.random((1, 32, 40), dtype=np.float32)
    b = rng.random((1, 32, 40), dtype=np.float32)
    fused = _fuse("swt", a, b, wavelet="sym2", level=2)
    ca = pywt.swt2(a[0].astype(np.float64), "sym2", level=2, trim_approx=True)
    cb = pywt.swt2(b[0].astype(np.float64), "sym2", level=2, trim_approx=True)
    cf = [(ca[0] + cb[0]) / 2]
    for da, db in zip(ca[1:], cb[1:]):
        cf.append(tuple(np.where(np.abs(x) >= np.abs(y), x, y) for x, y in zip(da, db)))
    ref = np.clip(pywt.iswt2(cf, "sym2"), 0, 1)
    np.testing.assert_allclose(fused[0], ref, atol=1e-5)


def _papcnn_reference(s, iterations):
    """Plain numpy PA-PCNN of one plane (Yin et al. 2019 updates, Otsu on S / S_max)."""
    from scipy.signal import convolve2d

    s = s.astype(np.float64)
    s_max = s.max()
    q = np.round(np.clip(s / s_max, 0, 1) * 255).astype(int)
    p = np.bincount(q.ravel(), minlength=256) / q.size
    omega, mu = np.cumsum(p), np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    between = np.nan_to_num(between, posinf=0.0)
    s_otsu = np.flatnonzero(between == between.max()).mean() / 255 * s_max
    alpha_f = np.log10(1 / s.std())
    lam = (s_max / s_otsu - 1) / 6
    v_e = np.exp(-alpha_f) + s_max / s_otsu
    alpha_e = np.log(v_e / (s_otsu * (1 - np.exp(-3 * alpha_f)) / (1 - np.exp(-alpha_f))
                            + (s_max - s_otsu) * np.exp(-alpha_f)))
    link = np.array([[0.5, 1, 0.5], [1, 0, 1], [0.5, 1, 0.5]])
    u = np.zeros_like(s)
    e = np.zeros_like(s)
    y = np.zeros_like(s)
    fired = np.zeros_like(s)
    for _ in range(iterations):
        u = np.exp(-alpha_f) * u + s * (1 + lam * convolve2d(y, link, mode="same"))
        y = (u > e).astype(float)
        e = np.exp(-alpha_e) * e + v_e * y
        fired += y
    return fired


@_TORCH
def test_papcnn_firing_matches_a_plain_implementation():
    import torch

    from MedFusionLib.methods._pcnn import papcnn_firing

    rng = np.random.default_rng(11)
    s = np.abs(rng.standard_normal((2, 21, 17)) * 0.05).astype(np.float32)
    s[1, 5:9, 5:9] += 0.3  # a strong feature
    ours = papcnn_firing(torch.from_numpy(s), 40).numpy()
    for i in range(2):
        np.testing.assert_array_equal(ours[i], _papcnn_reference(s[i], 40))
    # Stronger stimuli fire at least as often.
    assert ours[1, 5:9, 5:9].mean() > ours[1].mean()


@_TORCH
def test_otsu_threshold_splits_a_bimodal_plane():
    import torch

    from MedFusionLib.methods._pcnn import otsu_threshold

    rng = np.random.default_rng(12)
    plane = np.concatenate([rng.normal(0.2, 0.03, 500), rng.normal(0.7, 0.03, 500)])
    t = float(otsu_threshold(torch.from_numpy(plane.reshape(1, 25, 40).astype(np.float32)))[0])
    assert 0.3 < t < 0.6

"""Fusion metrics: closed-form cases, identities, scale conventions, NaN guards, invalid input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from MedFusionLib.errors import InvalidInputError, UnknownOptionError
from MedFusionLib import metrics as M
from MedFusionLib.metrics import ALL_KEYS, METRICS, REVIEW_KEYS, STANDARD_KEYS, compute_metrics


def _textured(rng, shape=(64, 64), lo=0, hi=255):
    """Integer-valued smooth texture plus noise, spanning exactly [lo, hi]."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    phase = rng.random(2) * 6.28
    x = np.sin(xx / 5.0 + phase[0]) * np.cos(yy / 7.0 + phase[1]) + 0.3 * rng.random(shape)
    x = (x - x.min()) / (x.max() - x.min())
    return np.round(lo + x * (hi - lo))


@pytest.fixture
def pair(rng):
    """Two unrelated textured 0..255 images and their average (integer grey levels)."""
    a = _textured(rng)
    b = _textured(rng)
    return a, b, np.round((a + b) / 2)


@pytest.fixture
def black_background(rng):
    """Medical-like slices: content in a disc, exactly 0 outside (flat windows everywhere)."""
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 30) ** 2 < 20 ** 2
    a = np.where(disc, _textured(rng, lo=40, hi=255), 0.0)
    b = np.where(disc, _textured(rng, lo=10, hi=200), 0.0)
    return a, b, np.maximum(a, b)


# ---- the table --------------------------------------------------------------------------------

def test_table_lists_every_key_with_direction_range_citation():
    expected = ["SCD", "FS", "FMI_pixel", "FF", "SD", "M", "EN", "FI", "SF", "AG", "MI", "NMI",
                "Q_TE", "Q_NCIE", "FMI_dct", "FMI_w", "Qabf", "Q_CB", "Q_CV", "VIFF", "VIF",
                "SSIM", "MS_SSIM", "Q_Y", "Q_C", "Q_S", "Q_W", "Q_E", "PSNR", "CC"]
    assert list(ALL_KEYS) == expected
    assert set(REVIEW_KEYS) == {"SCD", "FS", "FMI_pixel", "FF", "SD", "M", "EN", "FI"}
    assert set(STANDARD_KEYS) == set(expected) - set(REVIEW_KEYS)
    for key, info in METRICS.items():
        assert info.direction in ("higher", "lower", "target"), key
        assert info["direction"] == info.direction
        assert len(info.range) == 2 and info.range[0] < info.range[1], key
        assert info.citation and info.group in ("review", "standard"), key
        doc = info.func.__doc__.lower()
        assert "better" in doc or "direction" in doc, key
        assert "reference" in doc or "see :func:" in doc, key
    assert METRICS["Q_CV"].direction == "lower" and METRICS["FS"].direction == "lower"
    assert METRICS["FI"].direction_text == "closest to 1 is best"


def test_compute_metrics_returns_every_key_finite(pair):
    a, b, f = pair
    values = compute_metrics(a, b, f, data_range=255)
    assert list(values) == list(ALL_KEYS)
    for k, v in values.items():
        assert isinstance(v, float) and math.isfinite(v), (k, v)
        lo, hi = METRICS[k].range
        assert lo - 1e-9 <= v <= hi + 1e-9, (k, v)


def test_compute_metrics_default_range_is_unit_interval(pair):
    a, b, f = pair
    v255 = compute_metrics(a, b, f, keys="review", data_range=255)
    v1 = compute_metrics(a / 255, b / 255, f / 255, keys="review")
    assert v1 == pytest.approx(v255, rel=1e-9)


# ---- closed forms -----------------------------------------------------------------------------

def test_entropy_of_two_and_four_level_images():
    two = np.zeros((8, 8), np.uint8)
    two[:, 4:] = 255
    assert M.entropy(two) == pytest.approx(1.0, abs=1e-12)
    four = np.repeat(np.array([0, 60, 130, 250], np.uint8), 16).reshape(8, 8)
    assert M.entropy(four) == pytest.approx(2.0, abs=1e-12)
    assert M.entropy(np.full((8, 8), 7, np.uint8)) == 0.0
    levels = (np.clip(np.arange(256) - 2e-5, 0, None) / 255).reshape(16, 16)  # float32-like error
    assert M.entropy(levels, data_range=1.0) == pytest.approx(8.0)  # still 256 distinct bins


def test_mutual_information_with_itself_is_its_entropy(pair):
    a, _, _ = pair  # integer grey levels spanning 0..255: the quantisation is the identity
    h = M.entropy(a, data_range=255)
    assert M.mutual_information(a, a, a, data_range=255) == pytest.approx(2 * h, rel=1e-12)
    assert M.fusion_factor(a, a, a, data_range=255) == pytest.approx(2 * h, rel=1e-12)
    assert M.normalized_mutual_information(a, a, a, data_range=255) == pytest.approx(2.0)


def test_mutual_information_agrees_with_scikit_learn(pair, rng):
    """I(X;F) in bits equals scikit-learn's mutual_info_score (nats) / ln 2 on the same bins."""
    from sklearn.metrics import mutual_info_score

    from MedFusionLib.metrics._common import normalize1

    a, b, _ = pair
    f = np.round(np.clip(0.6 * a + 0.4 * b + rng.normal(0, 5, a.shape), 0, 255))  # 8-bit levels
    qa, qb, qf = (normalize1(x).ravel() for x in (a, b, f))
    expected = (mutual_info_score(qa, qf) + mutual_info_score(qb, qf)) / np.log(2)
    assert M.mutual_information(a, b, f, data_range=255) == pytest.approx(expected, rel=1e-10)


def test_scd_cc_ssim_on_f_equal_a_and_b(pair):
    a, b, _ = pair
    r_ab = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    r = lambda x, y: np.corrcoef(x.ravel(), y.ravel())[0, 1]  # noqa: E731
    assert M.scd(a, b, a, data_range=255) == pytest.approx(r(a - b, a), abs=1e-12)
    assert M.scd(a, b, b, data_range=255) == pytest.approx(r(b - a, b), abs=1e-12)
    assert M.correlation_coefficient(a, b, a, data_range=255) == pytest.approx((1 + r_ab) / 2)
    assert M.correlation_coefficient(a, b, b, data_range=255) == pytest.approx((1 + r_ab) / 2)
    s_ab = M.ssim(a, a, b, data_range=255) / 2.0  # = SSIM(A, B)
    assert M.ssim(a, b, a, data_range=255) == pytest.approx(1.0 + s_ab, abs=1e-12)
    assert M.ssim(a, a, a, data_range=255) == pytest.approx(2.0, abs=1e-12)
    assert M.ms_ssim(a, a, a, data_range=255) == pytest.approx(2.0, abs=1e-12)
    assert -1 < s_ab < 0.9


def test_qabf_on_f_equal_a_and_b(rng):
    a = np.round(rng.random((48, 48)) * 255)  # every pixel has a strong gradient
    b = np.round(rng.random((48, 48)) * 255)
    # G = g_F where g_A = g_F (reference quirk) is >> 1 here, so Q_g = Gamma_g; A = 1 gives
    # Q_a = Gamma_a / (1 + exp(-22 (1 - 0.8)))
    expected = 0.9994 * 0.9879 / (1 + np.exp(-22 * 0.2))
    assert M.qabf(a, a, a, data_range=255) == pytest.approx(expected, abs=1e-3)
    q_a = M.qabf(a, b, a, data_range=255)
    q_b = M.qabf(a, b, b, data_range=255)
    q_avg = M.qabf(a, b, np.round((a + b) / 2), data_range=255)
    assert 0.3 < q_a < 0.9 and 0.3 < q_b < 0.9
    assert q_a > q_avg or q_b > q_avg


def test_fusion_symmetry_zero_and_index_one_for_symmetric_information(pair):
    a, _, f = pair
    b = 255 - a  # a bijection of A: I(B;F) = I(A;F) for any F
    assert M.fusion_symmetry(a, b, f, data_range=255) == pytest.approx(0.0, abs=1e-12)
    assert M.fusion_index(a, b, f, data_range=255) == pytest.approx(1.0, abs=1e-12)
    assert M.fusion_symmetry(a, b, f, data_range=255, variant="two_minus") == pytest.approx(2.0)
    lopsided = M.fusion_symmetry(a, pair[1], a, data_range=255)
    assert 0.1 < lopsided <= 0.5
    plugged = M.fusion_symmetry(a, pair[1], a, data_range=255, variant=lambda x, y: abs(x - y))
    assert plugged > 1.0


def test_q_cv_is_zero_for_perfect_fusion_and_lower_is_better(pair, rng):
    a, b, f = pair
    assert M.chen_varshney(a, a, a, data_range=255) == 0.0
    noisy = np.clip(f + rng.normal(0, 40, f.shape), 0, 255)
    assert M.chen_varshney(a, b, f, data_range=255) < M.chen_varshney(a, b, noisy, data_range=255)
    assert M.qabf(a, b, f, data_range=255) > M.qabf(a, b, noisy, data_range=255)
    assert METRICS["Q_CV"].direction == "lower"


def test_identity_values_of_the_structural_and_vif_family(rng):
    a = _textured(rng, shape=(64, 64))
    assert M.vif(a, a, a, data_range=255) == pytest.approx(2.0, abs=1e-6)
    assert M.viff(a, a, a, data_range=255) == pytest.approx(1.0, abs=1e-6)
    assert M.yang(a, a, a, data_range=255) == pytest.approx(1.0, abs=1e-9)
    assert M.cvejic(a, a, a, data_range=255) == pytest.approx(1.0, abs=1e-9)
    assert M.piella_s(a, a, a, data_range=255) == pytest.approx(1.0, abs=1e-9)
    assert M.piella_w(a, a, a, data_range=255) == pytest.approx(1.0, abs=1e-9)
    assert M.piella_e(a, a, a, data_range=255) == pytest.approx(1.0, abs=1e-9)
    assert M.psnr(a, a, a, data_range=255) == math.inf
    assert M.fmi_pixel(a, a, a, data_range=255) == 1.0
    assert M.chen_blum(a, a, a, data_range=255) == pytest.approx(1.0, abs=1e-9)


def test_psnr_closed_form(rng):
    a = np.full((16, 16), 100.0)
    b = np.full((16, 16), 120.0)
    f = np.full((16, 16), 110.0)
    assert M.psnr(a, b, f, data_range=255) == pytest.approx(10 * np.log10(255 ** 2 / 100.0))


def test_fmi_matches_a_direct_port_of_the_window_loop(rng):
    a = np.floor(rng.random((12, 11)) * 256)
    b = np.floor(rng.random((12, 11)) * 256)
    a[:5, :6] = 0
    b[:5, :6] = 0  # windows equal in A, B and F
    f = np.floor((a + b) / 2)
    f[:4, :4] = a[:4, :4]
    from MedFusionLib.metrics._fmi import _feature
    for feature in ("none", "dct", "gradient"):
        fa, fb, ff = (_feature(x, feature) for x in (a, b, f))
        expected = _fmi_loop(fa, fb, ff)
        assert M.fmi(a, b, f, data_range=255, feature=feature) == pytest.approx(expected, abs=1e-12)
    # few grey levels: tied CDF steps, zero pdf entries, negative window correlations
    a3, b3 = (np.floor(rng.random((9, 10)) * 3) * 100 for _ in range(2))
    f3 = 200 - a3
    assert M.fmi(a3, b3, f3, data_range=255) == pytest.approx(_fmi_loop(a3, b3, f3), abs=1e-12)
    assert M.fmi(a, b, f, data_range=255, reduce="sum") == pytest.approx(
        2 * M.fmi_pixel(a, b, f, data_range=255))


def _fmi_loop(a, b, f, w=3):
    """Window-by-window transcription of the Fast-FMI steps (the test oracle)."""
    h = w // 2
    vals = []
    for p in range(h, a.shape[0] - h):
        for q in range(h, a.shape[1] - h):
            sl = (slice(p - h, p + h + 1), slice(q - h, q + h + 1))
            v1, f_after = _fmi_branch(a[sl], f[sl])
            v2, _ = _fmi_branch(b[sl], f_after)
            vals.append((v1 + v2) / 2)
    return float(np.mean(vals))


def _fmi_branch(x, f):
    if np.array_equal(x, f):
        return 1.0, f

    def nm(s):
        return np.ones_like(s) if s.max() == s.min() else (s - s.min()) / (s.max() - s.min())

    x, f = nm(x), nm(f)
    xp, fp = x.ravel(order="F") / x.sum(), f.ravel(order="F") / f.sum()
    xc, fc = np.cumsum(xp), np.cumsum(fp)
    xt, ft = xp - xp.mean(), fp - fp.mean()
    s = (xt * ft).sum()
    c = 0.0 if s == 0 else s / np.sqrt((xt * xt).sum() * (ft * ft).sum())
    i = np.arange(1, xp.size + 1)
    xsd = np.sqrt((i * i * xp).sum() - (i * xp).sum() ** 2)
    fsd = np.sqrt((i * i * fp).sum() - (i * fp).sum() ** 2)
    bound = (lambda u, v: min(u, v)) if c >= 0 else (lambda u, v: max(u + v - 1, 0.0))
    n = xp.size
    if xsd == 0 or fsd == 0 or c == 0:
        coef = 0.0
    else:
        cov = sum(bound(fc[p], xc[q]) - fc[p] * xc[q] for p in range(n) for q in range(n))
        coef = c / (cov / (fsd * xsd))
    hj = 0.0
    for p in range(n):
        for q in range(n):
            m = bound(fc[p], xc[q])
            if p:
                m -= bound(fc[p - 1], xc[q])
            if q:
                m -= bound(fc[p], xc[q - 1])
            if p and q:
                m += bound(fc[p - 1], xc[q - 1])
            jp = coef * m + (1 - coef) * fp[p] * xp[q]
            if jp != 0:
                hj -= jp * np.log2(abs(jp))
    hx = -(xp[xp > 0] * np.log2(xp[xp > 0])).sum()
    hf = -(fp[fp > 0] * np.log2(fp[fp > 0])).sum()
    mi = hx + hf - hj
    return (0.0 if mi == 0 else 2 * mi / (hx + hf)), f


def test_tsallis_variants(pair):
    a, b, f = pair
    nava = M.tsallis_mutual_information(a, b, f, data_range=255)
    cvejic = M.tsallis_mutual_information(a, b, f, data_range=255, variant="cvejic")
    faithful = M.tsallis_mutual_information(a, b, f, data_range=255, faithful=True)
    assert 0 < nava < 1.5 and cvejic > nava and faithful != nava
    assert 0 < M.ncie(a, b, f, data_range=255) < 1


def test_sf_ag_variants_and_closed_form():
    f = np.tile(np.array([0.0, 255.0]), (4, 2))  # columns alternate 0/255, rows constant
    # VIFB SF: RF^2 = (4 rows x 3 diffs x 255^2) / 16, CF = 0
    assert M.spatial_frequency(f, data_range=255) == pytest.approx(np.sqrt(12 * 255 ** 2 / 16))
    assert M.spatial_frequency(f, data_range=255, variant="mean") == pytest.approx(255.0)
    assert M.average_gradient(f, data_range=255, variant="mean") < M.average_gradient(
        f, data_range=255)
    assert M.standard_deviation(f, data_range=255) == pytest.approx(127.5)
    assert M.mean_intensity(f, data_range=255) == pytest.approx(127.5)


# ---- scale conventions -----------------------------------------------------------------------

def test_scale_conventions_are_as_documented(pair):
    """Scaling all three images by 0.3 keeps the 'common'/'per_image' metrics; scaling F alone
    keeps only the 'per_image' ones; the others change.

    Every metric scores whole 8-bit grey levels, so the invariances are checked on images whose
    scaled versions are whole levels too (multiples of 10); the changes on the plain 8-bit pair,
    where 0.3 x merges grey levels."""
    tens = [np.minimum(10 * np.round(x / 10), 250) for x in pair]
    base10 = compute_metrics(*tens, data_range=255)
    common10 = compute_metrics(*(0.3 * x for x in tens), data_range=255)
    only_f10 = compute_metrics(tens[0], tens[1], 0.3 * tens[2], data_range=255)
    a, b, f = pair
    base = compute_metrics(a, b, f, data_range=255)
    common = compute_metrics(0.3 * a, 0.3 * b, 0.3 * f, data_range=255)
    only_f = compute_metrics(a, b, 0.3 * f, data_range=255)
    for k, info in METRICS.items():
        if k == "Qabf":  # exact but for the reference quirk G = g_F where g_A = g_F
            assert common10[k] == pytest.approx(base10[k], rel=5e-3), k
        elif info.scale in ("common", "per_image"):
            assert common10[k] == pytest.approx(base10[k], rel=1e-6, abs=1e-9), k
        else:
            assert common[k] != pytest.approx(base[k], rel=1e-6), k
        if info.scale == "per_image":
            assert only_f10[k] == pytest.approx(base10[k], rel=1e-6, abs=1e-9), k
        elif info.inputs == "abf" and not k.startswith("FMI"):
            # (FMI min-max normalises every window, so it ignores a scaling of F alone too,
            # except in windows where a source equals F)
            assert only_f[k] != pytest.approx(base[k], rel=1e-6), k
    shifted = compute_metrics(*(0.5 * x + 20 for x in tens), keys=["SCD"], data_range=255)
    assert shifted["SCD"] == pytest.approx(base10["SCD"], abs=1e-12)  # SCD: common offset too


# ---- NaN guards --------------------------------------------------------------------------------

def test_black_backgrounds_give_no_nan(black_background):
    a, b, f = black_background
    values = compute_metrics(a, b, f, data_range=255)
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    assert not bad
    assert math.isnan(M.yang(a, b, f, data_range=255, nan_guard=False))
    assert math.isnan(M.cvejic(a, b, f, data_range=255, nan_guard=False))


def test_all_black_images_are_handled():
    z = np.zeros((32, 32))
    values = compute_metrics(z, z, z, keys=["EN", "SD", "MI", "FS", "FI", "SCD", "CC", "SSIM",
                                            "Q_Y", "Q_C", "Q_CB", "Q_CV", "FMI_pixel"])
    assert values["EN"] == 0 and values["SD"] == 0 and values["MI"] == 0
    assert values["FS"] == 0 and values["FI"] == 1 and values["SCD"] == 0
    assert values["SSIM"] == 2 and values["FMI_pixel"] == 1 and values["Q_CV"] == 0
    assert all(math.isfinite(v) for v in values.values())
    assert math.isnan(M.qabf(z, z, z, data_range=1))  # no edge anywhere: undefined


# ---- invalid input -----------------------------------------------------------------------------

def test_invalid_input(pair):
    a, b, f = pair
    with pytest.raises(InvalidInputError, match=r"same shape.*\(64, 64\).*\(64, 63\)"):
        compute_metrics(a, b, f[:, :-1], data_range=255)
    with pytest.raises(InvalidInputError, match="same shape"):
        M.qabf(a, b[:-1], f, data_range=255)
    with pytest.raises(InvalidInputError, match="2D image"):
        compute_metrics(a[None], b[None], f[None], data_range=255)
    with pytest.raises(InvalidInputError, match="outside"):
        compute_metrics(a, b, f)  # 0..255 data with the default data_range=1
    with pytest.raises(InvalidInputError, match="NaN"):
        compute_metrics(a, b, np.where(f > 100, np.nan, f), data_range=255)
    with pytest.raises(InvalidInputError, match="data_range"):
        M.entropy(f)  # float input needs data_range
    with pytest.raises(InvalidInputError, match="data_range must be a positive"):
        M.entropy(f, data_range=0)
    with pytest.raises(UnknownOptionError, match="Did you mean 'Qabf'"):
        compute_metrics(a, b, f, keys=["QABF2"], data_range=255)
    with pytest.raises(UnknownOptionError, match="variant"):
        M.spatial_frequency(f, data_range=255, variant="nope")
    with pytest.raises(UnknownOptionError, match="feature"):
        M.fmi(a, b, f, data_range=255, feature="edge")
    with pytest.raises(InvalidInputError, match="too small for .*VIFF"):
        compute_metrics(a[:20, :20], b[:20, :20], f[:20, :20], data_range=255)
    with pytest.raises(UnknownOptionError, match="options"):
        compute_metrics(a, b, f, keys=["FS"], data_range=255, options={"SF": {"variant": "x"}})
    with pytest.raises(UnknownOptionError, match="must be one of vifb, mean"):
        compute_metrics(a, b, f, keys=["SF"], data_range=255, options={"SF": {"variant": "x"}})
    with pytest.raises(UnknownOptionError, match="has no option 'window'"):
        compute_metrics(a, b, f, keys=["SSIM"], data_range=255, options={"SSIM": {"window": 7}})
    assert compute_metrics(a, b, f, keys="fs,ssim", data_range=255).keys() == {"FS", "SSIM"}


def test_options_select_alternatives(pair):
    a, b, f = pair
    v = compute_metrics(a, b, f, keys=["FS", "SF"], data_range=255,
                        options={"FS": {"variant": "two_minus"}, "SF": {"variant": "mean"}})
    assert v["FS"] == pytest.approx(2 - M.fusion_symmetry(a, b, f, data_range=255))
    assert v["SF"] == pytest.approx(M.spatial_frequency(f, data_range=255, variant="mean"))


def test_best_index_follows_direction():
    assert M.best_index("SCD", [0.1, 1.5, float("nan")]) == 1
    assert M.best_index("Q_CV", [30.0, 10.0, 20.0]) == 1
    assert M.best_index("FI", [3.0, 0.9, 1.2]) == 1
    assert M.best_index("EN", [float("nan")]) is None


# ---- the `medfusion metrics` command -----------------------------------------------------------

def _write(path, array, pixel=None):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    if pixel is not None:
        img = sitk.Cast(img, pixel)
    sitk.WriteImage(img, str(path))
    return str(path)


def test_metrics_command_json_matches_the_library(tmp_path, pair, capsys):
    import json

    from MedFusionLib.cli import main

    a, b, f = (x.astype(np.uint8) for x in pair)
    paths = [_write(tmp_path / f"{n}.png", x) for n, x in (("a", a), ("b", b), ("f", f))]
    assert main(["metrics", *paths, "--json", "--only", "SCD,EN,qabf,FI"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = compute_metrics(a, b, f, keys=["SCD", "EN", "Qabf", "FI"], data_range=255)
    assert list(out["metrics"]) == ["SCD", "EN", "Qabf", "FI"]
    for k, v in expected.items():
        assert out["metrics"][k]["value"] == pytest.approx(v, rel=1e-6)  # float32 in normalize
    assert out["metrics"]["FI"]["direction"] == "target"
    assert out["normalization"]["fused"].startswith("8-bit")
    assert out["slices_used"] == 1 and out["mi_settings"]["unit"] == "bits"


def test_metrics_command_table_and_volume(tmp_path, rng, capsys):
    from MedFusionLib.cli import main

    a = rng.random((4, 32, 32)).astype(np.float32)
    b = rng.random((4, 32, 32)).astype(np.float32)
    a[0] = 0
    f = (a + b) / 2
    paths = [_write(tmp_path / f"{n}.nii.gz", x) for n, x in (("a", a), ("b", b), ("f", f))]
    assert main(["metrics", *paths, "--only", "review", "--normalize", "none", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "SCD" in text and "lower is better" in text and "3 of 4 slices" in text
    assert main(["metrics", *paths, "--only", "EN", "--normalize", "none", "--quiet",
                 "--max-slices", "2"]) == 0
    assert "1 of 2 slices" in capsys.readouterr().out  # slices 0 (black) and 2


def test_metrics_command_errors_exit_2_with_one_line(tmp_path, pair, capsys):
    from MedFusionLib.cli import main

    a, b, f = (x.astype(np.uint8) for x in pair)
    pa = _write(tmp_path / "a.png", a)
    pb = _write(tmp_path / "b.png", b)
    pf = _write(tmp_path / "f.png", f[:, :40])
    assert main(["metrics", pa, pb, pf]) == 2
    err = capsys.readouterr().err.strip()
    assert "same size" in err and "f.png" in err and len(err.splitlines()) == 1
    pf = _write(tmp_path / "f2.png", f)
    assert main(["metrics", pa, pb, pf, "--only", "SDD"]) == 2
    assert "Did you mean 'SD'" in capsys.readouterr().err
    assert main(["metrics", pa, pb, pf, "--data-range", "255"]) == 2
    assert "--normalize none" in capsys.readouterr().err


def test_matlab_style_helpers_match_direct_2d_filtering(rng):
    """The separable filters equal MATLAB filter2 (2D correlation) in 'valid' and 'same' modes."""
    from scipy.signal import correlate2d

    from MedFusionLib.metrics._common import (block_reduce_padded, filter_same_separable,
                                              filter_valid, freqspace_grid, gaussian_1d,
                                              normalize1)

    x = rng.random((23, 30)) * 255
    g = gaussian_1d(11, 1.5)
    yy, xx = np.mgrid[-5:6, -5:6]
    w2 = np.exp(-(xx ** 2 + yy ** 2) / (2 * 1.5 ** 2))
    w2 /= w2.sum()  # fspecial('gaussian', 11, 1.5)
    np.testing.assert_allclose(filter_valid(x, g), correlate2d(x, w2, mode="valid"), atol=1e-10)
    g31 = np.exp(-np.arange(-15, 16) ** 2 / 8.0)
    np.testing.assert_allclose(filter_same_separable(x, g31),
                               correlate2d(x, np.outer(g31, g31), mode="same"), atol=1e-8)
    u, v = freqspace_grid((4, 5))
    np.testing.assert_allclose(u[0], [-0.8, -0.4, 0.0, 0.4, 0.8])
    np.testing.assert_allclose(v[:, 0], [-1.0, -0.5, 0.0, 0.5])
    np.testing.assert_allclose(block_reduce_padded(np.ones((3, 5)), 2, "mean"),
                               [[1.0, 1.0, 0.5], [0.5, 0.5, 0.25]])
    q = normalize1(np.array([[0.0, 1.0], [0.5, 2.0]]))
    np.testing.assert_array_equal(q, [[0, 128], [64, 255]])  # 63.75 -> 64, 127.5 -> 128


def test_swapping_the_sources(pair, rng):
    """Metrics are symmetric in A and B, except FI (becomes 1/FI), VIFF (ties pick B), Q_C (its
    clamps, Q = 0 where mu < 0 and Q = 1 where mu > 1, swap meaning) and the FMI family (fmi.m's
    B branch sees the already-normalised F window)."""
    a, b, _ = pair
    f = np.clip(0.7 * a + 0.3 * b + rng.normal(0, 3, a.shape), 0, 255)
    ab = compute_metrics(a, b, f, data_range=255)
    ba = compute_metrics(b, a, f, data_range=255)
    asymmetric = {"FI", "VIFF", "Q_C", "FMI_pixel", "FMI_dct", "FMI_w"}
    for k in ALL_KEYS:
        if k not in asymmetric:
            assert ba[k] == pytest.approx(ab[k], rel=1e-9, abs=1e-12), k
    assert ba["FI"] == pytest.approx(1 / ab["FI"])
    assert ba["VIFF"] == pytest.approx(ab["VIFF"], rel=1e-3)
    assert ba["FMI_pixel"] == pytest.approx(ab["FMI_pixel"], rel=1e-2)
    assert ba["Q_C"] != pytest.approx(ab["Q_C"], rel=1e-3)

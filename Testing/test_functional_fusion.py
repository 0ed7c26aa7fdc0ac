"""Anatomical + functional fusion (issue #16): the synthetic PET/SPECT generator, the
pseudo-colour rendering, the functional training pairs and loss term, and the choice of the CNN
model from the pair's modalities."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib import functional_phantoms as fp
from MedFusionLib.nets import weights as W

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tissues():
    """A small spherical "head": a grey-matter shell around white matter, CSF ventricles."""
    shape = (40, 100, 100)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    r = np.sqrt(((zz - 20) / 18) ** 2 + ((yy - 50) / 46) ** 2 + ((xx - 50) / 44) ** 2)
    brain = r <= 1.0
    gm = ((r > 0.6) & brain).astype(np.float32)
    csf = ((r < 0.12) & brain).astype(np.float32)
    wm = (brain & (gm == 0) & (csf == 0)).astype(np.float32)
    t1 = (0.4 * gm + 0.8 * wm + 0.1 * csf).astype(np.float32)
    extra = (r > 1.08) & (r <= 1.2)
    maps = fp.TissueMaps(t1, gm, wm, csf, brain, extra, "test sphere")
    maps.radius = r
    return maps


def _ratio(values, tissues, lesions):
    """Grey / white matter uptake away from the tissue boundary and the lesions."""
    r = tissues.radius
    core_gm = (r > 0.72) & (r < 0.9) & ~lesions
    core_wm = (r > 0.22) & (r < 0.45) & ~lesions
    return values[core_gm].mean() / values[core_wm].mean()


@pytest.mark.parametrize("kind, lo, hi", [("fdg", 2.0, 4.5), ("spect", 1.2, 2.3)])
def test_functional_volume_has_realistic_uptake_ratios(tissues, kind, lo, hi):
    ph = fp.functional_volume(tissues, kind, np.random.default_rng(3))
    assert ph.values.dtype == np.float32 and ph.values.shape == tissues.gm.shape
    assert 0.0 <= ph.values.min() and ph.values.max() <= 1.0
    from scipy import ndimage

    near = ndimage.binary_dilation(ph.hot | ph.cold, iterations=4)
    assert lo <= _ratio(ph.values, tissues, near) <= hi


def test_spect_is_blurrier_than_fdg_and_lesions_go_both_ways(tissues):
    def high_frequency(x):
        return float(np.abs(np.diff(x, axis=2)).mean() / max(x.mean(), 1e-6))

    fdg = [fp.functional_volume(tissues, "fdg", np.random.default_rng(s)) for s in range(3)]
    spect = [fp.functional_volume(tissues, "spect", np.random.default_rng(s)) for s in range(3)]
    assert all(8.0 <= s.fwhm_mm <= 12.0 for s in spect) and all(4.0 <= f.fwhm_mm <= 7.0 for f in fdg)
    # SPECT's lower resolution: less fine detail (noise is lower-frequency too after blurring)
    assert np.mean([high_frequency(s.values) for s in spect]) < np.mean(
        [high_frequency(f.values) for f in fdg])
    # every SPECT has at least one perfusion defect, darker than grey matter
    for s in spect:
        assert s.cold.any()
        assert s.values[s.cold].mean() < s.values[(tissues.gm > 0) & ~s.cold & ~s.hot].mean()
    hot = [p for p in fdg + spect if p.hot.any()]
    assert hot, "no hot lesion in six volumes"
    for p in hot:
        assert p.values[p.hot].mean() > p.values[(tissues.gm > 0) & ~p.hot].mean()


def test_functional_volume_is_seeded_and_keeps_lesions_in_the_slab(tissues):
    a = fp.functional_volume(tissues, "spect", np.random.default_rng(11), z_range=(15, 25))
    b = fp.functional_volume(tissues, "spect", np.random.default_rng(11), z_range=(15, 25))
    np.testing.assert_array_equal(a.values, b.values)
    zs = np.nonzero((a.hot | a.cold).any(axis=(1, 2)))[0]
    assert zs.size and zs.min() >= 15 - 20 and 15 <= np.median(zs) < 25


def test_pseudo_colour_luminance_of_the_clinical_tables():
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    hot = fp.pseudo_colour_luminance(ramp, "hot")
    assert np.all(np.diff(hot) >= -1e-6), "the hot table's luminance rises with uptake"
    jet = fp.pseudo_colour_luminance(ramp, "jet")
    # a rainbow is not monotonic in luminance: its red top is darker than its yellow middle
    assert jet[-1] < jet[160] - 0.3
    for name in fp.CLINICAL_TABLES:
        y = fp.pseudo_colour_luminance(ramp, name)
        assert y.dtype == np.float32 and y.min() >= 0.0 and y.max() <= 1.0
    with pytest.raises(Exception, match="clinical colour table"):
        fp.clinical_table("viridis-ish")


def test_functional_bank_pairs_anatomy_with_function_and_reports_roles():
    from MedFusionLib.training_data import SliceBank

    rng = np.random.default_rng(0)
    mr = rng.uniform(0.2, 1.0, (4, 48, 48)).astype(np.float32)
    pet = np.zeros_like(mr)
    pet[:, 10:30, 10:30] = 0.9  # a distinctive block: the functional source
    bank = SliceBank({"mr": mr, "pet": pet}, pairs=[("mr", "pet")], functional=["pet"],
                     colour_prob=0.5)
    xa, xb, roles = bank.sample(24, 32, np.random.default_rng(1), identity_prob=0.2,
                                return_roles=True)
    same = np.all(xa == xb, axis=(1, 2))
    assert np.all(roles[same] == -1) and np.all(roles[~same] >= 0)
    assert set(roles[~same]) == {0, 1}, "the functional source comes in both orders"
    for i in np.nonzero(~same)[0]:
        func, anat = (xa[i], xb[i]) if roles[i] == 0 else (xb[i], xa[i])
        # the functional crop is piecewise constant (block + background), the MR crop is noise
        assert len(np.unique(func)) <= 3 < len(np.unique(anat))
    with pytest.raises(Exception, match="functional entries"):
        SliceBank({"mr": mr}, functional=["spect"])


def test_functional_saliency_term_asks_for_the_functional_contrast():
    from MedFusionLib.nets.losses import functional_saliency
    from MedFusionLib.training import fusion_loss

    yy, xx = np.mgrid[:64, :64]
    anat = (0.4 + 0.2 * np.sin(xx / 2.0)).astype(np.float32)  # fine anatomical texture
    func = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 100, 0.5, 0.2).astype(np.float32)
    from scipy import ndimage

    func = ndimage.gaussian_filter(func, 3.0).astype(np.float32)
    t = lambda x: torch.from_numpy(np.asarray(x, np.float32))[None, None]  # noqa: E731
    a, b = t(anat), t(func)
    own = float(functional_saliency(b, b)[0])
    only_anat = float(functional_saliency(b, a)[0])
    added = float(functional_saliency(b, t(np.clip(anat + (func - 0.2), 0, 1)))[0])
    maximum = float(functional_saliency(b, torch.maximum(a, b))[0])
    assert own < 0.02
    assert only_anat > 0.5 and added < 0.3 * only_anat and maximum > added, (only_anat, added, maximum)
    # in the fusion loss the term scores only pairs that have a functional source
    fused = torch.cat([a, a])
    _, terms_none = fusion_loss(fused, torch.cat([a, a]), torch.cat([b, b]),
                                weights={"functional": 1.0}, functional=torch.tensor([-1, -1]))
    _, terms_b = fusion_loss(fused, torch.cat([a, a]), torch.cat([b, b]),
                             weights={"functional": 1.0}, functional=torch.tensor([1, 1]))
    assert terms_none["functional"] == 0.0 and terms_b["functional"] > 0.5


@pytest.mark.parametrize("mods, expected", [
    (("MR", "PET"), "anatomical+functional"), (("SPECT", "CT"), "anatomical+functional"),
    (("8BIT", "SPECT"), "anatomical+functional"), (("MR", "CT"), "anatomical+anatomical"),
    (("MR", "MR"), "anatomical+anatomical"), (("8BIT", "MR"), None), (("PET", "SPECT"), None),
    (None, None)])
def test_pair_type_of_modalities(mods, expected):
    assert W.pair_type(mods) == expected


@pytest.fixture
def pair_registry(tmp_path, monkeypatch):
    """A copy of the models folder whose anatomical+functional model is fusionnet-base."""
    dst = tmp_path / "models"
    shutil.copytree(W.models_dir(), dst)
    reg = json.loads((dst / "models.json").read_text())
    reg["pair_defaults"] = {"anatomical+functional": "fusionnet-base"}
    (dst / "models.json").write_text(json.dumps(reg))
    monkeypatch.setenv("MEDFUSION_MODELS_DIR", str(dst))
    W.clear_cache()
    yield dst
    W.clear_cache()


def test_the_pair_type_chooses_the_cnn_model(pair_registry):
    from conftest import make_phantom_2d
    from MedFusionLib.driver import fuse_arrays

    default = W.default_model()
    assert W.model_for_modalities(("MR", "PET")) == "fusionnet-base"
    assert W.model_for_modalities(("CT", "MR")) == default
    assert W.model_for_modalities(None) == default
    a = make_phantom_2d((64, 64), seed=1)
    b = make_phantom_2d((64, 64), seed=2) ** 2
    base = fuse_arrays(a, b, method="cnn", device="cpu", model="fusionnet-base")
    dflt = fuse_arrays(a, b, method="cnn", device="cpu", model=default)
    assert np.abs(base - dflt).max() > 1e-3
    np.testing.assert_array_equal(
        fuse_arrays(a, b, method="cnn", device="cpu", modalities=("MR", "PET")), base)
    np.testing.assert_array_equal(
        fuse_arrays(a, b, method="cnn", device="cpu", modalities=("MR", "CT")), dflt)
    # an explicit model wins over the pair's
    np.testing.assert_array_equal(
        fuse_arrays(a, b, method="cnn", device="cpu", model=default, modalities=("MR", "PET")),
        dflt)
    reg = json.loads((pair_registry / "models.json").read_text())
    reg["pair_defaults"] = {"anatomical+functional": "no-such-model"}
    (pair_registry / "models.json").write_text(json.dumps(reg))
    with pytest.raises(W.WeightsError, match="no-such-model"):
        W.model_for_modalities(("MR", "PET"))


def test_the_pipeline_passes_the_modalities_it_normalised_with(pair_registry):
    from conftest import make_phantom_2d
    from MedFusionLib.driver import fuse_arrays
    from MedFusionLib.pipeline import fuse_images

    a = (make_phantom_2d((64, 64), seed=1) * 1000.0).astype(np.float32)
    b = (make_phantom_2d((64, 64), seed=2) ** 2 * 8.0).astype(np.float32)
    res = fuse_images(sitk.GetImageFromArray(a), sitk.GetImageFromArray(b), method="cnn",
                      fixed_modality="MR", moving_modality="PET")
    expected = fuse_arrays(res.fixed01, res.moving01, method="cnn", device="cpu",
                           model="fusionnet-base")
    np.testing.assert_allclose(sitk.GetArrayFromImage(res.fused), expected, atol=1e-6)
    assert "modalities" not in res.params
    res_ct = fuse_images(sitk.GetImageFromArray(a), sitk.GetImageFromArray(b), method="cnn",
                         fixed_modality="MR", moving_modality="MR")
    expected = fuse_arrays(res_ct.fixed01, res_ct.moving01, method="cnn", device="cpu",
                           model=W.default_model())
    np.testing.assert_allclose(sitk.GetArrayFromImage(res_ct.fused), expected, atol=1e-6)


def test_the_functional_training_config_is_valid():
    """The issue #16 experiment's config: functional pairs, the saliency term, the same held-out
    slab as the default model."""
    from MedFusionLib.training import load_config

    cfg = load_config(W.models_dir() / "fusionnet-functional-train.json")
    base = load_config(W.models_dir() / "fusionnet-train.json")
    assert cfg.bank == "functional" and cfg.loss.get("functional", 0) > 0
    assert cfg.residual and cfg.holdout_z == base.holdout_z


def _frontier():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "functional_frontier.py"
    spec = importlib.util.spec_from_file_location("functional_frontier", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_frontier_changes_keep_identity_and_move_towards_the_functional_source():
    """bench/functional_frontier.py's role-aware changes of the default fusion (issue #16): each
    keeps F(A, A) = A, and each moves a fused image that lacks the functional source's blob towards
    it (the evidence in the model card rests on these families doing what they say)."""
    ff = _frontier()
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:96, :96].astype(np.float32)
    a = (0.5 + 0.1 * rng.standard_normal((96, 96))).astype(np.float32).clip(0, 1)
    blob = np.exp(-((yy - 48) ** 2 + (xx - 48) ** 2) / (2 * 6.0 ** 2)).astype(np.float32)
    u = (0.2 + 0.6 * blob).astype(np.float32)
    lesion = [blob > 0.6]
    assert np.abs(ff.add_detail(a, a, 2.0, scales=(4.0, 8.0, 16.0)) - a).max() < 0.005  # ~1 grey level
    assert np.abs(ff.mix(a, a, 1.0) - a).max() < 1e-6
    assert np.abs(ff.mix_max(a, a, a, 1.0) - a).max() < 1e-6
    f_id, _ = ff.net_fusion(a, a, 2.0)
    f0, _ = ff.net_fusion(a, a, 0.0)
    assert np.abs(f_id - f0).max() < 0.05  # the logit bias changes weights, not F(A, A)
    lc = ff.E.lesion_contrast
    assert abs(lc(a, u, lesion)) < 0.1
    assert lc(ff.add_detail(a, u, 1.0, scales=(4.0, 8.0, 16.0)), u, lesion) > 0.3
    assert lc(ff.mix(a, u, 1.0), u, lesion) > 0.3
    assert lc(ff.mix_max(a, a, u, 1.0), u, lesion) > 0.1
    f_bias, _ = ff.net_fusion(a, u, 2.0)
    f_plain, _ = ff.net_fusion(a, u, 0.0)
    assert lc(f_bias, u, lesion) > lc(f_plain, u, lesion) + 0.05

"""Issue #24 with torch: the real-pair loss terms, the atlas bank, checkpoint selection on the
validation cases, the train command on an atlas folder, and the atlas benchmark. The atlas is
synthetic (conftest.make_atlas_folder)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_atlas_folder, make_phantom_2d

from MedFusionLib import aanlib
from MedFusionLib.nets import pair_losses as PL
from MedFusionLib.nets import weights as W
from MedFusionLib.training import TrainConfig, fusion_loss, train
from MedFusionLib.pair_targets import count_as_good
from MedFusionLib.training_atlas import AtlasBank, AtlasValidator, atlas_bank

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("atlas")
    split = make_atlas_folder(root)
    path = root / "split.json"
    path.write_text(json.dumps(split))
    return root, split, path


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]


def test_soft_mutual_information_ranks_like_the_metric():
    a = make_phantom_2d((64, 64), seed=1)
    noise = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    same = float(PL.soft_mutual_information(_t(a), _t(a)))
    mapped = float(PL.soft_mutual_information(_t(a), _t(1.0 - a)))
    unrelated = float(PL.soft_mutual_information(_t(a), _t(noise)))
    assert same > 1.0 and abs(mapped - same) < 0.05 * same and unrelated < 0.2 * same
    f = _t(0.5 * a + 0.5 * noise).requires_grad_(True)
    PL.soft_mutual_information(_t(a), f).sum().backward()
    assert f.grad is not None and float(f.grad.abs().sum()) > 0


def test_information_terms_are_zero_for_pixel_maximum_and_not_for_a_pass_through():
    a = _t(make_phantom_2d((64, 64), seed=1))
    yy, xx = np.mgrid[:64, :64]
    b = _t(np.where(np.hypot(yy - 30, xx - 35) < 12, 0.9, 0.2) * (make_phantom_2d((64, 64)) > 0))
    balance, amount = PL.information_terms(a, b, torch.maximum(a, b))
    assert float(balance) == 0.0 and float(amount) < 1e-6
    balance, amount = PL.information_terms(a, b, a)  # the anatomy passed through
    assert float(balance) > 0.05 and float(amount) > 0.0


def test_the_salient_target_follows_uptake_where_the_mr_is_brighter():
    a = np.full((1, 1, 32, 32), 0.8, np.float32)   # bright, flat MR
    a[..., :4, :] = 0.0
    b = np.full_like(a, 0.2)                        # dim functional image ...
    b[..., :4, :] = 0.0
    b[..., 12:20, 12:20] = 0.6                      # ... with a region 3x its median
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    t = PL.salient_target(ta, tb)
    assert float(t[..., 16, 16]) == pytest.approx(0.6, abs=0.01)    # uptake: B
    assert float(t[..., 28, 28]) == pytest.approx(0.8, abs=0.01)    # elsewhere: A
    torch.testing.assert_close(PL.salient_target(tb, ta), t)
    torch.testing.assert_close(PL.salient_target(ta, ta), ta)


def _focus_pair():
    """A flat MR (0.5) and a dim functional image (0.2) with a hot focus (0.9) 4 % of its area."""
    a = np.full((1, 1, 40, 40), 0.5, np.float32)
    b = np.full_like(a, 0.2)
    b[..., 10:18, 10:18] = 0.9
    return torch.from_numpy(a), torch.from_numpy(b)


def test_the_hot_focus_term_costs_a_faded_focus_and_nothing_at_or_above_it():
    a, b = _focus_pair()
    faded = float(PL.hot_focus(a, b, a))                       # the MR passed through
    assert faded == pytest.approx(0.5 * 0.4 * 64 / (64 + 16), rel=0.02)
    assert float(PL.hot_focus(a, b, torch.maximum(a, b))) == 0.0
    assert float(PL.hot_focus(a, b, torch.maximum(a, b) + 0.05)) == 0.0   # one-sided
    assert float(PL.hot_focus(b, a, a)) == pytest.approx(faded)          # symmetric
    assert float(PL.hot_focus(a, a, a)) == 0.0
    # the area normalisation: a focus of 4 % costs as much per pixel as one of 16 %
    big = b.clone()
    big[..., 4:20, 4:20] = 0.9
    assert float(PL.hot_focus(a, big, a)) == pytest.approx(0.5 * 0.4 * 256 / 272, rel=0.02)
    # the margin is a cap of the config: a focus 0.4 above the MR hardly counts at margin 0.6
    wide = float(fusion_loss(a.clone(), a, b, weights={"hot": 1.0}, caps={"hot": 0.6})[0])
    assert wide < 0.05 * float(fusion_loss(a.clone(), a, b, weights={"hot": 1.0})[0])
    half = (0.5 * (a + b)).requires_grad_(True)
    total, terms = fusion_loss(half, a, b, weights={"hot": 1.0})
    total.backward()
    assert terms["hot"] > 0 and float(half.grad[..., 12, 12]) < 0   # pushes the focus up


def test_the_new_terms_train_through_fusion_loss():
    a = _t(make_phantom_2d((48, 48), seed=2)).repeat(2, 1, 1, 1)
    b = _t(make_phantom_2d((48, 48), seed=3) ** 2).repeat(2, 1, 1, 1)
    f = (0.5 * (a + b)).requires_grad_(True)
    total, terms = fusion_loss(f, a, b, weights={"salient": 1.0, "balance": 1.0, "mi": 1.0})
    total.backward()
    assert set(terms) == {"salient", "balance", "mi", "identity"} and float(total.detach()) > 0
    assert float(f.grad.abs().sum()) > 0


def test_the_atlas_bank_gives_real_pairs_unaltered(atlas):
    root, split, _ = atlas
    bank = atlas_bank(root, "pet-mr", split)
    assert isinstance(bank, AtlasBank) and bank.n_slices == 3 and bank.functional == {"other"}
    pairs = aanlib.load_pairs(root, "pet-mr", aanlib.split_names(root, "pet-mr", "train", split))
    xa, xb, roles = bank.sample(4, 64, np.random.default_rng(0), return_roles=True)
    assert set(roles) <= {0, 1}
    # a 64 x 64 crop of a 64 x 64 slice is the slice up to a flip/rotation: values unaltered
    for x, role in zip(xa, roles):
        src = pairs.other if role == 0 else pairs.mr
        assert any(np.allclose(np.sort(x.ravel()), np.sort(s.ravel())) for s in src)


def test_checkpoints_are_chosen_on_the_validation_cases(atlas, tmp_path):
    root, split, _ = atlas
    validator = AtlasValidator(root, "ct-mr", split)
    assert validator.names == ["2003.png", "2004.png"]
    key, scores = validator(W.load_model("fusionnet"))
    assert key[0] == 1 and scores["VIF"] == pytest.approx(validator.reference["VIF"])

    per_case = AtlasValidator(root, "ct-mr", split, per_case=True, hot=True)
    key, scores = per_case(W.load_model("fusionnet"))
    assert scores["cases_kept"] == 1.0 and key[0] >= 1        # the reference keeps itself
    key, scores = per_case(W.load_model("fusionnet-base"))
    assert 0.0 <= scores["cases_kept"] <= 1.0 and "HOT" in scores

    seen = []

    def fake(net):  # best at the second of four validations
        seen.append({k: v.clone() for k, v in net.state_dict().items()})
        return ((0, 5), (0, 9), (0, 7), (0, 1))[len(seen) - 1], {"VIF": float(len(seen))}

    cfg = TrainConfig(steps=8, batch_size=2, patch=32, lr=1e-2, warmup=1, channels=[4, 8],
                      head_channels=4, log_every=4, rule_mix=0.0, val_every=2)
    res = train(cfg, tmp_path / "m.pt", bank=atlas_bank(root, "ct-mr", split), validator=fake)
    assert len(seen) == 4
    saved = torch.load(res.path, weights_only=True)
    for k, v in seen[1].items():
        torch.testing.assert_close(saved["state_dict"][k], v)
    assert saved["meta"]["selected"]["step"] == 4
    assert [v["step"] for v in saved["meta"]["validations"]] == [2, 4, 6, 8]
    entry = json.loads((tmp_path / "models.json").read_text())["models"]["m"]
    assert entry["training"]["selected"]["step"] == 4


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "MedFusionLib.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               "OMP_NUM_THREADS": "1"})


def test_train_command_on_an_atlas_folder_is_reproducible(atlas, tmp_path):
    root, _, split_path = atlas
    cfg = {"seed": 3, "steps": 4, "batch_size": 2, "patch": 32, "lr": 1e-3, "warmup": 1,
           "residual": True, "loss": {"intensity": 1.0, "salient": 1.0, "balance": 1.0},
           "rule_mix": 0.0, "log_every": 2, "pair_type": "spect-mr", "val_every": 2,
           "split": str(split_path)}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run / "x.pt"
        r = _cli("train", "--config", path, "--init", "fusionnet", "--data", root, "--out", out,
                 "--threads", "1", "--quiet")
        assert r.returncode == 0, r.stderr
        outs.append(torch.load(out, weights_only=True))
    for k, v in outs[0]["state_dict"].items():
        torch.testing.assert_close(outs[1]["state_dict"][k], v, rtol=0, atol=0)
    meta = outs[0]["meta"]
    assert meta["selected"]["step"] in (2, 4) and "spect-mr train cases [1, 14]" in meta["data"]


def test_train_command_names_a_missing_or_wrong_atlas_folder(atlas, tmp_path):
    _, _, split_path = atlas
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"steps": 2, "pair_type": "ct-mr", "split": str(split_path)}))
    r = _cli("train", "--config", path, "--out", tmp_path / "x.pt")
    assert r.returncode == 2 and "--data DIR" in r.stderr and not (tmp_path / "x.pt").exists()
    r = _cli("train", "--config", path, "--out", tmp_path / "x.pt", "--data", tmp_path)
    assert r.returncode == 2 and "not the atlas folder" in r.stderr
    path.write_text(json.dumps({"steps": 2, "pair_type": "mr-mr"}))
    r = _cli("train", "--config", path, "--out", tmp_path / "x.pt", "--data", tmp_path)
    assert r.returncode == 2 and "pair_type" in r.stderr


def test_the_atlas_benchmark_reports_every_pair_type(atlas, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import atlas_eval
    finally:
        sys.path.remove(str(ROOT / "bench"))
    root, _, split_path = atlas
    res = atlas_eval.evaluate(root, "test", split_path)
    assert set(res) == set(aanlib.PAIR_TYPES)
    for key, r in res.items():
        assert r["n"] == 2 and r["cases"] == [3]
        assert set(r["rows"]) == {"cnn", "default", "maximum", *atlas_eval.CLASSICAL}
        assert set(r["targets"]["cnn"]["vs_each"]) == set(atlas_eval.CLASSICAL)
        # the pair's model is the registry's choice for its modalities
        want = W.model_for_modalities(aanlib.PAIR_TYPES[key].modalities)
        same = want == "fusionnet"
        assert (r["rows"]["cnn"]["VIF"] == r["rows"]["default"]["VIF"]) == same
    paths = atlas_eval.save_figures(res, tmp_path / "fig", per_type=1)
    assert len(paths) == 6 and all(p.stat().st_size > 1000 for p in paths)


def test_the_frontier_reports_hot_foci_of_trained_checkpoints(atlas, tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import atlas_frontier
    finally:
        sys.path.remove(str(ROOT / "bench"))
    root, split, split_path = atlas
    monkeypatch.setattr(aanlib, "DEFAULT_SPLIT", split_path)
    validator = AtlasValidator(root, "pet-mr", split, hot=True)
    cfg = TrainConfig(steps=4, batch_size=2, patch=32, lr=1e-3, warmup=1, log_every=2,
                      rule_mix=0.0, val_every=2, pair_type="pet-mr", residual=True,
                      loss={"intensity": 1.0, "hot": 1.0})
    res = train(cfg, tmp_path / "run" / "p.pt", init="fusionnet", bank=atlas_bank(root, "pet-mr",
                                                                                split),
                validator=validator)
    points = atlas_frontier.frontier(root, "pet-mr", [res.path])
    rows = {r[0]: r for r in atlas_frontier.describe(points)}
    assert rows["default"][8] == 0.0 and rows["maximum"][8] > 0.0   # max keeps the foci
    assert rows["default"][9] is None
    base = {"max": points["maximum"], "default": points["default"]}
    vs_base = {r[0]: r[9] for r in atlas_frontier.describe(points, base)}
    assert vs_base["default"] == count_as_good(points["default"], points["maximum"])
    assert vs_base["maximum"] == count_as_good(points["maximum"], points["default"])
    steps = [label for label in rows if " step " in label]
    assert len(steps) == 2 and any("(chosen)" in label for label in steps)
    assert all(np.isfinite(rows[label][8]) for label in steps)
    atlas_frontier.draw({"pet-mr": points}, tmp_path / "frontier.png")
    assert (tmp_path / "frontier.png").stat().st_size > 1000


def test_fuse_picks_the_pair_model_for_an_8bit_mr_with_a_pseudo_colour_source(atlas, tmp_path):
    """The colour path calls the RGB source PET unless told SPECT; its luminance is fused by the
    model pair_defaults names for (8BIT, PET) or (8BIT, SPECT)."""
    import SimpleITK as sitk

    root, _, _ = atlas
    mr, spect = root / "SPECT-MRI" / "MRI" / "1003.png", root / "SPECT-MRI" / "SPECT" / "1003.png"

    def fused(name, *extra):
        out = tmp_path / f"{name}.png"
        r = _cli("fuse", mr, spect, "-o", out, *extra)
        assert r.returncode == 0, r.stderr
        return sitk.GetArrayFromImage(sitk.ReadImage(str(out)))

    auto_spect = fused("auto-spect", "--moving-modality", "SPECT")
    auto = fused("auto")
    np.testing.assert_array_equal(
        auto_spect, fused("spect", "--moving-modality", "SPECT", "--param",
                          "model=fusionnet-spect-mr"))
    np.testing.assert_array_equal(auto, fused("pet", "--param", "model=fusionnet-pet-mr"))
    assert np.abs(auto_spect.astype(int) - fused("general", "--moving-modality", "SPECT",
                                                 "--param", "model=fusionnet").astype(int)).max() > 0

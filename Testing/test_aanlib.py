"""Issue #24 without torch: the atlas layout, the split by case, the fetch script, the targets and
the per-pair-type model choice. Every atlas here is synthetic (conftest.make_atlas_folder): the
real images are never needed by the tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import ATLAS_CASES, make_atlas_folder

from MedFusionLib import aanlib
from MedFusionLib.errors import InvalidInputError
from MedFusionLib.nets import weights as W
from MedFusionLib.pair_targets import (TEN_KEYS, check_targets, count_as_good, hot_gap,
                                       keeps_anatomy, score_pairs, selection_key)

ROOT = Path(__file__).resolve().parents[1]
FETCH = ROOT / "Resources" / "SampleData" / "fetch-aanlib.sh"


def test_the_hot_gap_measures_how_much_of_a_hot_focus_survives():
    a = np.full((2, 48, 48), 0.5)
    b = np.full_like(a, 0.2)
    b[:, 8:14, 8:14] = 0.9                           # 1.6 % of the slice
    assert hot_gap(a, b, np.maximum(a, b)) == 0.0
    assert hot_gap(a, b, a) == pytest.approx(-0.4)   # faded into the MR
    assert hot_gap(a, b, 0.5 * (a + b)) == pytest.approx(-0.2)
    assert np.isnan(hot_gap(a, a, a))                # no focus at all
    a = a + np.random.default_rng(0).uniform(0.0, 0.05, a.shape)   # the metrics need texture
    assert score_pairs(a, b, a)["HOT"] == pytest.approx(hot_gap(a, b, a))


def test_selection_with_hot_foci_prefers_the_brighter_focus_that_keeps_the_anatomy():
    maximum = _row(SD=2.0, MI=2.0, VIF=0.9, HOT=0.0)
    default = _row(HOT=-0.15)
    faded = _row(HOT=-0.16, SD=2.0, MI=2.0)              # 10/10 but the focus fades more
    kept = _row(HOT=-0.15)                               # 8/10, as the default
    brighter = _row(HOT=-0.10, VIF=0.995)                # 8/10, focus +0.05, VIF -0.5 %
    costly = _row(HOT=-0.05, VIF=0.985)                  # VIF -1.5 %: inside 2 %, not inside 1 %
    key = lambda c, **kw: selection_key(c, maximum, default, hot=True, **kw)  # noqa: E731
    assert key(brighter) > key(kept) > key(faded)
    assert key(costly) > key(brighter)
    assert key(brighter, guard={"VIF": 0.01}) > key(costly, guard={"VIF": 0.01})
    # without hot, the count decides as before
    assert selection_key(faded, maximum, default) > selection_key(brighter, maximum, default)
    # a mean that keeps the anatomy while one validation case loses it does not count as kept
    assert key(kept, cases_kept=False) < key(kept) and key(kept, cases_kept=False)[0] == 0
    assert selection_key(faded, maximum, default, cases_kept=False) < selection_key(
        brighter, maximum, default)


def test_scores_per_case_come_from_the_same_slices():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 1, (2, 3, 48, 48))
    fused = np.maximum(a, b)
    whole, cases = score_pairs(a, b, fused, groups=[7, 9, 7])
    assert list(cases) == [7, 9]
    assert cases[9] == score_pairs(a[1:2], b[1:2], fused[1:2])
    assert whole["SSIM"] == pytest.approx((2 * cases[7]["SSIM"] + cases[9]["SSIM"]) / 3)
    assert keeps_anatomy(cases[7], cases[7]) and not keeps_anatomy(
        dict(cases[7], SSIM=cases[7]["SSIM"] - 0.01), cases[7])
    assert keeps_anatomy(dict(cases[7], VIF=0.985 * cases[7]["VIF"]), cases[7])
    assert not keeps_anatomy(dict(cases[7], VIF=0.985 * cases[7]["VIF"]), cases[7], {"VIF": 0.01})


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    root = tmp_path_factory.mktemp("atlas")
    return root, make_atlas_folder(root)


@pytest.mark.parametrize("name, expected", [("16003.png", (16, 3)), ("2004.png", (2, 4)),
                                            ("41115.png", (41, 115)), ("3008.png", (3, 8))])
def test_the_case_is_the_file_name_without_its_last_three_digits(name, expected):
    assert aanlib.case_of(name) == expected


@pytest.mark.parametrize("name", ["123.png", "16003.jpg", "a16003.png", "41101"])
def test_names_that_are_not_atlas_files_are_refused(name):
    with pytest.raises(InvalidInputError, match="not an atlas file name"):
        aanlib.case_of(name)


def test_the_shipped_split_keeps_every_case_in_one_part():
    split = aanlib.read_split()
    assert split["commit"] == aanlib.COMMIT
    assert set(split["pair_types"]) == set(aanlib.PAIR_TYPES)
    for parts in split["pair_types"].values():
        cases = [c for p in aanlib.PARTS for c in parts[p]]
        assert len(cases) == len(set(cases)) and all(parts[p] for p in aanlib.PARTS)


@pytest.mark.parametrize("bad, message", [
    ({"pair_types": {"ct-mr": {"train": [1, 2], "val": [2], "test": [3]}}}, "case 2 is in both"),
    ({"pair_types": {"ct-mr": {"train": [1], "val": [], "test": [3]}}}, "no 'val' cases"),
    ({"pair_types": {"mr-mr": {"train": [1], "val": [2], "test": [3]}}}, "unknown atlas pair"),
    ({"cases": []}, "pair_types")])
def test_a_split_that_mixes_or_lacks_cases_is_refused(tmp_path, bad, message):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(InvalidInputError, match=message):
        aanlib.read_split(path)


def test_training_never_sees_the_repository_test_folder_and_parts_follow_cases(atlas):
    root, split = atlas
    for key in aanlib.PAIR_TYPES:
        train = aanlib.split_names(root, key, "train", split)
        val = aanlib.split_names(root, key, "val", split)
        test = aanlib.split_names(root, key, "test", split)
        repo_test = {p.name for p in (root / "MyDatasets" / aanlib.PAIR_TYPES[key].folder / "test"
                                      / aanlib.PAIR_TYPES[key].other).iterdir()}
        assert train and not set(train) & repo_test
        # the first slice of each case is in the repository's test folder: val and test keep it
        assert {aanlib.case_of(n)[0] for n in train} == {1, 14}
        assert val == ["2003.png", "2004.png"] and test == ["3006.png", "3007.png"]
        assert len(train) == sum(len(z) - 1 for c, z in ATLAS_CASES if c in (1, 14))


def test_pairs_load_as_grey_levels_and_the_functional_luminance(atlas):
    root, split = atlas
    pet = aanlib.load_pairs(root, "pet-mr", ["1003.png"])
    ct = aanlib.load_pairs(root, "ct-mr", ["1003.png"])
    import SimpleITK as sitk

    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "PET-MRI" / "PET" / "1003.png")))
    y = (rgb.astype(np.float64) @ [0.299, 0.587, 0.114]) / 255.0
    np.testing.assert_allclose(pet.other[0], y, atol=1e-5)
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "PET-MRI" / "MRI" / "1003.png")))
    np.testing.assert_allclose(pet.mr[0], mr / 255.0, atol=1e-6)
    assert pet.cb is not None and np.abs(pet.cr).max() > 0.05
    assert ct.cb is None and ct.mr.shape == ct.other.shape == (1, 64, 64)
    assert pet.cases == [1]


def test_a_folder_without_the_atlas_layout_is_named_in_the_error(tmp_path):
    assert not aanlib.is_atlas_folder(tmp_path)
    with pytest.raises(InvalidInputError, match="no CT-MRI/MRI"):
        aanlib.pair_names(tmp_path, "ct-mr")


def _row(**values):
    row = {k: 1.0 for k in TEN_KEYS}
    row["FS"] = 0.1
    row.update(values)
    return row


def test_targets_count_metrics_at_least_as_good_and_guard_the_anatomy():
    maximum = _row(SD=2.0, MI=2.0, SCD=2.0, VIF=0.9, FS=0.1)
    default = _row(Qabf=1.0, VIF=1.0, SSIM=1.0)
    cand = _row(SD=2.0, MI=1.5, SCD=1.5, FS=0.1, VIF=0.981)
    t = check_targets(cand, maximum, default, {"dwt": _row(EN=1.2, VIF=0.9)})
    assert t["vs_max"] == 8 and t["max8"] and t["fs"] and t["anatomy"]
    assert t["baselines_min"] == 9 and t["all"]
    # VIF 2.1 % below the default's, or SSIM below it, breaks the guard
    assert not check_targets(dict(cand, VIF=0.979), maximum, default)["anatomy"]
    assert not check_targets(dict(cand, SSIM=0.999), maximum, default)["anatomy"]
    assert not check_targets(dict(cand, FS=0.2), maximum, default)["all"]
    assert count_as_good(cand, dict(cand, EN=1.0004)) == 10  # ties at 3 decimals count
    # the hot foci: no dimmer than the default's, checked only where both rows have them
    hot = check_targets(dict(cand, HOT=-0.12), maximum, dict(default, HOT=-0.10))
    assert hot["hot"] is False and not hot["all"]
    assert check_targets(dict(cand, HOT=-0.10), maximum, dict(default, HOT=-0.12))["all"]
    assert "hot" not in check_targets(dict(cand, HOT=float("nan")), maximum, dict(default, HOT=0))


def test_selection_prefers_a_checkpoint_that_keeps_the_anatomy():
    maximum = _row(SD=2.0, MI=2.0, SCD=2.0)
    default = _row()
    keeps = _row(SD=1.9)                      # 7/10 vs maximum, anatomy kept
    wins = _row(SD=2.0, MI=2.0, VIF=0.9)      # 9/10 vs maximum, VIF -10 %
    closer = _row(SD=2.0, MI=2.0, VIF=0.95)   # 9/10, VIF -5 %: closer to keeping it
    assert selection_key(keeps, maximum, default) > selection_key(wins, maximum, default)
    assert selection_key(closer, maximum, default) > selection_key(wins, maximum, default)
    better = _row(SD=2.0)
    assert selection_key(better, maximum, default) > selection_key(keeps, maximum, default)


@pytest.fixture
def fine_registry(tmp_path, monkeypatch):
    dst = tmp_path / "models"
    shutil.copytree(W.models_dir(), dst)
    reg = json.loads((dst / "models.json").read_text())
    reg["pair_defaults"] = {"MR+PET": "fusionnet-base", "anatomical+functional": "fusionnet"}
    (dst / "models.json").write_text(json.dumps(reg))
    monkeypatch.setenv("MEDFUSION_MODELS_DIR", str(dst))
    return dst


def test_the_modality_pair_comes_before_the_pair_type(fine_registry):
    assert W.modality_pair(("pet", "MR")) == "MR+PET"
    assert W.model_for_modalities(("PET", "MR")) == "fusionnet-base"
    assert W.model_for_modalities(("MR", "SPECT")) == "fusionnet"  # the pair type's entry
    assert W.model_for_modalities(("CT", "MR")) == W.default_model()
    assert W.model_for_modalities(None) == W.default_model()


def test_the_shipped_registry_has_a_model_for_each_atlas_pair_type():
    reg = W.read_registry()
    table = reg.get("pair_defaults", {})
    for key, pt in aanlib.PAIR_TYPES.items():
        name = W.model_for_modalities(pt.modalities)
        assert name == f"fusionnet-{key}" == table[W.modality_pair(pt.modalities)]
        assert (W.models_dir() / reg["models"][name]["file"]).is_file()
        assert reg["models"][name]["training"]["config"] == f"models/fusionnet-{key}-train.json"
    # the functional models learnt pseudo-colour luminance of 8-bit pictures: grey PET/SPECT
    # volumes (DICOM, NIfTI) keep the general model
    assert W.model_for_modalities(("MR", "PET")) == W.default_model()
    assert W.model_for_modalities(("MR", "SPECT")) == W.default_model()


# --- the fetch script ---------------------------------------------------------------------------
def _git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tiny_repo(tmp_path):
    """A git repository of three files, its commit and a manifest of their SHA-256."""
    missing = [tool for tool in ("git", "sha256sum") if shutil.which(tool) is None]
    assert not missing, f"the fetch script's tests need {' and '.join(missing)} on the PATH"
    src = tmp_path / "src"
    (src / "CT-MRI" / "CT").mkdir(parents=True)
    (src / "CT-MRI" / "CT" / "2004.png").write_bytes(b"\x89PNG one")
    (src / "CT-MRI" / "CT" / "2005.png").write_bytes(b"\x89PNG two")
    (src / "README.md").write_text("atlas\n")
    _git("init", "-q", cwd=src)
    _git("add", ".", cwd=src)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c", cwd=src)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True,
                            text=True, check=True).stdout.strip()
    lines = subprocess.run("git ls-files -z | xargs -0 sha256sum", shell=True, cwd=src,
                           capture_output=True, text=True, check=True).stdout
    manifest = tmp_path / "manifest.sha256"
    manifest.write_text(lines)
    return src, commit, manifest


def _fetch(dest, source, commit, manifest):
    env = {"PATH": "/usr/bin:/bin", "AANLIB_COMMIT": commit, "AANLIB_MANIFEST": str(manifest),
           "HOME": str(Path(dest).parent)}
    args = ["bash", str(FETCH), str(dest)] + ([str(source)] if source else [])
    return subprocess.run(args, env=env, capture_output=True, text=True)


def test_fetch_clones_pins_and_checks_every_file(tiny_repo, tmp_path):
    src, commit, manifest = tiny_repo
    dest = tmp_path / "atlas"
    r = _fetch(dest, src, commit, manifest)
    assert r.returncode == 0, r.stderr
    assert "3 files checked" in r.stdout
    # a second run on the checkout only checks it
    assert _fetch(dest, None, commit, manifest).returncode == 0
    # an altered file fails the check, naming it, and is left as it is (never overwritten)
    (dest / "CT-MRI" / "CT" / "2004.png").write_bytes(b"changed")
    r = _fetch(dest, None, commit, manifest)
    assert r.returncode == 1 and "CT-MRI/CT/2004.png" in r.stderr
    assert (dest / "CT-MRI" / "CT" / "2004.png").read_bytes() == b"changed"
    _git("checkout", "--", ".", cwd=dest)
    # an extra image in the folder would be read as a training pair: refused
    (dest / "CT-MRI" / "CT" / "9001.png").write_bytes(b"extra")
    r = _fetch(dest, None, commit, manifest)
    assert r.returncode == 1 and "1 untracked" in r.stderr


def test_fetch_refuses_bad_usage_and_unknown_sources(tiny_repo, tmp_path):
    src, commit, manifest = tiny_repo
    assert _fetch(tmp_path / "x", tmp_path / "nowhere", commit, manifest).returncode == 2
    assert _fetch(tmp_path / "y", src, "0" * 40, manifest).returncode == 2
    plain = tmp_path / "plain"
    plain.mkdir()
    r = _fetch(plain, src, commit, manifest)
    assert r.returncode == 2 and "not a git checkout" in r.stderr


def test_the_manifest_lists_the_pinned_repository():
    lines = (ROOT / "Resources" / "SampleData" / "aanlib-manifest.sha256").read_text().splitlines()
    assert len(lines) == 3242
    paths = [ln.split("  ", 1)[1] for ln in lines]
    assert all(len(ln.split("  ", 1)[0]) == 64 for ln in lines)
    for pt in aanlib.PAIR_TYPES.values():
        assert sum(p.startswith(f"{pt.folder}/MRI/") for p in paths) == sum(
            p.startswith(f"{pt.folder}/{pt.other}/") for p in paths)
    assert sum(p.startswith("CT-MRI/CT/") for p in paths) == 184
    assert f'commit="${{AANLIB_COMMIT:-{aanlib.COMMIT}}}"' in FETCH.read_text()

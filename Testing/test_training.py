"""Training of the CNN (issue #3): the loss, reproducibility, fine-tuning, the train command."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import make_phantom_2d  # noqa: E402

from MedFusionLib.errors import InvalidInputError  # noqa: E402
from MedFusionLib.nets import weights as W  # noqa: E402
from MedFusionLib.training import TrainConfig, fusion_loss, load_config, train  # noqa: E402
from MedFusionLib.training_data import SliceBank, folder_bank  # noqa: E402

TINY = dict(steps=40, batch_size=4, patch=32, lr=1e-2, warmup=2, channels=[4, 8],
            head_channels=4, log_every=10, identity_prob=0.1, rule_mix=0.0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine OpenMP threads that
    wait for each other make these runs ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_bank():
    """Two "modalities" of phantom slices: one bright-centred, one inverted inside the head."""
    a = np.stack([make_phantom_2d((48, 48), seed=s) for s in range(6)])
    head = a > 0.05
    b = np.where(head, 1.0 - a, 0.0).astype(np.float32) ** 2
    return SliceBank({"a": a, "b": b})


def _fixed_batch(bank, n=8):
    xa, xb = bank.sample(n, 32, np.random.default_rng(123))
    return torch.from_numpy(xa)[:, None], torch.from_numpy(xb)[:, None]


def _loss_of(net, batch):
    a, b = batch
    with torch.no_grad():
        fused, _ = net(a, b)
        return float(fusion_loss(fused, a, b)[0])


METRIC_MIX = {"qabf": 1.0, "vif": 2.0, "ssim": 1.0, "scd": 1.0, "sd": 1.0, "sf": 1.0, "en": 2.0,
              "intensity": 0.2}


def _two_sources():
    """A: the head phantom; B: a bright skull-like ring and a hot spot (different content)."""
    a = make_phantom_2d((64, 64))
    yy, xx = np.mgrid[:64, :64]
    b = 0.9 * (np.abs(np.hypot(yy - 32, xx - 32) - 26) < 3) + 0.7 * (np.hypot(yy - 40, xx - 24) < 5)
    return (torch.from_numpy(a)[None, None], torch.from_numpy(b.astype(np.float32))[None, None])


@pytest.mark.parametrize("weights", [None, METRIC_MIX])
def test_fusion_loss_prefers_a_good_fusion(weights):
    a, b = _two_sources()
    best = torch.maximum(a, b)
    good, _ = fusion_loss(best, a, b, weights=weights)
    only_a, _ = fusion_loss(a, a, b, weights=weights)
    blurred, _ = fusion_loss(torch.nn.functional.avg_pool2d(best, 5, 1, 2), a, b, weights=weights)
    assert float(good) < float(only_a) and float(good) < float(blurred)


def test_capped_rewards_cannot_be_won_by_noise():
    a, b = _two_sources()
    noise = torch.from_numpy((np.indices((64, 64)).sum(0) % 2).astype(np.float32))[None, None]
    best = torch.maximum(a, b)
    assert float(fusion_loss(best, a, b, weights=METRIC_MIX)[0]) < float(
        fusion_loss(noise, a, b, weights=METRIC_MIX)[0])
    _, terms = fusion_loss(noise, a, b, weights={"sd": 1.0, "sf": 1.0})
    assert terms["sd"] == 0.0 and terms["sf"] == 0.0  # capped: no reward beyond the cap
    _, terms = fusion_loss(2.0 * best, a, b, weights={"ssim": 1.0})
    _, clipped = fusion_loss((2.0 * best).clamp(0, 1), a, b, weights={"ssim": 1.0})
    assert terms["ssim"] == pytest.approx(clipped["ssim"])  # terms see the clipped output


def test_contrast_term_keeps_a_lesion_against_a_brighter_background():
    """A hot spot in B on a region where A is brighter: max(A, B) and the average flatten it;
    the contrast term prefers the fusion that keeps the spot standing out."""
    from MedFusionLib.nets.losses import contrast_fidelity

    yy, xx = np.mgrid[:64, :64]
    a = np.where(np.hypot(yy - 32, xx - 32) < 28, 0.6, 0.0).astype(np.float32)
    spot = (np.hypot(yy - 30, xx - 36) < 5).astype(np.float32)
    b = (0.3 * (a > 0) + 0.4 * spot).astype(np.float32)
    ta, tb = (torch.from_numpy(x)[None, None] for x in (a, b))
    # A's edges and B's spot, with the spot's full contrast (max(A, B) keeps 0.1 of its 0.4)
    kept = torch.from_numpy(a + 0.4 * spot)[None, None]
    flat = torch.maximum(ta, tb)
    average = 0.5 * (ta + tb)
    assert float(contrast_fidelity(ta, tb, kept)) < float(contrast_fidelity(ta, tb, flat))
    assert float(contrast_fidelity(ta, tb, kept)) < float(contrast_fidelity(ta, tb, average))
    # identical inputs: the input itself scores zero
    assert float(contrast_fidelity(ta, ta, ta)) == 0.0
    _, terms = fusion_loss(kept, ta, tb, weights={"contrast": 1.0})
    assert terms["contrast"] == pytest.approx(float(contrast_fidelity(ta, tb, kept)))


def test_fusion_loss_asks_identity_for_identical_inputs():
    a = torch.from_numpy(make_phantom_2d((64, 64)))[None, None]
    zero, terms = fusion_loss(a, a, a)
    assert float(zero) == 0.0 and terms["identity"] == 0.0
    brighter, terms = fusion_loss((a * 1.2).clamp(0, 1), a, a)
    assert float(brighter) > 0.01 and terms["identity"] > 0.01
    with pytest.raises(InvalidInputError, match="unknown loss term"):
        fusion_loss(a, a, a, weights={"sharpness": 1.0})


def test_tiny_training_run_reduces_the_loss(tiny_bank, tmp_path):
    from MedFusionLib.nets.fusionnet import FusionNet

    cfg = TrainConfig(**TINY)
    batch = _fixed_batch(tiny_bank)
    torch.manual_seed(cfg.seed)
    before = _loss_of(FusionNet(channels=(4, 8), head_channels=4).eval(), batch)
    result = train(cfg, tmp_path / "tiny.pt", bank=tiny_bank, device="cpu")
    after = _loss_of(W.load_model(str(tmp_path / "tiny.pt")), batch)
    assert after < 0.8 * before, (before, after)
    assert len(result.history) == 4 and result.history[-1]["step"] == 40
    reg = json.loads((tmp_path / "models.json").read_text())
    assert reg["default"] == "tiny"
    assert reg["models"]["tiny"]["sha256"] == W.sha256_of(tmp_path / "tiny.pt") == result.sha256


def test_training_is_reproducible(tiny_bank, tmp_path):
    cfg = dict(TINY, steps=5)
    r1 = train(TrainConfig(**cfg), tmp_path / "one" / "m.pt", bank=tiny_bank, device="cpu")
    r2 = train(TrainConfig(**cfg), tmp_path / "two" / "m.pt", bank=tiny_bank, device="cpu")
    r3 = train(TrainConfig(**dict(cfg, seed=1)), tmp_path / "three" / "m.pt", bank=tiny_bank,
               device="cpu")
    s1 = W.load_checkpoint(r1.path, sha256=r1.sha256)["state_dict"]
    s2 = W.load_checkpoint(r2.path, sha256=r2.sha256)["state_dict"]
    s3 = W.load_checkpoint(r3.path, sha256=r3.sha256)["state_dict"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def _write_pairs(folder, n=2, size=(40, 44)):
    import SimpleITK as sitk

    (folder / "A").mkdir(parents=True)
    (folder / "B").mkdir()
    for i in range(n):
        a = make_phantom_2d(size, seed=10 + i)
        b = np.where(a > 0.05, 1.0 - a, 0.0)
        sitk.WriteImage(sitk.GetImageFromArray((a * 255).astype(np.uint8)), str(folder / "A" / f"s{i}.png"))
        sitk.WriteImage(sitk.GetImageFromArray((b * 255).astype(np.uint8)), str(folder / "B" / f"s{i}.png"))


def test_fine_tune_on_a_folder_through_the_command_line(tmp_path, capsys):
    from MedFusionLib.cli import main

    data = tmp_path / "pairs"
    _write_pairs(data)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(dict(TINY, steps=3, patch=32)))
    out = tmp_path / "mine" / "tuned.pt"
    code = main(["train", "--config", str(cfg), "--out", str(out), "--init", "default",
                 "--data", str(data), "--device", "cpu", "--quiet"])
    assert code == 0
    assert "sha256=" in capsys.readouterr().out
    reg = json.loads((out.parent / "models.json").read_text())
    entry = reg["models"]["tuned"]
    assert entry["sha256"] == W.sha256_of(out)
    assert entry["training"]["init"].startswith(W.default_model())
    # the fine-tuned model keeps the shipped architecture and is usable by the cnn method
    shipped = W.load_model()
    tuned = W.load_model(str(out))
    assert tuned.channels == shipped.channels
    from MedFusionLib import fuse_arrays

    a = make_phantom_2d((40, 44))
    f = fuse_arrays(a, a[::-1].copy(), method="cnn", device="cpu", model=str(out))
    assert f.shape == a.shape and 0.0 <= f.min() and f.max() <= 1.0


def test_fine_tuning_a_plain_model_into_a_residual_one(tiny_bank, tmp_path):
    """The shipped model's second stage: ``residual: true`` with ``--init`` of a plain model keeps
    its encoder and weight head and starts from its pixel-level fusion."""
    from MedFusionLib.nets.fusionnet import FusionNet

    torch.manual_seed(0)
    plain = FusionNet(channels=(4, 8), head_channels=4).eval()
    res = plain.as_residual().eval()
    assert res.residual and not plain.residual
    for name, value in plain.state_dict().items():
        if not name.startswith("dec4."):
            assert torch.equal(res.state_dict()[name], value), name
    a, b = _fixed_batch(tiny_bank)
    with torch.no_grad():
        torch.testing.assert_close(res(a, b)[0], plain(a, b, level="pixel")[0])
        torch.testing.assert_close(res(a, b)[1], plain(a, b)[1])

    base = train(TrainConfig(**dict(TINY, steps=3)), tmp_path / "base.pt", bank=tiny_bank)
    result = train(TrainConfig(**dict(TINY, steps=3, residual=True)), tmp_path / "res.pt",
                   init=base.path, bank=tiny_bank)
    tuned = W.load_model(str(result.path))
    assert tuned.residual and tuned.channels == (4, 8)
    entry = json.loads((tmp_path / "models.json").read_text())["models"]["res"]
    assert entry["training"]["init"].endswith(", made residual")


def test_folder_bank_layout_errors(tmp_path):
    (tmp_path / "A").mkdir()
    with pytest.raises(InvalidInputError, match="A/ and B/"):
        folder_bank(tmp_path)
    (tmp_path / "B").mkdir()
    (tmp_path / "A" / "x.png").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="partner"):
        folder_bank(tmp_path)


def test_config_validation(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": 10, "epochs": 3}))
    with pytest.raises(InvalidInputError, match="epochs"):
        load_config(bad)
    bad.write_text(json.dumps({"patch": 30}))
    with pytest.raises(InvalidInputError, match="patch"):
        load_config(bad)
    for guard in ({"PSNR": 0.01}, {"VIF": 1.5}, {"VIF": "1%"}):
        bad.write_text(json.dumps({"val_guard": guard}))
        with pytest.raises(InvalidInputError, match="val_guard"):
            load_config(bad)
    with pytest.raises(InvalidInputError, match="not found"):
        load_config(tmp_path / "missing.json")
    with pytest.raises(InvalidInputError, match=r"\.pt"):
        train(TrainConfig(**TINY), tmp_path / "model.bin", bank=None)


def test_shipped_training_configs_are_valid():
    """The default model's two stages: a plain base model, then a residual fine-tune of it."""
    base = load_config(W.models_dir() / "fusionnet-base-train.json")
    stage2 = load_config(W.models_dir() / "fusionnet-train.json")
    assert base.steps >= 1000 and not base.residual
    assert stage2.residual and "contrast" in stage2.loss and "sf" not in stage2.loss
    for cfg in (base, stage2):
        assert cfg.holdout_z[0] < cfg.holdout_z[1] and cfg.holdout_z == base.holdout_z
    reg = W.read_registry()
    assert reg["models"][reg["default"]]["training"]["init"].startswith("fusionnet-base")

"""CNN fusion (issue #3): network shapes and properties, the shipped weights, the ``cnn`` method."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from MedFusionLib import fuse_arrays  # noqa: E402
from MedFusionLib.errors import UnknownOptionError  # noqa: E402
from MedFusionLib.methods import METHODS, default_method  # noqa: E402
from MedFusionLib.nets import weights as W  # noqa: E402
from MedFusionLib.nets.fusionnet import FEATURE_RULES, LEVELS, FusionNet  # noqa: E402

LEVEL_RULES = [(lv, r) for lv in LEVELS for r in FEATURE_RULES]


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "residual"])
def tiny_net(request):
    torch.manual_seed(0)
    return FusionNet(channels=(4, 8), head_channels=4, residual=request.param).eval()


@pytest.fixture(scope="module")
def mr_pd_pair():
    """The ITK BrainWeb T1 / proton-density slices in [0, 1] (181 x 217, odd width)."""
    import SimpleITK as sitk

    from MedFusionLib.datasets import itk_example
    from MedFusionLib.io import read_image

    a = sitk.GetArrayFromImage(read_image(itk_example("BrainT1Slice.png"))).astype(np.float32)
    b = sitk.GetArrayFromImage(read_image(itk_example("BrainProtonDensitySlice.png")))
    return a / 255.0, b.astype(np.float32) / 255.0


def _corr(x, y):
    return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])


# --- network ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (2, 1, 37, 53), (1, 1, 5, 7), (3, 1, 1, 1),
                                   (1, 1, 4, 130)])
@pytest.mark.parametrize("level, rule", [("feature", "learned"), ("pixel", "maximum"),
                                         ("feature", "l1")])
def test_forward_shapes_any_size(tiny_net, shape, level, rule):
    a, b = torch.rand(shape), torch.rand(shape)
    with torch.inference_mode():
        fused, share = tiny_net(a, b, level=level, rule=rule)
    assert fused.shape == shape and share.shape == shape
    assert torch.isfinite(fused).all()
    assert float(share.min()) >= 0.0 and float(share.max()) <= 1.0


def test_forward_rejects_bad_input(tiny_net):
    with pytest.raises(ValueError, match="same shape"):
        tiny_net(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match="rule"):
        tiny_net(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), rule="median")


def test_eval_mode_is_deterministic_and_batch_independent(tiny_net):
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(4, 1, 40, 36, generator=g), torch.rand(4, 1, 40, 36, generator=g)
    with torch.inference_mode():
        f1, w1 = tiny_net(a, b)
        f2, w2 = tiny_net(a, b)
        f3, _ = tiny_net(a[2:3], b[2:3])
    assert torch.equal(f1, f2) and torch.equal(w1, w2)
    torch.testing.assert_close(f3, f1[2:3], atol=1e-5, rtol=0)


def test_learned_weights_are_a_softmax_over_the_two_sources(tiny_net):
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 1, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g)
    with torch.inference_mode():
        fa1, fa2 = tiny_net.encode(a)
        fb1, fb2 = tiny_net.encode(b)
        scores = torch.stack([tiny_net._score(fa2, fb2), tiny_net._score(fb2, fa2)])
        soft = torch.softmax(scores, dim=0)
        w = torch.sigmoid(tiny_net.weight_logits(fa2, fb2))
        _, share_ab = tiny_net(a, b)
        _, share_ba = tiny_net(b, a)
    torch.testing.assert_close(soft.sum(0), torch.ones_like(w))
    torch.testing.assert_close(w, soft[0], atol=1e-6, rtol=0)
    # swapping the sources swaps the weights: w_a(a, b) + w_a(b, a) = 1
    torch.testing.assert_close(share_ab + share_ba, torch.ones_like(share_ab), atol=1e-5, rtol=0)


def test_pixel_level_applies_the_weight_map_to_the_pixels(tiny_net):
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(1, 1, 24, 24, generator=g), torch.rand(1, 1, 24, 24, generator=g)
    with torch.inference_mode():
        for rule in ("learned", "average", "l1"):
            fused, share = tiny_net(a, b, level="pixel", rule=rule)
            torch.testing.assert_close(fused, share * a + (1 - share) * b)
        fused, share = tiny_net(a, b, level="pixel", rule="maximum")
    torch.testing.assert_close(fused, torch.maximum(a, b))
    assert torch.equal(share, (a >= b).float())


def test_residual_net_adds_the_decoder_to_the_pixel_fusion():
    """A new residual net starts with a zero decoder output: it returns the rule's pixel fusion
    (so fusing a slice with itself returns the slice before any training)."""
    torch.manual_seed(0)
    net = FusionNet(channels=(4, 8), head_channels=4, residual=True).eval()
    assert not net.dec4.weight.any() and not net.dec4.bias.any()
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(2, 1, 20, 28, generator=g), torch.rand(2, 1, 20, 28, generator=g)
    with torch.inference_mode():
        for rule in ("learned", "average", "maximum", "addition"):
            feat, _ = net(a, b, rule=rule)
            pix, _ = net(a, b, rule=rule, level="pixel")
            torch.testing.assert_close(feat, pix)


# --- weights registry ---------------------------------------------------------------------------
def test_shipped_registry_lists_verified_weights():
    reg = W.read_registry()
    assert reg["default"] in reg["models"]
    for name, entry in reg["models"].items():
        path = W.models_dir() / entry["file"]
        assert path.is_file(), name
        assert W.sha256_of(path) == entry["sha256"], name
        assert path.stat().st_size < 4 * 2 ** 20  # "a few MB at most"


def test_wheel_installs_every_registered_model():
    """pyproject's data-files put the models where models_dir() looks after `pip install .`."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[1]
    data_files = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "data-files"]["share/medfusion/models"]
    reg = W.read_registry(root / "models")
    wanted = {"models/" + W.REGISTRY_NAME} | {"models/" + e["file"] for e in reg["models"].values()}
    assert wanted <= set(data_files)
    assert all((root / f).is_file() for f in data_files)


def test_models_dir_falls_back_to_the_installed_data_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDFUSION_MODELS_DIR", raising=False)
    assert W.models_dir() == W._BESIDE_PACKAGE  # source checkout: the repository's models/
    installed = tmp_path / "prefix" / "share" / "medfusion" / "models"
    shutil.copytree(W._BESIDE_PACKAGE, installed)
    monkeypatch.setattr(W, "_BESIDE_PACKAGE", tmp_path / "site-packages" / "models")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert W.models_dir() == installed
    W.clear_cache()
    try:
        assert W.model_entry("default")[0].parent == installed
    finally:
        W.clear_cache()
    shutil.rmtree(installed)  # nothing anywhere: the error names the package's own models/
    assert W.models_dir() == tmp_path / "site-packages" / "models"
    with pytest.raises(W.WeightsNotFoundError, match="models.json"):
        W.read_registry()


@pytest.fixture
def models_copy(tmp_path, monkeypatch):
    """A copy of the models folder, used as MEDFUSION_MODELS_DIR."""
    dst = tmp_path / "models"
    shutil.copytree(W.models_dir(), dst)
    monkeypatch.setenv("MEDFUSION_MODELS_DIR", str(dst))
    W.clear_cache()
    yield dst
    W.clear_cache()


def _default_file(folder):
    reg = W.read_registry(folder)
    return folder / reg["models"][reg["default"]]["file"]


def test_tampered_weights_are_rejected(models_copy):
    path = _default_file(models_copy)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(W.WeightsIntegrityError, match=path.name):
        W.load_model()
    with pytest.raises(W.WeightsIntegrityError, match="SHA-256"):
        fuse_arrays(np.zeros((8, 8), np.float32), np.ones((8, 8), np.float32), method="cnn",
                    device="cpu")


def test_truncated_and_missing_weights_are_rejected(models_copy):
    path = _default_file(models_copy)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(W.WeightsIntegrityError, match=path.name):
        W.load_model()
    path.unlink()
    with pytest.raises(W.WeightsNotFoundError, match=path.name):
        W.load_model()


def test_unknown_model_name_suggests(models_copy):
    name = W.default_model()
    with pytest.raises(UnknownOptionError, match="Did you mean"):
        W.load_model(name[:-1] + "x")


def test_unregistered_file_is_refused(models_copy, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    stray = other / "stray.pt"
    shutil.copy(_default_file(models_copy), stray)
    with pytest.raises(W.WeightsError):
        W.load_model(str(stray))


# --- the cnn method -----------------------------------------------------------------------------
def test_cnn_is_registered_and_default():
    info = METHODS["cnn"]
    assert info.needs_torch and info.supports_cuda and info.provides_weights
    assert {"level", "rule", "model", "enhance"} <= set(info.params)
    assert default_method() == "cnn"


def test_identity_fusing_a_slice_with_itself(mr_pd_pair):
    for img in mr_pd_pair:
        fused = fuse_arrays(img, img, method="cnn", device="cpu")
        err = np.abs(fused - img)
        psnr = 10 * np.log10(1.0 / float(np.mean(err ** 2)))
        assert psnr > 30.0, psnr
        assert float(err.mean()) < 0.02


def test_default_fusion_keeps_both_sources(mr_pd_pair):
    a, b = mr_pd_pair
    fused, wa = fuse_arrays(a, b, method="cnn", device="cpu", return_weights=True)
    assert fused.shape == a.shape and fused.dtype == np.float32
    assert 0.0 <= fused.min() and fused.max() <= 1.0
    assert 0.0 <= wa.min() and wa.max() <= 1.0
    # each source is clearly present, and the weight map uses both
    assert _corr(fused, a) > 0.5 and _corr(fused, b) > 0.5
    head = (a > 0.05) | (b > 0.05)
    assert 0.05 < float(wa[head].mean()) < 0.95
    again = fuse_arrays(a, b, method="cnn", device="cpu")
    assert np.array_equal(fused, again)


def test_empty_background_and_image_borders_stay_empty(mr_pd_pair):
    """Where both sources are black the fused slice is black, up to the image border: the
    decoder adds no pattern of its own (a model that drew stripes along the padded border, and
    scored a higher SF for it, was rejected)."""
    from scipy import ndimage

    a, b = (np.pad(x, ((20, 23), (20, 21))) for x in mr_pd_pair)  # odd sizes, black margins
    fused = fuse_arrays(a, b, method="cnn", device="cpu")
    far = ~ndimage.binary_dilation((a > 0.02) | (b > 0.02), iterations=6)
    assert far.sum() > 5000
    assert float(fused[far].max()) < 0.03, float(fused[far].max())
    for edge in (fused[:, :3], fused[:, -3:], fused[:3], fused[-3:]):
        assert float(edge.max()) < 0.03


def _checkerboard(x):
    """Mean |2 x 2 alternating-sign response|: the energy at the Nyquist frequency."""
    return float(np.abs(x[:-1, :-1] - x[1:, :-1] - x[:-1, 1:] + x[1:, 1:]).mean())


def test_no_checkerboard_at_the_skull_edge():
    """The default model adds no pixel-shuffle checkerboard: its Nyquist energy on an MR/CT slice
    stays near the sources' (default model 1.6 x the larger source; a model trained with an SF
    reward drew a checkerboard along the skull at 4.5 x and was rejected)."""
    from MedFusionLib.datasets import sample_volumes
    from MedFusionLib.normalize import normalize

    vols = sample_volumes()
    mr, ct = normalize(vols["mr_t1"], "MR")[0][92], normalize(vols["ct"], "CT")[0][92]
    fused = fuse_arrays(mr, ct, method="cnn", device="cpu")
    assert _checkerboard(fused) < 2.5 * max(_checkerboard(mr), _checkerboard(ct))


@pytest.mark.parametrize("level, rule", LEVEL_RULES)
def test_every_level_and_rule_gives_a_sensible_image(mr_pd_pair, level, rule):
    a, b = mr_pd_pair
    fused, wa = fuse_arrays(a, b, method="cnn", device="cpu", return_weights=True,
                            level=level, rule=rule)
    assert fused.shape == a.shape and np.all(np.isfinite(fused))
    assert 0.0 <= fused.min() and fused.max() <= 1.0
    assert 0.0 <= wa.min() and wa.max() <= 1.0
    # an image of the anatomy: bright head on a dark background, correlated with both sources
    head = (a > 0.05) | (b > 0.05)
    assert fused[head].mean() > 3 * max(fused[~head].mean(), 0.01)
    assert _corr(fused, a) > 0.4 and _corr(fused, b) > 0.4


def test_enhancement_sharpens(mr_pd_pair):
    from MedFusionLib.metrics import spatial_frequency

    a, b = mr_pd_pair
    plain = fuse_arrays(a, b, method="cnn", device="cpu")
    sharp = fuse_arrays(a, b, method="cnn", device="cpu", enhance=True)
    assert spatial_frequency(sharp, data_range=1.0) > 1.1 * spatial_frequency(plain, data_range=1.0)
    assert _corr(sharp, plain) > 0.95


def test_volume_through_the_driver_matches_slice_by_slice(mr_pd_pair):
    a, b = mr_pd_pair
    va = np.stack([a, a[::-1], a[:, ::-1]])
    vb = np.stack([b, b[::-1], b[:, ::-1]])
    vol = fuse_arrays(va, vb, method="cnn", device="cpu", axis=0, batch_size=2)
    one = fuse_arrays(va[1], vb[1], method="cnn", device="cpu")
    np.testing.assert_allclose(vol[1], one, atol=1e-5)


def test_bad_cnn_options_are_rejected(mr_pd_pair):
    a, b = mr_pd_pair
    with pytest.raises(UnknownOptionError, match="Did you mean .maximum."):
        fuse_arrays(a, b, method="cnn", device="cpu", rule="maximun")
    with pytest.raises(UnknownOptionError, match="level"):
        fuse_arrays(a, b, method="cnn", device="cpu", level="decision")


# --- CUDA ---------------------------------------------------------------------------------------
@pytest.mark.requires_gpu
def test_cuda_half_precision_matches_cpu(mr_pd_pair):
    a, b = mr_pd_pair
    cpu = fuse_arrays(a, b, method="cnn", device="cpu")
    gpu, wa = fuse_arrays(a, b, method="cnn", device="cuda", return_weights=True)
    assert float(np.abs(gpu - cpu).mean()) < 2e-3
    assert float(np.abs(gpu - cpu).max()) < 3e-2
    assert 0.0 <= wa.min() and wa.max() <= 1.0


def test_cuda_out_of_memory_falls_back_to_cpu(mr_pd_pair, monkeypatch):
    """A CUDA OOM surfaces as torch.cuda.OutOfMemoryError; the driver warns and goes on on the
    CPU. Simulated (also on machines without a GPU) by a model loader that runs out of memory."""
    import MedFusionLib.driver as driver

    a, b = mr_pd_pair
    calls = []
    original = W.load_model

    def fake(name=None, *, device="cpu", half=False, folder=None):
        calls.append(device)
        if str(device).startswith("cuda"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(name, device=device, half=half, folder=folder)

    expected = fuse_arrays(a, b, method="cnn", device="cpu")
    monkeypatch.setattr(W, "load_model", fake)
    monkeypatch.setattr(driver, "resolve_device", lambda device: "cuda")
    with pytest.warns(RuntimeWarning, match="out of memory"):
        out = fuse_arrays(a, b, method="cnn", device="cuda")
    assert calls == ["cuda", "cpu"]
    np.testing.assert_array_equal(out, expected)

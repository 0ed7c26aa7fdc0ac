"""Does the CNN's bf16 path meet issue #23's accuracy conditions? (prints the figures)

The conditions for choosing bf16 automatically: on the bundled and synthetic pairs, the fused
result differs from fp32 by at most 1 grey level (8-bit, ``round(255 x)``) on at least 99.9 % of
pixels, and every metric by at most 0.5 %. The pairs are :func:`bench.eval_cnn.validation_cases`
(ITK T1/PD, MNI T1 with the synthetic CT and PET, Colin27 T1 with a PET-like image, FDG- and
SPECT-like phantoms) and slices of ``bench/bench_study.py``'s CT/MR study when its cache exists.

Per group it prints the share of pixels within 1 grey level, the largest grey-level difference,
and per metric the relative difference of the group means (as the metrics are reported) and the
largest per-slice relative difference. Then the bundled 3D sample pairs (MNI T1 with the synthetic
CT and PET, registered once) are fused whole in both precisions and their volume metrics (what
``fuse --metrics`` reports) compared. The verdict line says whether ``auto`` may choose bf16
(:data:`MedFusionLib.nets.inference.BF16_AUTO`).

Usage::

    python bench/bf16_check.py [--groups G,...] [--study DIR] [--keys K,...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from eval_cnn import validation_cases  # noqa: E402
from MedFusionLib.driver import fuse_arrays  # noqa: E402
from MedFusionLib.methods.cnn import last_kernels  # noqa: E402
from MedFusionLib.metrics import ALL_KEYS, compute_metrics  # noqa: E402

GREY_SHARE = 0.999
METRIC_REL = 0.005


def study_cases(folder: Path, step: int = 40) -> list:
    """Axial slices of the bench study's CT and MR (MR resampled onto the CT grid, unregistered:
    the pair need not be aligned to compare two precisions)."""
    import SimpleITK as sitk

    from MedFusionLib.io import read_image
    from MedFusionLib.normalize import normalize

    ct_path, mr_path = folder / "ct.nii", folder / "mr.nii"
    if not (ct_path.is_file() and mr_path.is_file()):
        return []
    ct, mr = read_image(ct_path), read_image(mr_path)
    mr = sitk.Resample(mr, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    c, _ = normalize(ct, "CT")
    m, _ = normalize(mr, "MR")
    return [("study-ct-mr-512", c[z], m[z], z) for z in range(step, c.shape[0] - step, step)]


def volume_pairs(keys) -> bool:
    """The bundled 3D pairs through the pipeline in fp32 and bf16: grey levels and the volume
    metrics ``fuse --metrics`` reports (slow FMI keys left out, as there)."""
    from MedFusionLib.datasets import sample_pair
    from MedFusionLib.job import SLOW_VOLUME_KEYS, volume_metrics_for
    from MedFusionLib.pipeline import align_pair, fuse_aligned

    ok = True
    print("\n| bundled 3D pair | voxels within 1 grey level | max levels | worst volume metric |")
    print("|---|---|---|---|")
    vkeys = ",".join(k for k in keys if k not in SLOW_VOLUME_KEYS)
    for kind in ("ct-mr", "pet-mr"):
        fixed, moving, _ = sample_pair(kind)
        pair = align_pair(fixed, moving)
        res = {p: fuse_aligned(pair, method="cnn", precision=p) for p in ("fp32", "bf16")}
        f32, f16 = (np.asarray(sitk_array(r.fused), dtype=np.float64) for r in res.values())
        d = np.abs(np.rint(255 * f32) - np.rint(255 * f16))
        m = {p: volume_metrics_for(r, vkeys) for p, r in res.items()}
        worst = max(((k, abs(m["bf16"][k] - m["fp32"][k]) / max(abs(m["fp32"][k]), 1e-12))
                     for k in m["fp32"] if np.isfinite(m["fp32"][k])), key=lambda t: t[1])
        passed = (d <= 1).mean() >= GREY_SHARE and worst[1] <= METRIC_REL
        ok = ok and passed
        print(f"| MNI T1 + synthetic {kind.split('-')[0].upper()} | {100 * (d <= 1).mean():.3f} % | "
              f"{d.max():.0f} | {worst[0]} {100 * worst[1]:.2f} % |{'' if passed else ' FAILS'}")
    return ok


def sitk_array(image):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", default="", help="comma-separated groups (default: all)")
    ap.add_argument("--study", default="/tmp/medfusion-bench-study", help="bench_study cache")
    ap.add_argument("--keys", default="", help="metric keys (default: all)")
    args = ap.parse_args()
    from MedFusionLib.nets import inference

    if not inference.bf16_supported():
        print("this CPU has no native bf16 (AVX512-BF16 or AMX): nothing to check; auto = fp32")
        return 0
    groups = [g for g in args.groups.split(",") if g]
    cases = validation_cases(groups or None) + study_cases(Path(args.study))
    if groups:
        cases = [c for c in cases if c[0] in groups]
    keys = [k for k in args.keys.split(",") if k] or list(ALL_KEYS)
    per_group: dict = {}
    for group, a, b, z in cases:
        f32 = fuse_arrays(a, b, method="cnn", device="cpu", precision="fp32")
        f16 = fuse_arrays(a, b, method="cnn", device="cpu", precision="bf16")
        assert last_kernels() == "bf16 fast path"
        d = np.abs(np.rint(255 * f32.astype(np.float64)) - np.rint(255 * f16.astype(np.float64)))
        m32 = compute_metrics(a, b, f32, keys=keys, data_range=1.0)
        m16 = compute_metrics(a, b, f16, keys=keys, data_range=1.0)
        g = per_group.setdefault(group, {"within": 0, "pixels": 0, "max": 0.0, "m32": [], "m16": []})
        g["within"] += int((d <= 1).sum())
        g["pixels"] += d.size
        g["max"] = max(g["max"], float(d.max()))
        g["m32"].append(m32)
        g["m16"].append(m16)
        print(f"  {group} z={z}: {100 * (d <= 1).mean():.3f} % within 1 level, max {d.max():.0f}",
              flush=True)
    ok = True
    print("\n| group | slices | within 1 grey level | max levels | worst metric (group mean) | "
          "worst metric (one slice) |")
    print("|---|---|---|---|---|---|")
    for group, g in per_group.items():
        share = g["within"] / g["pixels"]
        worst_mean, worst_one = ("", 0.0), ("", 0.0)
        for k in keys:
            v32 = np.array([m[k] for m in g["m32"]], dtype=float)
            v16 = np.array([m[k] for m in g["m16"]], dtype=float)
            keep = np.isfinite(v32) & np.isfinite(v16)
            if not keep.any():
                continue
            mean32, mean16 = v32[keep].mean(), v16[keep].mean()
            rel = abs(mean16 - mean32) / max(abs(mean32), 1e-12)
            one = float(np.max(np.abs(v16[keep] - v32[keep]) / np.maximum(np.abs(v32[keep]), 1e-12)))
            worst_mean = max(worst_mean, (k, rel), key=lambda t: t[1])
            worst_one = max(worst_one, (k, one), key=lambda t: t[1])
        passed = share >= GREY_SHARE and worst_mean[1] <= METRIC_REL
        ok = ok and passed
        print(f"| {group} | {len(g['m32'])} | {100 * share:.3f} % | {g['max']:.0f} | "
              f"{worst_mean[0]} {100 * worst_mean[1]:.2f} % | {worst_one[0]} {100 * worst_one[1]:.2f} % |"
              f"{'' if passed else ' FAILS'}")
    ok = volume_pairs(keys) and ok
    print(f"\nverdict: bf16 {'meets' if ok else 'does NOT meet'} the conditions (>= "
          f"{100 * GREY_SHARE:.1f} % of pixels within 1 grey level, group-mean metrics within "
          f"{100 * METRIC_REL:.1f} %); BF16_AUTO is {inference.BF16_AUTO}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``medfusion demo``: register and fuse the bundled sample pairs, with a figure and metrics.

The sample pairs are the real MNI152 MR T1 with SYNTHETIC CT-like and PET-like volumes moved by
a known rigid transform (see :mod:`MedFusionLib.datasets`), so the demo also reports the
registration's target error against the truth.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..datasets import SAMPLE_KINDS, SYNTHETIC_NOTE, sample_pair
from ..figures import save_planes_figure
from ..io import write_image, write_transform
from ..methods import get_method
from ..colour import ColourFusionResult, fuse_colour
from ..pipeline import fuse_images
from ..progress import TextProgress, scaled
from ..outputs import write_json
from ..job import volume_metrics_for

NAME = "demo"
HELP = "fuse the bundled sample pairs (MR + synthetic CT/PET) and write images, a figure and metrics"

#: Metrics the demo reports: the literature's core set and the review's eight except FMI_pixel,
#: which costs about 1 s per slice (``medfusion metrics`` computes it on demand).
DEMO_METRICS = "EN,SD,SF,MI,SCD,VIF,Qabf,SSIM,FS,FF,M,FI"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="medfusion-demo", help="output folder (created; default ./medfusion-demo)")
    p.add_argument("--kind", default="all", choices=("all",) + SAMPLE_KINDS, help="which sample pair(s)")
    p.add_argument("--method", default=None, help="fusion method (default: cnn where available)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def target_registration_error(found: sitk.Transform, truth: sitk.Transform, reference: sitk.Image,
                              mask: np.ndarray) -> dict:
    """Distance (mm) between where ``found`` and ``truth`` send the voxels of ``mask`` (subsampled)."""
    idx = np.argwhere(mask)[:: max(1, int(mask.sum() // 2000))]
    d = []
    for z, y, x in idx:
        pt = reference.TransformIndexToPhysicalPoint([int(x), int(y), int(z)])
        d.append(np.linalg.norm(np.subtract(found.TransformPoint(pt), truth.TransformPoint(pt))))
    d = np.asarray(d)
    return {"mean_mm": float(d.mean()), "max_mm": float(d.max()), "points": int(d.size)}


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kinds = SAMPLE_KINDS if args.kind == "all" else (args.kind,)
    method = get_method(args.method).name if args.method else None
    bar = None if args.quiet else TextProgress(sys.stderr)
    t_all = time.perf_counter()
    for i, kind in enumerate(kinds):
        sub = scaled(bar, i / len(kinds), (i + 1) / len(kinds))
        t0 = time.perf_counter()
        fixed, moving, truth = sample_pair(kind)
        src = kind.split("-")[0]
        # PET is shown the nuclear-medicine way: its heat colours over the MR's detail
        fuse = fuse_colour if kind == "pet-mr" else fuse_images
        result = fuse(fixed, moving, method=method, registration="rigid", device=args.device,
                      return_weights=get_method(method).provides_weights if method else True,
                      progress=sub, fixed_name="MR T1 (MNI152)",
                      moving_name=f"{src.upper()} (synthetic)")
        brain = result.fixed01 > 0.05
        tre = target_registration_error(result.registration.transform, truth, fixed, brain)
        metrics = volume_metrics_for(result, DEMO_METRICS)
        files = {
            "fixed": write_image(fixed, out / "mr_t1.nii.gz"),
            "moving": write_image(moving, out / f"{src}_moved_synthetic.nii.gz"),
            "fused": write_image(result.fused, out / f"{kind}_fused.nii.gz"),
        }
        write_transform(result.registration.transform, out / f"{kind}_transform.tfm")
        files["transform"] = out / f"{kind}_transform.tfm"
        overlay = None
        fused = sitk.GetArrayFromImage(result.fused)
        panels = {"MR T1 (fixed)": result.fixed01,
                  f"{src.upper()} registered (synthetic)": result.moving01,
                  f"fused ({result.method})": fused}
        if isinstance(result, ColourFusionResult):
            files["colour"] = write_image(result.rgb, out / f"{kind}_fused_colour.nrrd")
            panels = {"MR T1 (fixed)": result.fixed01,
                      f"{src.upper()} registered ({result.colour_table}, synthetic)":
                          result.functional_rgb / 255.0,
                      f"fused ({result.method}), colour": sitk.GetArrayFromImage(result.rgb) / 255.0}
        if result.weights is not None:
            files["weights"] = write_image(result.weights, out / f"{kind}_weights.nii.gz")
            overlay = ("contribution overlay", fused, sitk.GetArrayFromImage(result.weights))
        files["figure"] = save_planes_figure(
            out / f"{kind}_demo.png", panels, overlay=overlay,
            title=f"MedFusion demo, {kind}: {SYNTHETIC_NOTE}")
        write_json({"note": SYNTHETIC_NOTE, "pair": kind, **result.summary(),
                    "registration_error_vs_truth": tre, "metrics": metrics,
                    "files": {k: str(v) for k, v in files.items()},
                    "seconds": time.perf_counter() - t0},
                   out / f"{kind}_metrics.json")
        print(f"{kind}: registration error {tre['mean_mm']:.2f} mm mean / {tre['max_mm']:.2f} mm max "
              f"(self-check: confidence {result.registration.confidence}); "
              f"fused with {result.method} in {result.timings['fuse']:.2f} s; "
              f"Qabf={metrics.get('Qabf', float('nan')):.3f} SSIM={metrics.get('SSIM', float('nan')):.3f} "
              f"-> {files['fused']}, {files['figure']}")
    print(f"demo finished in {time.perf_counter() - t_all:.1f} s; outputs in {out}/  ({SYNTHETIC_NOTE})")
    return 0

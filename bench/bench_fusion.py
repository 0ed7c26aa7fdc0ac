"""Benchmark: fusion throughput and peak memory per method, and registration time.

Prints, for every registered method, slices/s at 256x256 and 512x512 through the engine's driver
(``MedFusionLib.driver.fuse_arrays``) and the peak resident memory of a process that fused a
64-slice 256x256 volume; then the time of rigid registration for the 2D ITK slices and the 3D
sample pair. Each method runs in its own process so peak memory is its own.

    python bench/bench_fusion.py [--methods a,b] [--device cpu|cuda] [--no-registration]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np


def _one(method: str, device: str) -> dict:
    import torch  # noqa: F401  (import cost outside the timings, as in a real session)

    from MedFusionLib.driver import fuse_arrays

    rng = np.random.default_rng(0)
    out = {"method": method}
    for size, n in ((256, 64), (512, 16)):
        a = rng.random((n, size, size), dtype=np.float32)
        b = rng.random((n, size, size), dtype=np.float32)
        fuse_arrays(a[:2], b[:2], method=method, device=device)  # warm-up (model load, caches)
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            fuse_arrays(a, b, method=method, device=device)
            best = min(best, time.perf_counter() - t0)
        out[f"slices_per_s_{size}"] = n / best
        out[f"ms_per_slice_{size}"] = 1000 * best / n
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _registration() -> list[tuple[str, float, str]]:
    from MedFusionLib.datasets import itk_example, sample_pair
    from MedFusionLib.io import read_image
    from MedFusionLib.registration import register

    rows = []
    f = read_image(itk_example("BrainT1Slice.png"))
    m = read_image(itk_example("BrainProtonDensitySliceShifted13x17y.png"))
    t0 = time.perf_counter()
    r = register(f, m, mode="rigid")
    rows.append(("2D rigid, ITK T1/PD 181x217", time.perf_counter() - t0, f"{r.iterations} it"))
    fixed, moving, _ = sample_pair("ct-mr")
    for mode in ("rigid", "affine"):
        t0 = time.perf_counter()
        r = register(fixed, moving, mode=mode)
        rows.append((f"3D {mode}, MR 197x233x189 + CT 164x194x76", time.perf_counter() - t0,
                     f"{r.iterations} it"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-registration", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.device)))
        return 0
    from MedFusionLib.methods import list_methods

    methods = args.methods.split(",") if args.methods else list_methods()
    print(f"# fusion throughput on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU(s), device={args.device}")
    print(f"{'method':10s} {'256² slices/s':>14s} {'ms/slice':>9s} {'512² slices/s':>14s} "
          f"{'ms/slice':>9s} {'peak RSS MB':>12s}")
    for m in methods:
        proc = subprocess.run([sys.executable, __file__, "--one", m, "--device", args.device],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{m:10s} FAILED: {proc.stderr.strip().splitlines()[-1] if proc.stderr else '?'}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{m:10s} {r['slices_per_s_256']:14.1f} {r['ms_per_slice_256']:9.2f} "
              f"{r['slices_per_s_512']:14.1f} {r['ms_per_slice_512']:9.2f} {r['peak_rss_mb']:12.0f}")
    if not args.no_registration:
        print("# registration (seconds)")
        for label, secs, note in _registration():
            print(f"{label:45s} {secs:7.2f} s  ({note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

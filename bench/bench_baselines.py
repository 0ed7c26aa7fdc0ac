"""Speed of every registered fusion method, in milliseconds per 256 x 256 slice.

For each method (default parameters) and each available device, fuses batches of head-like
256 x 256 slices (batch size: the method's ``slices_per_batch``, capped by ``--slices``) and
prints the median and best time per slice over ``--repeats`` runs, plus the process CPU time per
slice (less sensitive than wall time to other jobs on a shared machine). NSST with the PA-PCNN
rule is timed separately (``--papcnn``) since it is orders of magnitude slower.

Targets (issue #4) on the 2-core CPU: PCA, MSVD, DWT, WPD < 10 ms; SWT < 30 ms; NSCT, NSST
< 100 ms per slice.

Usage::

    python bench/bench_baselines.py [--size 256] [--slices 16] [--repeats 5]
                                    [--methods dwt,nsst] [--device cpu|cuda|all] [--papcnn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MedFusionLib.devices import cuda_available  # noqa: E402
from MedFusionLib.methods import get_method, list_methods  # noqa: E402

TARGETS_MS = {"pca": 10, "msvd": 10, "dwt": 10, "wpd": 10, "swt": 30, "nsct": 100, "nsst": 100}


def _slices(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two batches of head-like slices in [0, 1]: ellipses, blobs and texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    head = ((x / 0.42) ** 2 + (y / 0.46) ** 2 < 1).astype(np.float32)
    a = np.empty((n, size, size), np.float32)
    b = np.empty_like(a)
    for i in range(n):
        cx, cy = rng.uniform(-0.2, 0.2, 2)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.004).astype(np.float32)
        a[i] = np.clip(0.5 * head + 0.4 * blob + 0.05 * rng.standard_normal((size, size)) * head, 0, 1)
        ring = (np.abs(np.hypot(x, y * 1.1) - 0.4) < 0.03).astype(np.float32)
        b[i] = np.clip(0.3 * head + 0.7 * ring + 0.3 * blob[::-1] + 0.02 * rng.standard_normal((size, size)), 0, 1)
    return a, b


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_method(name: str, a: np.ndarray, b: np.ndarray, *, device: str, repeats: int,
                **params) -> tuple[float, float, float]:
    """(median wall, best wall, median CPU) milliseconds per slice."""
    func = get_method(name).func
    n = a.shape[0]
    func(a[:1], b[:1], device=device, **params)  # warm-up: caches, filter banks, CUDA context
    walls, cpus = [], []
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        func(a, b, device=device, **params)
        _sync(device)
        walls.append((time.perf_counter() - t0) * 1e3 / n)
        cpus.append((time.process_time() - c0) * 1e3 / n)
    return statistics.median(walls), min(walls), statistics.median(cpus)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="slice side in pixels")
    parser.add_argument("--slices", type=int, default=16, help="largest batch per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default="", help="comma-separated names (default: all)")
    parser.add_argument("--device", default="all", choices=("cpu", "cuda", "all"))
    parser.add_argument("--papcnn", action="store_true", help="also time NSST with rule='papcnn'")
    args = parser.parse_args(argv)

    names = [m.strip() for m in args.methods.split(",") if m.strip()] or list_methods()
    devices = ["cpu"] + (["cuda"] if cuda_available() else [])
    if args.device != "all":
        devices = [args.device]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {args.size}x{args.size} slices, {args.repeats} repeats, {os.cpu_count()} CPUs, "
          f"load average {load:.1f}")
    print(f"{'method':<10} {'device':<6} {'batch':>5} {'median ms':>10} {'best ms':>8} "
          f"{'cpu ms':>8} {'target':>7}")
    for device in devices:
        for name in names:
            info = get_method(name)
            if not info.available or (device != "cpu" and not info.supports_cuda):
                continue
            batch = max(1, min(args.slices, info.slices_per_batch))
            a, b = _slices(batch, args.size)
            try:
                med, best, cpu = time_method(name, a, b, device=device, repeats=args.repeats)
            except Exception as exc:  # a method that cannot run here (e.g. missing model file)
                print(f"{name:<10} {device:<6} {'':>5} failed: {type(exc).__name__}: {exc}")
                continue
            target = TARGETS_MS.get(name)
            mark = "" if target is None else (f"<{target}" + (" ok" if best < target else " SLOW"))
            print(f"{name:<10} {device:<6} {batch:>5} {med:>10.2f} {best:>8.2f} {cpu:>8.2f} "
                  f"{mark:>7}")
        if args.papcnn and ("nsst" in names) and (device == "cpu" or cuda_available()):
            a, b = _slices(1, args.size)
            med, best, cpu = time_method("nsst", a, b, device=device, repeats=1, rule="papcnn")
            print(f"{'nsst-pcnn':<10} {device:<6} {1:>5} {med:>10.1f} {best:>8.1f} {cpu:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

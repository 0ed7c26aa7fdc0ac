"""Time the fusion metrics on one 256 x 256 slice (prints figures; targets: all < 2 s, review < 0.2 s).

Usage: ``python bench/bench_metrics.py [--repeat 3] [--per-metric]``.

Two slices are timed: a CT/MR-like pair from the sample volumes (mid axial MNI slice padded with
black to 256 x 256, fused by the average), and a worst case with texture everywhere (no flat
windows, so FMI cannot skip any). The figure reported is the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from MedFusionLib.metrics import ALL_KEYS, REVIEW_KEYS, compute_metrics


def sample_slice() -> tuple[np.ndarray, np.ndarray]:
    """Mid axial CT-like and MR slices of the sample volumes, in [0, 1], padded to 256 x 256."""
    from MedFusionLib.datasets import sample_volumes
    from MedFusionLib.normalize import normalize

    vols = sample_volumes()
    out = []
    for key, mod in (("ct", "CT"), ("mr_t1", "MR")):
        arr, _ = normalize(vols[key], mod)
        sl = arr[arr.shape[0] // 2][:256, :256]
        pad = [(0, 256 - sl.shape[0]), (0, 256 - sl.shape[1])]
        out.append(np.pad(sl, pad).astype(np.float64))
    return out[0], out[1]


def textured_slice(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    a = 0.5 + 0.3 * np.sin(xx / 6.0) * np.cos(yy / 9.0) + 0.1 * rng.random((256, 256))
    b = 0.5 + 0.3 * np.cos(xx / 11.0 + yy / 7.0) + 0.1 * rng.random((256, 256))
    return np.clip(a, 0, 1), np.clip(b, 0, 1)


def best_time(func, repeat: int) -> tuple[float, float]:
    """Best wall-clock and best CPU (process) time of ``repeat`` calls, in seconds.

    The CPU time is what the call would take on an otherwise idle core (the metrics run on one
    thread); the wall time includes waiting for a core on a busy machine.
    """
    wall = cpu = float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        func()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--per-metric", action="store_true", help="also time each metric alone")
    args = parser.parse_args()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPU(s), load average {load:.1f} (other work on the machine slows "
          "these figures)")
    cases = {}
    try:
        cases["CT/MR sample slice"] = sample_slice()
    except Exception as exc:  # sample data not set up: say so and time the synthetic case only
        print(f"(sample volumes unavailable: {exc})")
    cases["textured worst case"] = textured_slice()

    for name, (a, b) in cases.items():
        f = (a + b) / 2
        w_all, c_all = best_time(lambda: compute_metrics(a, b, f, keys=ALL_KEYS), args.repeat)
        w_rev, c_rev = best_time(lambda: compute_metrics(a, b, f, keys=REVIEW_KEYS), args.repeat)
        print(f"{name}, 256 x 256:")
        print(f"  all {len(ALL_KEYS)} metrics: {w_all:.3f} s wall, {c_all:.3f} s CPU (target < 2 s)")
        print(f"  review's eight: {w_rev:.3f} s wall, {c_rev:.3f} s CPU (target < 0.2 s)")
        if args.per_metric:
            times = {k: best_time(lambda k=k: compute_metrics(a, b, f, keys=[k]), args.repeat)
                     for k in ALL_KEYS}
            for k, (w, c) in sorted(times.items(), key=lambda kv: -kv[1][1]):
                print(f"    {k:10s} {1000 * w:8.1f} ms wall {1000 * c:8.1f} ms CPU")


if __name__ == "__main__":
    main()

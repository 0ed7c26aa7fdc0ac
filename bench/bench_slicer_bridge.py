"""MedFusion on Slicer nodes (slicer-core, real MRML, headless): what the user waits for, and
whether Slicer stays usable while the fusion runs. Prints figures; asserts nothing.

For a 512 x 512 x 400 CT-like volume and a 512 x 512 x 94 MR-like volume (oblique, the MR's
slices 4 mm thick, misaligned by a rigid transform), rigid registration and the default method:

- ``Apply returns after``: ``fuse_nodes_async`` -- checking the nodes, copying the inputs out of
  the scene and starting the child -- until it returns. As in the panel, which starts a fusion
  process in standby when it is opened and after each run (``slicer_bridge.prewarm``), a
  process waits with the engine and PyTorch imported (``--no-standby``: started at Apply);
- ``longest main-thread stall``: the longest single call on the main thread while the work runs
  (each timer poll; the event loop is free between them), target <= 100 ms; the write-back of the
  result into the scene, at the end, is printed on its own line;
- ``Cancel``: from ``task.cancel()`` until the child process is gone (a second run);
- ``total``: background runs against blocking ``fuse_nodes`` runs in this process, alternated
  (``--repeats`` of each after the first background run; the machine's noise on two cores is
  +-10 %), medians compared (target <= 1.1x);
- peak memory of this process and of the child (VmHWM).

Usage::

    .venv/bin/python bench/bench_slicer_bridge.py            # 512 x 512 x 400 (a few minutes)
    .venv/bin/python bench/bench_slicer_bridge.py --quick    # 256 x 256 x 100
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import slicer

import MedFusionLib
from MedFusionLib import slicer_bridge as sb

POLL_S = 0.1  # the panel's timer interval (slicer_bridge.task.POLL_INTERVAL_MS)


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _anatomy(x, y, z):
    """A head in RAS mm: skull, brain with texture, a ventricle; returns (CT HU, MR signal)."""
    r = np.sqrt((x / 70) ** 2 + (y / 88) ** 2 + (z / 75) ** 2)
    brain = r < 0.9
    skull = (r >= 0.9) & (r < 1.0)
    texture = np.sin(x / 6.0) * np.cos(y / 7.0) * np.sin(z / 9.0)
    ventricle = ((x - 8) / 12) ** 2 + (y / 25) ** 2 + ((z - 10) / 14) ** 2 < 1
    ct = np.where(brain, 35 + 8 * texture, -1000.0)
    ct = np.where(skull, 1200.0, np.where(ventricle, 5.0, ct))
    mr = np.where(brain, 420 + 120 * texture, 0.0)
    mr = np.where(skull, 60.0, np.where(ventricle, 120.0, mr))
    return ct, mr


def _volume(shape, matrix, which):
    """``_anatomy`` sampled on a grid, slice by slice (memory: one slice of coordinates)."""
    out = np.empty(shape, np.int16 if which == 0 else np.float32)
    j, i = np.meshgrid(np.arange(shape[1], dtype=np.float32), np.arange(shape[2], dtype=np.float32),
                       indexing="ij")
    for k in range(shape[0]):
        ras = matrix[:3, :3] @ np.stack([i.ravel(), j.ravel(), np.full(i.size, k, np.float32)]) \
            + matrix[:3, 3:4]
        out[k] = _anatomy(*ras)[which].reshape(shape[1:])
    return out


def _pair(ct_shape, mr_slices):
    """A CT-like (HU, int16) and an MR-like (float32) head on different grids; the MR oblique,
    4 mm slices, and turned by 6 degrees and moved by 5 mm against the CT (rigid truth)."""
    ct_matrix = np.diag([0.5, 0.5, 0.6, 1.0])
    ct_matrix[:3, 3] = -0.5 * np.array([0.5 * ct_shape[2], 0.5 * ct_shape[1], 0.6 * ct_shape[0]])
    mr_shape = (mr_slices,) + ct_shape[1:]
    angle = np.deg2rad(6.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    mr_matrix = np.eye(4)
    mr_matrix[:3, :3] = rotation @ np.diag([0.5, 0.5, 4.0])
    mr_matrix[:3, 3] = -rotation @ (0.5 * np.array([0.5 * mr_shape[2], 0.5 * mr_shape[1], 4.0 * mr_shape[0]]))
    mr_matrix[:3, 3] += (5.0, -3.0, 2.0)
    ct = _volume(ct_shape, ct_matrix, 0)
    # the MR sees the head moved: its voxel at RAS p shows the anatomy at p - (2, 1, -1) mm
    shifted = mr_matrix.copy()
    shifted[:3, 3] -= (2.0, 1.0, -1.0)
    mr = _volume(mr_shape, shifted, 1)
    mr += np.random.default_rng(0).normal(0, 4, mr.shape).astype(np.float32)
    return ct, ct_matrix, mr, mr_matrix


def _run_background(fixed, moving, options):
    """One background run driven as the panel's timer drives it; returns the figures."""
    stalls = []
    t0 = time.perf_counter()
    task = sb.fuse_nodes_async(fixed, moving, None, **options)
    returned = time.perf_counter() - t0
    child_peak = None
    write_back = 0.0
    while True:
        time.sleep(POLL_S)
        if task.run.pid:
            child_peak = _vm_hwm_mb(task.run.pid) or child_peak
        s0 = time.perf_counter()
        finished = task.poll()
        took = time.perf_counter() - s0
        if finished:
            write_back = took  # the poll that takes in the result writes it into the scene
        else:
            stalls.append(took)
        if finished:
            break
    total = time.perf_counter() - t0
    if task.state != "done":
        raise SystemExit(f"the background run {task.state}: {task.error}")
    return {"returned": returned, "stall": max(stalls), "polls": len(stalls),
            "write_back": write_back, "total": total, "child_peak": child_peak, "task": task}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 x 256 x 100 instead of 512 x 512 x 400")
    parser.add_argument("--method", default=None, help="fusion method (default: the engine's)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="blocking and background runs, alternated, after the first (default 2)")
    parser.add_argument("--no-standby", action="store_true",
                        help="start the fusion process at Apply (no process waiting in standby)")
    args = parser.parse_args()
    ct_shape, mr_slices = ((100, 256, 256), 24) if args.quick else ((400, 512, 512), 94)
    method = args.method or MedFusionLib.default_method()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; method {method}, rigid")

    standby = not args.no_standby
    if standby:
        sb.prewarm(method)  # the panel opens while the study loads
    scene, _ = sb.headless_scene()
    ct, ct_matrix, mr, mr_matrix = _pair(ct_shape, mr_slices)
    fixed = slicer.util.addVolumeFromArray(ct, ijkToRAS=ct_matrix, name="CT")
    moving = slicer.util.addVolumeFromArray(mr, ijkToRAS=mr_matrix, name="MR")
    del ct, mr
    print(f"CT {ct_shape[2]}x{ct_shape[1]}x{ct_shape[0]}, MR {ct_shape[2]}x{ct_shape[1]}x{mr_slices}; "
          f"fusion process {'waiting in standby' if standby else 'started at Apply'}")
    options = dict(method=method, registration="rigid", device="cpu", fixed_modality="CT",
                   moving_modality="MR")

    run = _run_background(fixed, moving, options)
    print(f"Apply returns after            {1000 * run['returned']:8.0f} ms")
    print(f"longest main-thread stall: {1000 * run['stall']:.0f} ms  "
          f"(over {run['polls']} timer polls while the work ran)")
    print(f"write-back into the scene      {1000 * run['write_back']:8.0f} ms  (once, at the end)")

    # Cancel: a second run, stopped once the child works
    if standby:
        sb.prewarm(method)
        time.sleep(3)  # the user reads the result before the next run
    task = sb.fuse_nodes_async(fixed, moving, None, **options)
    while not (task.run.child_alive() and task.fraction > 0.05):
        time.sleep(0.05)
        task.poll()
    t0 = time.perf_counter()
    task.cancel()
    while task.run.child_alive():
        time.sleep(0.005)
    print(f"Cancel -> child gone           {1000 * (time.perf_counter() - t0):8.0f} ms")

    background, blocking = [run["total"]], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sb.fuse_nodes(fixed, moving, None, **options)
        blocking.append(time.perf_counter() - t0)
        if standby:
            sb.prewarm(method)
            time.sleep(3)
        background.append(_run_background(fixed, moving, options)["total"])
    print("background total               " + ", ".join(f"{t:.1f}" for t in background) + " s")
    print("blocking fuse_nodes            " + ", ".join(f"{t:.1f}" for t in blocking) + " s")
    if blocking:
        print(f"background / blocking          {np.median(background) / np.median(blocking):8.2f}x  "
              f"(medians)")
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = f"{run['child_peak']:.0f} MB" if run["child_peak"] else "n/a"
    print(f"peak memory: this process {parent:.0f} MB (includes the blocking run), child {child}")
    print(f"registration: {run['task'].result.fusion.registration.confidence} confidence")


if __name__ == "__main__":
    main()

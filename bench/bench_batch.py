"""Benchmark: cohort throughput of ``medfusion batch`` in process and on Dask, Dask's overhead per
row, and the peak memory of one large 3D pair job.

1. Rows/s of ``medfusion batch`` (a real subprocess, as a user runs it; cluster start-up
   included) in process, ``--workers 1`` and ``--workers 2``, on 2D pairs (256x256 PNG, ``dwt``)
   and on 3D pairs with rigid registration (synthetic 64x128x128 MR-like volumes moved by a known
   rigid transform, ``dwt``).
2. Dask overhead per row: the same tiny rows (32x32, ``average``) through ``pair_task`` in
   process and on a one-worker ``LocalCluster`` already started; the difference per row.
3. Peak resident memory (``VmHWM``) of one pair job on a 512x512x400 float32 pair with the
   CNN, ``--register none`` and ``rigid``, each in its own process so the peak is its own.
4. The metrics stage of a 40x256x256 pair (every default metric) under glibc's malloc as a
   Dask worker gets it: the default (as in process), Dask's nanny setting
   ``MALLOC_TRIM_THRESHOLD_=65536``, and that setting corrected as ``pair_task`` does (wall,
   user and system seconds, minor page faults) -- why ``--workers`` was slower (issue #25).

    python bench/bench_batch.py [--rows2d 24] [--rows3d 4] [--workers 1,2]
                                [--memory-shape 400,512,512] [--skip-memory] [--skip-throughput]
                                [--skip-malloc]

Timings on a shared machine are disturbed by its other load: the script prints ``uptime``'s
load average with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _phantom(shape, seed):
    """A head-like volume (or slice) in [0, 1]: ellipsoid, inner blobs, texture."""
    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r = sum(((g - n / 2) / (0.42 * n)) ** 2 for g, n in zip(grids, shape))
    img = 0.5 * (r <= 1)
    for k in range(4):
        c = [rng.uniform(0.35, 0.65) * n for n in shape]
        rad = rng.uniform(0.05, 0.12) * min(shape)
        blob = sum((g - ci) ** 2 for g, ci in zip(grids, c)) <= rad ** 2
        img = np.where(blob, rng.uniform(0.2, 1.0), img)
    img = img + 0.03 * rng.standard_normal(shape) * (r <= 1)
    return np.clip(img, 0, 1).astype(np.float32)


def _make_cohort(folder: Path, rows2d: int, rows3d: int) -> tuple[Path, Path]:
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    lines2d, lines3d = ["fixed,moving,output"], ["fixed,moving,output"]
    for i in range(rows2d):
        p = _phantom((256, 256), i)
        sitk.WriteImage(sitk.GetImageFromArray((p * 255).astype(np.uint8)), str(folder / f"a{i}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(((1 - p) * 200).astype(np.uint8)), str(folder / f"b{i}.png"))
        lines2d.append(f"a{i}.png,b{i}.png,out2d/f{i}.png")
    for i in range(rows3d):
        p = _phantom((64, 128, 128), 100 + i)
        fixed = sitk.GetImageFromArray(p * 1000)
        fixed.SetSpacing((1.5, 1.5, 2.0))
        tx = sitk.Euler3DTransform((96.0, 96.0, 64.0), 0.02, -0.03, 0.05, (2.0, -3.0, 1.5))
        moving = sitk.Resample(sitk.GetImageFromArray((1 - p) * 800 * (p > 0.05)), fixed, tx)
        moving.CopyInformation(fixed)
        sitk.WriteImage(fixed, str(folder / f"v{i}_mr.nii.gz"))
        sitk.WriteImage(sitk.Cast(moving, sitk.sitkFloat32), str(folder / f"v{i}_t2.nii.gz"))
        lines3d.append(f"v{i}_mr.nii.gz,v{i}_t2.nii.gz,out3d/f{i}.nii.gz")
    for name, lines in (("m2d.csv", lines2d), ("m3d.csv", lines3d)):
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder / "m2d.csv", folder / "m3d.csv"


def _batch(manifest: Path, extra: list[str], out: str) -> tuple[float, list[dict]]:
    folder = manifest.parent
    target = folder / out
    if target.exists():
        for f in target.iterdir():
            f.unlink()
    target.mkdir(exist_ok=True)
    results = folder / "results.jsonl"
    results.unlink(missing_ok=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "MedFusionLib.cli", "batch", str(manifest), "--quiet",
                        "--method", "dwt", "--results", str(results), *extra], env=_env(),
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"batch {extra} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return wall, [json.loads(ln) for ln in results.read_text().splitlines()]


def throughput(rows2d: int, rows3d: int, workers: list[int]) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\n## batch throughput ({cores} cores; wall time includes start-up and, for Dask, the "
          "cluster)")
    print(f"{'pairs':<28} {'mode':<14} {'rows':>5} {'wall s':>8} {'rows/s':>8} {'job s/row':>10}  (median seconds of one row's job)")
    with tempfile.TemporaryDirectory(prefix="medfusion-bench-") as tmp:
        m2d, m3d = _make_cohort(Path(tmp), rows2d, rows3d)
        for label, manifest, out, extra in (
                ("2D 256x256 PNG, dwt", m2d, "out2d", []),
                ("3D 64x128x128, rigid, dwt", m3d, "out3d", ["--register", "rigid"])):
            for mode in [None] + workers:
                where = [] if mode is None else ["--workers", str(mode)]
                wall, recs = _batch(manifest, extra + where, out)
                job = float(np.median([r["seconds"] for r in recs]))
                name = "in process" if mode is None else f"--workers {mode}"
                print(f"{label:<28} {name:<14} {len(recs):>5} {wall:>8.1f} {len(recs) / wall:>8.2f} "
                      f"{job:>10.3f}", flush=True)
    print(f"({_load()})")


def _overhead_child(rows: int) -> dict:
    import SimpleITK as sitk
    from distributed import Client, LocalCluster

    from MedFusionLib.executors import pair_task
    from MedFusionLib.job import PairSpec

    with tempfile.TemporaryDirectory(prefix="medfusion-bench-") as tmp:
        d = Path(tmp)
        p = _phantom((32, 32), 0)
        sitk.WriteImage(sitk.GetImageFromArray((p * 255).astype(np.uint8)), str(d / "a.png"))
        sitk.WriteImage(sitk.GetImageFromArray(((1 - p) * 200).astype(np.uint8)), str(d / "b.png"))
        specs = [PairSpec(str(d / "a.png"), str(d / "b.png"), str(d / f"o{i}.png"),
                          fusion={"method": "average"}) for i in range(rows)]
        pair_task(specs[0])  # imports and caches outside the timing
        t0 = time.perf_counter()
        for s in specs:
            pair_task(s)
        here = time.perf_counter() - t0
        t0 = time.perf_counter()
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            start = time.perf_counter() - t0
            client.submit(pair_task, specs[0], pure=False).result()  # worker imports
            t0 = time.perf_counter()
            futs = [client.submit(pair_task, s, pure=False) for s in specs]
            client.gather(futs)
            dask_s = time.perf_counter() - t0
    return {"rows": rows, "in_process_s": here, "dask_s": dask_s, "cluster_start_s": start}


def overhead(rows: int) -> None:
    r = subprocess.run([sys.executable, __file__, "--_overhead", str(rows)], env=_env(),
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"Dask overhead: failed: {r.stderr[-1500:]}")
        return
    d = json.loads(r.stdout.strip().splitlines()[-1])
    per = (d["dask_s"] - d["in_process_s"]) / d["rows"]
    print(f"\n## Dask overhead per row ({d['rows']} rows of 32x32 'average', one worker, one "
          "thread)")
    print(f"in process {1000 * d['in_process_s'] / d['rows']:.1f} ms/row, on the worker "
          f"{1000 * d['dask_s'] / d['rows']:.1f} ms/row: overhead {1000 * per:.1f} ms per row; "
          f"LocalCluster start {d['cluster_start_s']:.1f} s ({_load()})")


def _peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM, which starts afresh at exec (ru_maxrss would
    also count the memory of the parent that forked it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


def _memory_child(method: str, registration: str, fixed: str, moving: str, out: str) -> dict:
    from MedFusionLib.job import PairSpec, run_pair

    rec = run_pair(PairSpec(fixed, moving, out, fusion={"method": method,
                                                          "registration": registration,
                                                          "device": "cpu"}))
    return {"peak_gb": _peak_rss_bytes() / 1e9,
            "seconds": rec.seconds, "stages": {k: round(v, 1) for k, v in rec.stages.items()}}


def memory(shape: tuple[int, int, int]) -> None:
    import SimpleITK as sitk

    gb = np.prod(shape) * 4 / 1e9
    print(f"\n## peak memory of one pair job, {shape[2]}x{shape[1]}x{shape[0]} float32 pair "
          f"({gb:.3f} GB per volume), each in its own process")
    with tempfile.TemporaryDirectory(prefix="medfusion-bench-") as tmp:
        d = Path(tmp)
        p = _phantom(shape, 7)
        img = sitk.GetImageFromArray(p * 1000)
        img.SetSpacing((0.5, 0.5, 0.6))
        sitk.WriteImage(img, str(d / "fixed.nii"))
        tx = sitk.Euler3DTransform(img.TransformContinuousIndexToPhysicalPoint(
            [s / 2 for s in img.GetSize()]), 0.0, 0.0, 0.03, (1.0, -1.5, 0.5))
        moved = sitk.Resample(sitk.GetImageFromArray((1 - p) * 600 * (p > 0.05)), img, tx)
        sitk.WriteImage(sitk.Cast(moved, sitk.sitkFloat32), str(d / "moving.nii"))
        del p, img, moved
        for method, reg in (("cnn", "none"), ("cnn", "rigid")):
            m = _child(f"{method} --register {reg}", ["--_memory", method, reg,
                                                     str(d / "fixed.nii"), str(d / "moving.nii"),
                                                     str(d / "fused.nii")])
            if m is None:
                continue
            print(f"{method:<6} --register {reg:<6} peak RSS {m['peak_gb']:.2f} GB "
                  f"({m['peak_gb'] / gb:.1f} volumes), {m['seconds']:.0f} s, stages {m['stages']}",
                  flush=True)
    print(f"({_load()})")


def _child(label: str, args: list[str], env: dict | None = None) -> dict | None:
    """Run this script with ``args`` in a child process; its last line of output as JSON, or
    None (the failure printed under ``label``)."""
    r = subprocess.run([sys.executable, __file__, *args], env=env or _env(), capture_output=True,
                       text=True)
    if r.returncode != 0:
        print(f"{label}: failed: {r.stderr[-1500:]}")
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def _malloc_child(correct: bool) -> dict:
    from MedFusionLib.executors import _undo_malloc_trim
    from MedFusionLib.job import SLOW_VOLUME_KEYS
    from MedFusionLib.metrics import ALL_KEYS, volume_metrics

    if correct:
        _undo_malloc_trim()
    shape = (40, 256, 256)
    a, b = _phantom(shape, 0), _phantom(shape, 1)
    f = (a + b) / 2
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    volume_metrics(a, b, f, axis=0, keys=[k for k in ALL_KEYS if k not in SLOW_VOLUME_KEYS],
                   data_range=1.0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": time.perf_counter() - t0, "user": r1.ru_utime - r0.ru_utime,
            "sys": r1.ru_stime - r0.ru_stime, "faults": r1.ru_minflt - r0.ru_minflt}


def malloc_settings() -> None:
    print("\n## metrics stage of a 40x256x256 pair under a Dask worker's malloc settings "
          "(each in its own process)")
    for label, trim, correct in (("glibc default (in process, --workers now)", None, False),
                                 ("MALLOC_TRIM_THRESHOLD_=65536 (Dask's default)", "65536", False),
                                 ("the same, corrected by pair_task", "65536", True)):
        env = _env()
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
        if trim:
            env["MALLOC_TRIM_THRESHOLD_"] = trim
        m = _child(label, ["--_malloc", str(int(correct))], env)
        if m is None:
            continue
        print(f"{label:<48} wall {m['wall']:5.1f} s, user {m['user']:5.1f} s, "
              f"sys {m['sys']:5.1f} s, {m['faults']:>9,d} minor page faults", flush=True)
    print(f"({_load()})")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_malloc":
        print(json.dumps(_malloc_child(sys.argv[2] == "1")))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--_overhead":
        print(json.dumps(_overhead_child(int(sys.argv[2]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--_memory":
        print(json.dumps(_memory_child(*sys.argv[2:7])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows2d", type=int, default=24)
    ap.add_argument("--rows3d", type=int, default=4)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--overhead-rows", type=int, default=200)
    ap.add_argument("--memory-shape", default="400,512,512", help="z,y,x of the memory pair")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-malloc", action="store_true")
    args = ap.parse_args()
    print(f"# bench_batch ({_load()})")
    if not args.skip_throughput:
        throughput(args.rows2d, args.rows3d, [int(w) for w in args.workers.split(",") if w])
        overhead(args.overhead_rows)
    if not args.skip_memory:
        memory(tuple(int(v) for v in args.memory_shape.split(",")))
    if not args.skip_malloc:
        malloc_settings()


if __name__ == "__main__":
    main()

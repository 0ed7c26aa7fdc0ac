"""A real-sized study through ``medfusion fuse``: 512 x 512 x 400 CT + 512 x 512 x 94 MR (issue #23).

Builds once (into ``--cache``, default ``/tmp/medfusion-bench-study``) a SYNTHETIC study pair from
the bundled data: the sample CT with neck, spine, shoulders and couch
(:func:`MedFusionLib.registration.cases.ct_with_neck_and_couch`) on a 512 x 512 x 400 grid of
0.45 x 0.45 x 0.8 mm, and a T2-like MR from the MNI152 tissue maps, moved by a known rigid
transform, on a 512 x 512 x 94 grid of 0.45 x 0.45 x 2 mm; optionally (``--pairs pet-mr``) a
PET-like volume on the CT's grid (as a PET/CT console exports it). Each is written as a classic
DICOM series (one file per slice, 16-bit with rescale) and as uncompressed NIfTI.

Then, in a fresh child process per run (so peak memory is the job's own), it runs the pair job
that ``medfusion fuse FIXED MOVING -o OUT`` runs (:func:`MedFusionLib.job.run_pair`, default CNN,
rigid registration) and prints per stage the wall and CPU seconds (CPU = all threads of the
process), slices/s, the peak resident memory, the CPU features found and which CNN kernels ran.
Stages are timed by wrapping the functions the job calls (reading, normalisation, registration,
resampling, fusion with the torch import and model load, writing); nothing else changes.

It also prints the write times of the fused volume as ``.nii``, ``.nrrd`` and ``.nii.gz``
(verified writes, :func:`MedFusionLib.io.write_image`), the CNN alone at 512^2 and 256^2 (slices/s
through the method, fp32 and, where the CPU has it, bf16), and, for scale, an IFCNN-shaped network
(random weights; Zhang et al., Information Fusion 54:99-118, 2020: conv 7x7 3->64, conv 3x3
64->64 per source, fusion, two 3x3 convolutions back to one channel) at 256^2.

Targets (issue #23, 2 cores, quiet machine): CNN >= 40 slices/s at 512^2 and >= 250 at 256^2;
400-file DICOM read <= 3 s; normalise <= 1 s; registration <= 6 s; .nii/.nrrd <= 1 s,
.nii.gz <= 5 s; DICOM -> .nii.gz end to end <= 20 s; peak memory <= 2.8 GB. Timings are only
comparable at similar load: ``uptime`` is printed before and after.

Usage::

    python bench/bench_study.py [--cache DIR] [--runs dicom-niigz,nifti-nii] [--pairs ct-mr,pet-mr]
                                [--threads N] [--no-cnn] [--seconds S]
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
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

#: Bump when the data the builder makes changes (a cache of another version is rebuilt).
DATA_VERSION = 1
CT_GRID = ((512, 512, 400), (0.45, 0.45, 0.8))
MR_GRID = ((512, 512, 94), (0.45, 0.45, 2.0))
RUNS = {"dicom-niigz": ("dicom", ".nii.gz"), "dicom-nii": ("dicom", ".nii"),
        "nifti-nii": ("nifti", ".nii"), "nifti-niigz": ("nifti", ".nii.gz")}
STAGES = ("read", "normalise", "register", "resample", "torch import", "model load", "fuse",
          "write")


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


# ------------------------------------------------------------------------------------------
# The study (built once, cached)


def build_study(cache: Path, pairs: list[str]) -> dict:
    """Paths of the study's series and NIfTI files in ``cache``, built when missing."""
    from bench_dicom import write_series
    from bench_registration import _on_grid

    from MedFusionLib.datasets import sample_volumes
    from MedFusionLib.functional_phantoms import mni_tissue_maps
    from MedFusionLib.registration import cases

    stamp = cache / "version.json"
    have = json.loads(stamp.read_text()) if stamp.is_file() else {}
    paths = {k: {"dicom": cache / f"{k}-dicom", "nifti": cache / f"{k}.nii"}
             for k in ("ct", "mr", "pet")}
    if have.get("version") == DATA_VERSION and set(pairs) <= set(have.get("pairs", [])):
        return paths
    pairs = sorted(set(pairs) | {"ct-mr"} | (set(have.get("pairs", []))
                                            if have.get("version") == DATA_VERSION else set()))
    want = {"version": DATA_VERSION, "pairs": pairs}
    print(f"building the study in {cache} (once) ...", flush=True)
    t0 = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    vols = sample_volumes()
    truth = cases.rigid((-9, 7, -15), (-15, 12, -10))
    maps = mni_tissue_maps()
    t2 = sitk.GetImageFromArray((1000 * maps.csf + 600 * maps.gm + 350 * maps.wm).astype(np.float32))
    t2.CopyInformation(vols["mr_t1"])
    images = {
        "ct": (_on_grid(cases.ct_with_neck_and_couch(vols["ct"]), *CT_GRID, -1000.0), "CT"),
        "mr": (_on_grid(cases.moved_copy(t2, truth, margin_mm=40), *MR_GRID, 0.0), "MR"),
    }
    if "pet-mr" in pairs:
        pet = sitk.Resample(vols["pet"], images["ct"][0], sitk.Transform(), sitk.sitkLinear, 0.0,
                            sitk.sitkFloat32)
        images["pet"] = (pet, "PT")
    for key, (img, modality) in images.items():
        arr = sitk.GetArrayFromImage(img)
        if modality == "CT":
            stored, slope, intercept, extra = np.clip(np.rint(arr), -1024, 3071).astype(np.int16), 1.0, 0.0, {}
        else:  # MR in its own units, PET in Bq/mL (SUV x 5000): 16-bit with a slope
            scale = 5000.0 if modality == "PT" else 1.0
            slope = float(max(arr.max(), 1e-6)) * scale / 65000.0
            stored = np.clip(np.rint(arr * scale / slope), 0, 65535).astype(np.uint16)
            intercept, extra = 0.0, ({"Units": "BQML"} if modality == "PT" else {})
        folder = paths[key]["dicom"]
        folder.mkdir(exist_ok=True)
        for f in folder.glob("*.dcm"):
            f.unlink()
        write_series(folder, stored, modality=modality, spacing=img.GetSpacing(),
                     origin=img.GetOrigin(), direction=img.GetDirection(), slope=slope,
                     intercept=intercept, extra=extra)
        real = sitk.GetImageFromArray(stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
                                      if modality != "CT" else stored)
        real.CopyInformation(img)
        sitk.WriteImage(real, str(paths[key]["nifti"]))
    stamp.write_text(json.dumps(want))
    print(f"built in {time.perf_counter() - t0:.0f} s", flush=True)
    return paths


# ------------------------------------------------------------------------------------------
# One run, in a child process


class _Stages:
    """Wall and CPU seconds per stage, from wrappers around the functions the job calls."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.captured: dict[str, object] = {}

    def add(self, stage, wall, cpu):
        self.wall[stage] = self.wall.get(stage, 0.0) + wall
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu

    def wrap(self, module, name: str, stage: str, before=None, capture: str | None = None):
        """Replace ``module.name`` (and every MedFusionLib module's binding of the same function)
        by a timed wrapper."""
        original = getattr(module, name)

        def timed(*args, **kwargs):
            if before is not None:
                before()
            if capture:
                self.captured[capture] = args[0]
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - t0, time.process_time() - c0)

        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith("MedFusionLib") and \
                    getattr(mod, name, None) is original:
                setattr(mod, name, timed)
        return original


def _cpu_features() -> dict:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    found = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "?") if Path("/proc/cpuinfo").exists() else "?"
    return {"model": model, "flags": found}


def _kernels() -> str:
    """Which CNN kernels ran, as the engine reports it (older code: the reference forward)."""
    try:
        from MedFusionLib.methods.cnn import last_kernels
    except ImportError:
        return "fp32 FusionNet.forward"
    return last_kernels()


def child(args) -> None:
    from MedFusionLib import devices, job, pipeline
    from MedFusionLib import io as mio
    from MedFusionLib.nets import weights

    stages = _Stages()
    stages.wrap(devices, "cuda_available", "torch import")  # its first call imports torch
    stages.wrap(job, "read_sources", "read")
    stages.wrap(pipeline, "resolve_modality", "normalise")
    stages.wrap(pipeline, "normalize", "normalise")
    stages.wrap(pipeline, "register", "register")
    stages.wrap(pipeline, "resample_to", "resample")
    stages.wrap(pipeline, "fuse_arrays", "fuse")
    stages.wrap(weights, "load_model", "model load")
    write_image = stages.wrap(mio, "write_image", "write", capture="fused")
    spec = job.PairSpec(fixed=args.fixed, moving=args.moving, output=args.output)
    _apply_threads(args.threads)  # as medfusion's main does
    t0, c0 = time.perf_counter(), time.process_time()
    record = job.run_pair(spec)
    total_wall, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out = {"wall": stages.wall, "cpu": stages.cpu, "total_wall": total_wall, "total_cpu": total_cpu,
           "peak_rss_mb": peak, "record_stages": record.stages, "kernels": _kernels(),
           "registration": {k: record.registration.get(k) for k in ("mode", "converged", "confidence")},
           "size_bytes": Path(args.output).stat().st_size}
    fused = stages.captured.get("fused")
    writes = {}
    if fused is not None and not args.no_writes:
        folder = Path(tempfile.mkdtemp(prefix="bench-study-write-", dir=Path(args.output).parent))
        for ext in (".nii", ".nrrd", ".nii.gz"):
            p = folder / f"fused{ext}"
            t0, c0 = time.perf_counter(), time.process_time()
            write_image(fused, p)
            writes[ext] = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                           "bytes": p.stat().st_size}
            p.unlink()
        folder.rmdir()
    out["writes"] = writes
    print("RESULT " + json.dumps(out), flush=True)


def _apply_threads(n: int | None) -> None:
    """Threads for this process as ``medfusion``'s main sets them (issue #23); older code: ``n``
    for torch and ITK when given, else their defaults."""
    try:
        from MedFusionLib import threads
    except ImportError:
        if n:
            import torch

            torch.set_num_threads(n)
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
        return
    threads.apply_threads(n)


# ------------------------------------------------------------------------------------------
# The CNN alone


def cnn_rates(seconds: float, threads: int | None) -> list[dict]:
    """slices/s of the ``cnn`` method at 512^2 and 256^2 (driver batch sizes), per precision."""
    _apply_threads(threads)  # before torch starts its OpenMP runtime, as medfusion's main
    import torch

    from bench_cnn import _slices
    from MedFusionLib.driver import batch_size_for
    from MedFusionLib.methods import get_method

    info = get_method("cnn")
    precisions = ["fp32"]
    try:
        from MedFusionLib.nets import inference

        if inference.bf16_supported():
            precisions.append("bf16")
    except ImportError:
        inference = None
    rows = []
    for size in (512, 256):
        bs = batch_size_for(info.slices_per_batch, size, size)
        a, b = _slices(bs, size)
        for prec in precisions:
            params = {} if inference is None else {"precision": prec}
            info.func(a, b, **params)  # warm-up: model load, kernel selection
            n, t0, c0 = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - t0 < seconds:
                info.func(a, b, **params)
                n += bs
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append({"size": size, "precision": prec, "slices_per_s": n / wall,
                         "cpu_per_slice_ms": 1000 * cpu / n, "batch": bs,
                         "kernels": _kernels(), "threads": torch.get_num_threads()})
    # an IFCNN-shaped network (random weights) at 256^2 for scale
    torch.manual_seed(0)
    conv1, conv2 = torch.nn.Conv2d(3, 64, 7, padding=3), torch.nn.Conv2d(64, 64, 3, padding=1)
    conv3, conv4 = torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.Conv2d(64, 1, 1)

    def ifcnn(x, y):
        fx, fy = conv2(torch.relu(conv1(x))), conv2(torch.relu(conv1(y)))
        return conv4(torch.relu(conv3(torch.maximum(fx, fy))))

    x = torch.rand(4, 3, 256, 256)
    with torch.inference_mode():
        ifcnn(x, x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            ifcnn(x, x)
            n += 4
    flops = 2 * 256 * 256 * (2 * (3 * 64 * 49 + 64 * 64 * 9) + 64 * 64 * 9 + 64)
    rows.append({"size": 256, "precision": "fp32", "slices_per_s": n / (time.perf_counter() - t0),
                 "kernels": f"IFCNN-shaped reference ({flops / 1e9:.1f} GFLOP/slice, random weights)",
                 "batch": 4, "threads": torch.get_num_threads()})
    return rows


# ------------------------------------------------------------------------------------------
# Printing


def _print_run(name: str, res: dict, n_slices: int) -> None:
    print(f"\n== {name}: end to end {res['total_wall']:.1f} s wall, {res['total_cpu']:.1f} s CPU, "
          f"peak RSS {res['peak_rss_mb'] / 1024:.2f} GB, output {res['size_bytes'] / 1e6:.0f} MB")
    print(f"   registration {res['registration']}; CNN kernels: {res['kernels']}")
    print("| stage | wall s | CPU s | note |")
    print("|---|---|---|---|")
    for stage in STAGES:
        if stage not in res["wall"]:
            continue
        wall, cpu = res["wall"][stage], res["cpu"][stage]
        note = ""
        if stage == "fuse":
            own = wall - res["wall"].get("model load", 0.0)
            note = f"{n_slices / own:.1f} slices/s without the model load"
        print(f"| {stage} | {wall:.2f} | {cpu:.2f} | {note} |")
    timed = sum(v for k, v in res["wall"].items() if k != "model load")
    print(f"| (rest of the job) | {res['total_wall'] - timed:.2f} | | |")
    for ext, w in res.get("writes", {}).items():
        print(f"   write {ext}: {w['wall']:.2f} s wall, {w['cpu']:.2f} s CPU, {w['bytes'] / 1e6:.0f} MB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="/tmp/medfusion-bench-study", help="folder of the study")
    ap.add_argument("--runs", default="dicom-niigz,nifti-nii", help=f"of {','.join(RUNS)}")
    ap.add_argument("--pairs", default="ct-mr", help="ct-mr and/or pet-mr")
    ap.add_argument("--threads", type=int, default=None, help="threads for torch/ITK (default: the engine's choice)")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per CNN rate (default 4)")
    ap.add_argument("--no-cnn", action="store_true", help="skip the CNN-alone rates")
    ap.add_argument("--no-writes", action="store_true", help="skip the extra write timings")
    ap.add_argument("--child", nargs=3, metavar=("FIXED", "MOVING", "OUTPUT"), help=argparse.SUPPRESS)
    ap.add_argument("--cnn-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.fixed, args.moving, args.output = args.child
        child(args)
        return 0
    if args.cnn_child:
        print("RESULT " + json.dumps(cnn_rates(args.seconds, args.threads)), flush=True)
        return 0

    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    cache = Path(args.cache)
    paths = build_study(cache, pairs)
    print(f"uptime before: {_uptime()}")
    feats = _cpu_features()
    print(f"CPU: {feats['model']}, {len(os.sched_getaffinity(0))} usable cores; features: "
          f"{' '.join(feats['flags'])}")
    common = [sys.executable, str(Path(__file__).resolve())] + (
        ["--threads", str(args.threads)] if args.threads else []) + (
        ["--no-writes"] if args.no_writes else [])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for pair in pairs:
        fixed_key = {"ct-mr": "ct", "pet-mr": "pet"}[pair]
        for run in [r.strip() for r in args.runs.split(",") if r.strip()]:
            kind, ext = RUNS[run]
            out = Path(tempfile.mkdtemp(prefix="bench-study-", dir=cache)) / f"fused{ext}"
            proc = subprocess.run(common + ["--child", str(paths[fixed_key][kind]),
                                            str(paths["mr"][kind]), str(out)],
                                  capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"\n== {pair} {run}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}")
                continue
            _print_run(f"{pair}, {kind} -> {ext} (uptime {os.getloadavg()[0]:.2f})",
                       json.loads(lines[-1][7:]), CT_GRID[0][2])
            out.unlink(missing_ok=True)
            out.parent.rmdir()
    if not args.no_cnn:
        proc = subprocess.run(common + ["--cnn-child", "--seconds", str(args.seconds)],
                              capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"\n== CNN alone: FAILED\n{proc.stderr[-3000:]}")
        else:
            print("\n== CNN alone (the cnn method on the driver's batches)")
            print("| slice | precision | slices/s | Mpixel/s | CPU ms/slice | threads | kernels |")
            print("|---|---|---|---|---|---|---|")
            for r in json.loads(lines[-1][7:]):
                cpu = f"{r['cpu_per_slice_ms']:.1f}" if "cpu_per_slice_ms" in r else ""
                print(f"| {r['size']}^2 | {r['precision']} | {r['slices_per_s']:.1f} | "
                      f"{r['slices_per_s'] * r['size'] ** 2 / 1e6:.2f} | {cpu} | {r['threads']} | "
                      f"{r['kernels']} |")
    print(f"\nuptime after: {_uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

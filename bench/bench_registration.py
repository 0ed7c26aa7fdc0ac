"""Benchmark: registration capture range, accuracy and speed.

Pairs built from the shipped data (3D, 1 mm): MNI T1 against the synthetic CT and PET, the
Colin27 T1 (a different subject) against a T2-like contrast from its tissue classes (when
``make data`` fetched it), a brain-only MR against a CT with neck, shoulders and couch, and a CT
against an MR of anisotropic oblique 0.5 x 0.5 x 5 mm slices. Success: mean target error over
brain points < 0.5 mm.

1. Orientations: each of the 24 axis-aligned orientations (90/180 degree turns about each axis
   and their compositions) with a seeded small offset (+-8 degrees, +-15 mm), per pair.
2. Random moves: a seeded set of angles uniform in +-45 degrees about each axis and shifts up to
   90 mm (``--moves`` per pair, default 40), per pair.
   Both print per pair: success rate, mean / max TRE, CPU seconds, and whether every failure
   was flagged low-confidence.
3. ``--bands``: rotation band x translation band -> success rate, mean / max TRE, seconds, and
   how often the self-check's confidence agreed (``--per-cell`` transforms per cell).
4. Speed: rigid and affine registration of a 256^3 1 mm MR pair (T1 against a T2-like contrast)
   and of a 512 x 512 x 400 CT (with neck and couch) against an MR, global search included.

Times are of :func:`MedFusionLib.registration.register` on the normalised images (what
:func:`MedFusionLib.pipeline.align_pair` passes it): wall-clock seconds and the CPU seconds the
process used (registration runs ITK on one thread, so on an idle machine wall time is close to
the CPU time). The machine may be shared: the load average is printed with the figures.

    python bench/bench_registration.py [--moves N] [--pairs A,B] [--bands [--per-cell N]]
                                       [--seed S] [--no-orientations] [--no-moves] [--no-speed]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MedFusionLib.datasets import data_dir, sample_volumes  # noqa: E402
from MedFusionLib.io import copy_geometry  # noqa: E402
from MedFusionLib.normalize import normalize  # noqa: E402
from MedFusionLib.registration import cases, register  # noqa: E402
from MedFusionLib.registration.search import axis_aligned_orientations  # noqa: E402

ROTATION_BANDS = ((0, 10), (10, 20), (20, 30), (30, 45), (45, 60), (60, 90))
TRANSLATION_BANDS = ((0, 25), (25, 50), (50, 90))
SUCCESS_MM = 0.5
OBLIQUE = sitk.VersorTransform((0.2, 0.1, 0.9), np.radians(12)).GetMatrix()


def _norm(img, modality):
    arr, _ = normalize(img, modality)
    return copy_geometry(arr, img)


def _draw(rng, rot_band, shift_band) -> sitk.Euler3DTransform:
    """Angles about each axis with the largest |angle| inside ``rot_band`` (deg), a translation of
    random direction with its length inside ``shift_band`` (mm)."""
    angles = rng.uniform(-rot_band[1], rot_band[1], 3)
    k = rng.integers(3)
    angles[k] = np.sign(rng.standard_normal()) * rng.uniform(*rot_band)
    angles = np.clip(angles, -rot_band[1], rot_band[1])
    d = rng.standard_normal(3)
    return cases.rigid(angles, d / np.linalg.norm(d) * rng.uniform(*shift_band))


def _pairs(vols):
    """name -> function(truth) -> (fixed, moving), and the brain points of each fixed frame."""
    mr, ct, pet = vols["mr_t1"], vols["ct"], vols["pet"]
    neck = cases.ct_with_neck_and_couch(ct)
    brain_mr = cases.brain_only(mr)
    pairs = {
        "MR T1 / CT": lambda t: (_norm(mr, "MR"), _norm(cases.moved_copy(ct, t, spacing=(0.9, 0.9, 2.0)), "CT")),
        "MR T1 / PET": lambda t: (_norm(mr, "MR"), _norm(cases.moved_copy(pet, t, spacing=(2.0, 2.0, 2.0)), "PET")),
        "brain-only MR / CT+neck+couch": lambda t: (_norm(brain_mr, "MR"),
                                                   _norm(cases.moved_copy(neck, t, spacing=(0.9, 0.9, 2.0)), "CT")),
        "CT / MR 0.5x0.5x5 oblique": lambda t: (_norm(ct, "CT"), _norm(cases.moved_copy(
            mr, t, spacing=(0.5, 0.5, 5.0), direction=OBLIQUE), "MR")),
    }
    colin = data_dir() / "mricron" / "ch2bet.nii.gz"
    points = {k: cases.brain_points(mr, step=199) for k in pairs}
    if colin.is_file():
        t1, t2 = cases.colin_t1_t2(colin)
        pairs["Colin27 T1 / T2-like"] = lambda t: (_norm(t1, "MR"), _norm(cases.moved_copy(
            t2, t, spacing=(1.0, 1.0, 3.0)), "MR"))
        points["Colin27 T1 / T2-like"] = cases.brain_points(t1, step=199)
    else:
        print(f"(Colin27 not found at {colin}: run `make data` to add the Colin27 pair)")
    return pairs, points


def capture(pairs, points, per_cell: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    print(f"\n== capture range: {len(pairs)} pairs x {len(ROTATION_BANDS) * len(TRANSLATION_BANDS)} "
          f"cells x {per_cell} = {len(pairs) * len(ROTATION_BANDS) * len(TRANSLATION_BANDS) * per_cell} seeded transforms (seed {seed})")
    print(f"{'pair':32s} {'angles (deg)':>22s} {'shift (mm)':>22s} {'TRE mean/max':>13s} {'s':>5s} "
          f"{'CPU s':>5s} confidence")
    for rb in ROTATION_BANDS:
        for tb in TRANSLATION_BANDS:
            for name, make in pairs.items():
                for _ in range(per_cell):
                    truth = _draw(rng, rb, tb)
                    fixed, moving = make(truth)
                    t0, c0 = time.perf_counter(), time.process_time()
                    r = register(fixed, moving, mode="rigid")
                    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
                    mean, worst = cases.tre(r.transform, truth, points[name])
                    rows.append((rb, tb, name, mean, worst, sec, r.confidence, cpu))
                    ang = np.degrees(truth.GetParameters()[:3])
                    print(f"{name:32s} {np.array2string(ang, precision=1):>22s} "
                          f"{np.array2string(np.asarray(truth.GetTranslation()), precision=1):>22s} "
                          f"{mean:6.2f}/{worst:5.2f} {sec:5.1f} {cpu:5.1f} {r.confidence}"
                          + ("" if r.converged else f" ({r.confidence_reason})"), flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print("| max angle (deg) | translation (mm) | n | success (TRE < 0.5 mm) | mean TRE | max TRE | "
          "s mean (max) | CPU s mean | confidence agrees |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rb in ROTATION_BANDS:
        for tb in TRANSLATION_BANDS:
            cell = [r for r in rows if r[0] == rb and r[1] == tb]
            ok = [r[3] < SUCCESS_MM for r in cell]
            agree = [(r[3] < SUCCESS_MM) == (r[6] == "high") for r in cell]
            print(f"| {rb[0]}-{rb[1]} | {tb[0]}-{tb[1]} | {len(cell)} | {100 * np.mean(ok):.0f}% | "
                  f"{np.mean([r[3] for r in cell]):.2f} | {max(r[4] for r in cell):.2f} | "
                  f"{np.mean([r[5] for r in cell]):.1f} ({max(r[5] for r in cell):.1f}) | "
                  f"{np.mean([r[7] for r in cell]):.1f} | {sum(agree)}/{len(cell)} |")
    ok = [r[3] < SUCCESS_MM for r in rows]
    print(f"| all | all | {len(rows)} | {100 * np.mean(ok):.0f}% | {np.mean([r[3] for r in rows]):.2f} | "
          f"{max(r[4] for r in rows):.2f} | {np.mean([r[5] for r in rows]):.1f} "
          f"({max(r[5] for r in rows):.1f}) | {np.mean([r[7] for r in rows]):.1f} | "
          f"{sum((r[3] < SUCCESS_MM) == (r[6] == 'high') for r in rows)}/{len(rows)} |")


def _run(make, truth, points):
    """Register the pair ``make(truth)``: (mean TRE, max TRE, CPU s, result)."""
    fixed, moving = make(truth)
    c0 = time.process_time()
    r = register(fixed, moving, mode="rigid")
    cpu = time.process_time() - c0
    mean, worst = cases.tre(r.transform, truth, points)
    return mean, worst, cpu, r


def _summary(title: str, rows: dict) -> None:
    """A table per pair: n, success rate, mean/max TRE, CPU s, failures flagged, high but wrong."""
    print(f"\n{title} (load average {' '.join(f'{v:.2f}' for v in os.getloadavg())})")
    print("| pair | n | success (TRE < 0.5 mm) | mean TRE (mm) | max TRE (mm) | CPU s mean (max) | "
          "failures flagged low | high confidence but wrong |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rr in rows.items():
        ok = [r[0] < SUCCESS_MM for r in rr]
        fails = [r for r in rr if r[0] >= SUCCESS_MM]
        flagged = sum(r[3] == "low" for r in fails)
        wrong_high = sum(r[3] == "high" for r in fails)
        print(f"| {name} | {len(rr)} | {100 * np.mean(ok):.0f}% | {np.mean([r[0] for r in rr]):.2f} | "
              f"{max(r[1] for r in rr):.2f} | {np.mean([r[2] for r in rr]):.1f} "
              f"({max(r[2] for r in rr):.1f}) | {flagged}/{len(fails)} | {wrong_high} |", flush=True)


def _sweep(pairs, points, seed: int, moves, title: str) -> None:
    """Register every pair under each move ``moves(rng)`` yields as (truth, label), print a row a
    run and a summary table; ``rng`` restarts from ``seed`` for each pair."""
    rows = {}
    for name, make in pairs.items():
        rows[name] = []
        for truth, label in moves(np.random.default_rng(seed)):
            mean, worst, cpu, r = _run(make, truth, points[name])
            rows[name].append((mean, worst, cpu, r.confidence))
            print(f"{name:32s} {label(r)} TRE {mean:6.2f}/{worst:6.2f} CPU {cpu:4.1f} {r.confidence}"
                  + ("" if r.converged else f" ({r.confidence_reason})"), flush=True)
    _summary(title, rows)


def orientations(pairs, points, seed: int) -> None:
    """Every axis-aligned orientation with a small seeded offset, per pair."""
    mats = axis_aligned_orientations(3)
    print(f"\n== orientations: {len(pairs)} pairs x {len(mats)} axis-aligned turns, each with "
          f"+-8 deg / +-15 mm (seed {seed})")

    def moves(rng):
        for k, O in enumerate(mats):
            truth = cases.turned(O, rng.uniform(-8, 8, 3), rng.uniform(-15, 15, 3))
            yield truth, lambda r, k=k: f"turn {k:2d} {r.orientation.get('axis_aligned', ''):32s}"

    _sweep(pairs, points, seed, moves, "| 24 orientations, per pair")


def random_moves(pairs, points, n: int, seed: int) -> None:
    """``n`` seeded moves within +-45 deg per axis and 90 mm, per pair."""
    print(f"\n== random moves: {len(pairs)} pairs x {n} moves, angles uniform in +-45 deg about "
          f"each axis, shift uniform direction, length up to 90 mm (seed {seed})")

    def moves(rng):
        for _ in range(n):
            d = rng.standard_normal(3)
            truth = cases.rigid(rng.uniform(-45, 45, 3), d / np.linalg.norm(d) * rng.uniform(0, 90))
            angles = np.array2string(np.degrees(truth.GetParameters()[:3]), precision=1)
            shift = np.linalg.norm(truth.GetTranslation())
            yield truth, lambda r, a=angles, t=shift: f"{a:>22s} {t:5.1f} mm"

    _sweep(pairs, points, seed, moves, "| +-45 deg / 90 mm moves, per pair")


def _on_grid(image, size, spacing, background):
    """``image`` resampled on a grid of ``size`` voxels of ``spacing`` mm centred on it."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(centre) - d @ ((np.asarray(size) - 1) / 2 * np.asarray(spacing))
    return sitk.Resample(image, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear,
                         tuple(origin), tuple(float(s) for s in spacing), image.GetDirection(),
                         background, sitk.sitkFloat32)


def speed() -> None:
    from MedFusionLib.functional_phantoms import mni_tissue_maps

    vols = sample_volumes()
    truth = cases.rigid((-9, 7, -15), (-15, 12, -10))
    maps = mni_tissue_maps()
    t2 = sitk.GetImageFromArray((1000 * maps.csf + 600 * maps.gm + 350 * maps.wm).astype(np.float32))
    t2.CopyInformation(vols["mr_t1"])
    mr256 = _on_grid(vols["mr_t1"], (256, 256, 256), (1.0, 1.0, 1.0), 0.0)
    t2_256 = _on_grid(cases.moved_copy(t2, truth, margin_mm=40), (256, 256, 256), (1.0, 1.0, 1.0), 0.0)
    neck = cases.ct_with_neck_and_couch(vols["ct"])
    big_ct = _on_grid(cases.moved_copy(neck, truth), (512, 512, 400), (0.45, 0.45, 0.8), -1000.0)
    pts = cases.brain_points(vols["mr_t1"], step=199)
    print("\n== speed (register() on normalised images, global search included)")
    print("| pair | mode | wall s | CPU s | TRE mean/max (mm) | confidence | load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    for name, fixed, moving in (
            ("MR T1 256^3 / MR T2-like 256^3, 1 mm", _norm(mr256, "MR"), _norm(t2_256, "MR")),
            ("MR T1 1 mm / CT 512x512x400 (0.45x0.45x0.8 mm, neck, couch)", _norm(vols["mr_t1"], "MR"),
             _norm(big_ct, "CT"))):
        for mode in ("rigid", "affine"):
            t0, c0 = time.perf_counter(), time.process_time()
            r = register(fixed, moving, mode=mode)
            sec, cpu = time.perf_counter() - t0, time.process_time() - c0
            mean, worst = cases.tre(r.transform, truth, pts)
            print(f"| {name} | {mode} | {sec:.1f} | {cpu:.1f} | {mean:.2f}/{worst:.2f} | {r.confidence} | "
                  f"{os.getloadavg()[0]:.2f} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=40, help="random moves per pair (default 40)")
    ap.add_argument("--pairs", default=None, help="comma-separated pair names (default: all)")
    ap.add_argument("--bands", action="store_true", help="also the rotation x translation band table")
    ap.add_argument("--per-cell", type=int, default=1, help="--bands: transforms per pair and cell")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--no-orientations", action="store_true")
    ap.add_argument("--no-moves", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args()
    print(f"ITK threads (global default): {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}, "
          f"CPUs: {os.cpu_count()}")
    if not args.no_speed:
        speed()
    if args.no_orientations and args.no_moves and not args.bands:
        return 0
    pairs, points = _pairs(sample_volumes())
    if args.pairs:
        keep = [p.strip() for p in args.pairs.split(",")]
        pairs = {k: v for k, v in pairs.items() if k in keep}
    if not args.no_orientations:
        orientations(pairs, points, args.seed)
    if not args.no_moves:
        random_moves(pairs, points, args.moves, args.seed)
    if args.bands:
        capture(pairs, points, args.per_cell, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

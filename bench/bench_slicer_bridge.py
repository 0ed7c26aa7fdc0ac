"""Overhead of running MedFusion on Slicer nodes (slicer-core, headless): prints timings.

For a 256 x 256 x 180 volume (oblique geometry): node -> SimpleITK conversion, SimpleITK -> node,
writing a rigid and a B-spline transform node, the metrics table (24 of 180 slices scored), and
``fuse_nodes`` end to end without registration (``maximum``, and ``cnn`` where available) so that
the bridge's share of the total is visible. Usage::

    .venv/bin/python bench/bench_slicer_bridge.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = (180, 256, 256)  # (k, j, i)


def _best(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    import slicer

    import MedFusionLib
    from MedFusionLib import slicer_bridge as sb

    scene, _ = sb.headless_scene()
    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in SHAPE), indexing="ij")
    body = (k ** 2 + j ** 2 + i ** 2) < 0.8
    mr = np.where(body, 300 + 100 * np.sin(8 * i) * np.cos(6 * j), 0).astype(np.float32)
    ct = np.where(body, 40 + 900 * (np.abs(k ** 2 + j ** 2 + i ** 2 - 0.75) < 0.04), -1000).astype(np.int16)
    ijk_to_ras = np.eye(4)
    angle = np.deg2rad(12.0)
    ijk_to_ras[:3, :3] = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                                   [0, 0, 1]]) @ np.diag([0.9, 0.9, 1.2])
    fixed = slicer.util.addVolumeFromArray(mr + rng.normal(0, 5, SHAPE).astype(np.float32),
                                           ijkToRAS=ijk_to_ras, name="MR")
    moving = slicer.util.addVolumeFromArray(ct, ijkToRAS=ijk_to_ras, name="CT")
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    print(f"volume {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} ({np.prod(SHAPE) / 1e6:.1f} M voxels)")

    image = sb.image_from_volume(fixed)
    print(f"node -> SimpleITK       {1000 * _best(lambda: sb.image_from_volume(fixed)):8.1f} ms")
    print(f"SimpleITK -> node       {1000 * _best(lambda: sb.update_volume_from_image(out, image)):8.1f} ms")

    tx = scene.AddNewNodeByClass("vtkMRMLTransformNode", "tx")
    rigid = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.05, -0.02, 0.1, (3.0, -2.0, 1.0))
    print(f"rigid -> transform node {1000 * _best(lambda: sb.set_transform_node(tx, rigid, reference=image)):8.1f} ms")
    bspline = sitk.BSplineTransformInitializer(image, [4, 4, 4])
    bspline.SetParameters(tuple(rng.normal(0, 1.0, len(bspline.GetParameters()))))
    print(f"B-spline -> grid node   {1000 * _best(lambda: sb.set_transform_node(tx, bspline, reference=image), 1):8.1f} ms")

    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "metrics")
    methods = ["maximum"] + (["cnn"] if "cnn" in MedFusionLib.list_methods()
                             and MedFusionLib.get_method("cnn").available else [])
    for method in methods:
        t0 = time.perf_counter()
        res = sb.fuse_nodes(fixed, moving, out, method=method, registration="none", device="cpu")
        total = time.perf_counter() - t0
        engine = sum(res.fusion.timings.values())
        print(f"fuse_nodes {method:8s}     {total:8.2f} s  (engine {engine:.2f} s: "
              f"{ {k: round(v, 2) for k, v in res.fusion.timings.items()} }; bridge "
              f"{total - engine:.2f} s)")
    t0 = time.perf_counter()
    res = sb.fuse_nodes(fixed, moving, out, method="maximum", registration="none", metricsTable=table)
    with_table = time.perf_counter() - t0
    print(f"fuse_nodes maximum + metrics table {with_table:.2f} s ({len(res.metrics)} metrics on 24 slices)")


if __name__ == "__main__":
    main()

"""Render the extension screenshot: MedFusion's result in Slicer slice views, without the app.

Runs the same path as the Slicer module (``MedFusionLib.slicer_bridge.fuse_nodes``) on the
bundled sample pair (real MNI152 T1 MR, SYNTHETIC PET moved by a known rigid transform) in a
headless ``slicer-core`` scene, then takes three axial slice views from Slicer's own slice logic
(reslicing through the registration transform node, window/level, colour tables, layer blending):

1. the fixed MR;
2. the MR with the moving PET on top (PET-Heat, 50 %) through the registration transform;
3. the fused volume;
4. the contribution map (blue: from the PET, white: equal, orange: from the MR) when the method
   provides one.

Usage::

    .venv/bin/python Resources/Screenshots/make_slicer_screenshot.py [OUT.png]

Writes ``Resources/Screenshots/MedFusion-slice-view.png`` by default (the image
``EXTENSION_SCREENSHOTURLS`` points at) and prints the timings.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

SIZE = 320  # pixels per view


def _slice_rgba(logic, size: int) -> np.ndarray:
    """The blended RGBA image of one slice view as a (size, size, 4) uint8 array, top row first."""
    from vtk.util import numpy_support

    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    w, h, _ = image.GetDimensions()
    rgba = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)
    return rgba[::-1].astype(np.uint8)


def main(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import slicer

    import MedFusionLib
    from MedFusionLib import datasets
    from MedFusionLib.slicer_bridge import fuse_nodes, headless_scene, update_volume_from_image

    t0 = time.perf_counter()
    scene, logics = headless_scene(views=("Red", "Yellow", "Green", "Contribution"))
    fixed_image, moving_image, _truth = datasets.sample_pair("pet-mr")
    fixed = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MR T1 (MNI152)")
    moving = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PET (synthetic, moved)")
    update_volume_from_image(fixed, fixed_image)
    update_volume_from_image(moving, moving_image)
    for node in (fixed, moving):
        node.CreateDefaultDisplayNodes()
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fused")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "PET to MR")
    method = "cnn" if "cnn" in MedFusionLib.list_methods() and \
        MedFusionLib.get_method("cnn").available else "maximum"
    contribution = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "contribution")
    t_load = time.perf_counter() - t0
    result = fuse_nodes(fixed, moving, output, method=method, registration="rigid",
                        transformNode=transform, contributionVolume=contribution,
                        moving_modality="PET", fixed_modality="MR")
    print(f"sample data {t_load:.1f} s; fuse_nodes ({method}) {result.seconds:.1f} s: "
          f"{ {k: round(v, 2) for k, v in result.fusion.timings.items()} }")

    mr_display = fixed.GetDisplayNode()
    mr_display.AutoWindowLevelOff()
    lo, hi = np.percentile(slicer.util.arrayFromVolume(fixed), [1, 99.5])
    mr_display.SetWindowLevelMinMax(lo, hi)
    pet_display = moving.GetDisplayNode()
    pet_display.SetAndObserveColorNodeID("vtkMRMLPETProceduralColorNodePET-Heat")
    pet_display.AutoWindowLevelOff()
    pet_display.SetWindowLevelMinMax(0.0, 1.6 * float(np.percentile(slicer.util.arrayFromVolume(moving), 99.9)))
    moving.SetAndObserveTransformNodeID(transform.GetID())  # a display-only copy of the scene

    layers = {"Red": (fixed, None, 0.0), "Yellow": (fixed, moving, 0.5), "Green": (output, None, 0.0),
              "Contribution": (output, contribution, 0.6)}
    # an axial plane through the hot lesions: 18 mm above the MNI origin
    for name, logic in logics.items():
        background, foreground, opacity = layers[name]
        composite = logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        composite.SetForegroundOpacity(opacity)
        slice_node = logic.GetSliceNode()
        slice_node.SetOrientationToAxial()
        slice_node.SetDimensions(SIZE, SIZE, 1)
        logic.FitSliceToAll()
        logic.SetSliceOffset(18.0)

    titles = ["Fixed: MR T1", "Moving PET on MR\n(through the registration transform)",
              f"Fused ({method})", "Contribution map on the fused volume\n(blue: PET, orange: MR)"]
    fig, axes = plt.subplots(1, 4, figsize=(14.0, 4.0), dpi=100, facecolor="black")
    for ax, (name, logic), title in zip(axes, logics.items(), titles):
        ax.imshow(_slice_rgba(logic, SIZE)[..., :3])
        ax.set_title(title, color="white", fontsize=10)
        ax.axis("off")
    fig.suptitle("MedFusion in 3D Slicer slice views (rendered by Slicer's slice logic, headless; "
                 "PET is SYNTHETIC)", color="white", fontsize=9, y=0.02, va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor="black")
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "MedFusion-slice-view.png")

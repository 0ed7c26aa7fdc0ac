"""Write the Slicer module's bundled demo volumes (MedFusion/Resources/SampleData).

The MNI152 2009a T1 template (nilearn; MNI's permissive licence, notice below) at 2 mm, and the
synthetic CT-like and PET-like volumes MedFusionLib.datasets makes from its tissue maps, moved by
the known rigid transform of MedFusionLib.datasets.truth_transform, on 2 x 2 x 3 mm grids. The
files are compressed NRRD with their modality in the header; SHA256SUMS holds their digests
(registerSampleData passes them to SampleData). Run from the repository root:

    .venv/bin/python Resources/SampleData/make-slicer-sample-data.py

MNI ICBM152 2009a: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University. Permission to use, copy, modify, and
distribute this software and its documentation for any purpose and without fee is hereby
granted, provided that the above copyright notice appear in all copies.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MedFusionLib import optional
from MedFusionLib.datasets import sample_pair

OUT = Path(__file__).resolve().parents[2] / "MedFusion" / "Resources" / "SampleData"


def _resample(image: sitk.Image, spacing, pixel, background: float) -> sitk.Image:
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                        image.GetDirection(), background, sitk.sitkFloat32)
    out = sitk.Cast(sitk.Round(out) if pixel == sitk.sitkInt16 else out, pixel)
    for key in image.GetMetaDataKeys():
        out.SetMetaData(key, image.GetMetaData(key))
    return out


def _rounded(image: sitk.Image, step: float) -> sitk.Image:
    out = sitk.GetImageFromArray((np.round(sitk.GetArrayViewFromImage(image) / step) * step).astype(np.float32))
    out.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        out.SetMetaData(key, image.GetMetaData(key))
    return out


def _thumbnail(fixed: sitk.Image, moving: sitk.Image, path: Path) -> None:
    plt = optional.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(2.6, 1.3), dpi=100)
    for ax, image in zip(axes, (fixed, moving)):
        array = sitk.GetArrayViewFromImage(image)
        ax.imshow(np.flipud(array[array.shape[0] // 2]), cmap="gray")
        ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1, 0.02, 0)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    files = {}
    mr, ct, _ = sample_pair("ct-mr", moving_spacing=(2.0, 2.0, 3.0))
    _mr2, pet, _ = sample_pair("pet-mr", moving_spacing=(2.0, 2.0, 3.0))
    files["MedFusionDemo-MR-T1.nrrd"] = _resample(mr, (2.0, 2.0, 2.0), sitk.sitkInt16, 0.0)
    files["MedFusionDemo-CT.nrrd"] = sitk.Cast(sitk.Round(ct), sitk.sitkInt16)
    files["MedFusionDemo-PET.nrrd"] = _rounded(pet, 0.01)  # SUV to 0.01: compresses 4x
    for key in ct.GetMetaDataKeys():
        files["MedFusionDemo-CT.nrrd"].SetMetaData(key, ct.GetMetaData(key))
    sums = []
    for name, image in files.items():
        sitk.WriteImage(image, str(OUT / name), True)
        sums.append(f"{hashlib.sha256((OUT / name).read_bytes()).hexdigest()}  {name}")
    (OUT / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")
    _thumbnail(files["MedFusionDemo-MR-T1.nrrd"], files["MedFusionDemo-CT.nrrd"], OUT / "MedFusionDemoCTMR.png")
    _thumbnail(files["MedFusionDemo-MR-T1.nrrd"], files["MedFusionDemo-PET.nrrd"], OUT / "MedFusionDemoPETMR.png")
    for path in sorted(OUT.iterdir()):
        print(f"{path.stat().st_size:>10}  {path.name}")


if __name__ == "__main__":
    main()

"""Time DICOM series reading and derived-series writing on a synthetic CT (prints figures).

Usage: ``python bench/bench_dicom.py [--slices 200] [--size 512]``. Compares
:func:`MedFusionLib.dicom.read_series` with SimpleITK's GDCM series reader on the same files and
times :func:`MedFusionLib.dicom.write_derived_series` for a float [0, 1] volume on that grid.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from MedFusionLib.dicom import read_series, write_derived_series
from MedFusionLib.dicom.compat import write_file


def write_ct(folder: Path, n: int, size: int) -> None:
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID, ds.SeriesNumber, ds.InstanceNumber = "CT", "B^P", "B", 1, k + 1
        ds.ImagePositionPatient = [-250.0, -250.0, 1.25 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.98, 0.98]
        ds.SliceThickness = 1.25
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
        write_file(folder / f"{generate_uid()}.dcm", ds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-dicom-"))
    try:
        ct = root / "ct"
        ct.mkdir()
        t0 = time.perf_counter()
        write_ct(ct, args.slices, args.size)
        print(f"series: {args.size}x{args.size}x{args.slices} CT, written by pydicom in "
              f"{time.perf_counter() - t0:.2f} s")
        t0 = time.perf_counter()
        img = read_series(ct)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(ct)))
        ref = reader.Execute()
        t_sitk = time.perf_counter() - t0
        same = np.array_equal(sitk.GetArrayViewFromImage(img), sitk.GetArrayViewFromImage(ref))
        print(f"read_series: {t_ours:.2f} s   SimpleITK/GDCM: {t_sitk:.2f} s   identical voxels: {same}")
        fused = sitk.RescaleIntensity(sitk.Cast(img, sitk.sitkFloat32), 0.0, 1.0)
        t0 = time.perf_counter()
        files = write_derived_series(fused, root / "out", reference_dir=ct, sources=[ct], method="bench")
        print(f"write_derived_series: {len(files)} files in {time.perf_counter() - t0:.2f} s")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()

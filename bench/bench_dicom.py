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


def write_series(folder: Path, stored: np.ndarray, *, modality: str = "CT",
                 spacing=(0.98, 0.98, 1.25), origin=(-250.0, -250.0, 0.0),
                 direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), slope: float = 1.0,
                 intercept: float = -1024.0, extra: dict | None = None) -> None:
    """Write ``stored`` as a classic single-frame DICOM series, one file per slice.

    Parameters
    ----------
    folder : Path
        Existing folder for the files (named by random UIDs, so the reader cannot sort by name).
    stored : ndarray
        ``(z, y, x)`` stored values, ``uint16`` or ``int16``; real values are
        ``stored * slope + intercept``.
    modality : {"CT", "MR", "PT"}
        DICOM Modality (and the matching SOP class).
    spacing : (float, float, float)
        Voxel size (x, y, z) in mm; z is the distance between slices.
    origin : (float, float, float)
        LPS position (mm) of the first voxel of the first slice.
    direction : sequence of 9 float
        Direction cosines as SimpleITK gives them (columns: row, column and slice axes).
    slope, intercept : float
        RescaleSlope and RescaleIntercept.
    extra : dict, optional
        More attributes for every file (e.g. ``{"Units": "BQML"}``).
    """
    sop = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
           "PT": "1.2.840.10008.5.1.4.1.1.128"}[modality]
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(stored.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID, ds.SeriesNumber, ds.InstanceNumber = modality, "B^P", "B", 1, k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.asarray(origin) + k * spacing[2] * d[:, 2]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([d[:, 0], d[:, 1]])]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = int(stored.dtype == np.int16)
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.6g}", f"{intercept:.6g}"
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        write_file(folder / f"{generate_uid()}.dcm", ds)


def write_ct(folder: Path, n: int, size: int) -> None:
    """A CT series of ``n`` slices of ``size`` x ``size`` random 12-bit values."""
    rng = np.random.default_rng(0)
    write_series(folder, rng.integers(0, 4096, (n, size, size), dtype=np.uint16))


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

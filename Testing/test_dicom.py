"""DICOM series reading, PET SUV and the derived fused series (issue #7).

Series are built with pydicom in ``tmp_path`` so every geometry fact is known exactly; real headers
come from pydicom-data (enhanced CT) and medimages4tests (Siemens Biograph Vision PET).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from numpy.testing import assert_allclose
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from MedFusionLib import dicom
from MedFusionLib.dicom.compat import decoder_available, write_file
from MedFusionLib.errors import InvalidInputError, MissingDependencyError

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"
PT_CLASS = "1.2.840.10008.5.1.4.1.1.128"
CLASS_OF = {"CT": CT_CLASS, "MR": MR_CLASS, "PT": PT_CLASS}


def _oblique(deg_z: float = 20.0, deg_x: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines of an oblique plane."""
    a, b = np.radians(deg_z), np.radians(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = rz @ rx
    return m[:, 0], m[:, 1]


def make_series(
    folder,
    stored,
    *,
    modality="CT",
    origin=(-30.0, -20.0, 10.0),
    row=(1.0, 0.0, 0.0),
    col=(0.0, 1.0, 0.0),
    spacing=(0.8, 0.9, 2.5),
    slope=1.0,
    intercept=-1024.0,
    study_uid=None,
    series_uid=None,
    for_uid=None,
    names=None,
    positions=None,
    extra=None,
    series_number=3,
    description="test series",
):
    """Write ``stored`` (z, y, x, uint16/int16) as a classic single-frame series; return the UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.asarray(stored)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = for_uid or generate_uid()
    row, col = np.asarray(row, float), np.asarray(col, float)
    normal = np.cross(row, col)
    sx, sy, sz = spacing
    for k in range(stored.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CLASS_OF[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName = "Fixed^Patient"
        ds.PatientID = "PID-1"
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101010"
        ds.StudyID = "S1"
        ds.AccessionNumber = "ACC1"
        ds.ReferringPhysicianName = ""
        ds.Modality = modality
        ds.Manufacturer = "Test"
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = k + 1
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        pos = np.asarray(origin, float) + k * sz * normal if positions is None else positions[k]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([row, col])]
        ds.PixelSpacing = [sy, sx]
        ds.SliceThickness = sz
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        name = names[k] if names is not None else f"IM{k:04d}.dcm"
        write_file(folder / name, ds)
    return study_uid, series_uid, for_uid


def ramp(shape=(6, 10, 12), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3000, size=shape).astype(np.uint16)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits, stored, signed, values", [
    (16, 16, False, (0, 65535)), (16, 12, False, (0, 4095)), (16, 12, True, (-2048, 2047)),
    (16, 16, True, (-32768, 32767)), (8, 8, False, (0, 255)), (32, 32, True, (-70000, 70000)),
    (16, 12, False, (0, 65535)),  # high bits set beyond BitsStored: pydicom's decoder decides
    (16, 12, True, (-32768, 32767)),
])
def test_uncompressed_pixels_are_read_as_pydicom_decodes_them(tmp_path, bits, stored, signed,
                                                                values):
    """The direct read of native little-endian pixel data (issue #23) gives exactly
    ``ds.pixel_array``; where bits beyond BitsStored are set it leaves the decoding to pydicom."""
    from MedFusionLib.dicom.pixels import _native_array, _pixels

    rng = np.random.default_rng(bits + stored)
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
    arr = rng.integers(values[0], values[1], (3, 5, 7), endpoint=True).astype(dtype)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CLASS_OF["CT"], generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.Modality, ds.NumberOfFrames = "CT", 3
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = 5, 7
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = arr.tobytes()
    path = tmp_path / "multi.dcm"
    write_file(path, ds)
    back = pydicom.dcmread(path, defer_size=16)
    want = np.asarray(pydicom.dcmread(path).pixel_array)
    fast = _native_array(path, back)
    if values[1] >= (1 << (stored - signed)):  # high bits in use: not read directly
        assert fast is None
    else:
        assert fast is not None and fast.dtype == want.dtype and np.array_equal(fast, want)
    assert np.array_equal(_pixels(path, back), want)


def test_ct_rescale_hu_and_geometry_with_shuffled_names(tmp_path):
    stored = ramp()
    order = np.random.default_rng(1).permutation(stored.shape[0])
    names = [f"zz{int(i) * 7919 % 97:03d}_{j}.dcm" for j, i in enumerate(order)]
    study, series, frame = make_series(tmp_path / "ct", stored, names=names)
    img = dicom.read_series(tmp_path / "ct")
    assert img.GetPixelID() == sitk.sitkInt16
    assert img.GetSize() == (12, 10, 6)
    assert_allclose(sitk.GetArrayFromImage(img), stored.astype(int) - 1024)
    assert_allclose(img.GetSpacing(), (0.8, 0.9, 2.5), atol=1e-6)
    assert_allclose(img.GetOrigin(), (-30.0, -20.0, 10.0), atol=1e-6)
    assert_allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-9)
    assert img.GetMetaData("0008|0060") == "CT"
    assert img.GetMetaData("0020|000d") == study
    assert img.GetMetaData("0020|000e") == series
    assert img.GetMetaData("0020|0052") == frame
    assert img.GetMetaData("MedFusion|units") == "HU"
    assert not img.HasMetaDataKey("0010|0010")  # no patient identifiers in the metadata


def test_reversed_slice_order_is_sorted_along_normal(tmp_path):
    stored = ramp()
    # positions decreasing with instance number: the volume must still come out increasing
    origin = np.array([0.0, 0.0, 50.0])
    positions = [origin - k * 2.5 * np.array([0, 0, 1.0]) for k in range(stored.shape[0])]
    make_series(tmp_path / "ct", stored, positions=positions)
    img = dicom.read_series(tmp_path / "ct")
    assert_allclose(sitk.GetArrayFromImage(img), stored[::-1].astype(int) - 1024)
    assert_allclose(img.GetOrigin(), positions[-1], atol=1e-6)
    assert img.GetSpacing()[2] == pytest.approx(2.5)


def test_oblique_orientation_matches_sitk_series_reader(tmp_path):
    row, col = _oblique()
    stored = ramp((5, 8, 9))
    make_series(tmp_path / "ob", stored, row=row, col=col, slope=0.5, intercept=-10.0)
    img = dicom.read_series(tmp_path / "ob")
    assert img.GetPixelID() == sitk.sitkFloat32
    assert_allclose(sitk.GetArrayFromImage(img), stored * 0.5 - 10.0, rtol=1e-6)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "ob")))
    ref = reader.Execute()
    assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    assert_allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6)
    assert_allclose(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref), atol=1e-3)


def test_multi_series_folder_needs_a_choice(tmp_path):
    _, ct_uid, _ = make_series(tmp_path / "mix" / "a", ramp(), description="ct")
    _, mr_uid, _ = make_series(tmp_path / "mix" / "b", ramp((4, 10, 12)), modality="MR",
                               intercept=0.0, description="mr")
    (tmp_path / "mix" / "notes.txt").write_text("not dicom")
    infos = dicom.list_series(tmp_path / "mix")
    assert {s.series_uid for s in infos} == {ct_uid, mr_uid}
    assert {s.modality: s.n_frames for s in infos} == {"CT": 6, "MR": 4}
    with pytest.raises(InvalidInputError, match=r"2 image series.*0020,000E") as err:
        dicom.read_series(tmp_path / "mix")
    assert ct_uid in str(err.value) and mr_uid in str(err.value)
    mr = dicom.read_series(tmp_path / "mix", series_uid=mr_uid)
    assert mr.GetMetaData("0008|0060") == "MR" and mr.GetSize()[2] == 4
    with pytest.raises(InvalidInputError, match="no series with SeriesInstanceUID"):
        dicom.read_series(tmp_path / "mix", series_uid="1.2.3.4")


def test_missing_slice_names_the_file(tmp_path):
    make_series(tmp_path / "gap", ramp((7, 6, 6)))
    (tmp_path / "gap" / "IM0003.dcm").unlink()
    with pytest.raises(InvalidInputError, match=r"IM0004\.dcm: about 1 slice\(s\) missing.*0020,0032"):
        dicom.read_series(tmp_path / "gap")


def test_inconsistent_orientation_names_file_and_tag(tmp_path):
    make_series(tmp_path / "ori", ramp((4, 6, 6)))
    bad = tmp_path / "ori" / "IM0002.dcm"
    ds = pydicom.dcmread(bad)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal slice in an axial series
    ds.save_as(bad)
    with pytest.raises(InvalidInputError, match=r"IM0002\.dcm.*ImageOrientationPatient \(0020,0037\)"):
        dicom.read_series(tmp_path / "ori")


def test_duplicate_positions_are_rejected(tmp_path):
    make_series(tmp_path / "dup", ramp((3, 6, 6)))
    shutil.copy(tmp_path / "dup" / "IM0001.dcm", tmp_path / "dup" / "copy.dcm")
    with pytest.raises(InvalidInputError, match="same slice position"):
        dicom.read_series(tmp_path / "dup")


def test_missing_geometry_tag_is_named(tmp_path):
    make_series(tmp_path / "nopos", ramp((3, 6, 6)))
    f = tmp_path / "nopos" / "IM0001.dcm"
    ds = pydicom.dcmread(f)
    del ds.ImagePositionPatient
    ds.save_as(f)
    with pytest.raises(InvalidInputError, match=r"IM0001\.dcm: missing ImagePositionPatient \(0020,0032\)"):
        dicom.read_series(tmp_path / "nopos")


def test_non_image_object_is_reported(tmp_path):
    folder = tmp_path / "sr"
    folder.mkdir()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    write_file(folder / "report.dcm", ds)
    with pytest.raises(InvalidInputError, match=r"report\.dcm: no image series.*PixelData \(7FE0,0010\)"):
        dicom.read_series(folder)
    # next to an image series the report is listed but does not count as a choice to make
    make_series(folder, ramp((3, 6, 6)))
    assert dicom.read_series(folder).GetSize() == (6, 6, 3)
    assert sorted(s.is_image for s in dicom.list_series(folder)) == [False, True]
    with pytest.raises(InvalidInputError, match=r"report\.dcm: series .* non-image object"):
        dicom.read_series(folder, series_uid=str(ds.SeriesInstanceUID))


def test_compressed_without_decoder_names_transfer_syntax(tmp_path):
    make_series(tmp_path / "jls", ramp((2, 6, 6)))
    f = tmp_path / "jls" / "IM0000.dcm"
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds.save_as(f)
    assert not decoder_available(JPEGLSLossless)  # the premise of this test
    with pytest.raises(MissingDependencyError, match=r"IM0000\.dcm.*JPEG-LS.*TransferSyntaxUID \(0002,0010\)"):
        dicom.read_series(tmp_path / "jls")


def test_no_dicom_at_all(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="no DICOM files found"):
        dicom.read_series(tmp_path)


def test_gantry_tilt_is_detected_and_corrected(tmp_path):
    nz, ny, nx, sy, sz = 5, 12, 8, 1.0, 2.0
    stored = np.zeros((nz, ny, nx), np.uint16)
    # a rod running along the slice normal: in the sheared slices it moves one row per slice
    for k in range(nz):
        stored[k, 8 - k, 3] = 1000
    origin = np.array([0.0, 0.0, 0.0])
    positions = [origin + np.array([0.0, k * sy, k * sz]) for k in range(nz)]
    make_series(tmp_path / "tilt", stored, positions=positions, spacing=(1.0, sy, sz), intercept=0.0,
                extra={"GantryDetectorTilt": 26.565})
    with pytest.warns(UserWarning, match="gantry tilt about 26.57 degrees"):
        img = dicom.read_series(tmp_path / "tilt")
    arr = sitk.GetArrayFromImage(img)
    assert_allclose(arr[:, 8, 3], 1000.0, atol=1e-3)  # the rod is straight again
    assert_allclose(arr.sum(axis=(1, 2)), 1000.0, atol=1e-3)
    assert_allclose(img.GetOrigin(), origin, atol=1e-6)
    assert_allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-9)
    assert img.GetSpacing()[2] == pytest.approx(sz)
    assert float(img.GetMetaData("MedFusion|gantry_tilt_deg")) == pytest.approx(26.565, abs=0.01)
    with pytest.raises(InvalidInputError, match=r"irregular geometry.*GantryDetectorTilt \(0018,1120\)"):
        dicom.read_series(tmp_path / "tilt", strict=True)


def test_non_uniform_spacing_is_resampled(tmp_path):
    d = np.array([0.0, 2.0, 4.0, 7.0, 9.0, 11.0])
    stored = np.broadcast_to((100 * d).astype(np.uint16)[:, None, None], (6, 4, 5)).copy()
    positions = [np.array([0.0, 0.0, z]) for z in d]
    make_series(tmp_path / "nu", stored, positions=positions, intercept=0.0)
    with pytest.warns(UserWarning, match=r"non-uniform slice spacing: 2.000 to 3.000 mm"):
        img = dicom.read_series(tmp_path / "nu")
    assert img.GetSpacing()[2] == pytest.approx(2.0)
    assert_allclose(sitk.GetArrayFromImage(img)[:, 0, 0], 100 * np.arange(6) * 2.0, atol=1e-3)
    with pytest.raises(InvalidInputError, match="non-uniform slice spacing"):
        dicom.read_series(tmp_path / "nu", strict=True)


def test_regular_series_gives_no_warning(tmp_path):
    make_series(tmp_path / "ok", ramp((4, 5, 5)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = dicom.read_series(tmp_path / "ok")
    assert not img.HasMetaDataKey("MedFusion|regularized")


def test_enhanced_multiframe_ct():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    img = dicom.read_series(path)
    assert img.GetSize() == (512, 512, 2)
    # IOP (-1,0,0 / 0,1,0): the normal is -z, so the frame at z = -149 comes first
    assert_allclose(img.GetOrigin(), (99.5, -301.5, -149.0), atol=1e-6)
    assert_allclose(img.GetSpacing(), (0.388672, 0.388672, 10.0), atol=1e-6)
    assert_allclose(img.GetDirection(), [-1, 0, 0, 0, 1, 0, 0, 0, -1], atol=1e-9)
    arr = sitk.GetArrayFromImage(img)
    assert_allclose(arr, ds.pixel_array[::-1].astype(int) - 1024)
    assert img.GetMetaData("0008|0060") == "CT"
    assert float(img.GetMetaData("0028|1050")) == 49.0


def test_nm_multiframe_volume(tmp_path):
    stored = ramp((4, 6, 7))
    make_series(tmp_path / "tmp", stored[:1], modality="PT", intercept=0.0)
    ds = pydicom.dcmread(tmp_path / "tmp" / "IM0000.dcm")
    ds.Modality = "NM"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    det = Dataset()
    det.ImagePositionPatient = ds.ImagePositionPatient
    det.ImageOrientationPatient = ds.ImageOrientationPatient
    ds.DetectorInformationSequence = [det]
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.NumberOfFrames = 4
    ds.SpacingBetweenSlices = 3.5
    ds.PixelData = stored.tobytes()
    (tmp_path / "nm").mkdir()
    ds.save_as(tmp_path / "nm" / "spect.dcm")
    img = dicom.read_series(tmp_path / "nm")
    assert img.GetMetaData("0008|0060") == "NM"
    assert img.GetSpacing()[2] == pytest.approx(3.5)
    assert_allclose(sitk.GetArrayFromImage(img), stored)


# --------------------------------------------------------------------------------------------
# PET SUV
# --------------------------------------------------------------------------------------------


def _biograph_pet_header() -> Dataset:
    """One slice header of the Siemens Biograph Vision whole-body PET in medimages4tests."""
    from medimages4tests.dummy.dicom.pet.wholebody.siemens.biograph_vision import vr20b

    hdr = dict(vr20b.constant_hdr)
    hdr.update({k: v["0"] for k, v in vr20b.varying_hdr.items() if "0" in v})
    hdr = {k: v for k, v in hdr.items() if not k.startswith(("0029", "7FE0"))}
    return Dataset.from_json(hdr)


def make_pet(folder, header: Dataset, values, *, spacing=(2.0, 2.0, 3.0)):
    """A small PET series carrying ``header``'s SUV facts; ``values`` (z, y, x) in Bq/mL."""
    slope = float(np.max(values)) / 30000.0
    stored = np.round(np.asarray(values) / slope).astype(np.uint16)
    keep = ("Units", "DecayCorrection", "CorrectedImage", "PatientWeight", "SeriesDate", "SeriesTime",
            "AcquisitionDate", "AcquisitionTime", "RadiopharmaceuticalInformationSequence",
            "DecayFactor", "FrameReferenceTime")
    extra = {k: header[k].value for k in keep if k in header}
    make_series(folder, stored, modality="PT", slope=slope, intercept=0.0, spacing=spacing, extra=extra)
    return stored * slope


def test_suv_from_biograph_header(tmp_path):
    header = _biograph_pet_header()
    assert header.Units == "BQML" and header.DecayCorrection == "START"
    bq = make_pet(tmp_path / "pet", header, np.full((3, 4, 4), 12000.0))
    img = dicom.read_series(tmp_path / "pet", suv=True)
    # Ge-68 phantom: 85.74 MBq at 14:49:42, series 15:24:19 (2077 s later), T1/2 = 23410100 s, 75 kg
    decayed = 85.74e6 * 2.0 ** (-2077.0 / 23410100.0)
    expected = 75000.0 / decayed
    assert float(img.GetMetaData("MedFusion|suv_factor")) == pytest.approx(expected, rel=1e-9)
    assert img.GetMetaData("MedFusion|units") == "SUVbw"
    assert img.GetMetaData("0008|0060") == "PT"
    assert_allclose(sitk.GetArrayFromImage(img), bq * expected, rtol=1e-5)
    plain = dicom.read_series(tmp_path / "pet")
    assert_allclose(sitk.GetArrayFromImage(plain), bq, rtol=1e-5)
    assert plain.GetMetaData("0054|1001") == "BQML"


def _f18_header(**changes) -> Dataset:
    """F-18 header: 370 MBq injected exactly one half-life (6586.2 s) before the scan, 70 kg."""
    ds = Dataset()
    ds.Modality = "PT"
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["ATTN", "DECY"]
    ds.PatientWeight = 70
    ds.SeriesDate = "20240102"
    rp = Dataset()
    rp.RadionuclideTotalDose = 370e6
    rp.RadionuclideHalfLife = 6586.2
    rp.RadiopharmaceuticalStartDateTime = "20240102100000"
    ds.RadiopharmaceuticalInformationSequence = [rp]
    scan = dt.datetime(2024, 1, 2, 10) + dt.timedelta(seconds=6586.2)
    ds.SeriesTime = scan.strftime("%H%M%S.%f")
    for key, value in changes.items():
        if key.startswith("rp_"):
            if value is None:
                delattr(rp, key[3:])
            else:
                setattr(rp, key[3:], value)
        elif value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def test_suv_known_numbers_f18(tmp_path):
    ds = _f18_header()
    # one half-life after injection 185 MBq remain: SUV = C * 70000 g / 185e6 Bq
    assert dicom.suv_factor(ds) == pytest.approx(70000.0 / 185e6, rel=1e-9)
    make_pet(tmp_path / "pet", ds, np.full((2, 3, 3), 2 * 185e6 / 70000.0))
    img = dicom.read_series(tmp_path / "pet", suv=True)
    assert_allclose(sitk.GetArrayFromImage(img), 2.0, rtol=1e-4)  # 5285.7 Bq/mL is SUV 2
    # the start time alone (no DateTime) works the same; ADMIN decay correction does not decay
    ds2 = _f18_header(rp_RadiopharmaceuticalStartDateTime=None, rp_RadiopharmaceuticalStartTime="100000")
    assert dicom.suv_factor(ds2) == pytest.approx(70000.0 / 185e6, rel=1e-9)
    assert dicom.suv_factor(_f18_header(DecayCorrection="ADMIN")) == pytest.approx(70000.0 / 370e6)
    assert dicom.suv_factor(_f18_header(Units="GML")) == 1.0
    # series re-saved after the scan: the earliest acquisition time is the scan start
    late = _f18_header(SeriesTime="130000")
    early = dt.datetime(2024, 1, 2, 10) + dt.timedelta(seconds=6586.2)
    assert dicom.suv_factor(late, acquisition_times=[early + dt.timedelta(seconds=60), early]) == \
        pytest.approx(70000.0 / 185e6, rel=1e-9)


@pytest.mark.parametrize(
    "change, tag",
    [
        ({"PatientWeight": None}, r"PatientWeight \(0010,1030\)"),
        ({"PatientWeight": 0}, r"PatientWeight \(0010,1030\)"),
        ({"Units": None}, r"Units \(0054,1001\)"),
        ({"Units": "CNTS"}, r"Units \(0054,1001\)"),
        ({"DecayCorrection": "NONE"}, r"DecayCorrection \(0054,1102\)"),
        ({"CorrectedImage": ["ATTN"]}, r"CorrectedImage \(0028,0051\)"),
        ({"RadiopharmaceuticalInformationSequence": None}, r"RadiopharmaceuticalInformationSequence \(0054,0016\)"),
        ({"rp_RadionuclideTotalDose": None}, r"RadionuclideTotalDose \(0018,1074\)"),
        ({"rp_RadionuclideHalfLife": None}, r"RadionuclideHalfLife \(0018,1075\)"),
        ({"rp_RadiopharmaceuticalStartDateTime": None}, r"RadiopharmaceuticalStartDateTime \(0018,1078\)"),
        ({"SeriesTime": None}, r"SeriesTime \(0008,0031\)"),
        ({"Modality": "CT"}, r"Modality \(0008,0060\)"),
    ],
)
def test_suv_missing_tags_are_named(change, tag):
    with pytest.raises(InvalidInputError, match=r"pet\.dcm: .*" + tag):
        dicom.suv_factor(_f18_header(**change), source="/data/pet.dcm")


def test_suv_error_names_the_file_in_read_series(tmp_path):
    make_pet(tmp_path / "pet", _f18_header(PatientWeight=None), np.ones((2, 3, 3)))
    with pytest.raises(InvalidInputError, match=r"IM0000\.dcm: cannot convert PET to SUV.*PatientWeight"):
        dicom.read_series(tmp_path / "pet", suv=True)


# --------------------------------------------------------------------------------------------
# Writing the derived series
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fixed_and_moving(tmp_path):
    """Oblique CT (fixed) and axial MR of another study and patient (moving)."""
    row, col = _oblique()
    fixed = tmp_path / "fixed"
    moving = tmp_path / "moving"
    make_series(fixed, ramp((5, 10, 12)), row=row, col=col, origin=(-30.0, -20.0, 10.0),
                spacing=(0.8, 0.9, 2.5), description="CT head")
    make_series(moving, ramp((8, 10, 12), seed=2), modality="MR", intercept=0.0, spacing=(1.0, 1.0, 2.0),
                origin=(-30.0, -20.0, 8.0), description="T1",
                extra={"PatientName": "Other^Person", "PatientID": "PID-2"})
    image = dicom.read_series(fixed)
    fused = sitk.RescaleIntensity(sitk.Cast(image, sitk.sitkFloat32), 0.0, 1.0)
    return fixed, moving, fused


def _dciodvfy_errors(path) -> list[str]:
    exe = shutil.which("dciodvfy")
    assert exe is not None, (
        "dciodvfy is not installed: the DICOM validation test needs it (Debian/Ubuntu: "
        "`apt-get install dicom3tools`)."
    )
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    return [ln for ln in text.splitlines() if ln.startswith("Error")]


def test_derived_series_round_trip(fixed_and_moving, tmp_path):
    fixed, moving, fused = fixed_and_moving
    files = dicom.write_derived_series(
        fused, tmp_path / "out", reference_dir=fixed, sources=[fixed, moving],
        description="CT+MR fused", method="wavelet")
    assert [f.name for f in files] == [f"IM{k:05d}.dcm" for k in range(1, 6)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f.name for f in files]

    # pydicom: identity, references, per-slice geometry
    fixed_ds = sorted((pydicom.dcmread(p) for p in fixed.iterdir()), key=lambda d: d.InstanceNumber)
    moving_ds = [pydicom.dcmread(p) for p in moving.iterdir()]
    out_ds = [pydicom.dcmread(p) for p in files]
    ref = fixed_ds[0]
    assert len({d.SOPInstanceUID for d in out_ds}) == 5
    assert not {d.SOPInstanceUID for d in out_ds} & {d.SOPInstanceUID for d in fixed_ds}
    for d, f in zip(out_ds, fixed_ds):
        assert d.SOPClassUID == CT_CLASS and d.Modality == "CT"
        assert d.SeriesInstanceUID != ref.SeriesInstanceUID
        assert d.StudyInstanceUID == ref.StudyInstanceUID
        assert d.FrameOfReferenceUID == ref.FrameOfReferenceUID
        assert (d.PatientName, d.PatientID, d.AccessionNumber) == ("Fixed^Patient", "PID-1", "ACC1")
        assert list(d.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert "wavelet" in d.DerivationDescription
        assert ref.SeriesInstanceUID in d.DerivationDescription
        assert moving_ds[0].SeriesInstanceUID in d.DerivationDescription
        assert d.BitsAllocated == 16 and float(d.RescaleSlope) > 0
        assert_allclose([float(v) for v in d.ImagePositionPatient],
                        [float(v) for v in f.ImagePositionPatient], atol=1e-3)
        assert_allclose([float(v) for v in d.ImageOrientationPatient],
                        [float(v) for v in f.ImageOrientationPatient], atol=1e-6)
        assert_allclose([float(v) for v in d.PixelSpacing], [0.9, 0.8], atol=1e-6)
        sources = {it.ReferencedSOPInstanceUID for it in d.SourceImageSequence}
        assert f.SOPInstanceUID in sources  # the fixed slice at this position
        assert sources - {f.SOPInstanceUID} <= {m.SOPInstanceUID for m in moving_ds}
        assert len(sources) > 1  # and the moving slices that overlap it
        assert d.ReferencedSeriesSequence[0].SeriesInstanceUID == ref.SeriesInstanceUID
        other = d.StudiesContainingOtherReferencedInstancesSequence[0]
        assert other.StudyInstanceUID == moving_ds[0].StudyInstanceUID
        assert other.ReferencedSeriesSequence[0].SeriesInstanceUID == moving_ds[0].SeriesInstanceUID

    # SimpleITK and our reader: same geometry and values (16-bit quantisation)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "out")))
    for back in (reader.Execute(), dicom.read_series(tmp_path / "out")):
        assert back.GetSize() == fused.GetSize()
        assert_allclose(back.GetOrigin(), fused.GetOrigin(), atol=1e-3)
        assert_allclose(back.GetSpacing(), fused.GetSpacing(), atol=1e-3)
        assert_allclose(back.GetDirection(), fused.GetDirection(), atol=1e-6)
        assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(fused), atol=1.0 / 65535)

    for f in files:
        assert _dciodvfy_errors(f) == []


def test_derived_series_from_mr_reference_validates(fixed_and_moving, tmp_path):
    fixed, moving, _ = fixed_and_moving
    mr = dicom.read_series(moving)
    fused = sitk.RescaleIntensity(sitk.Cast(mr, sitk.sitkFloat32), -1.0, 1.0)  # signed values too
    files = dicom.write_derived_series(fused, tmp_path / "out", reference_dir=moving, method="average")
    d = pydicom.dcmread(files[0])
    assert d.SOPClassUID == MR_CLASS and d.PixelRepresentation == 1
    assert d.PatientID == "PID-2"
    back = dicom.read_series(tmp_path / "out")
    assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(fused), atol=1.0 / 32767)
    assert _dciodvfy_errors(files[0]) == []


def test_source_slices_follow_the_registration_transform(tmp_path):
    fixed, moving = tmp_path / "fixed", tmp_path / "moving"
    make_series(fixed, ramp((4, 6, 6)), origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 2.5))
    make_series(moving, ramp((10, 6, 6)), modality="MR", intercept=0.0, origin=(0.0, 0.0, 0.0),
                spacing=(1.0, 1.0, 2.0))
    moving_z = {pydicom.dcmread(p).SOPInstanceUID: float(pydicom.dcmread(p).ImagePositionPatient[2])
                for p in moving.iterdir()}
    fused = sitk.Cast(dicom.read_series(fixed), sitk.sitkFloat32)
    shift = sitk.TranslationTransform(3, (0.0, 0.0, 4.0))  # fixed point z maps to moving z + 4
    files = dicom.write_derived_series(fused, tmp_path / "out", reference_dir=fixed,
                                       sources=[fixed, moving], transforms=[None, shift])
    for k, f in enumerate(files):
        d = pydicom.dcmread(f)
        zs = sorted(moving_z[it.ReferencedSOPInstanceUID] for it in d.SourceImageSequence
                    if it.ReferencedSOPInstanceUID in moving_z)
        z = 2.5 * k + 4.0  # moving slices (2 mm apart) whose slab holds z
        assert zs == [v for v in np.arange(0, 20, 2.0) if abs(v - z) < 1.0], (k, zs)


def test_derived_series_bad_input(fixed_and_moving, tmp_path):
    fixed, moving, fused = fixed_and_moving
    with pytest.raises(InvalidInputError, match="3D scalar volume"):
        dicom.write_derived_series(fused[:, :, 0], tmp_path / "a", reference_dir=fixed)
    nan = sitk.Image(fused)
    nan[0, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        dicom.write_derived_series(nan, tmp_path / "b", reference_dir=fixed)
    with pytest.raises(InvalidInputError, match="2 transforms for 1 sources"):
        dicom.write_derived_series(fused, tmp_path / "c", reference_dir=fixed, sources=[fixed],
                                   transforms=[None, None])
    make_pet(tmp_path / "pet", _f18_header(), np.ones((2, 3, 3)))
    with pytest.raises(InvalidInputError, match=r"IM0000\.dcm: .*Modality \(0008,0060\) PT"):
        dicom.write_derived_series(fused, tmp_path / "d", reference_dir=tmp_path / "pet")
    dicom.write_derived_series(fused, tmp_path / "e", reference_dir=fixed)
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "e").iterdir())
    with pytest.raises(InvalidInputError, match=r"IM00001\.dcm: exists already"):
        dicom.write_derived_series(fused, tmp_path / "e", reference_dir=fixed)
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "e").iterdir()) == before


def test_non_dicom_moving_source_is_named(fixed_and_moving, tmp_path):
    fixed, _, fused = fixed_and_moving
    nifti = tmp_path / "moving_t1.nii.gz"
    sitk.WriteImage(fused, str(nifti))
    files = dicom.write_derived_series(fused, tmp_path / "out", reference_dir=fixed,
                                       sources=[fixed, nifti], method="average")
    d = pydicom.dcmread(files[0])
    assert "file moving_t1.nii.gz" in d.DerivationDescription
    assert "StudiesContainingOtherReferencedInstancesSequence" not in d
    assert len(d.SourceImageSequence) == 1


# --------------------------------------------------------------------------------------------
# medfusion dicom-ls
# --------------------------------------------------------------------------------------------


def test_dicom_ls_lists_series_and_geometry_problems(tmp_path, capsys):
    import json

    from MedFusionLib.cli import main

    _, ct_uid, _ = make_series(tmp_path / "d" / "ct", ramp((4, 6, 7)), description="CT head")
    _, gap_uid, _ = make_series(tmp_path / "d" / "gap", ramp((5, 6, 6)), modality="MR", intercept=0.0)
    (tmp_path / "d" / "gap" / "IM0002.dcm").unlink()
    positions = [np.array([0.0, 0.5 * k, 2.0 * k]) for k in range(4)]
    _, tilt_uid, _ = make_series(tmp_path / "d" / "tilt", ramp((4, 6, 6)), positions=positions,
                                 spacing=(1.0, 1.0, 2.0))
    assert main(["dicom-ls", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert f"{ct_uid}  CT  #3 'CT head'  4 files  7x6x4  0.8x0.9x2.5 mm" in out
    assert "slice(s) missing" in out and "gantry tilt about 14.04 degrees" in out
    assert "3 series (3 image series)" in out
    assert main(["dicom-ls", "--json", str(tmp_path / "d")]) == 0
    rows = {r["series_uid"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[ct_uid]["size"] == [7, 6, 4] and rows[ct_uid]["problems"] == []
    assert_allclose(rows[ct_uid]["spacing_mm"], [0.8, 0.9, 2.5])
    assert "missing" in rows[gap_uid]["problems"][0]
    assert "gantry tilt" in rows[tilt_uid]["problems"][0]
    assert main(["dicom-ls", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err


def test_fuse_command_writes_derived_dicom(fixed_and_moving, tmp_path, capsys):
    from MedFusionLib.cli import main

    fixed, moving, _ = fixed_and_moving
    out = tmp_path / "fused_dicom"
    code = main(["fuse", str(fixed), str(moving), "-o", str(out), "--dicom", "--method", "average",
                 "--register", "none", "--quiet"])
    assert code == 0, capsys.readouterr().err
    files = sorted(out.glob("IM*.dcm"))
    assert len(files) == 5
    reg = pydicom.dcmread(out / "REG00001.dcm")  # --register none: the identity, stored anyway
    assert reg.Modality == "REG"
    assert_allclose([float(v) for v in reg.RegistrationSequence[1].MatrixRegistrationSequence[0]
                     .MatrixSequence[0].FrameOfReferenceTransformationMatrix], np.eye(4).ravel(), atol=1e-9)
    back = dicom.read_series(out)
    ref = dicom.read_series(fixed)
    assert_allclose(back.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    assert_allclose(back.GetDirection(), ref.GetDirection(), atol=1e-6)
    d = pydicom.dcmread(files[0])
    assert "method 'average'" in d.DerivationDescription
    assert d.StudiesContainingOtherReferencedInstancesSequence[0].ReferencedSeriesSequence[0] \
        .SeriesInstanceUID == pydicom.dcmread(next(moving.iterdir())).SeriesInstanceUID
    # a fixed image that is not DICOM is refused before any work, naming it
    nifti = tmp_path / "fixed.nii.gz"
    sitk.WriteImage(ref, str(nifti))
    code = main(["fuse", str(nifti), str(moving), "-o", str(tmp_path / "x"), "--dicom", "--quiet"])
    assert code == 2
    assert "fixed.nii.gz: a derived DICOM series needs a DICOM fixed image" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _sro_matrix(ds, item: int) -> np.ndarray:
    seq = ds.RegistrationSequence[item].MatrixRegistrationSequence[0].MatrixSequence[0]
    return np.array([float(v) for v in seq.FrameOfReferenceTransformationMatrix]).reshape(4, 4), \
        seq.FrameOfReferenceTransformationMatrixType


@pytest.mark.parametrize("kind", ["RIGID", "AFFINE"])
def test_spatial_registration_object(fixed_and_moving, tmp_path, kind):
    fixed, moving, _ = fixed_and_moving
    if kind == "RIGID":
        transform = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.05, 0.2, (4.0, -3.0, 2.5))
    else:
        transform = sitk.AffineTransform((1.1, 0.1, 0.0, 0.0, 0.9, 0.05, 0.0, 0.0, 1.2), (1.0, 2.0, 3.0))
    path = dicom.write_spatial_registration(transform, tmp_path / "reg.dcm", reference_dir=fixed,
                                            moving_dir=moving)
    ds = pydicom.dcmread(path)
    f0 = pydicom.dcmread(next(fixed.iterdir()))
    m0 = pydicom.dcmread(next(moving.iterdir()))
    assert ds.Modality == "REG" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.1"
    assert ds.StudyInstanceUID == f0.StudyInstanceUID and ds.FrameOfReferenceUID == f0.FrameOfReferenceUID
    assert ds.PatientID == "PID-1"
    assert ds.RegistrationSequence[0].FrameOfReferenceUID == f0.FrameOfReferenceUID
    assert ds.RegistrationSequence[1].FrameOfReferenceUID == m0.FrameOfReferenceUID
    ident, ident_kind = _sro_matrix(ds, 0)
    assert_allclose(ident, np.eye(4)) and ident_kind == "RIGID"
    matrix, matrix_kind = _sro_matrix(ds, 1)
    assert matrix_kind == kind
    # the matrix maps moving-frame points back to the fixed points the transform started from
    for p in [(0.0, 0.0, 0.0), (10.0, -20.0, 30.0), (-5.0, 7.0, 1.0)]:
        q = np.append(transform.TransformPoint(p), 1.0)
        assert_allclose((matrix @ q)[:3], p, atol=1e-6)
    assert _dciodvfy_errors(path) == []
    with pytest.raises(InvalidInputError, match="exists already"):
        dicom.write_spatial_registration(transform, path, reference_dir=fixed, moving_dir=moving)


def test_bspline_registration_is_not_stored_as_matrix(fixed_and_moving, tmp_path):
    fixed, moving, fused = fixed_and_moving
    bspline = sitk.BSplineTransformInitializer(fused, [2, 2, 2])
    params = np.array(bspline.GetParameters())
    params[::7] = 1.5
    bspline.SetParameters(tuple(params))
    with pytest.raises(InvalidInputError, match="not linear"):
        dicom.write_spatial_registration(bspline, tmp_path / "reg.dcm", reference_dir=fixed,
                                         moving_dir=moving)
    files = dicom.write_fusion_dicom(fused, tmp_path / "out", fixed=fixed, moving=moving,
                                     transform=bspline, method="average")
    assert [f.name for f in files] == [f"IM{k:05d}.dcm" for k in range(1, 6)]  # image series only


def test_header_modality_drives_normalisation(tmp_path):
    from MedFusionLib.io import read_image
    from MedFusionLib.normalize import guess_modality

    # PET values look like MR to an intensity guess; the header decides
    make_pet(tmp_path / "pet", _f18_header(), np.full((2, 4, 4), 3000.0))
    make_series(tmp_path / "nm", ramp((2, 4, 4)), modality="MR", intercept=0.0)
    assert guess_modality(read_image(tmp_path / "pet")) == ("PET", "dicom")
    assert guess_modality(read_image(tmp_path / "nm")) == ("MR", "dicom")


def test_integer_hu_volume_is_written_signed(tmp_path):
    make_series(tmp_path / "ct", ramp((3, 6, 7)))
    hu = dicom.read_series(tmp_path / "ct")  # int16, -1024 .. ~2000
    files = dicom.write_derived_series(hu, tmp_path / "out", reference_dir=tmp_path / "ct")
    d = pydicom.dcmread(files[0])
    assert d.PixelRepresentation == 1 and float(d.RescaleIntercept) == 0.0
    back = dicom.read_series(tmp_path / "out")
    step = float(d.RescaleSlope)
    assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(hu), atol=step / 2 + 1e-6)


def test_single_file_matches_simpleitk():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    img = dicom.read_series(path)
    ref = sitk.ReadImage(path)
    assert img.GetSize() == ref.GetSize() == (128, 128, 1)
    assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    assert_allclose(img.GetSpacing()[:2], ref.GetSpacing()[:2], atol=1e-6)
    assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6)
    assert_allclose(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ref))
    assert img.GetSpacing()[2] == pytest.approx(float(pydicom.dcmread(path).SliceThickness))


# --------------------------------------------------------------------------------------------
# pydicom releases (#14): 2.4 (3D Slicer 5.10) and 3.x (Slicer 5.12)
# --------------------------------------------------------------------------------------------


def test_pydicom_older_than_2_4_is_refused_with_the_version_needed(tmp_path, monkeypatch):
    make_series(tmp_path / "ct", ramp((2, 6, 6)))
    monkeypatch.setattr(pydicom, "__version__", "2.3.1")
    with pytest.raises(MissingDependencyError, match=r"pydicom >= 2\.4 .*pydicom 2\.3\.1 is installed"):
        dicom.read_series(tmp_path / "ct")


def test_written_files_are_conformant_on_this_pydicom(tmp_path):
    """Preamble, DICM prefix and the File Meta group on whichever pydicom is installed; the
    Makefile's test target runs this file on pydicom 2.4.4 (Slicer 5.10's) as well."""
    make_series(tmp_path / "ct", ramp((2, 6, 6)))
    raw = (tmp_path / "ct" / "IM0000.dcm").read_bytes()
    assert raw[128:132] == b"DICM"
    ds = pydicom.dcmread(tmp_path / "ct" / "IM0000.dcm")
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert dicom.read_series(tmp_path / "ct").GetSize() == (6, 6, 2)


def test_cut_off_pixel_data_gives_one_message_on_every_pydicom(tmp_path):
    """pydicom 2.4 and 3.x word a short PixelData differently; the reader checks it itself."""
    make_series(tmp_path / "ct", ramp((3, 6, 6)))
    f = tmp_path / "ct" / "IM0001.dcm"
    f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(InvalidInputError, match=r"IM0001\.dcm: PixelData \(7FE0,0010\) holds \d+ bytes, "
                                                r"less than expected \(72 bytes"):
        dicom.read_series(tmp_path / "ct")

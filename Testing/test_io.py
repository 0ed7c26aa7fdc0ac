"""Reading and writing images: geometry kept exactly, RGB to luminance, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.errors import InvalidInputError, OutputError
from MedFusionLib.io import COLOUR_KEY, read_image, write_image


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_volume_round_trip_keeps_geometry(tmp_path, volume_image, ext):
    path = write_image(volume_image, tmp_path / f"vol{ext}")
    back = read_image(path)
    assert back.GetSize() == volume_image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), volume_image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), volume_image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), volume_image.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(volume_image), rtol=1e-6)


def test_png_grey_round_trip_is_pixel_exact(tmp_path, phantom2d):
    img = sitk.GetImageFromArray(phantom2d)
    path = write_image(img, tmp_path / "a.png")
    back = read_image(path)
    assert back.GetDimension() == 2 and back.GetSize() == img.GetSize()
    assert sitk.GetArrayFromImage(back).dtype == np.uint8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back),
                                  np.round(phantom2d * 255).astype(np.uint8))


def test_rgb_is_reduced_to_luminance(tmp_path):
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = 50
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "c.png"))
    img = read_image(tmp_path / "c.png")
    assert img.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_allclose(sitk.GetArrayFromImage(img), 0.299 * 200 + 0.114 * 50, rtol=1e-5)
    assert img.GetMetaData(COLOUR_KEY) == "1"
    assert img.GetMetaData("MedFusion.BitsStored") == "8"


def test_grey_stored_as_rgb_is_not_flagged_colour(itk_data):
    img = read_image(itk_data / "BrainT1Slice.png")  # grey values in an RGB PNG
    assert img.GetDimension() == 2 and img.GetSize() == (181, 217)
    assert not img.HasMetaDataKey(COLOUR_KEY)


def test_read_errors_name_the_input(tmp_path):
    with pytest.raises(InvalidInputError, match="no such file"):
        read_image(tmp_path / "missing.nii.gz")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty.nii.gz: the file is empty"):
        read_image(empty)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not an image" * 10)
    with pytest.raises(InvalidInputError, match="junk.nii.gz: cannot read"):
        read_image(junk)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InvalidInputError, match="notes.txt"):
        read_image(txt)


def test_vector_image_that_is_not_rgb_is_rejected(tmp_path):
    vec = sitk.GetImageFromArray(np.zeros((4, 5, 6, 2), np.float32), isVector=True)
    sitk.WriteImage(vec, str(tmp_path / "field.nrrd"))
    with pytest.raises(InvalidInputError, match="2 components"):
        read_image(tmp_path / "field.nrrd")


def test_write_errors_and_no_partial_file(tmp_path, volume_image):
    with pytest.raises(InvalidInputError, match="unsupported output format"):
        write_image(volume_image, tmp_path / "out.xyz")
    with pytest.raises(InvalidInputError, match="cannot be written as .png"):
        write_image(volume_image, tmp_path / "out.png")
    with pytest.raises(InvalidInputError, match="does not exist"):
        write_image(volume_image, tmp_path / "nope" / "out.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_single_dicom_file_goes_through_the_dicom_reader():
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    img = read_image(path)
    ds = dcmread(path)
    assert img.GetMetaData("0008|0060") == "CT"
    assert img.GetSize() == (ds.Columns, ds.Rows, 1)
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(sitk.GetArrayFromImage(img)[0], hu)


# --- the streamed writer of .nii, .nii.gz and .nrrd (issue #23) ---------------------------------
def _oblique_volume(dtype=np.float32, shape=(7, 9, 11)):
    rng = np.random.default_rng(3)
    arr = (rng.random(shape) * 200 - 50).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        arr.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([0.5, 0.6, 0.7][:img.GetDimension()])
    img.SetOrigin([1.0, -2.0, 3.5][:img.GetDimension()])
    if img.GetDimension() == 3:
        img.SetDirection([0, 1, 0, 1, 0, 0, 0, 0, -1])
    return img, arr


def _decoded_parts(path):
    """(header bytes, uncompressed data bytes) of a .nii.gz (whole file) or gzip-encoded .nrrd."""
    import gzip

    data = path.read_bytes()
    if path.name.endswith(".nii.gz"):
        return b"", gzip.decompress(data)
    head = data[:data.find(b"\n\n") + 2]
    return head, gzip.decompress(data[len(head):])


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("dtype, shape", [(np.float32, (7, 9, 11)), (np.int16, (4, 6, 5)),
                                          (np.float32, (9, 13)), (np.uint8, (3, 4, 5))])
def test_streamed_writes_hold_what_itk_writes(tmp_path, ext, dtype, shape):
    """The parallel-deflated file decodes to exactly ITK's own compressed file's content (same
    header, same voxel bytes, NaN/Inf kept), and reads back with ITK and Python's gzip."""
    import zlib

    img, arr = _oblique_volume(dtype, shape)
    ours, itk = tmp_path / f"ours{ext}", tmp_path / f"itk{ext}"
    write_image(img, ours)
    sitk.WriteImage(img, str(itk), useCompression=True)
    assert _decoded_parts(ours) == _decoded_parts(itk)
    back = sitk.ReadImage(str(ours))
    assert back.GetDirection() == img.GetDirection() and back.GetOrigin() == img.GetOrigin()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back)[np.isfinite(arr)],
                                  arr[np.isfinite(arr)])
    # one standard gzip member (as pigz writes), not concatenated members
    raw = ours.read_bytes()
    start = 0 if ext == ".nii.gz" else raw.find(b"\n\n") + 2
    d = zlib.decompressobj(31)
    d.decompress(raw[start:])
    assert d.eof and d.unused_data == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ours.name, itk.name])


def test_parallel_gzip_is_standard_and_independent_of_threads():
    import gzip
    import io

    from MedFusionLib.gzipped import write_gzip

    data = np.random.default_rng(0).random(300_000).astype(np.float32).tobytes() + bytes(70_000)
    blocks = [data[i:i + 100_000] for i in range(0, len(data), 100_000)]
    outs = []
    for workers in (1, 3):
        buf = io.BytesIO()
        written = write_gzip(blocks, buf, workers=workers)
        outs.append(buf.getvalue())
        assert written.size == len(outs[-1])
    assert outs[0] == outs[1] and gzip.decompress(outs[0]) == data
    buf = io.BytesIO()
    write_gzip([], buf)
    assert gzip.decompress(buf.getvalue()) == b""


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_streamed_write_catches_a_file_altered_after_writing(tmp_path, monkeypatch, ext):
    """The SHA-256 of what was written is checked against the file: a byte changed (or lost)
    on the way to the disk fails the write, and nothing is left."""
    from MedFusionLib import gzipped

    real = gzipped.write_gzip

    def corrupting(blocks, fh, **kw):
        written = real(blocks, fh, **kw)
        fh.flush()
        fh.seek(-5, 2)
        fh.write(b"\x00")
        return written

    monkeypatch.setattr(gzipped, "write_gzip", corrupting)
    img, _ = _oblique_volume()
    with pytest.raises(OutputError, match=f"f{ext.replace('.', '[.]')}: the written file reads back different"):
        write_image(img, tmp_path / f"f{ext}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd"])
def test_streamed_write_catches_other_voxels_from_itk(tmp_path, monkeypatch, ext):
    """ITK's uncompressed file is compared voxel for voxel with the image before it is used."""
    from MedFusionLib import io as mio

    real = sitk.WriteImage

    def flipping(image, name, *a, **kw):
        real(image, name, *a, **kw)
        with open(name, "r+b") as fh:
            fh.seek(-3, 2)
            byte = fh.read(1)
            fh.seek(-3, 2)
            fh.write(bytes([byte[0] ^ 0xFF]))

    monkeypatch.setattr(mio.sitk, "WriteImage", flipping)
    img, _ = _oblique_volume()
    with pytest.raises(OutputError, match="other pixel values"):
        write_image(img, tmp_path / f"f{ext}")
    assert list(tmp_path.iterdir()) == []

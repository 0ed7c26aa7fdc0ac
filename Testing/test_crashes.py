"""Issue #25, files that crashed the process: transform files that segfault ITK's reader, cut-off
RLE-compressed BMPs that corrupt its heap. Every case runs in a subprocess, so that a crash
fails the test (a negative exit status) instead of taking pytest down; each checks one error
line, exit 2, the inputs unchanged (SHA-256) and nothing left behind.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from test_bad_inputs import FAST, run_cli, snapshot

EULER = ("#Insight Transform File V1.0\n#Transform 0\nTransform: Euler3DTransform_double_3_3\n"
         "Parameters: {p}\nFixedParameters: 0 0 0 0\n")


@pytest.fixture
def kit(small_inputs) -> Path:
    return small_inputs


def _refused(kit: Path, argv: list[str], *expect: str) -> str:
    before = snapshot(kit)
    r = run_cli(argv, kit)
    assert r.returncode >= 0, f"the process crashed (signal {-r.returncode}): {r.stderr[-500:]}"
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for e in expect:
        assert e in lines[0], (e, lines[0])
    assert snapshot(kit) == before
    return lines[0]


# --------------------------------------------------------------------------------------------
# 4. and 5. initial transforms


@pytest.mark.parametrize("name, params, expect", [
    ("nan", "nan 0.2 0.3 1 2 3", "'nan' is not a number"),
    ("huge", "1e400 0.2 0.3 1 2 3", "1e400 is beyond the range"),
    ("hex", "0x1p3 0.2 0.3 1 2 3", "'0x1p3' is not a number"),
    ("short", "0.1 0.2", "has 6 parameters, but the file gives 2"),
    ("comma", "0.1,0.2 0.3 1 2 3", "'0.1,0.2' is not a number"),
])
def test_a_damaged_tfm_is_refused_not_a_segfault(kit, name, params, expect):
    """Issue #25 item 5: SimpleITK.ReadTransform segfaults (or corrupts the heap) on these."""
    (kit / f"{name}.tfm").write_text(EULER.format(p=params))
    _refused(kit, ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--initial-transform",
                   f"{name}.tfm", *FAST], f"{name}.tfm", expect)


AFFINE = ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
          "Parameters: {p} 0 0 0\nFixedParameters: 0 0 0\n")


@pytest.mark.parametrize("matrix", ["0 0 0 0 0 0 0 0 0", "1 0 0 0 1 0 0 0 0", "1 2 3 2 4 6 0 0 1",
                                    "1e-6 0 0 0 1e-6 0 0 0 1e-6"])
def test_a_degenerate_initial_transform_is_refused(kit, matrix):
    """Issue #25 item 4: an all-zero or singular matrix collapsed the moving image into one
    value and the output was the fixed image at half intensity (exit 0)."""
    (kit / "t.tfm").write_text(AFFINE.format(p=matrix))
    _refused(kit, ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--initial-transform",
                   "t.tfm", *FAST], "t.tfm", "degenerate")


def test_a_nan_in_a_binary_transform_file_is_refused(kit):
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float("nan")] + [0.0] * 8)
    sitk.WriteTransform(tx, str(kit / "t.h5"))
    _refused(kit, ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--initial-transform",
                   "t.h5", *FAST], "t.h5", "NaN or infinite")


def test_a_batch_row_with_a_crashing_tfm_fails_alone(kit):
    """Issue #25 item 5: in an in-process batch one such row ended the whole batch."""
    (kit / "nan.tfm").write_text(EULER.format(p="nan 0 0 0 0 0"))
    (kit / "good.tfm").write_text(EULER.format(p="0 0 0 0 0 0"))
    (kit / "m.csv").write_text("fixed,moving,output,initial_transform\n"
                               "a.nii.gz,b.nii.gz,f1.nii.gz,nan.tfm\n"
                               "a.nii.gz,b.nii.gz,f2.nii.gz,good.tfm\n")
    r = run_cli(["batch", "m.csv", *FAST], kit)
    assert r.returncode == 3, r.stderr
    assert "line 2: failed: " in r.stderr and "nan.tfm" in r.stderr
    assert (kit / "f2.nii.gz").is_file() and not (kit / "f1.nii.gz").exists()


def test_a_good_transform_file_still_reads(tmp_path):
    from MedFusionLib.transformfiles import read_transform

    tx = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
    for ext in (".tfm", ".txt", ".h5"):
        sitk.WriteTransform(tx, str(tmp_path / f"t{ext}"))
        back = read_transform(tmp_path / f"t{ext}")
        np.testing.assert_allclose(back.GetParameters(), tx.GetParameters())
    comp = sitk.CompositeTransform([tx, sitk.TranslationTransform(3, (1.0, 0.0, 0.0))])
    sitk.WriteTransform(comp, str(tmp_path / "c.tfm"))
    read_transform(tmp_path / "c.tfm")


# --------------------------------------------------------------------------------------------
# 6. decoders that take the process down


def rle8_bmp(img: np.ndarray) -> bytes:
    """An 8-bit palette BMP, RLE8-compressed (bottom-up rows), of a uint8 image."""
    h, w = img.shape
    data = bytearray()
    for row in img[::-1]:
        x = 0
        while x < w:
            n = 1
            while x + n < w and row[x + n] == row[x] and n < 255:
                n += 1
            data += bytes([n, row[x]])
            x += n
        data += b"\x00\x00"
    data[-2:] = b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    off = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", off + len(data), 0, 0, off) + info + palette + bytes(data)


@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.97])
def test_a_cut_off_rle_bmp_is_refused(kit, fraction):
    """Issue #25 item 6: ITK's BMP decoder corrupts the heap on a cut-off RLE stream."""
    data = rle8_bmp((np.arange(32 * 40).reshape(32, 40) // 37 % 256).astype(np.uint8))
    (kit / "r.bmp").write_bytes(data[: int(len(data) * fraction)])
    _refused(kit, ["fuse", "r.bmp", "q.png", "-o", "f.png", *FAST], "r.bmp", "cut off")


def test_an_rle_bmp_that_overruns_its_rows_is_refused(kit):
    data = bytearray(rle8_bmp(np.full((8, 8), 7, np.uint8)))
    data[-4] = 200  # the last run: 200 pixels in an 8-pixel row
    (kit / "r.bmp").write_bytes(bytes(data))
    _refused(kit, ["fuse", "r.bmp", "q.png", "-o", "f.png", *FAST], "r.bmp", "damaged")


def test_a_whole_rle_bmp_reads_as_written(tmp_path):
    from MedFusionLib.io import read_image

    img = (np.arange(32 * 40).reshape(32, 40) // 37 % 256).astype(np.uint8)
    (tmp_path / "r.bmp").write_bytes(rle8_bmp(img))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(tmp_path / "r.bmp")), img)


def test_a_file_is_decoded_only_by_the_reader_of_its_format(kit):
    """A file is read by the ITK reader of its extension (the format check_complete checked),
    not by whichever of ITK's readers claims it; other extensions are refused."""
    (kit / "b.vtk").write_bytes((kit / "b.nii.gz").read_bytes())
    _refused(kit, ["fuse", "a.nii.gz", "b.vtk", "-o", "f.nii.gz", *FAST], "b.vtk",
             "unsupported input format '.vtk'")
    (kit / "fake.png").write_bytes(rle8_bmp(np.full((8, 8), 7, np.uint8)))
    _refused(kit, ["fuse", "fake.png", "q.png", "-o", "f.png", *FAST], "fake.png", "cannot read")

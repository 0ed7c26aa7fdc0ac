"""Issue #25, tracebacks (exit 1) that are now one-line errors (exit 2): each case checks the exit
status, exactly one ``medfusion CMD: error: ...`` line naming the input, no traceback, every file
in the folder unchanged (SHA-256) and nothing new left behind. Cases that need a process of
their own (a file-size limit) run in a subprocess, the others through ``main``.
"""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.cli import main
from MedFusionLib.errors import InvalidInputError
from test_bad_inputs import FAST, run_cli, snapshot, vol, write


@pytest.fixture
def kit(small_inputs) -> Path:
    return small_inputs


def one_line(kit: Path, capfd, argv: list[str], *expect: str, code: int = 2) -> str:
    before = snapshot(kit)
    got = main(argv)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    assert got == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"medfusion {argv[0]}: error: "), err
    for e in expect:
        assert e in lines[0], (e, lines[0])
    assert snapshot(kit) == before
    return lines[0]


def _nifti(kit: Path, name: str, **header) -> Path:
    """A float32 ``.nii`` with header fields overwritten: ``vox_offset``, ``bitpix``, ``pixdim1``."""
    path = write(vol(4), kit / name)
    data = bytearray(path.read_bytes())
    if "vox_offset" in header:
        data[108:112] = struct.pack("<f", header["vox_offset"])
    if "bitpix" in header:
        data[72:74] = struct.pack("<h", header["bitpix"])
    if "pixdim1" in header:
        data[80:84] = struct.pack("<f", header["pixdim1"])
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -16.0])
def test_vox_offset_that_is_not_an_offset(kit, capfd, value):
    _nifti(kit, "v.nii", vox_offset=value)
    one_line(kit, capfd, ["fuse", "v.nii", "b.nii.gz", "-o", "f.nii.gz", *FAST], "v.nii",
             "vox_offset")


def test_datatype_against_bitpix(kit, capfd):
    """Issue #25 item 6: a float32 NIfTI with bitpix 8 had its NaNs read as 0, silently."""
    arr = vol(4)
    arr[1, 2, 3] = np.nan
    path = write(arr, kit / "v.nii")
    data = bytearray(path.read_bytes())
    data[72:74] = struct.pack("<h", 8)
    path.write_bytes(bytes(data))
    one_line(kit, capfd, ["fuse", "v.nii", "b.nii.gz", "-o", "f.nii.gz", *FAST], "v.nii",
             "datatype 16", "bitpix 8")


def test_a_cut_off_hdr_img_pair_is_refused(kit, capfd):
    """Issue #25 item 6: a .hdr with half its .img was fused with half the slices as zeros."""
    sitk.WriteImage(sitk.GetImageFromArray(vol(5)), str(kit / "pair.hdr"))
    img = kit / "pair.img"
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    for given in ("pair.hdr", "pair.img"):
        one_line(kit, capfd, ["fuse", given, "b.nii.gz", "-o", "f.nii.gz", *FAST], "pair.hdr",
                 "pair.img", "cut off")


def test_a_whole_hdr_img_pair_reads_and_is_an_input(kit, capfd):
    from MedFusionLib.imagefiles import files_of
    from MedFusionLib.io import read_image

    sitk.WriteImage(sitk.GetImageFromArray(vol(5)), str(kit / "pair.hdr"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(kit / "pair.hdr")), vol(5))
    assert [p.name for p in files_of(kit / "pair.hdr")] == ["pair.hdr", "pair.img"]
    one_line(kit, capfd, ["fuse", "pair.hdr", "b.nii.gz", "-o", "f.nii.gz", "--metrics",
                          "pair.img", *FAST], "pair.img", "pair.hdr")


def _bomb(declared: np.ndarray, extra: int, nrrd: bool) -> bytes:
    """A small file whose compressed stream holds ``extra`` bytes of zeros after the data its
    header declares (a decompression bomb)."""
    img = sitk.GetImageFromArray(declared)
    raw = sitk.GetArrayFromImage(img).tobytes()
    co = zlib.compressobj(1, zlib.DEFLATED, 31)
    if nrrd:
        head = (f"NRRD0004\ntype: float\ndimension: 3\nsizes: {declared.shape[2]} "
                f"{declared.shape[1]} {declared.shape[0]}\nencoding: gzip\nendian: little\n\n")
        body = co.compress(raw) + b"".join(co.compress(bytes(1 << 22)) for _ in range(extra >> 22))
        return head.encode() + body + co.flush()
    return b""


@pytest.mark.parametrize("kind", ["nii.gz", "nrrd"])
def test_a_decompression_bomb_is_checked_in_bounded_chunks(tmp_path, kind):
    """Issue #25: a small .nii.gz or gzip NRRD that inflates far beyond what its header declares
    was held whole in memory by the completeness check (MemoryError at 4 GiB). The check reads
    in bounded chunks and never inflates beyond the declared size."""
    from MedFusionLib.imagefiles import check_complete

    arr = vol(6)
    extra = 64 << 20
    path = tmp_path / f"bomb.{kind}"
    if kind == "nrrd":
        path.write_bytes(_bomb(arr, extra, nrrd=True))
    else:
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "plain.nii"))
        with gzip.open(path, "wb", compresslevel=1) as fh:
            fh.write((tmp_path / "plain.nii").read_bytes())
            for _ in range(extra >> 22):
                fh.write(bytes(1 << 22))
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        check_complete(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"the check held {peak >> 20} MiB"


def test_a_cut_off_decompression_bomb_header_is_refused(tmp_path):
    from MedFusionLib.imagefiles import check_complete

    path = tmp_path / "short.nrrd"
    path.write_bytes(_bomb(vol(6), 0, nrrd=True)[:-200])
    with pytest.raises(InvalidInputError, match="short.nrrd"):
        check_complete(path)


def test_dicom_pixel_spacing_zero(kit, capfd):
    from test_dicom import make_series, ramp

    make_series(kit / "ct", ramp((5, 10, 12)), extra={"PixelSpacing": [0, 0]})
    one_line(kit, capfd, ["fuse", "ct", "b.nii.gz", "-o", "f.nii.gz", *FAST], "PixelSpacing",
             "positive")


@pytest.mark.parametrize("param, expect", [
    ("consistency=Infinity", "Infinity is not a finite number"),
    ("level=NaN", "NaN is not a finite number"),
    ("consistency=1", "parameter 'consistency' must be true or false"),
    ("level=two", "parameter 'level' must be a finite number"),
])
def test_param_values(kit, capfd, param, expect):
    """--param enhance=Infinity (cnn) was a TypeError traceback; the same for every method's
    true/false and number parameters (dwt's here: no torch needed)."""
    one_line(kit, capfd, ["fuse", "p.png", "q.png", "-o", "f.png", "--method", "dwt", "--param",
                          param, "--register", "none", "--quiet"], expect)


def test_output_that_is_a_symlink_loop(kit, capfd):
    (kit / "loop.png").symlink_to("loop.png")
    one_line(kit, capfd, ["fuse", "p.png", "q.png", "-o", "loop.png", *FAST], "loop.png", "loop")


@pytest.mark.parametrize("where", ["output", "input"])
def test_a_file_name_longer_than_the_file_system_takes(kit, capfd, where):
    name = "a" * 303 + ".png"
    argv = (["fuse", "p.png", "q.png", "-o", name] if where == "output"
            else ["fuse", name, "q.png", "-o", "f.png"])
    one_line(kit, capfd, [*argv, *FAST], "307 bytes")


def test_a_manifest_cell_of_50_mb(kit, capfd):
    (kit / "m.csv").write_text("fixed,moving,output\np.png,q.png," + "x" * (50 << 20) + "\n")
    one_line(kit, capfd, ["batch", "m.csv", *FAST], "m.csv, line 2", "longer than")


def test_a_nul_byte_in_a_manifest(kit, capfd):
    (kit / "m.csv").write_bytes(b"fixed,moving,output\np.png,q.png,o\x00ut.png\n")
    one_line(kit, capfd, ["batch", "m.csv", *FAST], "m.csv, line 2", "NUL byte")


def test_batch_results_on_a_full_disk_stops_and_names_the_rows_recorded(kit):
    """Issue #25: a full disk on --results was a traceback, and the rows after it never ran.
    Now the batch stops cleanly (exit 2), says which rows finished and are recorded, and the row
    that could not be recorded leaves its outputs as they were (none)."""
    rows = "".join(f"p.png,q.png,o{i}.png\n" for i in range(6))
    (kit / "m.csv").write_text("fixed,moving,output\n" + rows)
    r = run_cli(["batch", "m.csv", "--results", "r.csv", *FAST], kit, fsize=600)  # ~3 records
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "r.csv: could not record line" in lines[0] and "the batch stopped" in lines[0]
    recorded = [ln.split(",")[0] for ln in (kit / "r.csv").read_text().splitlines()[1:]]
    assert len(recorded) >= 2, recorded
    assert f"lines 2-{recorded[-1]} finished and recorded there" in lines[0]
    assert f"could not record line {int(recorded[-1]) + 1}" in lines[0]
    written = sorted(p.name for p in kit.glob("o*.png"))
    assert written == [f"o{int(n) - 2}.png" for n in recorded]  # outputs and records agree
    assert (kit / "r.csv").read_text().endswith("\n")  # no half record


def test_scheduler_file_that_is_not_json(kit, capfd):
    pytest.importorskip("distributed")
    (kit / "m.csv").write_text("fixed,moving,output\np.png,q.png,o.png\n")
    (kit / "bad.json").write_text("this is not JSON")
    one_line(kit, capfd, ["batch", "m.csv", "--scheduler", "bad.json", *FAST], "bad.json",
             "not a Dask scheduler file")


@pytest.fixture
def garbage_server():
    """A TCP server on 127.0.0.1 that answers every connection with an HTTP error page."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def test_scheduler_address_that_is_not_a_dask_scheduler(kit, capfd, garbage_server):
    """Issue #25: a server answering garbage made Dask try to allocate 3.01 EiB."""
    pytest.importorskip("distributed")
    (kit / "m.csv").write_text("fixed,moving,output\np.png,q.png,o.png\n")
    one_line(kit, capfd, ["batch", "m.csv", "--scheduler", f"tcp://127.0.0.1:{garbage_server}",
                          *FAST], "does not answer like a Dask scheduler")


def test_scheduler_address_where_nothing_listens(kit, capfd, closed_port):
    pytest.importorskip("distributed")
    (kit / "m.csv").write_text("fixed,moving,output\np.png,q.png,o.png\n")
    one_line(kit, capfd, ["batch", "m.csv", "--scheduler", f"tcp://127.0.0.1:{closed_port}", *FAST],
             "cannot reach the Dask scheduler")

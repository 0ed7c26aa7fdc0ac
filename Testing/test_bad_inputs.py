"""Bad inputs, bad outputs and faults against ``medfusion``: nothing lost, nothing silently wrong.

Every CLI case runs in a folder of its own and checks, besides its exit status and message:

- a failure prints exactly one line on stderr, ``medfusion CMD: error: ...`` naming the input,
  and no traceback;
- every file that was there before is byte-identical afterwards (SHA-256), so no input was
  touched;
- a failure leaves no new file (no partial output, no ``.medfusion-*`` temporary).

Cases run in a subprocess (``sys.executable -m MedFusionLib.cli`` with ``PYTHONPATH``) where the
process itself matters -- a file-size limit (``RLIMIT_FSIZE``, the disk-full cases), a umask,
warnings on stderr -- and in-process through :func:`MedFusionLib.cli.main` otherwise (importing
torch per process costs a second or more). Read-only folders are mode 0555, and immutable
(``chattr +i``) when the tests run as root, who ignores modes.
Library cases at the end call the functions behind the commands directly. Images are tiny
(5 x 24 x 24 volumes, 32 x 32 PNGs) and fuse with ``--method average --register none``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import resource
import shutil
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_phantom_2d, make_phantom_3d
from MedFusionLib.cli import main
from MedFusionLib.errors import InvalidInputError, OutputError

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--method", "average", "--register", "none", "--quiet"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
#: Folders made read-only by a case (immutable for root, who ignores permission bits).
_READ_ONLY: list[Path] = []


# --------------------------------------------------------------------------------------------
# Helpers


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (hidden ones included)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_symlink():
            out[str(p.relative_to(folder))] = "link->" + os.readlink(p)
    return out


#: Read-only folders root could not make immutable (no chattr, or a file system without the
#: flag): the in-process run then sees them as unwritable through os.access.
_DENY: list[Path] = []


def read_only(folder: Path) -> Path:
    """Make ``folder`` unwritable: mode 0555, and for root (who ignores modes) immutable."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    _READ_ONLY.append(folder)
    if IS_ROOT:
        try:
            subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            _DENY.append(folder.resolve())
    return folder


def run_cli(argv, cwd: Path, *, fsize: int | None = None,
            umask: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"

    def limits():
        if umask is not None:
            os.umask(umask)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "MedFusionLib.cli", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, preexec_fn=limits, timeout=300)


def write(img_or_arr, path: Path, **kw) -> Path:
    img = img_or_arr if isinstance(img_or_arr, sitk.Image) else sitk.GetImageFromArray(img_or_arr)
    sitk.WriteImage(img, str(path), **kw)
    return path


def truncate(path: Path, fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def vol(seed=0, shape=(5, 24, 24), scale=1000.0) -> np.ndarray:
    return (make_phantom_3d(shape, seed) * scale).astype(np.float32)


def png(seed=0, shape=(32, 32)) -> np.ndarray:
    return (make_phantom_2d(shape, seed) * 255).astype(np.uint8)


def sheared(path: Path) -> Path:
    """Rewrite a MetaImage/NRRD header with a 13 degree shear between its x and y axes."""
    data = path.read_bytes()
    if path.suffix == ".mha":
        data = data.replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1",
                            b"TransformMatrix = 1 0 0 0.23 1 0 0 0 1")
    else:
        data = data.replace(b"space directions: (1,0,0) (0,1,0) (0,0,1)",
                            b"space directions: (1,0,0) (0.23,1,0) (0,0,1)")
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------
# The CLI cases


@dataclass
class Case:
    setup: object                      # callable(folder) -> argv
    code: int = 2
    expect: tuple = ()                 # substrings of the error line (or of stderr on success)
    proc: bool = False                 # run in a subprocess
    fsize: int | None = None
    umask: int | None = None
    check: object = None               # callable(folder, stderr) for further checks
    new_files: tuple = field(default=())  # files a successful run must create


CASES: dict[str, Case] = {}


def case(**kw):
    def deco(fn):
        CASES[fn.__name__.removeprefix("case_")] = Case(fn, **kw)
        return fn
    return deco


# ---- already handled before this module: kept as regressions


@case(expect=("nope.nii.gz: no such file",))
def case_missing_input(d):
    return ["fuse", "nope.nii.gz", "b.nii.gz", "-o", "f.nii.gz", *FAST]


@case(expect=("empty.nii.gz: the file is empty",))
def case_empty_file(d):
    (d / "empty.nii.gz").write_bytes(b"")
    return ["fuse", "empty.nii.gz", "b.nii.gz", "-o", "f.nii.gz", *FAST]


@case(expect=("junk.nrrd: cannot read",))
def case_text_file(d):
    (d / "junk.nrrd").write_text("this is not an image\n" * 20)
    return ["fuse", "junk.nrrd", "b.nii.gz", "-o", "f.nii.gz", *FAST]


@case(expect=("p.png", "a.nii.gz", "2D"))
def case_2d_with_3d(d):
    return ["fuse", "a.nii.gz", "p.png", "-o", "f.nii.gz", *FAST]


@case(expect=("four.nii.gz: 4D images are not supported",))
def case_4d_volume(d):
    write(sitk.JoinSeries([sitk.GetImageFromArray(vol(k)) for k in range(2)]), d / "four.nii.gz")
    return ["fuse", "four.nii.gz", "b.nii.gz", "-o", "f.nii.gz", *FAST]


@case(expect=("const.nii.gz: the image is constant",))
def case_constant(d):
    write(np.full((5, 24, 24), 7.0, np.float32), d / "const.nii.gz")
    return ["fuse", "const.nii.gz", "b.nii.gz", "-o", "f.nii.gz", *FAST]


@case(expect=("a.nii.gz", "one of the inputs"))
def case_output_is_input(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "a.nii.gz", *FAST]


@case(expect=("sub/../a.nii.gz", "one of the inputs"))
def case_output_is_input_via_dotdot(d):
    (d / "sub").mkdir()
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "sub/../a.nii.gz", *FAST]


@case(expect=("link.nii.gz", "one of the inputs"))
def case_output_is_symlink_to_input(d):
    (d / "link.nii.gz").symlink_to("b.nii.gz")
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "link.nii.gz", *FAST]


@case(expect=("hard.nii.gz", "one of the inputs"))
def case_output_is_hard_link_to_input(d):
    os.link(d / "b.nii.gz", d / "hard.nii.gz")
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "hard.nii.gz", *FAST]


@case(expect=("Did you mean 'maximum'",))
def case_unknown_method(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--method", "maxmum"]


@case(expect=("no parameter 'levels'",))
def case_bad_method_parameter(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", *FAST, "--param", "levels=3"]


@case(expect=("unknown device 'tpu'",))
def case_unknown_device(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", *FAST, "--device", "tpu"]


@case(expect=("CT window",))
def case_ct_window_without_ct(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", *FAST, "--ct-window", "brain",
            "--fixed-modality", "MR", "--moving-modality", "MR"]


@case(expect=("far.nrrd does not overlap",))
def case_no_overlap_without_registration(d):
    img = sitk.GetImageFromArray(vol(4))
    img.SetOrigin((9999.0, 9999.0, 0.0))
    write(img, d / "far.nrrd")
    return ["fuse", "a.nii.gz", "far.nrrd", "-o", "f.nii.gz", *FAST]


@case(expect=("field.nrrd: a vector image with 2 components",))
def case_vector_image(d):
    write(sitk.GetImageFromArray(np.zeros((5, 6, 7, 2), np.float32), isVector=True), d / "field.nrrd")
    return ["fuse", "field.nrrd", "b.nii.gz", "-o", "f.nii.gz", *FAST]


@case(expect=("m.csv: the header must name the columns",))
def case_manifest_without_columns(d):
    (d / "m.csv").write_text("a,b\nx,y\n")
    return ["batch", "m.csv", *FAST]


@case(expect=("missing.csv: manifest not found",))
def case_manifest_missing(d):
    return ["batch", "missing.csv", *FAST]


@case(expect=("small.nii.gz", "same size"))
def case_metrics_sizes_differ(d):
    write(vol(5, (5, 20, 24)), d / "small.nii.gz")
    return ["metrics", "a.nii.gz", "b.nii.gz", "small.nii.gz", "--quiet"]


@case(expect=("is a folder",))
def case_output_is_a_folder(d):
    (d / "out.nii.gz").mkdir()
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "out.nii.gz", *FAST]


@case(expect=("nodir", "does not exist"))
def case_output_folder_missing(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "nodir/f.nii.gz", *FAST]


# ---- 1. outputs against every file that is read, detached data files included


@case(expect=("victim.mhd", "victim.zraw", "fixed.mhd"))
def case_mhd_output_onto_input_data_file(d):
    write(vol(6), d / "victim.mhd", useCompression=True)          # victim.mhd -> victim.zraw
    hdr = (d / "victim.mhd").read_text()
    (d / "fixed.mhd").write_text(hdr)                               # fixed.mhd -> victim.zraw too
    (d / "victim.mhd").unlink()
    return ["fuse", "fixed.mhd", "b.nii.gz", "-o", "victim.mhd", *FAST]


@case(expect=("victim.nhdr", "victim.raw", "fixed.nhdr"))
def case_nhdr_output_onto_input_data_file(d):
    write(vol(6), d / "victim.nhdr")
    (d / "fixed.nhdr").write_text((d / "victim.nhdr").read_text())
    (d / "victim.nhdr").unlink()
    return ["fuse", "fixed.nhdr", "b.nii.gz", "-o", "victim.nhdr", *FAST]


@case(expect=("rows.csv", "line 2", "victim.zraw", "line 3"))
def case_batch_row_writes_another_rows_data_file(d):
    write(vol(6), d / "victim.mhd", useCompression=True)
    (d / "fixed.mhd").write_text((d / "victim.mhd").read_text())
    (d / "victim.mhd").unlink()
    (d / "rows.csv").write_text("fixed,moving,output\na.nii.gz,b.nii.gz,victim.mhd\n"
                                "fixed.mhd,b.nii.gz,g.nii.gz\n")
    return ["batch", "rows.csv", *FAST]


@case(expect=("rows.csv", "lines 2 and 3"))
def case_batch_two_rows_one_output(d):
    (d / "rows.csv").write_text("fixed,moving,output\na.nii.gz,b.nii.gz,f.nii.gz\n"
                                "b.nii.gz,a.nii.gz,f.nii.gz\n")
    return ["batch", "rows.csv", *FAST]


@case(expect=("rows.csv", "line 2", "line 3 reads"))
def case_batch_row_writes_a_later_rows_input(d):
    (d / "rows.csv").write_text("fixed,moving,output\na.nii.gz,b.nii.gz,c.nii.gz\n"
                                "c.nii.gz,b.nii.gz,g.nii.gz\n")
    shutil.copy(d / "a.nii.gz", d / "c.nii.gz")
    return ["batch", "rows.csv", *FAST]


@case(expect=("two outputs",))
def case_weights_map_is_the_output(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--weights-map", "./f.nii.gz", *FAST]


@case(expect=("a.nii.gz", "one of the inputs"))
def case_metrics_json_onto_input(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--metrics", "a.nii.gz", *FAST]


@case(expect=("t.tfm", "one of the inputs"))
def case_transform_onto_input(d):
    shutil.copy(d / "b.nii.gz", d / "t.tfm")
    return ["fuse", "a.nii.gz", "t.tfm", "-o", "f.nii.gz", "--transform", "t.tfm", *FAST]


# ---- 2. failed writes (disk full: a file-size limit) are exit 2 with nothing left


def _disk_full(ext, limit=4000, src=("a.nii.gz", "b.nii.gz")):
    def setup(d):
        return ["fuse", *src, "-o", f"f{ext}", *FAST]
    setup.__name__ = f"case_disk_full{ext.replace('.', '_')}"
    return case(proc=True, fsize=limit, expect=(f"f{ext}",))(setup)


for _ext in (".nii.gz", ".mhd", ".nhdr"):  # the others: test_write_image_disk_full_leaves_nothing
    _disk_full(_ext)
_disk_full(".png", limit=300, src=("p.png", "q.png"))
_disk_full(".tif", limit=300, src=("p.png", "q.png"))


@case(proc=True, fsize=1000, expect=("m.json",))
def case_disk_full_metrics_json(d):
    return ["fuse", "p.png", "q.png", "-o", "f.png", "--metrics", "m.json", *FAST]


# ---- 3. cut-off inputs, every reader


def _cut(name, maker, fraction=0.6, expect=None):
    def setup(d):
        target = maker(d)
        truncate(target, fraction)
        return ["fuse", name, "b.nii.gz" if not name.endswith((".png", ".bmp", ".jpg", ".tif")) else "q.png",
                "-o", "f.nii.gz" if not name.endswith((".png", ".bmp", ".jpg", ".tif")) else "f.png", *FAST]
    setup.__name__ = "case_cut_" + name.replace(".", "_")
    return case(expect=expect or (name, "cut off"))(setup)


_cut("t.nii", lambda d: write(vol(7), d / "t.nii"))
_cut("t.nii.gz", lambda d: write(vol(7), d / "t.nii.gz"))
_cut("t.nrrd", lambda d: write(vol(7), d / "t.nrrd"))
_cut("tc.nrrd", lambda d: write(vol(7), d / "tc.nrrd", useCompression=True))
_cut("t.mha", lambda d: write(vol(7), d / "t.mha"))
_cut("tc.mha", lambda d: write(vol(7), d / "tc.mha", useCompression=True))
_cut("t.mhd", lambda d: (write(vol(7), d / "t.mhd"), d / "t.raw")[1], expect=("t.mhd", "t.raw", "cut off"))
_cut("tz.mhd", lambda d: (write(vol(7), d / "tz.mhd", useCompression=True), d / "tz.zraw")[1],
     expect=("tz.mhd", "tz.zraw", "cut off"))
_cut("t.nhdr", lambda d: (write(vol(7), d / "t.nhdr"), d / "t.raw")[1], expect=("t.nhdr", "t.raw", "cut off"))
_cut("tg.nhdr", lambda d: (write(vol(7), d / "tg.nhdr", useCompression=True), d / "tg.raw.gz")[1],
     expect=("tg.nhdr", "tg.raw.gz", "cut off"))
_cut("t.bmp", lambda d: write(png(7), d / "t.bmp"))
_cut("t.jpg", lambda d: write(png(7), d / "t.jpg"))
_cut("t.tif", lambda d: write(png(7), d / "t.tif"))
_cut("t.png", lambda d: write(png(7), d / "t.png"), expect=("t.png", "cannot read"))


@case(expect=("lost.mhd", "lost.raw", "missing"))
def case_mhd_data_file_missing(d):
    write(vol(7), d / "lost.mhd")
    (d / "lost.raw").unlink()
    return ["fuse", "lost.mhd", "b.nii.gz", "-o", "f.nii.gz", *FAST]


@case(expect=("huge.nii", "declares"))
def case_huge_declared_size(d):
    path = write(vol(7), d / "huge.nii")
    data = bytearray(path.read_bytes())
    data[40:56] = struct.pack("<8h", 3, 20000, 20000, 20000, 1, 1, 1, 1)
    path.write_bytes(bytes(data))
    return ["fuse", "huge.nii", "b.nii.gz", "-o", "f.nii.gz", *FAST]


# ---- 4. NaN/Inf: one rule for every format, on stderr and in the metrics JSON


def _nonfinite_json(d, stderr, name, count):
    report = json.loads((d / "m.json").read_text())
    assert report["fixed_normalization"]["nonfinite_voxels"] == count
    assert report["moving_normalization"]["nonfinite_voxels"] == 0
    assert f"{name}: {count} voxel(s) are NaN or Inf" in stderr
    assert np.all(np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(d / "f.nii.gz")))))


def _nonfinite(name, values, **kw):
    def setup(d):
        arr = vol(8)
        arr.flat[[3, 50, 400][: len(values)]] = values
        write(arr, d / name, **kw)
        return ["fuse", name, "b.nii.gz", "-o", "f.nii.gz", "--metrics", "m.json",
                "--metrics-keys", "EN,MI", *FAST]
    setup.__name__ = "case_nonfinite_" + name.replace(".", "_")
    return case(code=0, proc=True, new_files=("f.nii.gz", "m.json"),
                check=lambda d, err: _nonfinite_json(d, err, name, len(values)))(setup)


_nonfinite("nan.nii.gz", [np.nan, np.nan, np.inf])
_nonfinite("nan.nii", [np.nan, -np.inf])
_nonfinite("nan.nrrd", [np.nan, np.nan, np.inf])
_nonfinite("inf.mha", [np.inf])


@case(expect=("allnan.nii.gz: every voxel is NaN or Inf",))
def case_all_nan(d):
    write(np.full((5, 24, 24), np.nan, np.float32), d / "allnan.nii.gz")
    return ["fuse", "allnan.nii.gz", "b.nii.gz", "-o", "f.nii.gz", *FAST]


@case(expect=("nanf.nii.gz", "NaN or Inf"))
def case_metrics_fused_with_nan(d):
    arr = vol(9, scale=1.0)
    arr[0, 0, 0] = np.nan
    write(arr, d / "nanf.nii.gz")
    return ["metrics", "a.nii.gz", "b.nii.gz", "nanf.nii.gz", "--quiet", "--only", "EN"]


# ---- 6. sheared grids are refused


@case(expect=("s.mha", "sheared"))
def case_sheared_mha(d):
    sheared(write(vol(10), d / "s.mha"))
    return ["fuse", "s.mha", "b.nii.gz", "-o", "f.nii.gz", *FAST]


@case(expect=("s.nrrd", "sheared"))
def case_sheared_nrrd(d):
    sheared(write(vol(10), d / "s.nrrd"))
    return ["fuse", "a.nii.gz", "s.nrrd", "-o", "f.nii.gz", *FAST]


@case(expect=("s.nii.gz", "sheared"))
def case_sheared_nifti_sform(d):
    import nibabel

    shear = np.array([[1.0, 0.23, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    img = nibabel.Nifti1Image(vol(10).transpose(2, 1, 0), shear)
    img.set_sform(shear, code=1)
    img.set_qform(None, code=0)
    nibabel.save(img, d / "s.nii.gz")
    return ["fuse", "s.nii.gz", "b.nii.gz", "-o", "f.nii.gz", *FAST]


# ---- 7. the umask applies to every output


def _modes(d, expected):
    for name in ("f.nii.gz", "w.nii.gz", "m.json", "t.tfm"):
        assert stat.S_IMODE((d / name).stat().st_mode) == expected, name


@case(code=0, proc=True, umask=0o022, new_files=("f.nii.gz", "w.nii.gz", "m.json", "t.tfm"),
      check=lambda d, err: _modes(d, 0o644))
def case_umask_022(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--weights-map", "w.nii.gz",
            "--metrics", "m.json", "--metrics-keys", "EN", "--transform", "t.tfm", *FAST]


@case(code=0, proc=True, umask=0o027, new_files=("f.nii.gz", "w.nii.gz", "m.json", "t.tfm"),
      check=lambda d, err: _modes(d, 0o640))
def case_umask_027(d):
    return case_umask_022(d)


# ---- 9. user errors: one line, exit 2, before any work


@case(expect=("ro/f.nii.gz", "not writable"))
def case_read_only_output_folder(d):
    read_only(d / "ro")
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "ro/f.nii.gz", *FAST]


@case(expect=("ro/m.json", "not writable"))
def case_read_only_metrics_folder(d):
    read_only(d / "ro")
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--metrics", "ro/m.json", *FAST]


@case(expect=("ro/t.tfm", "not writable"))
def case_read_only_transform_folder(d):
    read_only(d / "ro")
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--transform", "ro/t.tfm", *FAST]


@case(expect=("ro/rep", "not writable"))
def case_compare_read_only_out(d):
    read_only(d / "ro")
    return ["compare", "p.png", "q.png", "--out", "ro/rep", "--methods", "average", "--quiet"]


@case(expect=("IM0002.dcm", "less than expected"))
def case_cut_dicom_slice(d):
    dicom_pair(d)
    truncate(d / "ct" / "IM0002.dcm", 0.95)
    return ["fuse", "ct", "mr", "-o", "f.nii.gz", *FAST]


@case(expect=("dangling.nii.gz: no such file",))
def case_dangling_symlink_input(d):
    (d / "dangling.nii.gz").symlink_to("gone.nii.gz")
    return ["fuse", "dangling.nii.gz", "b.nii.gz", "-o", "f.nii.gz", *FAST]


@case(expect=("t.xyz", "unsupported transform format"))
def case_transform_extension(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--transform", "t.xyz", *FAST]


@case(expect=("f.xyz", "unsupported output format"))
def case_output_extension(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.xyz", *FAST]


@case(expect=("f.png", "a.nii.gz is a 3D volume"))
def case_volume_to_png(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.png", "--method", "average", "--quiet"]


@case(expect=("w.png", "a.nii.gz is a 3D volume"))
def case_volume_weights_to_png(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--weights-map", "w.png", *FAST]


@case(expect=("w.xyz", "unsupported output format"))
def case_weights_extension(d):
    return ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--weights-map", "w.xyz", *FAST]


@case(expect=("cplx.nii.gz", "complex"))
def case_complex_input(d):
    write(vol(11).astype(np.complex64) * (1 + 1j), d / "cplx.nii.gz")
    return ["fuse", "cplx.nii.gz", "b.nii.gz", "-o", "f.nii.gz", *FAST]


@case(expect=("cplx.nrrd", "complex"))
def case_metrics_complex_fused(d):
    write(vol(11, scale=1.0).astype(np.complex64), d / "cplx.nrrd")
    return ["metrics", "a.nii.gz", "b.nii.gz", "cplx.nrrd", "--quiet"]


@case(expect=("latin.csv", "not UTF-8"))
def case_batch_manifest_not_utf8(d):
    (d / "latin.csv").write_bytes("fixed,moving,output\na.nii.gz,b.nii.gz,f\xe9.nii.gz\n".encode("latin-1"))
    return ["batch", "latin.csv", *FAST]


@case(expect=("latin.csv", "not UTF-8"))
def case_compare_manifest_not_utf8(d):
    (d / "latin.csv").write_bytes("fixed,moving,name\na.nii.gz,b.nii.gz,caf\xe9\n".encode("latin-1"))
    return ["compare", "--manifest", "latin.csv", "--out", "rep", "--methods", "average", "--quiet"]


@case(expect=("wide.csv", "line 2", "more cells"))
def case_manifest_extra_cells(d):
    (d / "wide.csv").write_text("fixed,moving,output\na.nii.gz,b.nii.gz,f.nii.gz,extra\n")
    return ["batch", "wide.csv", *FAST]


@case(expect=("--axis 5",))
def case_metrics_axis(d):
    return ["metrics", "a.nii.gz", "b.nii.gz", "a.nii.gz", "--axis", "5", "--quiet"]


@case(expect=("moved.nii.gz", "another grid", "origin"))
def case_metrics_grid_differs(d):
    img = sitk.GetImageFromArray(vol(12, scale=1.0))
    img.SetOrigin((1000.0, 0.0, 0.0))
    write(img, d / "moved.nii.gz")
    return ["metrics", "a.nii.gz", "b.nii.gz", "moved.nii.gz", "--quiet"]


@case(expect=("mask.nii.gz", "another grid", "spacing"))
def case_metrics_mask_grid_differs(d):
    img = sitk.GetImageFromArray((vol(12) > 300).astype(np.uint8))
    img.SetSpacing((2.0, 2.0, 2.0))
    write(img, d / "mask.nii.gz")
    return ["metrics", "a.nii.gz", "b.nii.gz", "a.nii.gz", "--mask", "mask.nii.gz", "--quiet"]


# ---- DICOM output: a folder, atomic, verified, nothing left on failure


def dicom_pair(d: Path) -> list[str]:
    """A CT series (fixed) and an MR series (moving) in ``d``, 5 x 10 x 12 voxels."""
    from test_dicom import make_series, ramp

    make_series(d / "ct", ramp((5, 10, 12)), description="CT head")
    make_series(d / "mr", ramp((5, 10, 12), seed=2), modality="MR", intercept=0.0,
                extra={"PatientName": "Other^Person", "PatientID": "PID-2"})
    return ["ct", "mr"]


@case(expect=("taken.txt", "not a folder"))
def case_dicom_output_is_a_file(d):
    (d / "taken.txt").write_text("x")
    return ["fuse", *dicom_pair(d), "--dicom", "-o", "taken.txt", *FAST]


@case(expect=("ro/series", "not writable"))
def case_dicom_read_only_parent(d):
    read_only(d / "ro")
    return ["fuse", *dicom_pair(d), "--dicom", "-o", "ro/series", *FAST]


@case(expect=("ct", "holds the input"))
def case_dicom_output_into_input_folder(d):
    return ["fuse", *dicom_pair(d), "--dicom", "-o", "ct", *FAST]


@case(proc=True, fsize=600, expect=("series", "could not write the DICOM series"))
def case_dicom_disk_full(d):
    return ["fuse", *dicom_pair(d), "--dicom", "-o", "series", *FAST]


def _dicom_modes(d, err):
    files = sorted((d / "series").iterdir())
    assert len(files) == 6  # five slices and the spatial registration object
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in files)


@case(code=0, proc=True, umask=0o022, check=_dicom_modes,
      new_files=tuple(f"series/IM{k:05d}.dcm" for k in range(1, 6)) + ("series/REG00001.dcm",))
def case_dicom_written_with_umask(d):
    return ["fuse", *dicom_pair(d), "--dicom", "-o", "series", *FAST]


# ---- 11. smaller items


@case(code=0, proc=True, new_files=("f.nii.gz",),
      check=lambda d, err: "NaN" not in err and "Inf" not in err)
def case_float64_beyond_float32(d):
    arr = vol(13).astype(np.float64) * 1e300
    write(arr, d / "big.nrrd")
    return ["fuse", "big.nrrd", "b.nii.gz", "-o", "f.nii.gz", *FAST]


@case(code=0, new_files=("f.nii.gz",))
def case_one_slice_volume_default_registration(d):
    write(vol(14, (1, 24, 24)), d / "one.nii.gz")
    write(vol(15, (1, 24, 24)), d / "two.nii.gz")
    return ["fuse", "one.nii.gz", "two.nii.gz", "-o", "f.nii.gz", "--method", "average", "--quiet"]


@case(code=0, proc=True, new_files=("f.png",),
      check=lambda d, err: "big.png (48x48) is resampled onto the grid of p.png (32x32)" in err)
def case_raster_sizes_differ_is_said(d):
    write(png(16, (48, 48)), d / "big.png")
    return ["fuse", "p.png", "big.png", "-o", "f.png", *FAST]


# ---- the run


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    """The shared inputs: two 3D volumes and two 8-bit PNGs."""
    k = tmp_path_factory.mktemp("kit")
    write(vol(0), k / "a.nii.gz")
    write(vol(1, scale=800.0), k / "b.nii.gz")
    write(png(2), k / "p.png")
    write(png(3), k / "q.png")
    return k


@pytest.fixture
def case_dir(tmp_path, kit):
    """A folder with copies of the kit; read-only folders made by the case are undone after."""
    for f in kit.iterdir():
        shutil.copy(f, tmp_path / f.name)
    yield tmp_path
    while _READ_ONLY:
        folder = _READ_ONLY.pop()
        if IS_ROOT and folder.resolve() not in _DENY:
            subprocess.run(["chattr", "-i", str(folder)], check=False)
        folder.chmod(0o755)
    _DENY.clear()


@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_case(name, case_dir, capfd, monkeypatch):
    c = CASES[name]
    d = case_dir
    argv = c.setup(d)
    before = snapshot(d)
    if c.proc:
        r = run_cli(argv, d, fsize=c.fsize, umask=c.umask)
        code, err = r.returncode, r.stderr
    else:
        monkeypatch.chdir(d)
        if _DENY:
            from MedFusionLib import outputs

            real = os.access
            monkeypatch.setattr(outputs.os, "access", lambda p, mode: (
                real(p, mode) and not (mode & os.W_OK and Path(p).resolve() in _DENY)))
        code = main(argv)
        err = capfd.readouterr().err
    after = snapshot(d)
    assert "Traceback" not in err, err
    assert code == c.code, (argv, err)
    changed = [k for k, h in before.items() if after.get(k) != h]
    assert not changed, f"inputs changed or removed: {changed}"
    new = sorted(set(after) - set(before))
    if c.code != 0:
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"expected one line, got: {err}"
        assert lines[0].startswith(f"medfusion {argv[0]}: error: "), lines[0]
        for e in c.expect:
            assert e in lines[0], (e, lines[0])
        assert not new, f"left behind: {new}"
    else:
        assert new == sorted(c.new_files), new
        for e in c.expect:
            assert e in err, (e, err)
    if c.check is not None:
        result = c.check(d, err)
        assert result is None or result, err


def test_there_are_enough_cases():
    assert len(CASES) >= 60


# --------------------------------------------------------------------------------------------
# Library cases


@pytest.fixture
def fsize_limit():
    """Lower this process's soft file-size limit for one block (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    class Limit:
        def __call__(self, n):
            resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))

        def reset(self):
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    limit = Limit()
    yield limit
    limit.reset()


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mhd", ".nhdr", ".nrrd", ".mha"])
def test_write_image_disk_full_leaves_nothing(tmp_path, fsize_limit, ext):
    from MedFusionLib.io import write_image

    img = sitk.GetImageFromArray(vol(20))
    fsize_limit(3000)
    try:
        with pytest.raises(OutputError, match=f"f{ext.replace('.', '[.]')}"):
            write_image(img, tmp_path / f"f{ext}")
    finally:
        fsize_limit.reset()
    assert list(tmp_path.iterdir()) == []


def test_write_image_verifies_before_rename(tmp_path, monkeypatch):
    """A writer that fails silently (ITK's NIfTI writer on a full disk) is caught by read-back."""
    from MedFusionLib import io as mio

    real = sitk.WriteImage

    def silent_partial(image, name, *a, **kw):
        real(image, name, *a, **kw)
        truncate(Path(name), 0.5)

    monkeypatch.setattr(mio.sitk, "WriteImage", silent_partial)
    with pytest.raises(OutputError, match="f.nii: the written file is cut off"):
        mio.write_image(sitk.GetImageFromArray(vol(21)), tmp_path / "f.nii")
    assert list(tmp_path.iterdir()) == []


def test_write_json_and_transform_disk_full(tmp_path, fsize_limit):
    from MedFusionLib.io import write_transform
    from MedFusionLib.outputs import write_json

    fsize_limit(50)
    try:
        with pytest.raises(OutputError, match="m.json"):
            write_json({"values": list(range(100))}, tmp_path / "m.json")
        with pytest.raises(OutputError, match="t.tfm"):
            write_transform(sitk.Euler3DTransform((1, 2, 3), 0.1, 0.2, 0.3, (4, 5, 6)), tmp_path / "t.tfm")
    finally:
        fsize_limit.reset()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_removes_everything_on_error(tmp_path):
    from MedFusionLib.outputs import atomic_output

    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "x.mhd") as tmp:
            tmp.write_text("header")
            tmp.with_suffix(".zraw").write_bytes(b"data")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_temporary_folder_is_removed_by_the_next_write(tmp_path):
    """A process killed while writing (a Dask worker, the OOM killer) leaves its hidden temporary
    folder; the next write in that folder removes it. Another host's folder is left alone until
    it is a day old; a live writer's is never touched."""
    from MedFusionLib.outputs import STALE_TEMP_S, write_text

    code = ("import sys, time\n"
            "from MedFusionLib.outputs import atomic_output\n"
            "with atomic_output(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'half' * 1000)\n"
            "    print('writing', flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "big.nii")],
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    dead = [p for p in tmp_path.iterdir() if p.name.startswith(".medfusion-")]
    assert len(dead) == 1 and dead[0].name.split("-")[-2] == str(proc.pid)
    live = tmp_path / f".medfusion-{dead[0].name.split('-')[1]}-{os.getpid()}-live"
    other_new = tmp_path / ".medfusion-otherhost-123-new"
    other_old = tmp_path / ".medfusion-otherhost-123-old"
    for d in (live, other_new, other_old):
        d.mkdir()
    os.utime(other_old, (0, os.stat(other_old).st_mtime - STALE_TEMP_S - 60))
    write_text(tmp_path / "m.txt", "next row")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.txt", live.name, other_new.name])


def test_jpeg_with_data_after_its_end_marker_is_complete(tmp_path):
    """Some cameras and tools append data after a JPEG's end-of-image marker: such a file is
    complete and reads; the same file cut inside its scan data is refused as cut off."""
    from MedFusionLib.errors import InvalidInputError
    from MedFusionLib.io import read_image

    write(png(7, (64, 64)), tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "trailer.jpg").write_bytes(data + b"EXIF-like trailer " * 40 + bytes(300))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(tmp_path / "trailer.jpg")),
                                  sitk.GetArrayFromImage(read_image(tmp_path / "t.jpg")))
    for cut in (len(data) - 2, len(data) // 2, 40):
        (tmp_path / "cut.jpg").write_bytes(data[:cut] + bytes(100))  # cut, zero-padded
        with pytest.raises(InvalidInputError, match="cut off"):
            read_image(tmp_path / "cut.jpg")


def test_mhd_is_written_atomically_with_its_data_file(tmp_path):
    from MedFusionLib.io import read_image, write_image

    old = os.umask(0o022)
    try:
        write_image(sitk.GetImageFromArray(vol(22)), tmp_path / "f.mhd")
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.mhd", "f.zraw"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in tmp_path.iterdir())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(tmp_path / "f.mhd")), vol(22))


def test_files_of_lists_detached_data_and_dicom_folders(tmp_path):
    from MedFusionLib.imagefiles import companion_files, files_of

    write(vol(23), tmp_path / "x.mhd", useCompression=True)
    write(vol(23), tmp_path / "y.nhdr", useCompression=True)
    assert [p.name for p in files_of(tmp_path / "x.mhd")] == ["x.mhd", "x.zraw"]
    assert [p.name for p in files_of(tmp_path / "y.nhdr")] == ["y.nhdr", "y.raw.gz"]
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "1.dcm").write_bytes(b"x")
    assert [p.name for p in files_of(tmp_path / "series")] == ["1.dcm"]
    assert [p.name for p in companion_files(tmp_path / "out.mhd")] == ["out.zraw"]
    assert [p.name for p in companion_files(tmp_path / "out.nhdr")] == ["out.raw"]
    assert companion_files(tmp_path / "out.nii.gz") == []


def test_check_outputs_catches_a_data_file_behind_a_header(tmp_path):
    from MedFusionLib.outputs import check_outputs

    write(vol(24), tmp_path / "in.mhd", useCompression=True)
    (tmp_path / "other.mhd").write_text((tmp_path / "in.mhd").read_text())
    with pytest.raises(OutputError, match="in.zraw"):
        check_outputs([tmp_path / "other.mhd"], [tmp_path / "in.mhd"])
    check_outputs([tmp_path / "other.mhd"], [tmp_path / "new.mhd"])


def test_nifti_nan_is_read_as_nan(tmp_path):
    from MedFusionLib.io import read_image

    arr = vol(25)
    arr[1, 2, 3], arr[2, 3, 4] = np.nan, -np.inf
    for name in ("n.nii", "n.nii.gz"):
        back = sitk.GetArrayFromImage(read_image(write(arr, tmp_path / name)))
        assert np.isnan(back[1, 2, 3]) and back[2, 3, 4] == -np.inf
        np.testing.assert_array_equal(back[np.isfinite(arr)], arr[np.isfinite(arr)])


def test_in_memory_sheared_image_is_refused():
    from MedFusionLib.io import check_direction

    img = sitk.GetImageFromArray(vol(26))
    img.SetDirection((1, 0.23, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(InvalidInputError, match="scan: the grid is sheared"):
        check_direction(img, "scan")
    img.SetDirection(sitk.VersorTransform((0.1, 0.2, 0.3), 0.3).GetMatrix())
    check_direction(img, "scan")


@pytest.mark.requires_torch
def test_forged_weights_get_no_unsafe_advice(tmp_path):
    import torch

    from MedFusionLib.nets.weights import WeightsIntegrityError, load_checkpoint, sha256_of

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "evil.pt"
    torch.save({"arch": Payload()}, path)
    with pytest.raises(WeightsIntegrityError) as info:
        load_checkpoint(path, sha256=sha256_of(path.read_bytes()))  # the digest is forged too
    msg = str(info.value)
    assert "evil.pt" in msg and "\n" not in msg and "weights_only" not in msg


def test_truncated_gzip_nifti_header_only(tmp_path):
    """A .nii.gz cut inside its header is refused as damaged, not passed to ITK."""
    from MedFusionLib.io import read_image

    path = write(vol(27), tmp_path / "h.nii.gz")
    raw = gzip.decompress(path.read_bytes())[:200]
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(InvalidInputError, match="h.nii.gz"):
        read_image(path)


# --------------------------------------------------------------------------------------------
# 10. The metric read path: every caller scores the 8-bit image the user gets


def _metrics_json(argv, capsys) -> dict:
    assert main(["metrics", *argv, "--json", "--quiet"]) == 0
    return {k: v["value"] for k, v in json.loads(capsys.readouterr().out)["metrics"].items()}


def _assert_same(got: dict, want: dict):
    assert set(got) == set(want)
    for k in want:
        if want[k] is None or np.isnan(want[k]):
            assert got[k] is None or np.isnan(got[k]), k
        else:
            assert abs(got[k] - want[k]) <= 1e-9 * max(1.0, abs(want[k])), (k, got[k], want[k])


@pytest.fixture
def png_triple(tmp_path):
    a, b = png(30, (64, 64)), png(31, (64, 64))
    f = ((a.astype(np.float64) + b) / 2 + 0.5).astype(np.uint8)
    for name, arr in (("a.png", a), ("b.png", b), ("f.png", f)):
        write(arr, tmp_path / name)
    return tmp_path, a, b, f


def test_metrics_command_scores_8bit_files_as_their_integers(png_triple, capsys):
    from MedFusionLib.metrics import ALL_KEYS, compute_metrics

    d, a, b, f = png_triple
    got = _metrics_json([str(d / "a.png"), str(d / "b.png"), str(d / "f.png")], capsys)
    _assert_same(got, compute_metrics(a, b, f, keys=ALL_KEYS, data_range=255))


def test_float_fused_scores_as_its_8bit_image():
    """Sub-level noise on a float result (what compare scored in memory) changes nothing."""
    from MedFusionLib.metrics import ALL_KEYS, compute_metrics

    a, b = png(32, (64, 64)), png(33, (64, 64))
    f = ((a.astype(np.float64) + b) / 2 + 0.5).astype(np.uint8)
    noisy = (f + np.random.default_rng(0).uniform(-0.01, 0.01, f.shape)) / 255.0
    _assert_same(compute_metrics(a / 255.0, b / 255.0, np.clip(noisy, 0, 1), keys=ALL_KEYS),
                 compute_metrics(a, b, f, keys=ALL_KEYS, data_range=255))


def test_rgb_sources_are_scored_on_their_8bit_luminance(tmp_path, capsys):
    from MedFusionLib.metrics import ALL_KEYS, compute_metrics

    rng = np.random.default_rng(1)
    rgb = np.stack([png(34, (64, 64)), png(35, (64, 64)), rng.integers(0, 256, (64, 64), np.uint8)], -1)
    write(sitk.GetImageFromArray(rgb, isVector=True), tmp_path / "c.png")
    b, f = png(36, (64, 64)), png(37, (64, 64))
    write(b, tmp_path / "b.png")
    write(f, tmp_path / "f.png")
    got = _metrics_json([str(tmp_path / "c.png"), str(tmp_path / "b.png"), str(tmp_path / "f.png")],
                        capsys)
    luma = np.floor(rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114]) + 0.5)
    _assert_same(got, compute_metrics(luma.astype(np.uint8), b, f, keys=ALL_KEYS, data_range=255))


def test_fuse_metrics_equal_metrics_of_the_written_file(png_triple, capsys):
    d, *_ = png_triple
    assert main(["fuse", str(d / "a.png"), str(d / "b.png"), "-o", str(d / "out.png"), "--metrics",
                 str(d / "m.json"), *FAST]) == 0
    from_fuse = json.loads((d / "m.json").read_text())["metrics"]
    assert from_fuse.pop("slices_used") == from_fuse.pop("slices_total") == 1
    from_file = _metrics_json([str(d / "a.png"), str(d / "b.png"), str(d / "out.png")], capsys)
    _assert_same(from_fuse, from_file)


def test_compare_scores_what_fuse_writes(png_triple, capsys):
    from MedFusionLib.io import read_image
    from MedFusionLib.report import PairInput, run_comparison

    d, *_ = png_triple
    pair = PairInput("p", read_image(d / "a.png"), read_image(d / "b.png"))
    scored = run_comparison([pair], methods="average,maximum", registration="none").pairs[0].metrics
    for method in ("average", "maximum"):
        assert main(["fuse", str(d / "a.png"), str(d / "b.png"), "-o", str(d / f"{method}.png"),
                     "--method", method, "--register", "none", "--quiet"]) == 0
        from_file = _metrics_json([str(d / "a.png"), str(d / "b.png"), str(d / f"{method}.png")],
                                  capsys)
        _assert_same(scored[method], from_file)


def test_metrics_sources_follow_the_nan_rule(tmp_path, capsys, caplog):
    arr = vol(40)
    arr[1, 5, 5], arr[2, 6, 6] = np.nan, np.inf
    write(arr, tmp_path / "nan.nii.gz")
    write(vol(41), tmp_path / "b.nii.gz")
    write(vol(42, scale=1.0), tmp_path / "f.nii.gz")
    for norm in ("modality", "minmax"):
        assert main(["metrics", str(tmp_path / "nan.nii.gz"), str(tmp_path / "b.nii.gz"),
                     str(tmp_path / "f.nii.gz"), "--json", "--only", "EN,MI",
                     "--normalize", norm]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["normalization"]["nonfinite_voxels"] == {"a": 2, "b": 0}, norm
        assert "nan.nii.gz: 2 voxel(s) are NaN or Inf" in caplog.text
        caplog.clear()


def test_write_image_from_worker_threads_keeps_stderr(tmp_path, capfd):
    """Pair jobs on worker threads (batch on a Dask worker) write concurrently: stderr survives."""
    from concurrent.futures import ThreadPoolExecutor

    from MedFusionLib.io import read_image, write_image

    img = sitk.GetImageFromArray(vol(43))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: write_image(img, tmp_path / f"f{k}.nii.gz"), range(8)))
    print("still here", file=sys.stderr)
    assert "still here" in capfd.readouterr().err
    assert all(np.array_equal(sitk.GetArrayFromImage(read_image(tmp_path / f"f{k}.nii.gz")), vol(43))
               for k in range(8))


def test_tiff_with_strips_after_its_directory_cut_off(tmp_path):
    """A TIFF laid out directory-first (as many scanners write it), cut inside its strip data."""
    from MedFusionLib.imagefiles import check_complete
    from MedFusionLib.io import read_image

    w = h = 16
    n = 8
    data_at = 8 + 2 + 12 * n + 4
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, data_at), (278, 3, 1, h), (279, 4, 1, w * h)]
    ifd = struct.pack("<H", n) + b"".join(
        struct.pack("<HHI", t, typ, c) + (struct.pack("<HH", v, 0) if typ == 3 else struct.pack("<I", v))
        for t, typ, c, v in entries) + struct.pack("<I", 0)
    pixels = png(44, (h, w)).tobytes()
    whole = tmp_path / "whole.tif"
    whole.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + pixels)
    check_complete(whole)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(whole)), png(44, (h, w)))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(InvalidInputError, match="cut.tif: the file is cut off"):
        read_image(cut)

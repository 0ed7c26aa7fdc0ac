"""Issue #25, data loss and silently wrong output: a failed re-run never deletes the last good
result, collisions are refused for every file a command writes, and nothing is written that
the engine cannot vouch for.

Each CLI case compares the SHA-256 of every file in its folder before and after, and checks that
nothing unexpected (no partial output, no ``.medfusion-*`` temporary folder) is left. Cases that
need a process of their own (a file-size limit, a signal, SIGKILL) run in a subprocess.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.cli import main
from MedFusionLib.errors import OutputError
from MedFusionLib.outputs import JOURNAL, OutputSet, interrupted_commits, write_text
from test_bad_inputs import FAST, ROOT, png, run_cli, snapshot, vol, write


@pytest.fixture
def kit(tmp_path) -> Path:
    """Two small volumes and two PNGs in a folder of their own, with an ``o/`` output folder."""
    write(vol(0), tmp_path / "mr3d.nii.gz")
    write(vol(1, scale=800.0), tmp_path / "ct3d.nii.gz")
    write(png(2), tmp_path / "mr2d.png")
    write(png(3), tmp_path / "ct2d.png")
    (tmp_path / "o").mkdir()
    return tmp_path


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")


def _no_temp(folder: Path) -> None:
    left = [p for p in folder.rglob(".medfusion-*")]
    assert not left, f"temporary folders left: {left}"


# --------------------------------------------------------------------------------------------
# 1. all or nothing


def test_failed_rerun_keeps_the_previous_result(kit):
    """Issue #25 item 1: a re-run with another method that fails on its second file (a file-size
    limit, as a full disk) leaves the first run's files exactly as they were."""
    argv = ["fuse", "mr3d.nii.gz", "ct3d.nii.gz", "-o", "o/f.nii.gz", "--weights-map", "o/w.nii",
            "--metrics", "o/m.json", "--metrics-keys", "EN", "--method", "average",
            "--register", "none", "--quiet"]
    assert run_cli(argv, kit).returncode == 0
    before = snapshot(kit)
    inode = (kit / "o/f.nii.gz").stat().st_ino
    rerun = [a if a != "average" else "maximum" for a in argv]
    r = run_cli(rerun, kit, fsize=10 * 1024)  # f.nii.gz fits, the uncompressed w.nii does not
    assert r.returncode == 2, r.stderr
    assert "w.nii" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(kit) == before
    assert (kit / "o/f.nii.gz").stat().st_ino == inode  # the very same file, not a copy
    _no_temp(kit)


def test_a_failing_rename_puts_every_previous_file_back(tmp_path, monkeypatch):
    """A rename that fails in the middle of the commit rolls back the ones already done."""
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(f"old {name}")
    before = snapshot(tmp_path)
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2 and ".medfusion-" in str(src) and "previous" not in str(dst):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OutputError, match="previous files are unchanged"):
        with OutputSet([tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"]):
            for name in ("a.txt", "b.txt", "c.txt"):
                write_text(tmp_path / name, f"new {name}")
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    _no_temp(tmp_path)


def test_an_error_after_the_first_write_changes_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError):
        with OutputSet([tmp_path / "a.txt", tmp_path / "b.txt"]):
            write_text(tmp_path / "a.txt", "new")
            raise RuntimeError("the second output failed")
    assert snapshot(tmp_path) == before
    _no_temp(tmp_path)


KILLED_MID_COMMIT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from MedFusionLib.outputs import OutputSet, write_text
    folder = Path(sys.argv[1])
    real = os.replace
    done = []
    def replace(src, dst):
        real(src, dst)
        if ".medfusion-" in str(src) and "previous" not in str(dst):
            done.append(dst)
            if len(done) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    names = ["f.nii.gz", "w.nii.gz", "m.json"]
    with OutputSet([folder / n for n in names]):
        for n in names:
            write_text(folder / n, "new " + n)
""")


def test_sigkill_during_the_commit_is_detected_and_rolled_back(tmp_path):
    """Issue #25 item 1: a process killed outright while renaming a set into place leaves its
    journal (found by interrupted_commits); the next write in that folder puts the previous
    files back, so the folder never keeps a new image beside an old metrics file."""
    out = tmp_path / "o"
    out.mkdir()
    for n in ("f.nii.gz", "w.nii.gz", "m.json"):
        (out / n).write_text("old " + n)
    (out / "other.txt").write_text("not part of the set")
    before = snapshot(out)
    r = subprocess.run([sys.executable, "-c", KILLED_MID_COMMIT, str(out)], env=_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    texts = {n: (out / n).read_text() for n in ("f.nii.gz", "w.nii.gz", "m.json")}
    assert sorted(t.split()[0] for t in texts.values()) == ["new", "new", "old"]  # half replaced
    journals = interrupted_commits(out)
    assert len(journals) == 1 and journals[0].name == JOURNAL
    listed = {Path(e["dest"]).name for e in json.loads(journals[0].read_text())["files"]}
    assert listed == {"f.nii.gz", "w.nii.gz", "m.json"}
    write_text(tmp_path / "o" / "next.txt", "the next run")  # any write in the folder
    after = snapshot(out)
    assert after.pop("next.txt")
    assert after == before
    assert interrupted_commits(out) == []
    _no_temp(out)


def test_ctrl_c_during_the_commit_lands_after_it(tmp_path, monkeypatch):
    """SIGINT arriving while a set is renamed into place waits for the renames: the set is
    complete, then the interrupt is raised."""
    real = os.replace
    sent = []

    def replace(src, dst):
        real(src, dst)
        if not sent and ".medfusion-" in str(src):
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with OutputSet([tmp_path / "a.txt", tmp_path / "b.txt"]):
            write_text(tmp_path / "a.txt", "new a")
            write_text(tmp_path / "b.txt", "new b")
    monkeypatch.undo()
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"
    _no_temp(tmp_path)


def test_dicom_series_and_registration_are_one_set(tmp_path, monkeypatch):
    """fuse --dicom into a new folder (parents created as the writer would): a failure while
    writing the registration object leaves no slice behind and no folder."""
    from test_bad_inputs import dicom_pair

    from MedFusionLib.dicom import spatial_registration

    dicom_pair(tmp_path)
    before = snapshot(tmp_path)

    def broken(*a, **kw):
        raise OutputError("REG00001.dcm: could not write the file: No space left on device; "
                          "nothing was written.")

    monkeypatch.setattr(spatial_registration, "write_file", broken)
    monkeypatch.chdir(tmp_path)
    assert main(["fuse", "ct", "mr", "--dicom", "-o", "new/series", *FAST]) == 2
    assert snapshot(tmp_path) == before and not (tmp_path / "new").exists()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(["fuse", "ct", "mr", "--dicom", "-o", "new/series", *FAST]) == 0
    assert sorted(p.name for p in (tmp_path / "new/series").iterdir()) == \
        [f"IM{k:05d}.dcm" for k in range(1, 6)] + ["REG00001.dcm"]

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
import time
from pathlib import Path

import numpy as np
import pytest

from MedFusionLib.cli import main
from MedFusionLib.errors import OutputError
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
    # a file-size limit below one uncompressed volume: the re-run's writes fail (the .nii.gz
    # writer stages the uncompressed image first; test_an_error_after_the_first_write_changes_nothing
    # covers a failure after a first file was written)
    r = run_cli(rerun, kit, fsize=10 * 1024)
    assert r.returncode == 2, r.stderr
    assert ("f.nii.gz" in r.stderr or "w.nii" in r.stderr) and "Traceback" not in r.stderr
    assert snapshot(kit) == before
    assert (kit / "o/f.nii.gz").stat().st_ino == inode  # the very same file, not a copy
    _no_temp(kit)


def test_a_failing_rename_puts_every_previous_file_back(tmp_path, monkeypatch):
    """A rename that fails in the middle of the commit rolls back the ones already done."""
    from MedFusionLib.outputs import OutputSet, write_text

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
    """An exception after the first file of a set was written leaves the folder as it was."""
    from MedFusionLib.outputs import OutputSet, write_text

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
    from MedFusionLib.outputs import JOURNAL, interrupted_commits, write_text

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
    from MedFusionLib.outputs import OutputSet, write_text

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


# --------------------------------------------------------------------------------------------
# 2. every file a command writes joins the collision checks


def _batch_case(kit, monkeypatch, capfd, manifest: str, argv: list[str], *, code=2):
    """Run ``batch`` in ``kit``; returns its stderr after checking the exit status, one error
    line and that no file changed or appeared."""
    (kit / "m.csv").write_text(manifest)
    monkeypatch.chdir(kit)
    before = snapshot(kit)
    got = main(["batch", "m.csv", *argv, "--quiet"])
    err = capfd.readouterr().err
    assert got == code, err
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err
        assert snapshot(kit) == before
    return err


def test_results_file_that_is_the_manifest_is_refused(kit, monkeypatch, capfd):
    """Issue #25 item 2: batch M.csv --results M.csv --resume replaced the manifest."""
    err = _batch_case(kit, monkeypatch, capfd, "fixed,moving,output\nmr2d.png,ct2d.png,o/f.png\n",
                      ["--results", "m.csv", "--resume", *FAST])
    assert "--results m.csv is the manifest itself" in err


def test_a_rows_metrics_file_that_is_the_results_file_is_refused(kit, monkeypatch, capfd):
    err = _batch_case(kit, monkeypatch, capfd,
                      "fixed,moving,output,metrics\nmr2d.png,ct2d.png,o/f.png,r.jsonl\n",
                      ["--results", "r.jsonl", *FAST])
    assert "--results r.jsonl is also written by line 2" in err


def test_a_row_that_writes_the_manifest_is_refused(kit, monkeypatch, capfd):
    err = _batch_case(kit, monkeypatch, capfd,
                      "fixed,moving,output,weights_map\nmr2d.png,ct2d.png,o/f.png,m.csv\n", FAST)
    assert "line 2 writes" in err and "the manifest itself" in err


def test_every_manifest_problem_is_named_at_once(kit, monkeypatch, capfd):
    """Columns, collisions and a missing output folder in one error (not one per run), and a
    missing folder named once for all its rows."""
    rows = "".join(f"mr2d.png,ct2d.png,nodir/f{i}.png,\n" for i in range(40))
    err = _batch_case(kit, monkeypatch, capfd,
                      "fixed,moving,output,methd\nmr2d.png,ct2d.png,o/a.png,\n"
                      "ct2d.png,mr2d.png,o/a.png,\n" + rows, FAST)
    assert "3 problems" in err
    assert "unknown column 'methd' (did you mean 'method'?)" in err
    assert "o/a.png is written by lines 2 and 3" in err
    assert err.count("nodir") == 1 and "does not exist (lines 4-43)" in err


# --------------------------------------------------------------------------------------------
# 8. duplicated columns; --resume compares options


def test_a_column_named_twice_is_refused(kit, monkeypatch, capfd):
    """Issue #25 item 8: fixed,moving,output,output took the last cell silently."""
    err = _batch_case(kit, monkeypatch, capfd,
                      "fixed,moving,output,output\nmr2d.png,ct2d.png,o/a.png,o/b.png\n", FAST)
    assert "names a column twice: 'output' (columns 3, 4)" in err


def test_resume_runs_a_row_again_when_its_options_changed(kit, monkeypatch, capfd):
    """Issue #25 item 8: --resume matched rows by paths only, so a changed --method was not
    applied. A row is done only if it ran with the same options."""

    monkeypatch.chdir(kit)
    (kit / "m.csv").write_text("fixed,moving,output\nmr2d.png,ct2d.png,o/f.png\n"
                               "ct2d.png,mr2d.png,o/g.png\n")
    base = ["batch", "m.csv", "--register", "none", "--results", "r.csv", "--quiet"]
    assert main(base + ["--method", "average"]) == 0
    stamp = (kit / "o/g.png").stat().st_mtime_ns
    # the same options: both rows skipped
    assert main(base + ["--method", "average", "--resume"]) == 0
    assert "2 already done" in capfd.readouterr().out
    (kit / "m.csv").write_text("fixed,moving,output,method\nmr2d.png,ct2d.png,o/f.png,maximum\n"
                               "ct2d.png,mr2d.png,o/g.png,\n")
    assert main(base + ["--method", "average", "--resume"]) == 0
    out, err = capfd.readouterr()
    assert "line 2 of r.csv ran with other options than now: run again" in err
    assert "1 fused" in out and "1 already done" in out
    assert (kit / "o/g.png").stat().st_mtime_ns == stamp
    assert main(["fuse", "mr2d.png", "ct2d.png", "-o", "ref.png", "--method", "maximum",
                 "--register", "none", "--quiet"]) == 0
    assert (kit / "ref.png").read_bytes() == (kit / "o/f.png").read_bytes()
    with open(kit / "r.csv") as fh:
        status = {r["line"]: (r["status"], r["method"]) for r in csv.DictReader(fh)}
    assert status == {"2": ("ok", "maximum"), "3": ("skipped", "average")}


# --------------------------------------------------------------------------------------------
# 9. SIGTERM is Ctrl-C; a second Ctrl-C while exiting prints no traceback


SIGNAL_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from MedFusionLib import job
    real = job.write_image
    def write_image(*a, **kw):
        out = real(*a, **kw)
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return out
    job.write_image = write_image
    from MedFusionLib.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_during_the_writes_keeps_the_previous_files(kit, sig, code):
    """Issue #25 item 9: SIGTERM had no handler (exit -15, a temporary folder left). Now it is
    Ctrl-C: exit 143, the previous result exactly as it was, nothing left behind."""
    argv = ["fuse", "mr3d.nii.gz", "ct3d.nii.gz", "-o", "o/f.nii.gz", "--weights-map",
            "o/w.nii.gz", "--method", "average", "--register", "none", "--quiet"]
    assert run_cli(argv, kit).returncode == 0
    before = snapshot(kit)
    r = subprocess.run([sys.executable, "-c", SIGNAL_DRIVER, sig, *argv[:-4], "maximum",
                        *argv[-3:]], cwd=kit, env=_env(), capture_output=True, text=True,
                       timeout=120, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr and "cancelled" in r.stderr
    assert snapshot(kit) == before
    _no_temp(kit)


SECOND_CTRL_C = textwrap.dedent("""
    import atexit, os, signal, sys, time
    from MedFusionLib import job
    def slow_exit_handler():          # what Dask's or torch's exit handlers may do
        os.kill(os.getpid(), signal.SIGINT)   # the user presses Ctrl-C again
        time.sleep(0.2)
    atexit.register(slow_exit_handler)
    real = job.read_sources
    def read_sources(spec):
        os.kill(os.getpid(), signal.SIGINT)   # the first Ctrl-C
        return real(spec)
    job.read_sources = read_sources
    from MedFusionLib.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_second_ctrl_c_while_exiting_prints_no_traceback(kit):
    """Issue #25 item 9: a second Ctrl-C printed "Exception ignored in atexit callback"."""
    r = subprocess.run([sys.executable, "-c", SECOND_CTRL_C, "fuse", "mr2d.png", "ct2d.png",
                        "-o", "o/f.png", *FAST], cwd=kit, env=_env(), capture_output=True,
                       text=True, timeout=120,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode == 130, r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert "still stopping cleanly" in r.stderr
    assert list((kit / "o").iterdir()) == []


# --------------------------------------------------------------------------------------------
# 3. compare --out: its contents are checked, and the report is all or nothing


@pytest.mark.parametrize("setup", ["input_named_like_a_figure", "manifest_named_like_a_table"])
def test_compare_never_overwrites_an_input_in_its_folder(kit, monkeypatch, capfd, setup):
    """Issue #25 item 3: an input named like a report file (spider_table2.png), or the manifest
    itself as DIR/standard.csv, was overwritten by compare (exit 0)."""

    (kit / "rep").mkdir()
    if setup == "input_named_like_a_figure":
        shutil.copy(kit / "ct2d.png", kit / "rep/spider_table2.png")
        argv = ["compare", "mr2d.png", "rep/spider_table2.png"]
        named = "rep/spider_table2.png"
    else:
        (kit / "rep/standard.csv").write_text("fixed,moving\n../mr2d.png,../ct2d.png\n")
        argv = ["compare", "--manifest", "rep/standard.csv"]
        named = "rep/standard.csv"
    monkeypatch.chdir(kit)
    before = snapshot(kit)
    assert main([*argv, "--out", "rep", "--methods", "average", "--quiet"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "one of the inputs" in err[0], err
    assert snapshot(kit) == before


@pytest.mark.slow  # three compare runs in subprocesses: about 12 s
def test_compare_on_a_full_disk_keeps_the_previous_report(kit):
    """Issue #25 item 3: on a full disk compare said "nothing was written" but left 7 files.
    Now a failed re-run leaves the earlier report exactly as it was, and nothing else."""
    argv = ["compare", "mr2d.png", "ct2d.png", "--out", "rep", "--methods", "average",
            "--metrics", "EN,SSIM,Qabf", "--quiet"]
    r = run_cli(argv, kit)
    assert r.returncode == 0, r.stderr
    before = snapshot(kit)
    r = run_cli(argv[:-4] + ["average,maximum", *argv[-3:]], kit, fsize=12 * 1024)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert snapshot(kit) == before
    _no_temp(kit)
    # into a new folder: nothing at all, not even the folder
    r = run_cli(argv[:-6] + ["new", *argv[-5:]], kit, fsize=12 * 1024)
    assert r.returncode == 2 and not (kit / "new").exists()


# --------------------------------------------------------------------------------------------
# 7. standard JSON: NaN is null


def _strict_json(text: str):
    """Parse as JavaScript's JSON.parse does: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_metrics_json_and_results_jsonl_write_nan_as_null(tmp_path):
    """Issue #25 item 7: --metrics JSON and --results *.jsonl held bare NaN."""
    from MedFusionLib.cohort import ResultsFile
    from MedFusionLib.job import PairRecord
    from MedFusionLib.outputs import write_json

    write_json({"metrics": {"MI": float("nan"), "EN": np.float32(np.inf), "SD": np.float64(2.5)},
                "values": np.array([1.0, np.nan])}, tmp_path / "m.json")
    data = _strict_json((tmp_path / "m.json").read_text())
    assert data == {"metrics": {"MI": None, "EN": None, "SD": 2.5}, "values": [1.0, None]}
    with ResultsFile(tmp_path / "r.jsonl", metric_keys=["MI"]) as results:
        results.open()
        results.write(2, PairRecord("a", "b", "c", metrics={"MI": float("nan"), "EN": 1.5}))
    rec = _strict_json((tmp_path / "r.jsonl").read_text())
    assert rec["metrics"] == {"MI": None, "EN": 1.5} and rec["line"] == 2


def test_fuse_metrics_file_is_standard_json(kit, monkeypatch):
    """A metric that is undefined for the pair reaches the file as null, through fuse."""
    from MedFusionLib import job

    real = job.volume_metrics_for

    def with_nan(*a, **kw):
        out = real(*a, **kw)
        out["EN"] = float("nan")
        return out

    monkeypatch.setattr(job, "volume_metrics_for", with_nan)
    monkeypatch.chdir(kit)
    assert main(["fuse", "mr2d.png", "ct2d.png", "-o", "o/f.png", "--metrics", "o/m.json",
                 "--metrics-keys", "EN,SD", *FAST]) == 0
    assert _strict_json((kit / "o/m.json").read_text())["metrics"]["EN"] is None


BATCH_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import dask_preload  # registers test-slow: the pixel average after a pause
    from MedFusionLib.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stopped_batch_records_exactly_the_outputs_it_kept(kit, sig, code):
    """Issue #25: after an interruption a row's outputs and its results line agree; SIGTERM
    (a scheduler's stop) is handled as Ctrl-C, with exit 143."""
    rows = "".join(f"mr2d.png,ct2d.png,o/f{i}.png,test-slow,pause=0.4\n" for i in range(8))
    (kit / "m.csv").write_text("fixed,moving,output,method,param\n" + rows)
    proc = subprocess.Popen([sys.executable, "-c", BATCH_DRIVER, str(Path(__file__).parent),
                             "batch", "m.csv", "--register", "none", "--results", "r.csv",
                             "--quiet"], cwd=kit, env=_env(), stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not (kit / "r.csv").exists() or
                                           len((kit / "r.csv").read_text().splitlines()) < 3):
        time.sleep(0.02)
    proc.send_signal(getattr(signal, sig))
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == code, err
    assert "Traceback" not in err and "interrupted" in err
    with open(kit / "r.csv") as fh:
        recorded = {Path(r["output"]).name for r in csv.DictReader(fh) if r["status"] == "ok"}
    written = {p.name for p in (kit / "o").iterdir()}
    assert recorded == written and 2 <= len(written) < 8, (recorded, written)

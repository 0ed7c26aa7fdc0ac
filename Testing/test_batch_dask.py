"""Batch on Dask: a real LocalCluster of processes, a hand-started cluster (``dask scheduler`` +
``dask worker`` on 127.0.0.1), a worker killed mid-row, a row that kills its workers, Ctrl-C,
and the in-process default without Dask installed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MedFusionLib.cli import main

distributed = pytest.importorskip("distributed", reason="Dask is installed by make setup ([dask] extra)")
psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parent.parent
PRELOAD = Path(__file__).resolve().parent / "dask_preload.py"


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _default_sigint():
    """The child takes Ctrl-C even when the suite was started with SIGINT ignored (``nohup ...
    &``), which children inherit and Python then respects."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*argv, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "MedFusionLib.cli", *argv], env=env or _env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint, **kw)


def _make_pairs(folder: Path, n: int, colour: int | None = None) -> Path:
    """``n`` small 2D PNG pairs and a manifest writing into ``folder/out``; row ``colour`` is an
    MR + pseudo-colour PET pair."""
    from conftest import make_phantom_2d

    (folder / "out").mkdir(parents=True)
    lines = ["fixed,moving,output"]
    for i in range(n):
        p = make_phantom_2d((48, 40), seed=i)
        sitk.WriteImage(sitk.GetImageFromArray((p * 255).astype(np.uint8)), str(folder / f"a{i}.png"))
        if i == colour:
            rgb = np.stack([p * 255, p ** 2 * 180, np.zeros_like(p)], -1).astype(np.uint8)
            sitk.WriteImage(sitk.GetImageFromArray(np.roll(rgb, 5, 1), isVector=True), str(folder / f"b{i}.png"))
        else:
            sitk.WriteImage(sitk.GetImageFromArray(((1 - p) * 200).astype(np.uint8)), str(folder / f"b{i}.png"))
        lines.append(f"a{i}.png,b{i}.png,out/f{i}.png")
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    return folder / "m.csv"


def _records(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def _no_children_left():
    """True when this process has no child left but multiprocessing's resource tracker (a
    helper that lives as long as its parent)."""
    def children():
        return [c for c in psutil.Process().children(recursive=True)
                if "resource_tracker" not in " ".join(c.cmdline())]

    deadline = time.monotonic() + 10
    while children() and time.monotonic() < deadline:
        time.sleep(0.2)
    return children() == []


def test_local_cluster_gives_the_in_process_bytes(tmp_path):
    manifest = _make_pairs(tmp_path / "here", 5, colour=2)
    assert main(["batch", str(manifest), "--method", "dwt", "--quiet"]) == 0
    manifest2 = _make_pairs(tmp_path / "dask", 5, colour=2)
    results = tmp_path / "r.jsonl"
    assert main(["batch", str(manifest2), "--method", "dwt", "--workers", "2", "--quiet",
                 "--results", str(results)]) == 0
    for i in range(5):
        assert _digest(tmp_path / f"here/out/f{i}.png") == _digest(tmp_path / f"dask/out/f{i}.png")
    recs = _records(results)
    assert sorted(r["line"] for r in recs) == [2, 3, 4, 5, 6]
    assert {r["status"] for r in recs} == {"ok"} and recs[0]["versions"]["medfusion"]
    assert {r["worker"].rsplit(":", 1)[1] for r in recs} != {str(os.getpid())}  # ran elsewhere
    assert next(r for r in recs if r["line"] == 4)["colour"] is True
    assert _no_children_left(), "LocalCluster left processes behind"


@contextlib.contextmanager
def hand_started_cluster(folder: Path, nworkers: int = 2, allowed_failures: int = 1):
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 only; always stopped."""
    dask = Path(sys.executable).with_name("dask")
    sched_file = folder / "scheduler.json"
    env = _env()
    env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = str(allowed_failures)
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
             "127.0.0.1:0", "--scheduler-file", str(sched_file)], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while not sched_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sched_file.is_file(), "dask scheduler did not start"
        procs.append(subprocess.Popen(
            [str(dask), "worker", "--scheduler-file", str(sched_file), "--host", "127.0.0.1",
             "--nworkers", str(nworkers), "--nthreads", "1", "--no-dashboard",
             "--preload", str(PRELOAD)], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with distributed.Client(scheduler_file=str(sched_file), timeout="30s") as client:
            client.wait_for_workers(nworkers, timeout=60)
            yield sched_file, client
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_hand_started_cluster_killed_worker_and_crashing_row(tmp_path):
    manifest = _make_pairs(tmp_path / "pairs", 6)
    with hand_started_cluster(tmp_path) as (sched_file, client):
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in client.scheduler_info()["workers"])
        # 1. a worker killed in the middle of a row: its row runs again elsewhere, every row once
        results = tmp_path / "r.jsonl"
        # test-slow exists on the workers only (their preload): name it in a column, which the
        # client does not check
        lines = manifest.read_text().splitlines()
        manifest.write_text("\n".join([lines[0] + ",method,param"]
                                      + [ln + ",test-slow,pause=1.0" for ln in lines[1:]]) + "\n")
        proc = _cli("batch", str(manifest), "--scheduler", str(sched_file), "--results",
                    str(results), "--quiet")
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                victim = busy[0]
            time.sleep(0.05)
        assert victim, "no row started"
        time.sleep(0.3)  # inside the pause of test-slow
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        recs = _records(results)
        assert sorted(r["line"] for r in recs) == [2, 3, 4, 5, 6, 7], "a row lost or done twice"
        assert {r["status"] for r in recs} == {"ok"}
        assert all(r["worker"].rsplit(":", 1)[1] != str(pid) for r in recs)
        assert sorted(p.name for p in (tmp_path / "pairs/out").iterdir()) == [f"f{i}.png" for i in range(6)]

        # 2. a row that kills every worker it runs on: failed after the allowed tries, the rest go on
        crash = tmp_path / "crash.csv"
        crash.write_text("fixed,moving,output,method\n"
                         f"{tmp_path}/pairs/a0.png,{tmp_path}/pairs/b0.png,{tmp_path}/c0.png,test-crash\n"
                         f"{tmp_path}/pairs/a1.png,{tmp_path}/pairs/b1.png,{tmp_path}/c1.png,average\n")
        proc = _cli("batch", str(crash), "--scheduler", str(sched_file), "--quiet")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, err
        assert "line 2: failed: the worker running this pair died" in err
        assert "1 fused, 1 failed" in out
        assert (tmp_path / "c1.png").is_file() and not (tmp_path / "c0.png").exists()


@pytest.mark.requires_torch
def test_each_worker_loads_the_cnn_once_not_per_row(tmp_path):
    """The model cache lives in the worker process: a worker that fuses several rows with the
    CNN reads and builds the model from its file once (counted by the workers' preload)."""
    manifest = _make_pairs(tmp_path / "pairs", 6)
    with hand_started_cluster(tmp_path) as (sched_file, client):
        results = tmp_path / "r.jsonl"
        proc = _cli("batch", str(manifest), "--method", "cnn", "--scheduler", str(sched_file),
                    "--results", str(results), "--quiet")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        recs = _records(results)
        assert len(recs) == 6 and {r["status"] for r in recs} == {"ok"}
        assert {r["model"] for r in recs} == {"fusionnet"}

        def builds():
            import os

            from MedFusionLib.nets import weights

            return os.getpid(), weights.build_model.calls

        per_worker = dict(client.run(builds).values())
        rows = {}
        for r in recs:
            pid = int(r["worker"].rsplit(":", 1)[1])
            rows[pid] = rows.get(pid, 0) + 1
        assert max(rows.values()) >= 2  # some worker ran several rows
        assert {pid: per_worker[pid] for pid in rows} == {pid: 1 for pid in rows}


@pytest.mark.requires_torch  # nsct runs in torch: slow enough per row for Ctrl-C to land mid-run
@pytest.mark.parametrize("where", [[], ["--workers", "2"]], ids=["in-process", "local-cluster"])
def test_ctrl_c_keeps_finished_rows_and_leaves_no_partial_file(tmp_path, volume_image, where):
    folder = tmp_path / "vols"
    (folder / "out").mkdir(parents=True)
    sitk.WriteImage(volume_image, str(folder / "v.nii.gz"))
    rows = "".join(f"v.nii.gz,v.nii.gz,out/f{i}.nii.gz\n" for i in range(16))
    (folder / "m.csv").write_text("fixed,moving,output\n" + rows)
    results = tmp_path / "r.csv"
    proc = _cli("batch", str(folder / "m.csv"), "--method", "nsct", "--register", "none",
                "--results", str(results), "--quiet", *where, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 2):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    lines = results.read_text().splitlines()[1:]
    written = sorted(p.name for p in (folder / "out").iterdir())
    assert 0 < len(lines) < 16 and len(written) == len(lines), (lines, written)  # no partial, no temp file
    assert all(",ok," in ln for ln in lines)


def test_in_process_batch_needs_no_dask(tmp_path):
    manifest = _make_pairs(tmp_path / "p", 2)
    block = ("import sys\n"
             "class Block:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] in ('dask', 'distributed'):\n"
             "            raise ImportError(name + ' is blocked')\n"
             "sys.meta_path.insert(0, Block())\n"
             "from MedFusionLib.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")
    run = [sys.executable, "-c", block, "batch", str(manifest), "--method", "average", "--quiet"]
    r = subprocess.run(run, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(run + ["--workers", "2"], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "pip install 'medfusion[dask]'" in r.stderr


def _preload_env() -> dict:
    """A local cluster's workers load the test methods (test-slow, test-crash) too."""
    return dict(_env(), DASK_DISTRIBUTED__WORKER__PRELOAD=json.dumps([str(PRELOAD)]))


@pytest.mark.slow
@pytest.mark.parametrize("after", [1, 3])
def test_ctrl_c_on_a_local_cluster_keeps_outputs_and_records_in_agreement(tmp_path, after):
    """Issue #25: after Ctrl-C, batch --workers 2 left a complete output that the results file
    did not record (3 of 10 tries). Every output on disk is now a recorded row, and every
    recorded row's output is on disk."""
    manifest = _make_pairs(tmp_path / "pairs", 10)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0] + ",method,param"]
                                  + [ln + ",test-slow,pause=0.7" for ln in lines[1:]]) + "\n")
    results = tmp_path / "r.jsonl"
    proc = _cli("batch", str(manifest), "--workers", "2", "--results", str(results), "--quiet",
                env=_preload_env(), start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
            not results.exists() or len(results.read_text().splitlines()) < after):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "distributed" not in err, err
    records = _records(results)
    recorded = {Path(r["output"]).name for r in records if r["status"] == "ok"}
    written = {p.name for p in (tmp_path / "pairs/out").iterdir()}
    assert recorded == written and len(recorded) < 10, (
        recorded, written, [(Path(r["output"]).name, r["status"], r.get("error")) for r in records], err)
    assert not list((tmp_path / "pairs/out").glob(".medfusion-*"))


@pytest.mark.slow
def test_a_row_that_kills_its_worker_is_one_line_on_a_local_cluster(tmp_path):
    """Issue #25: "died 1 times", and Dask's 'ERROR distributed.scheduler: ... marked as
    failed' line leaked to stderr."""
    manifest = _make_pairs(tmp_path / "pairs", 2)
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0] + ",method", lines[1] + ",test-crash",
                                   lines[2] + ",average"]) + "\n")
    proc = _cli("batch", str(manifest), "--workers", "2", "--max-tries", "1", "--quiet",
                env=_preload_env())
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 3, err
    assert err.strip().splitlines() == [
        "medfusion batch: line 2: failed: the worker running this pair died once (out of "
        "memory? see the worker logs); not retried again"], err


def test_a_job_done_on_the_scheduler_but_not_yet_at_the_client_counts_as_started():
    """Issue #25, Ctrl-C on a local cluster: a row whose worker had finished (outputs in place)
    but whose result had not reached the client yet was cancelled as 'not started', so its
    output stayed on disk unrecorded (1 of 5 tries under load). Only jobs no worker has taken
    may be cancelled."""
    from MedFusionLib import executors
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        done = client.submit(sum, [1, 2], key="medfusion-test-done")
        assert done.result(timeout=30) == 3  # state 'memory' on the scheduler
        gate = distributed.Event("medfusion-test-gate", client=client)
        running = client.submit(gate.wait, 30, key="medfusion-test-running", pure=False)
        queued = [client.submit(sum, [3, i], key=f"medfusion-test-queued-{i}", pure=False)
                  for i in range(6)]  # a worker is sent a few more than its threads, not all
        deadline = time.monotonic() + 30
        while executors._started(client, [running.key]) != {running.key}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = executors._started(client, [done.key, running.key] + [q.key for q in queued])
        assert {done.key, running.key} <= started and len(started) < 8, started
        gate.set()


def test_the_dask_sync_cleanup_error_after_ctrl_c_is_dropped_and_nothing_else(caplog):
    """Ctrl-C inside a Dask client call printed tornado's 'Exception in callback ... sync.<locals>
    .cancel' traceback (NameError in distributed's own cleanup) under the interrupt message."""
    import logging

    from MedFusionLib import executors
    executors._quiet_interrupted_sync()
    executors._quiet_interrupted_sync()  # once, however often a batch starts
    log = logging.getLogger("tornado.application")
    assert sum(isinstance(f, executors._InterruptedSyncNoise) for f in log.filters) == 1

    def logged(error, message):
        try:
            raise error
        except Exception:
            log.error(message, exc_info=True)

    with caplog.at_level(logging.ERROR, logger="tornado.application"):
        logged(NameError("cannot access free variable 'future'"),
               "Exception in callback functools.partial(<function sync.<locals>.cancel at 0x7f>)")
        logged(NameError("name 'x' is not defined"), "Exception in callback something_else")
        logged(ValueError("boom"), "Exception in callback functools.partial(<function sync.<locals>.cancel>)")
    assert [r.getMessage()[:40] for r in caplog.records] == [
        "Exception in callback something_else", "Exception in callback functools.partial("]

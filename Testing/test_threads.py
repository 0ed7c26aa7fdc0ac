"""Thread count (issue #23): cores from affinity and cgroup quotas, --threads and MEDFUSION_THREADS,
and what they set (torch, ITK, Dask workers)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from MedFusionLib import threads as T
from MedFusionLib.errors import InvalidInputError
from MedFusionLib.executors import local_threads

ROOT = Path(__file__).resolve().parent.parent


def _tree(tmp_path, membership: str, files: dict) -> tuple[Path, Path]:
    """A fake cgroup mount (``files``: relative path -> content) and /proc/self/cgroup."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    return root, proc


@pytest.fixture
def restore_threads():
    """Put ITK's, torch's and the module's thread settings back after a test that changes them."""
    itk = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    state = (T._applied, T._auto)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk)
    if torch is not None:
        torch.set_num_threads(before)
    T._applied, T._auto = state


# --- cgroup quotas ------------------------------------------------------------------------------
def test_cgroup_v2_quota_of_the_own_group_and_its_parents(tmp_path):
    root, proc = _tree(tmp_path, "0::/user.slice/job\n",
                       {"cpu.max": "max 100000\n",
                        "user.slice/cpu.max": "300000 100000\n",
                        "user.slice/job/cpu.max": "150000 100000\n"})
    assert T.cgroup_cpu_limit(root, proc) == pytest.approx(1.5)
    # 1.5 cores -> 1 thread; affinity of 8 CPUs does not raise it
    assert T.available_cores(root=root, proc_cgroup=proc, affinity=set(range(8))) == 1
    # a parent's smaller quota wins over the group's own
    (root / "user.slice/cpu.max").write_text("100000 100000\n")
    (root / "user.slice/job/cpu.max").write_text("400000 100000\n")
    assert T.cgroup_cpu_limit(root, proc) == pytest.approx(1.0)


def test_cgroup_v2_without_a_quota_leaves_the_affinity(tmp_path):
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert T.cgroup_cpu_limit(root, proc) is None
    assert T.available_cores(root=root, proc_cgroup=proc, affinity={0, 3, 5}) == 3


def test_cgroup_v1_quota(tmp_path):
    root, proc = _tree(tmp_path, "5:memory:/x\n4:cpu,cpuacct:/docker/abc\n",
                       {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
                        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert T.cgroup_cpu_limit(root, proc) == pytest.approx(2.5)
    assert T.available_cores(root=root, proc_cgroup=proc, affinity=set(range(16))) == 2
    # a quota smaller than one core still gives one thread
    (root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("50000\n")
    assert T.available_cores(root=root, proc_cgroup=proc, affinity=set(range(16))) == 1


def test_cgroup_v1_unlimited_and_a_hidden_path(tmp_path):
    root, proc = _tree(tmp_path, "3:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n",
                                               "cpu/cpu.cfs_period_us": "100000\n"})
    assert T.cgroup_cpu_limit(root, proc) is None
    # inside a container the listed path may not exist under the mount: its root is the group
    root, proc = _tree(tmp_path / "c", "3:cpu:/kubepods/pod1/ctr\n",
                       {"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert T.cgroup_cpu_limit(root, proc) == pytest.approx(2.0)


def test_no_cgroup_files_at_all(tmp_path):
    assert T.cgroup_cpu_limit(tmp_path / "none", tmp_path / "missing") is None
    assert T.available_cores(root=tmp_path / "none", proc_cgroup=tmp_path / "missing",
                             affinity={1, 2}) == 2


def test_this_process_gets_at_least_one_core_and_no_more_than_its_affinity():
    n = T.available_cores()
    # exactly the affinity, lowered to this machine's real cgroup quota (whole cores, at least 1)
    limit = T.cgroup_cpu_limit(T._CGROUP_ROOT, T._PROC_CGROUP)
    want = len(os.sched_getaffinity(0))
    if limit is not None:
        want = min(want, max(1, math.floor(limit + 1e-9)))
    assert n == want
    # the defaults are this process's affinity and its real cgroup files
    assert n == T.available_cores(root=T._CGROUP_ROOT, proc_cgroup=T._PROC_CGROUP,
                                  affinity=os.sched_getaffinity(0))


# --- the choice: --threads, MEDFUSION_THREADS, cores --------------------------------------------
def test_choice_order_flag_then_environment_then_cores(tmp_path):
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "300000 100000\n"})
    kw = dict(root=root, proc_cgroup=proc, affinity=set(range(8)))
    assert T.choose_threads(None, environ={}, **kw) == (3, "available cores")
    assert T.choose_threads(None, environ={T.ENV_VAR: "5"}, **kw) == (5, T.ENV_VAR)
    assert T.choose_threads(2, environ={T.ENV_VAR: "5"}, **kw) == (2, "--threads")
    assert T.choose_threads(None, environ={T.ENV_VAR: ""}, **kw) == (3, "available cores")


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_counts_are_refused_naming_their_source(value):
    with pytest.raises(InvalidInputError, match=T.ENV_VAR):
        T.choose_threads(None, environ={T.ENV_VAR: value})
    with pytest.raises(InvalidInputError, match="--threads"):
        T.choose_threads(value, environ={})


@pytest.mark.requires_torch
def test_apply_sets_itk_and_torch(restore_threads):
    import torch

    assert T.apply_threads(1) == 1
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
    assert torch.get_num_threads() == 1 and T.current_threads() == 1
    torch.set_num_threads(3)  # e.g. some other code changed it: the CNN sets it back
    assert T.configure_torch(torch) == 1 and torch.get_num_threads() == 1


@pytest.mark.requires_torch
def test_before_torch_is_imported_openmp_waits_passively():
    """A fresh process: apply_threads puts OMP_WAIT_POLICY=PASSIVE in the environment before
    torch starts its OpenMP runtime, and torch then gets the count (an explicit policy stays)."""
    code = ("import os, sys; from MedFusionLib import threads; threads.apply_threads(1); "
            "assert 'torch' not in sys.modules; import torch; "
            "print(os.environ.get('OMP_WAIT_POLICY'), threads.configure_torch(torch), "
            "torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PASSIVE", "1", "1"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split()[0] == "ACTIVE"


@pytest.mark.requires_torch
def test_environment_variable_is_the_default_of_a_process(restore_threads, monkeypatch):
    import torch

    monkeypatch.setenv(T.ENV_VAR, "1")
    T._applied = T._auto = None
    torch.set_num_threads(2)
    assert T.configure_torch(torch) == 1 and torch.get_num_threads() == 1


def test_local_dask_workers_share_the_threads():
    assert local_threads(2, 8) == 4
    assert local_threads(3, 2) == 1
    assert local_threads(1) == T.available_cores()  # by default, the cores this process may use
    assert local_threads(2) == max(1, T.available_cores() // 2)


# --- the option on the commands -----------------------------------------------------------------
def _pair(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        img = sitk.GetImageFromArray(rng.integers(0, 255, (40, 48), dtype=np.uint8))
        sitk.WriteImage(img, str(tmp_path / name))
        paths.append(str(tmp_path / name))
    return paths


@pytest.mark.parametrize("command", ["fuse", "batch", "compare"])
def test_commands_take_threads(command):
    from MedFusionLib.cli import build_parser

    argv = {"fuse": ["fuse", "a", "b", "-o", "c.nii"], "batch": ["batch", "m.csv"],
            "compare": ["compare", "a", "b", "--out", "d"]}[command]
    assert build_parser().parse_args(argv + ["--threads", "3"]).threads == 3
    assert build_parser().parse_args(argv).threads is None


@pytest.mark.requires_torch
def test_fuse_threads_flag_sets_torch_and_itk(tmp_path, restore_threads):
    import torch

    from MedFusionLib.cli import main

    a, b = _pair(tmp_path)
    torch.set_num_threads(2)
    assert main(["fuse", a, b, "-o", str(tmp_path / "f.png"), "--threads", "1", "--quiet"]) == 0
    assert torch.get_num_threads() == 1
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
    assert (tmp_path / "f.png").is_file()


def test_bad_threads_flag_or_variable_exit_2_with_one_line(tmp_path, restore_threads):
    a, b = _pair(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "MedFusionLib.cli", "fuse", a, b, "-o", str(tmp_path / "f.png")]
    out = subprocess.run(cmd + ["--threads", "0"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "--threads 0" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    env[T.ENV_VAR] = "many"
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and f"{T.ENV_VAR}=many" in out.stderr
    assert not (tmp_path / "f.png").exists()


@pytest.mark.requires_torch
def test_torch_is_imported_beside_registration_not_before_it():
    """check_method with device 'auto' no longer imports torch; the pair job imports it on a
    background thread while it registers (issue #23), and the fusion waits for it."""
    code = ("import sys, threading; from MedFusionLib.pipeline import check_method; "
            "check_method('cnn', {}, device='auto'); assert 'torch' not in sys.modules; "
            "from MedFusionLib import devices; devices.preload_torch(); "
            "t = devices._preload; assert t is not None and not t.daemon; "
            "devices.preload_torch(); assert devices._preload is t; "
            "import torch; assert torch.ones(2).sum().item() == 2; t.join(); print('ok')")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.requires_torch
def test_a_pair_job_preloads_torch_for_the_cnn_only(tmp_path):
    code = ("import sys; from MedFusionLib import devices; from MedFusionLib.job import PairSpec, "
            "run_pair; a, b, o = sys.argv[1:4]; "
            "run_pair(PairSpec(a, b, o, fusion={'method': sys.argv[4]})); "
            "print(devices._preload is not None)")
    a, b = _pair(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for method, want in (("average", "False"), ("cnn", "True")):
        out = subprocess.run([sys.executable, "-c", code, a, b, str(tmp_path / f"{method}.png"),
                              method], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == want

"""How many threads MedFusion's work uses: torch, ITK and MedFusion's own pools.

The number comes from, in order: the ``--threads N`` option of ``fuse``, ``batch`` and
``compare`` (:func:`apply_threads` with the value), the environment variable
``MEDFUSION_THREADS``, else the cores this process may really use (:func:`available_cores`): its
CPU affinity (``sched_getaffinity``: ``taskset``, a Slurm or container cpuset), lowered to a
cgroup CPU quota (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` of v1: Docker ``--cpus``,
Kubernetes CPU limits) where one applies.

Why it matters: torch's default is the machine's core count, and an OpenMP team of more threads
than the process gets CPU time for waits at every barrier for the thread that is not running (a
batch of 2D rows took 6 x longer at load 9 with the default than with one thread, same bytes).
For the same reason, when torch is not yet imported, :func:`apply_threads` sets
``OMP_WAIT_POLICY=PASSIVE`` (unless the environment sets it): waiting OpenMP threads then sleep
instead of spinning, so a team that shares its cores with other work does not collapse.

The thread count never changes a result: registration runs ITK on one thread whatever the
setting (:mod:`MedFusionLib.registration`), and the CNN's kernels give the same bytes on 1 or N
threads (tested).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import SimpleITK as sitk

from .errors import InvalidInputError

__all__ = ["ENV_VAR", "available_cores", "cgroup_cpu_limit", "choose_threads", "apply_threads",
           "configure_torch", "current_threads", "run_in_ranges"]

#: Environment variable that sets the thread count (the ``--threads`` option wins over it).
ENV_VAR = "MEDFUSION_THREADS"

_CGROUP_ROOT = "/sys/fs/cgroup"
_PROC_CGROUP = "/proc/self/cgroup"

#: The count :func:`apply_threads` set in this process (None: not set yet).
_applied: int | None = None
#: The automatic choice, made once per process when nothing set a count.
_auto: int | None = None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _limit_v2(folder: Path) -> float | None:
    """Cores allowed by ``cpu.max`` (``"QUOTA PERIOD"`` or ``"max PERIOD"``) in ``folder``."""
    text = _read(folder / "cpu.max")
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _limit_v1(folder: Path) -> float | None:
    """Cores allowed by ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: no quota) in ``folder``."""
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = float(quota), float(period)
    except (TypeError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None


def _own_groups(proc_cgroup: Path) -> list[tuple[str, str]]:
    """``(controllers, path)`` of each line of ``/proc/self/cgroup``."""
    text = _read(proc_cgroup) or ""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[1], parts[2]))
    return out


def cgroup_cpu_limit(root: str | os.PathLike = _CGROUP_ROOT,
                     proc_cgroup: str | os.PathLike = _PROC_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup, in cores (e.g. 1.5), or None when there is none.

    Looks at the process's own group (from ``proc_cgroup``) and every group above it up to
    ``root`` (a parent's quota limits its children too), for cgroup v2 (``cpu.max``) and v1
    (``cpu.cfs_quota_us``, in the ``cpu`` or ``cpu,cpuacct`` hierarchy); the smallest quota
    found wins.

    Parameters
    ----------
    root : path, optional
        Where the cgroup file system is mounted (tests pass a fake tree).
    proc_cgroup : path, optional
        The process's cgroup membership file.
    """
    root = Path(root)
    limits = []
    for controllers, path in _own_groups(Path(proc_cgroup)):
        rel = path.lstrip("/")
        if controllers == "":  # v2 unified hierarchy
            bases, reader = [root], _limit_v2
        elif "cpu" in controllers.split(","):
            bases = [root / controllers, root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"]
            reader = _limit_v1
        else:
            continue
        for base in bases:
            if not base.is_dir():
                continue
            folder = base / rel if rel else base
            chain = [folder, *[p for p in folder.parents if base in p.parents or p == base]]
            for f in chain:
                limit = reader(f)
                if limit is not None:
                    limits.append(limit)
            break
    if not limits:  # a container whose cgroup namespace hides the path: its root is its own group
        for reader, folder in ((_limit_v2, root), (_limit_v1, root / "cpu"),
                               (_limit_v1, root / "cpu,cpuacct")):
            limit = reader(folder)
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def available_cores(*, root: str | os.PathLike = _CGROUP_ROOT,
                    proc_cgroup: str | os.PathLike = _PROC_CGROUP,
                    affinity: set | None = None) -> int:
    """Cores this process may use: its CPU affinity, lowered to its cgroup quota (at least 1).

    A fractional quota is rounded down (1.5 cores -> 1 thread): a team of more threads than the
    quota pays for each throttled thread at every barrier.

    Parameters
    ----------
    root, proc_cgroup : path, optional
        As :func:`cgroup_cpu_limit`.
    affinity : set of int, optional
        The CPUs allowed (default: ``os.sched_getaffinity(0)``, or ``os.cpu_count()`` where the
        platform has no affinity).
    """
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cores = len(affinity) if affinity else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit + 1e-9)))
    return max(1, int(cores))


def _positive(value, what: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise InvalidInputError(f"{what}: expected a whole number of threads of at least 1, got "
                                f"{value!r}.")
    return n


def choose_threads(requested: int | str | None = None, *, environ: dict | None = None,
                   **cores_kwargs) -> tuple[int, str]:
    """The thread count to use and where it came from.

    Parameters
    ----------
    requested : int or str, optional
        The ``--threads`` value; wins when given.
    environ : dict, optional
        Environment to read :data:`ENV_VAR` from (default ``os.environ``).
    **cores_kwargs
        Passed to :func:`available_cores` (fake cgroup trees in tests).

    Returns
    -------
    threads : int
        At least 1.
    source : str
        ``"--threads"``, ``"MEDFUSION_THREADS"`` or ``"available cores"``.

    Raises
    ------
    InvalidInputError
        If the option or the variable is not a whole number >= 1 (naming which).
    """
    if requested is not None:
        return _positive(requested, f"--threads {requested}"), "--threads"
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR)
    if value not in (None, ""):
        return _positive(value, f"{ENV_VAR}={value}"), ENV_VAR
    return available_cores(**cores_kwargs), "available cores"


def apply_threads(threads: int | None = None) -> int:
    """Use ``threads`` threads (default: :func:`choose_threads`) for torch, ITK and MedFusion's
    pools in this process; returns the count.

    torch is set now if it is imported, else when MedFusion imports it (:func:`configure_torch`);
    before torch is imported, ``OMP_WAIT_POLICY=PASSIVE`` is put in the environment (unless it
    sets the policy), which torch's OpenMP runtime reads when it starts.

    Raises
    ------
    InvalidInputError
        If ``threads`` (or, without it, ``MEDFUSION_THREADS``) is not a whole number >= 1.
    """
    global _applied
    n = choose_threads(threads)[0]
    _applied = n
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    else:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return n


def current_threads() -> int:
    """The count set by :func:`apply_threads`, else :func:`choose_threads`'s choice (made once)."""
    global _auto
    if _applied is not None:
        return _applied
    if _auto is None:
        _auto = choose_threads()[0]
    return _auto


def configure_torch(torch) -> int:
    """Give torch the chosen thread count (call right after ``import torch``); returns it.

    The first call in a process where nothing chose a count applies :func:`choose_threads`'s
    (``MEDFUSION_THREADS`` or the available cores) instead of torch's default of every core of the
    machine.
    """
    n = current_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of ``workers`` threads, kept for the process (threads that live on keep their
    memory arenas and torch state warm between batches)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(max_workers=workers,
                                                        thread_name_prefix="medfusion-slices")
        return pool


def run_in_ranges(run, n: int, *, workers: int, grain: int = 1) -> list:
    """``run(lo, hi)`` over ``[0, n)`` in ranges of ``grain`` items, shared among ``workers``
    Python threads, with torch single-threaded meanwhile; the results in order.

    Slice-parallel work scales better than torch's intra-op threads for slice-sized tensors and
    does not collapse when other processes hold the cores (no OpenMP barrier waits for a thread
    that is not running); torch releases the GIL inside its kernels. Each range is computed by one
    thread with the same kernels, so the result does not depend on ``workers``.

    Parameters
    ----------
    run : callable
        ``run(lo, hi) -> result`` for items ``lo:hi``.
    n : int
        Number of items.
    workers : int
        Threads (with 1, or a single range, ``run`` is called in this thread).
    grain : int, optional
        Items per call.
    """
    edges = list(range(0, n, max(1, int(grain)))) + [n]
    ranges = list(zip(edges[:-1], edges[1:]))
    workers = max(1, min(int(workers), len(ranges)))
    if threading.current_thread().name.startswith("medfusion-slices"):
        workers = 1  # called from one of the pool's own threads: no waiting on the pool
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if before is not None and before != 1:
        torch.set_num_threads(1)
    try:
        if workers == 1:
            return [run(lo, hi) for lo, hi in ranges]
        return list(_pool(workers).map(lambda r: run(*r), ranges))
    finally:
        if before is not None and before != 1:
            torch.set_num_threads(before)

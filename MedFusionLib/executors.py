"""Where the pair jobs of a batch run: in this process, or on a Dask cluster.

:func:`run_jobs` takes ``(key, PairSpec)`` jobs and calls ``on_record(key, record)`` as each one
finishes, in the order they finish.

- Default: one after another in this process. Nothing to start, and Dask need not be installed.
- ``workers=N``: a local Dask cluster (``distributed.LocalCluster``) of N worker processes with
  ``cores // N`` threads each; each worker runs one pair at a time with torch and ITK set to that
  many threads, so workers x threads = cores.
- ``scheduler=ADDRESS``: an existing Dask cluster (``tcp://host:port`` or the scheduler's JSON
  file), started by hand (``dask scheduler`` / ``dask worker``), by dask-jobqueue or on
  Kubernetes. Workers started with ``--resources pair=1`` run one pair at a time with their
  ``--nthreads`` threads; others run ``--nthreads`` pairs at once, one thread each.

Jobs carry only paths: each worker reads its inputs from shared storage and writes its outputs
there. A worker keeps its loaded CNN between jobs (the model cache of
:func:`MedFusionLib.nets.weights.load_model` lives in the worker process). When a worker dies
(killed, out of memory), the scheduler runs its jobs again on another worker; a job that has
taken down ``max_tries`` workers is recorded as failed and the batch goes on. Outputs are written
atomically, so a worker that dies while writing leaves no half-written file under an output name.
On ``KeyboardInterrupt`` running jobs are asked to stop (they remove what they wrote), nothing
more is started, and the interrupt propagates.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from . import interrupts, optional
from .errors import CancelledError, InvalidInputError, MedFusionError
from .job import WRITE_MESSAGE, PairRecord, PairSpec, package_versions, run_pair
from .outputs import sweep_stale_temp
from .threads import apply_threads, available_cores

__all__ = ["run_jobs", "pair_task", "local_threads", "worker_environment", "scheduler_address",
           "probe_scheduler", "RESOURCE"]

#: Dask worker resource that limits a worker to one pair at a time (``--resources pair=1``).
RESOURCE = "pair"

_WHAT = "--workers and --scheduler (cohorts on Dask)"
dask = optional.lazy("dask", what=_WHAT)
distributed = optional.lazy("distributed", what=_WHAT)

#: Seconds that running jobs get to stop after Ctrl-C before the cluster is closed.
CANCEL_GRACE_S = 30.0

logger = logging.getLogger("MedFusionLib")


def local_threads(workers: int, cores: int | None = None) -> int:
    """Threads per worker so that ``workers x threads`` is ``cores`` (default: the cores this
    process may use, :func:`MedFusionLib.threads.available_cores`), at least 1."""
    if cores is None:
        cores = available_cores()
    return max(1, int(cores or 1) // max(1, workers))


def _cancelled(event_name: str | None) -> bool:
    if not event_name:
        return False
    try:
        return distributed.Event(event_name).is_set()
    except Exception:  # the scheduler is going away
        return True


def _cancel_watch(event_name: str | None):
    """A progress callback that says stop once the Dask event ``event_name`` is set."""
    if not event_name:
        return None
    event = distributed.Event(event_name)
    last = [0.0]

    def check(fraction, message):
        now = time.monotonic()
        if now - last[0] < 0.5 and message != WRITE_MESSAGE:
            return None
        last[0] = now
        try:
            return False if event.is_set() else None
        except Exception:  # the scheduler is going away: the cluster stops this worker anyway
            return None

    return check


def pair_task(spec: PairSpec, threads: int | None = None, cancel_event: str | None = None,
              deliver: Callable[[PairRecord], None] | None = None) -> PairRecord:
    """Run one pair job and always return its record (what a Dask worker executes).

    ``threads``: torch/ITK threads for this process; ``-1`` means the worker's own thread
    count. A job error is a ``failed`` record with its one-line message; a bug is a ``failed``
    record with the exception and the last line of its traceback. ``deliver`` is
    :func:`~MedFusionLib.job.run_pair`'s (called inside the commit of the outputs; its errors
    propagate); records made here (a bug, a cancellation) are not delivered.
    """
    if threads == -1:
        threads = distributed.get_worker().state.nthreads
    if threads:
        apply_threads(threads)
    _undo_malloc_trim()
    if _cancelled(cancel_event):  # queued when the batch was stopped: nothing is started
        return _failed(spec, "cancelled: the batch was stopped before this row started")
    try:
        return run_pair(spec, progress=_cancel_watch(cancel_event), errors="record",
                        deliver=deliver)
    except CancelledError as exc:
        return _failed(spec, f"cancelled: {exc}")
    except MedFusionError:  # with errors="record" only the caller's delivery raises one
        raise
    except Exception as exc:  # a bug must not take the batch down: record it and go on
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return _failed(spec, f"internal error {type(exc).__name__}: {exc} "
                             f"({Path(where.filename).name}:{where.lineno})")


def _failed(spec: PairSpec, error: str) -> PairRecord:
    return PairRecord(spec.fixed, spec.moving, spec.output, status="failed", error=error,
                      label=spec.label, versions=package_versions(),
                      options=spec.options_digest())


def run_jobs(jobs: Iterable[tuple[int, PairSpec]], on_record: Callable[[int, PairRecord], None], *,
             workers: int | None = None, scheduler: str | None = None, max_tries: int = 3,
             threads: int | None = None) -> None:
    """Run pair jobs and hand each finished record to ``on_record(key, record)``.

    Parameters
    ----------
    jobs : iterable of (key, PairSpec)
    on_record : callable
        Called in this process, once per job, as jobs finish.
    workers : int, optional
        Run on a local Dask cluster of this many worker processes.
    scheduler : str, optional
        Run on an existing Dask cluster: ``tcp://host:port`` or a scheduler JSON file.
    max_tries : int, optional
        Dask: a job whose worker died this many times is recorded as failed (applies to the
        scheduler this call starts; an existing scheduler uses its own
        ``distributed.scheduler.allowed-failures``).
    threads : int, optional
        ``workers``: the threads shared among the local workers (default: the usable cores).
        In this process the caller's setting applies (:func:`MedFusionLib.threads.apply_threads`);
        workers of an existing cluster use their own ``--nthreads``.

    Raises
    ------
    InvalidInputError
        Bad ``workers``/``scheduler``, or the scheduler cannot be reached.
    MissingDependencyError
        ``workers``/``scheduler`` without Dask installed.
    KeyboardInterrupt
        After stopping the running jobs; every record handed over before stays valid.
    """
    jobs = list(jobs)
    if workers is not None and scheduler is not None:
        raise InvalidInputError("give --workers or --scheduler, not both.")
    if workers is None and scheduler is None:
        for key, spec in jobs:
            delivered: list[PairRecord] = []

            def deliver(record, key=key, delivered=delivered):
                delivered.append(record)
                on_record(key, record)

            record = pair_task(spec, deliver=deliver)
            if not delivered:
                on_record(key, record)
            if interrupts.received():  # a Ctrl-C that the job swallowed (inside ITK)
                raise KeyboardInterrupt
        return
    if workers is not None and workers < 1:
        raise InvalidInputError(f"--workers must be at least 1, got {workers}.")
    if max_tries < 1:
        raise InvalidInputError(f"max_tries must be at least 1, got {max_tries}.")
    optional.require("distributed", what=_WHAT)
    for name in ("distributed", "distributed.nanny", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # "Task ... marked as failed because N workers died": the row's record says it in one line
    logging.getLogger("distributed.scheduler").setLevel(logging.CRITICAL)
    _quiet_interrupted_sync()
    with dask.config.set({"distributed.scheduler.allowed-failures": max_tries - 1}):
        if workers is not None:
            threads = local_threads(workers, threads)
            try:
                with dask.config.set({"distributed.nanny.pre-spawn-environ":
                                      worker_environment(threads)}), \
                        distributed.LocalCluster(n_workers=workers, threads_per_worker=threads,
                                                 processes=True, dashboard_address=None,
                                                 resources={RESOURCE: 1}) as cluster, \
                        distributed.Client(cluster) as client:
                    # Ctrl-C reaches the whole process group: the workers leave it to this
                    # process, which stops their rows cleanly (restarted workers get the plugin)
                    client.register_plugin(_IgnoreInterrupts())
                    _run_on(client, jobs, on_record, threads=threads, resources={RESOURCE: 1})
            except KeyboardInterrupt:
                # the workers are gone: a row killed in the middle of its commit is rolled back
                # now (its journal), so that outputs and the results file agree
                for folder in {f for _, spec in jobs for f in _output_folders(spec)}:
                    sweep_stale_temp(folder)
                raise
        else:
            with _connect(scheduler) as client:
                info = client.scheduler_info()
                one_at_a_time = bool(info.get("workers")) and all(
                    RESOURCE in (w.get("resources") or {}) for w in info["workers"].values())
                _run_on(client, jobs, on_record, threads=-1 if one_at_a_time else 1,
                        resources={RESOURCE: 1} if one_at_a_time else None)


#: glibc's mallopt parameters, and the values its adaptive thresholds settle at on 64-bit Linux
#: after the first large arrays are freed (``DEFAULT_MMAP_THRESHOLD_MAX``, twice that to trim).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 32 << 20, 64 << 20


@lru_cache(maxsize=1)
def _undo_malloc_trim() -> bool:
    """In a worker that Dask's nanny started with ``MALLOC_TRIM_THRESHOLD_`` (its default 65536):
    set glibc's mmap and trim thresholds to what its adaptive thresholds would have reached
    (:func:`worker_environment` explains the cost). Once per process; False where it does not
    apply (not glibc, or no such setting)."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
                    and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False


def worker_environment(threads: int) -> dict:
    """The environment of a local cluster's worker processes (Dask's
    ``distributed.nanny.pre-spawn-environ``): numpy's BLAS, OpenMP and MKL with ``threads``
    threads, as torch and ITK get, and -- unlike Dask's default -- no ``MALLOC_TRIM_THRESHOLD_``.

    That setting (65536 in Dask's default) also switches off glibc's adaptive mmap threshold,
    so every array over 128 KiB is a fresh mmap and every first touch a page fault: the
    metrics of a 40 x 256 x 256 pair took 24.3 s instead of 6.8 s, 8.0 s of it system time,
    with 5.0 million page faults instead of 36 (``bench/bench_batch.py``, ``docs/scaling.md``).
    Workers started
    by hand keep Dask's setting; :func:`pair_task` then sets glibc's thresholds itself.
    """
    n = str(int(threads))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


def _output_folders(spec: PairSpec) -> list[Path]:
    """The folders a job's outputs are written in (its DICOM output folder itself)."""
    folders = [Path(p).absolute().parent for p in spec.outputs()]
    if spec.dicom:
        folders.append(Path(spec.output).absolute())
    return folders


class _InterruptedSyncNoise(logging.Filter):
    """Drops one log record: Ctrl-C landing in a Dask client call before its coroutine started
    makes ``distributed.utils.sync``'s cleanup callback fail with ``NameError: cannot access
    free variable 'future'`` (distributed 2026.8), which tornado logs with a traceback. Nothing
    is lost by it (the interrupt is handled as any other); every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, NameError) and "sync.<locals>.cancel" in record.getMessage())


def _quiet_interrupted_sync() -> None:
    log = logging.getLogger("tornado.application")
    if not any(isinstance(f, _InterruptedSyncNoise) for f in log.filters):
        log.addFilter(_InterruptedSyncNoise())


def _IgnoreInterrupts():
    """A Dask worker plugin that makes each worker process ignore SIGINT (its class is built on
    first use, so that this module imports without Dask)."""

    class IgnoreInterrupts(distributed.WorkerPlugin):
        name = "medfusion-ignore-sigint"

        def setup(self, worker):
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreInterrupts()


#: Seconds to wait for a scheduler address to answer like a Dask scheduler.
PROBE_TIMEOUT_S = 5.0


def scheduler_address(scheduler: str) -> str:
    """The address of an existing Dask scheduler: ``tcp://host:port`` as given, or read from a
    scheduler JSON file (``dask scheduler --scheduler-file``).

    Raises
    ------
    InvalidInputError
        Neither an address nor a readable scheduler file.
    """
    if "://" in scheduler:
        return scheduler
    path = Path(scheduler)
    if path.suffix.lower() != ".json":
        raise InvalidInputError(f"--scheduler {scheduler}: expected tcp://host:port or a "
                                "scheduler JSON file (dask scheduler --scheduler-file).")
    if not path.is_file():
        raise InvalidInputError(f"{scheduler}: no such scheduler file.")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"{scheduler}: not a Dask scheduler file (it is not JSON: "
                                f"{str(exc).splitlines()[0][:100]}).") from None
    address = info.get("address") if isinstance(info, dict) else None
    if not isinstance(address, str) or "://" not in address:
        raise InvalidInputError(f"{scheduler}: not a Dask scheduler file (no 'address' field "
                                "naming tcp://host:port).")
    return address


def probe_scheduler(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Check that ``tcp://host:port`` answers like a Dask scheduler, within ``timeout`` seconds.

    A Dask server sends its handshake first: an 8-byte little-endian length, then that many
    bytes of frames whose message names ``pickle-protocol``. Anything else (no answer, another
    protocol, a length no handshake has) is refused here, before Dask would try to allocate
    whatever the first bytes claim. Other schemes (``tls://``, ``inproc://``) are left to Dask.

    Raises
    ------
    InvalidInputError
    """
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise InvalidInputError(f"--scheduler {address}: expected tcp://host:port.")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            head = _recv_exactly(sock, 8)
            (length,) = struct.unpack("<Q", head)
            body = _recv_exactly(sock, length) if 0 < length <= 65536 else b""
    except socket.timeout:
        raise InvalidInputError(f"{address}: no Dask scheduler answers there (no reply within "
                                f"{timeout:g} s).") from None
    except OSError as exc:
        raise InvalidInputError(f"{address}: cannot reach the Dask scheduler "
                                f"({exc.strerror or exc}).") from None
    if b"pickle-protocol" not in body:
        raise InvalidInputError(f"{address}: the server there does not answer like a Dask "
                                "scheduler; check the address (dask scheduler prints it).")


def _recv_exactly(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _connect(scheduler: str):
    """A client of an existing cluster: ``tcp://host:port`` or a scheduler JSON file, checked
    to answer like a Dask scheduler first (:func:`probe_scheduler`)."""
    address = scheduler_address(scheduler)
    probe_scheduler(address)
    try:
        return distributed.Client(address, timeout="15s")
    except (OSError, TimeoutError) as exc:
        raise InvalidInputError(f"{scheduler}: cannot reach the Dask scheduler "
                                f"({type(exc).__name__}: {exc}).") from None


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _run_on(client, jobs, on_record, *, threads, resources) -> None:
    run_id = uuid.uuid4().hex[:12]
    cancel = f"medfusion-cancel-{run_id}"
    event = distributed.Event(cancel, client=client)
    futures = {}
    for key, spec in jobs:
        fut = client.submit(pair_task, spec, threads, cancel, key=f"medfusion-{run_id}-{key}",
                            pure=False, resources=resources)
        futures[fut] = (key, spec)
    delivered = set()

    def deliver(fut) -> None:
        key, spec = futures[fut]
        try:
            record = fut.result()
        except distributed.KilledWorker as exc:
            record = _failed(spec, f"the worker running this pair died "
                                   f"{_times(exc.allowed_failures + 1)} (out of memory? see the "
                                   "worker logs); not retried again")
        except distributed.client.FutureCancelledError:
            delivered.add(fut)
            return
        except Exception as exc:  # e.g. the worker cannot import MedFusionLib
            record = _failed(spec, f"Dask could not run this pair: {type(exc).__name__}: {exc}")
        with interrupts.held():  # recorded and marked delivered together, never one alone
            delivered.add(fut)
            fut.release()
            on_record(key, record)

    try:
        for fut in distributed.as_completed(list(futures)):
            deliver(fut)
    except KeyboardInterrupt:
        _stop(client, event, [f for f in futures if f not in delivered])
        for fut in futures:  # rows that finished while stopping are complete: hand them over
            if fut not in delivered and fut.status == "finished":
                try:
                    deliver(fut)
                except KeyboardInterrupt:
                    pass
        raise


def _stop(client, event, futures) -> None:
    """Ask running jobs to stop (they clean up their outputs), cancel the others, and wait up to
    :data:`CANCEL_GRACE_S` for the running ones to return."""
    try:
        event.set()
        running = _started(client, [f.key for f in futures])
        client.cancel([f for f in futures if f.key not in running])
        deadline = time.monotonic() + CANCEL_GRACE_S
        while any(f.status == "pending" for f in futures) and time.monotonic() < deadline:
            time.sleep(0.1)
    except Exception as exc:  # the cluster is going down anyway
        print(f"medfusion: while stopping the Dask jobs: {exc}", file=sys.stderr)


#: Scheduler task states of a job that no worker has started: cancelling it loses nothing.
_NOT_STARTED = ("released", "waiting", "queued", "no-worker")


def _started(client, keys) -> set:
    """The keys among ``keys`` that a worker has started or finished, as far as the scheduler
    knows: running, or done (``memory``, ``erred``) with the news not yet at this client. Those
    must not be cancelled: a finished job's outputs are in place and its record must be kept."""

    def on_scheduler(dask_scheduler, keys=tuple(keys)):
        return [k for k in keys
                if getattr(dask_scheduler.tasks.get(k), "state", "released") not in _NOT_STARTED]

    try:
        return set(client.run_on_scheduler(on_scheduler))
    except Exception:
        return set(keys)

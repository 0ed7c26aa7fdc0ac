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

import logging
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable, Iterable

from .errors import CancelledError, InvalidInputError, MissingDependencyError
from .job import PairRecord, PairSpec, package_versions, run_pair
from .threads import apply_threads, available_cores

__all__ = ["run_jobs", "pair_task", "local_threads", "RESOURCE"]

#: Dask worker resource that limits a worker to one pair at a time (``--resources pair=1``).
RESOURCE = "pair"

#: Seconds that running jobs get to stop after Ctrl-C before the cluster is closed.
CANCEL_GRACE_S = 30.0

logger = logging.getLogger("MedFusionLib")


def local_threads(workers: int, cores: int | None = None) -> int:
    """Threads per worker so that ``workers x threads`` is ``cores`` (default: the cores this
    process may use, :func:`MedFusionLib.threads.available_cores`), at least 1."""
    if cores is None:
        cores = available_cores()
    return max(1, int(cores or 1) // max(1, workers))


def _cancel_watch(event_name: str | None):
    """A progress callback that says stop once the Dask event ``event_name`` is set."""
    if not event_name:
        return None
    from distributed import Event

    event = Event(event_name)
    last = [0.0]

    def check(fraction, message):
        now = time.monotonic()
        if now - last[0] < 0.5:
            return None
        last[0] = now
        try:
            return False if event.is_set() else None
        except Exception:  # the scheduler is going away: the cluster stops this worker anyway
            return None

    return check


def pair_task(spec: PairSpec, threads: int | None = None, cancel_event: str | None = None) -> PairRecord:
    """Run one pair job and always return its record (what a Dask worker executes).

    ``threads``: torch/ITK threads for this process; ``-1`` means the worker's own thread
    count. A job error is a ``failed`` record with its one-line message; a bug is a ``failed``
    record with the exception and the last line of its traceback.
    """
    if threads == -1:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    if threads:
        apply_threads(threads)
    try:
        return run_pair(spec, progress=_cancel_watch(cancel_event), errors="record")
    except CancelledError as exc:
        return _failed(spec, f"cancelled: {exc}")
    except Exception as exc:  # a bug must not take the batch down: record it and go on
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return _failed(spec, f"internal error {type(exc).__name__}: {exc} "
                             f"({Path(where.filename).name}:{where.lineno})")


def _failed(spec: PairSpec, error: str) -> PairRecord:
    return PairRecord(spec.fixed, spec.moving, spec.output, status="failed", error=error,
                      label=spec.label, versions=package_versions())


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
            on_record(key, pair_task(spec))
        return
    if workers is not None and workers < 1:
        raise InvalidInputError(f"--workers must be at least 1, got {workers}.")
    if max_tries < 1:
        raise InvalidInputError(f"max_tries must be at least 1, got {max_tries}.")
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise MissingDependencyError(
            "--workers and --scheduler run on Dask, which is not installed; install it with "
            "pip install 'medfusion[dask]' (or run without them, in this process).") from None
    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with dask.config.set({"distributed.scheduler.allowed-failures": max_tries - 1}):
        if workers is not None:
            threads = local_threads(workers, threads)
            with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                              dashboard_address=None, resources={RESOURCE: 1}) as cluster, \
                    Client(cluster) as client:
                # Ctrl-C reaches the whole process group: the workers leave it to this process,
                # which stops their rows cleanly (restarted workers get the plugin too)
                client.register_plugin(_IgnoreInterrupts())
                _run_on(client, jobs, on_record, threads=threads, resources={RESOURCE: 1},
                        max_tries=max_tries)
        else:
            with _connect(Client, scheduler) as client:
                info = client.scheduler_info()
                one_at_a_time = bool(info.get("workers")) and all(
                    RESOURCE in (w.get("resources") or {}) for w in info["workers"].values())
                _run_on(client, jobs, on_record, threads=-1 if one_at_a_time else 1,
                        resources={RESOURCE: 1} if one_at_a_time else None, max_tries=max_tries)


def _IgnoreInterrupts():
    """A Dask worker plugin that makes each worker process ignore SIGINT (built here so that
    this module imports without Dask)."""
    from distributed import WorkerPlugin

    class IgnoreInterrupts(WorkerPlugin):
        name = "medfusion-ignore-sigint"

        def setup(self, worker):
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreInterrupts()


def _connect(Client, scheduler: str):
    """A client of an existing cluster: ``tcp://host:port`` or a scheduler JSON file."""
    path = Path(scheduler)
    try:
        if "://" in scheduler:
            return Client(scheduler, timeout="15s")
        if path.suffix.lower() == ".json":
            if not path.is_file():
                raise InvalidInputError(f"{scheduler}: no such scheduler file.")
            return Client(scheduler_file=str(path), timeout="15s")
    except (OSError, TimeoutError) as exc:
        raise InvalidInputError(f"{scheduler}: cannot reach the Dask scheduler "
                                f"({type(exc).__name__}: {exc}).") from None
    raise InvalidInputError(f"--scheduler {scheduler}: expected tcp://host:port or a scheduler "
                            "JSON file (dask scheduler --scheduler-file).")


def _run_on(client, jobs, on_record, *, threads, resources, max_tries) -> None:
    from distributed import Event, as_completed
    from distributed.client import FutureCancelledError

    try:
        from distributed import KilledWorker
    except ImportError:  # pragma: no cover - older distributed
        from distributed.scheduler import KilledWorker

    run_id = uuid.uuid4().hex[:12]
    cancel = f"medfusion-cancel-{run_id}"
    event = Event(cancel, client=client)
    futures = {}
    for key, spec in jobs:
        fut = client.submit(pair_task, spec, threads, cancel, key=f"medfusion-{run_id}-{key}",
                            pure=False, resources=resources)
        futures[fut] = (key, spec)
    delivered = set()

    def deliver(fut) -> None:
        key, spec = futures[fut]
        delivered.add(fut)
        try:
            record = fut.result()
        except KilledWorker:
            record = _failed(spec, f"the worker running this pair died {max_tries} times "
                                   "(out of memory? see the worker logs); not retried again")
        except FutureCancelledError:
            return
        except Exception as exc:  # e.g. the worker cannot import MedFusionLib
            record = _failed(spec, f"Dask could not run this pair: {type(exc).__name__}: {exc}")
        fut.release()
        on_record(key, record)

    try:
        for fut in as_completed(list(futures)):
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
        running = _processing(client, [f.key for f in futures])
        client.cancel([f for f in futures if f.key not in running])
        deadline = time.monotonic() + CANCEL_GRACE_S
        while any(f.status == "pending" for f in futures) and time.monotonic() < deadline:
            time.sleep(0.1)
    except Exception as exc:  # the cluster is going down anyway
        print(f"medfusion: while stopping the Dask jobs: {exc}", file=sys.stderr)


def _processing(client, keys) -> set:
    """The keys among ``keys`` that the scheduler has started on a worker."""

    def on_scheduler(dask_scheduler, keys=tuple(keys)):
        return [k for k in keys if getattr(dask_scheduler.tasks.get(k), "state", None) == "processing"]

    try:
        return set(client.run_on_scheduler(on_scheduler))
    except Exception:
        return set(keys)

"""``medfusion batch MANIFEST.csv``: run the pair job of ``fuse`` on every row of a manifest.

The manifest is a CSV file with a header row and the columns ``fixed,moving,output`` (paths
relative to the CSV's folder unless absolute) plus optional per-row columns for any option of
``fuse`` that belongs to one pair (see :mod:`MedFusionLib.cohort`); the command-line options are
the defaults of every row. A row writes exactly the files ``medfusion fuse`` writes with the same
options. Rows run in this process, or on Dask (``--workers N``, ``--scheduler ADDRESS``); see
:mod:`MedFusionLib.executors`.

Exit status: 0 when every row succeeded (or was already done), 3 when some rows failed, 2 when
the manifest itself is unusable (nothing runs; every problem of the manifest is named at once) or
the results file cannot be written (the batch stops, naming the rows recorded), 130 when
interrupted by Ctrl-C and 143 by SIGTERM (finished rows are kept and recorded, the rows in
progress leave their outputs as they were).
"""

from __future__ import annotations

import argparse
import sys
import time

from .. import interrupts
from ..cohort import ResultsFile, ResultsWriteError, line_ranges, read_cohort
from ..errors import InvalidInputError, OutputError
from ..executors import run_jobs
from ..job import PairRecord, PairSpec
from ..methods import get_method, method_params
from ..metrics import ALL_KEYS, resolve_keys
from ..progress import TextProgress
from ._common import add_fusion_options, add_pair_options, add_threads_option, fusion_options

#: ``--max-tries`` when not given (a local cluster's retries: this minus one).
DEFAULT_MAX_TRIES = 3

NAME = "batch"
HELP = "fuse every row (fixed,moving,output[,options]) of a CSV manifest, here or on Dask"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="CSV with columns fixed,moving,output (relative to the CSV) and "
                                    "optional per-row option columns (README: Batch manifests)")
    add_fusion_options(p)
    add_pair_options(p)
    p.add_argument("--metrics", action="store_true",
                   help="score every row (values go into --results; a row's 'metrics' column "
                        "also writes its JSON file)")
    p.add_argument("--results", metavar="PATH",
                   help="results file (.csv or .jsonl): one record per row, written as rows finish")
    p.add_argument("--resume", action="store_true",
                   help="skip the rows that --results records as done with the same options and "
                        "whose outputs exist; the others (also rows whose options changed) run")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="run on a local Dask cluster of N worker processes (default: in this "
                            "process)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on an existing Dask cluster: tcp://host:port or a scheduler JSON file")
    p.add_argument("--max-tries", type=int, default=None, metavar="N",
                   help=f"--workers: a row whose worker died N times is marked failed (default "
                        f"{DEFAULT_MAX_TRIES}). Not applied with --scheduler: an existing "
                        "cluster retries as its distributed.scheduler.allowed-failures says")
    add_threads_option(p, extra="; with --workers, shared among the workers (--scheduler workers "
                              "use their own --nthreads)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class BatchProgress:
    """One progress line for a batch: rows finished, ok/failed/skipped and the time left."""

    def __init__(self, total: int, bar: TextProgress | None):
        self.total, self.bar = total, bar
        self.counts = {"ok": 0, "failed": 0, "skipped": 0}
        self.t0 = time.perf_counter()

    def add(self, status: str) -> None:
        self.counts[status] += 1
        self.show()

    def show(self) -> None:
        if self.bar is None:
            return
        c = self.counts
        finished = sum(c.values())
        ran = c["ok"] + c["failed"]
        left = self.total - finished
        eta = ""
        if ran and left:
            eta = f", ETA {_duration((time.perf_counter() - self.t0) / ran * left)}"
        self.bar(finished / max(1, self.total),
                 f"{finished}/{self.total} rows: {c['ok']} ok, {c['failed']} failed"
                 + (f", {c['skipped']} skipped" if c["skipped"] else "") + eta)


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (
        f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def _metric_columns(rows, scoring: bool) -> list[str]:
    if not scoring:
        return []
    keys: list[str] = []
    for r in rows:
        ks = r.spec.metrics_keys
        for k in (resolve_keys([x.strip() for x in ks.split(",") if x.strip()]) if ks else ALL_KEYS):
            if k not in keys:
                keys.append(k)
    return keys


def run(args) -> int:
    if args.resume and not args.results:
        raise InvalidInputError("--resume needs --results PATH (the file that records finished rows).")
    if args.max_tries is not None and args.max_tries < 1:
        raise InvalidInputError(f"--max-tries must be at least 1, got {args.max_tries}.")
    if args.scheduler and args.max_tries is not None:
        print("medfusion batch: warning: --max-tries is not applied with --scheduler: an existing "
              "cluster retries a row as its scheduler's distributed.scheduler.allowed-failures "
              "says (Dask's default: 3 retries, 4 tries).", file=sys.stderr)
    defaults = PairSpec(fixed="", moving="", output="", fusion=fusion_options(args),
                        metrics_keys=args.metrics_keys, score=args.metrics,
                        fixed_series=args.fixed_series, moving_series=args.moving_series,
                        dicom=args.dicom, color=args.color, grey=args.grey)
    params = method_params(args.param)
    if args.method:
        get_method(args.method).validate_params(params)  # fail once, before any row
    rows = read_cohort(args.manifest, defaults, args._fusion_actions, results=args.results)
    scoring = args.metrics or any(r.spec.metrics for r in rows)
    results = ResultsFile(args.results, metric_keys=_metric_columns(rows, scoring),
                          resume=args.resume) if args.results else None
    done = results.done(rows) if results is not None and args.resume else {}
    if results is not None and results.changed:
        print(f"medfusion batch: {line_ranges(results.changed)} of {args.results} ran with other "
              "options than now: run again.", file=sys.stderr)
    progress = BatchProgress(len(rows), None if args.quiet else TextProgress(sys.stderr))
    failed: list[tuple[int, str]] = []
    recorded: list[int] = []
    t0 = time.perf_counter()

    def on_record(line: int, record: PairRecord) -> None:
        if interrupts.received() and record.status != "ok":
            # stopped by the interrupt (which an ITK callback may have turned into an error):
            # that row did not finish, so it is not recorded
            raise KeyboardInterrupt
        if results is not None:
            results.write(line, record)
        recorded.append(line)
        if record.status == "failed":
            failed.append((line, record.error))
            print(f"medfusion batch: line {line}: failed: {record.error}", file=sys.stderr)
        progress.add(record.status)

    try:
        with interrupts.flagged_interrupts():
            if results is not None:
                results.open(kept=[dict(done[r.line], line=r.line) for r in rows
                                   if r.line in done])
            for r in rows:
                if r.line in done:
                    progress.add("skipped")
                elif r.problem:
                    on_record(r.line, PairRecord(r.spec.fixed, r.spec.moving, r.spec.output,
                                                 status="failed", error=r.problem,
                                                 label=r.spec.label,
                                                 options=r.spec.options_digest()))
            jobs = [(r.line, r.spec) for r in rows if r.line not in done and not r.problem]
            run_jobs(jobs, on_record, workers=args.workers, scheduler=args.scheduler,
                     max_tries=args.max_tries or DEFAULT_MAX_TRIES, threads=args.threads)
    except KeyboardInterrupt:
        interrupts.quiet_after_interrupt()
        c = progress.counts
        print(f"\nmedfusion batch: interrupted; {c['ok']} rows finished and kept"
              + (f" (recorded in {args.results}; continue with --resume)" if results else "")
              + "; the rows in progress were stopped and their outputs are as they were before "
                "this run.", file=sys.stderr)
        return interrupts.exit_status()
    except ResultsWriteError as exc:
        kept = (f"{line_ranges(recorded)} finished and recorded there" if recorded
                else "no row was recorded")
        row = ("its outputs were put back as they were before this run"
               if args.workers is None and args.scheduler is None
               else "its outputs are in place but not recorded")
        raise OutputError(f"{exc}; the batch stopped: {kept}; {row}; free some space and "
                          "continue with --resume.") from None
    finally:
        if results is not None:
            results.close()
    c = progress.counts
    print(f"batch summary: {c['ok']} fused, {c['failed']} failed, {c['skipped']} already done, "
          f"{len(rows)} rows ({time.perf_counter() - t0:.1f} s)")
    for line, msg in sorted(failed):
        print(f"  FAILED line {line}: {msg}")
    return 0 if not failed else 3

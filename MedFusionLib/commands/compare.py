"""``medfusion compare``: every fusion method on the same registered pair(s), with a report.

``medfusion compare FIXED MOVING --out DIR [--methods LIST|all]`` compares on one pair;
``medfusion compare --manifest MANIFEST.csv --out DIR`` on many, averaging over them as the review
averages over its datasets. The manifest is a CSV with a header naming the columns ``fixed`` and
``moving`` (paths relative to the CSV's folder unless absolute) and optionally ``name``,
``fixed_series``, ``moving_series``, ``fixed_modality``, ``moving_modality``, ``fixed_mask``,
``moving_mask`` and ``initial_transform``; a row's cells override the command line's options.
Each pair is one pair job's first half (:func:`MedFusionLib.job.align_spec`): read, normalised
and registered exactly as ``fuse`` and ``batch`` do with the same options, once; every method
then fuses that same aligned pair. See :mod:`MedFusionLib.report` for what ``DIR`` receives.

Exit status: 0 when every method ran on every pair, 3 when some failed (they are named on standard
error and in the report; the others are still compared), 2 on unusable input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cohort import read_manifest
from ..errors import InvalidInputError
from ..job import PairSpec
from ..metrics import resolve_keys
from ..outputs import check_output_folder, check_outputs
from ..progress import TextProgress
from ..report import PairInput, report_files, resolve_methods, run_comparison, write_report
from ._common import add_alignment_options, add_threads_option

#: Alignment options (destinations of :func:`add_alignment_options`) that go into each pair's spec.
ALIGNMENT_DESTS = ("registration", "fixed_modality", "moving_modality", "ct_window", "seed",
                   "fixed_mask", "moving_mask", "initial_transform", "strict_registration")
#: Per-row manifest cells that override the command line's alignment options.
ALIGNMENT_COLUMNS = ("fixed_modality", "moving_modality", "fixed_mask", "moving_mask",
                     "initial_transform")
#: Optional manifest columns.
ROW_COLUMNS = ("name", "fixed_series", "moving_series") + ALIGNMENT_COLUMNS
#: Manifest columns holding paths (resolved against the manifest's folder unless absolute).
PATH_COLUMNS = ("fixed", "moving", "fixed_mask", "moving_mask", "initial_transform")

NAME = "compare"
HELP = "run every fusion method on the same pair(s) and write tables, charts and an HTML report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fixed", nargs="?", help="fixed (reference) image: file or DICOM folder")
    p.add_argument("moving", nargs="?", help="moving image: file or DICOM folder")
    p.add_argument("--manifest", metavar="CSV",
                   help="many pairs: CSV with columns fixed,moving and optionally "
                        f"{','.join(ROW_COLUMNS)} (instead of FIXED MOVING)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--methods", default="all", metavar="LIST",
                   help="comma-separated method names, or all (default: every available method)")
    p.add_argument("--metrics", default=None, metavar="KEYS",
                   help="comma-separated metric keys, or review / standard (default: all)")
    p.add_argument("--device", default="auto", help="device for torch methods: auto|cpu|cuda")
    add_alignment_options(p)
    p.add_argument("--fixed-series", metavar="UID", help="SeriesInstanceUID to read from a FIXED DICOM folder")
    p.add_argument("--moving-series", metavar="UID", help="SeriesInstanceUID to read from a MOVING DICOM folder")
    p.add_argument("--max-slices", type=int, default=16, metavar="N",
                   help="volumes: score about N slices spread along the fusion axis (default 16)")
    p.add_argument("--title", default="MedFusion method comparison", help="title of the HTML report")
    add_threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def read_pairs_manifest(path: str | Path) -> list[dict]:
    """Rows (``fixed``, ``moving``, ``name`` and any of :data:`ROW_COLUMNS`) of a compare
    manifest, paths resolved against its folder.

    Raises
    ------
    InvalidInputError
        If the file is missing, lacks the fixed/moving columns, has no rows, or a row lacks a path.
    """
    rows = read_manifest(path, ("fixed", "moving"), path_columns=PATH_COLUMNS)
    for i, row in enumerate(rows):
        for c in ("fixed", "moving"):
            if not row.get(c):
                raise InvalidInputError(f"{path}, line {row['_line']}: the {c} path is empty.")
        row["name"] = row.get("name") or f"pair{i + 1}"
    return rows


def pair_spec(args, row: dict) -> PairSpec:
    """The pair job spec of one compared pair: the command line's alignment options, overridden
    by the row's own cells."""
    fusion = {k: getattr(args, k) for k in ALIGNMENT_DESTS}
    fusion.update({k: row[k] for k in ALIGNMENT_COLUMNS if row.get(k)})
    return PairSpec(row["fixed"], row["moving"], output="", fusion=fusion, grey=True,
                    fixed_series=row.get("fixed_series") or args.fixed_series,
                    moving_series=row.get("moving_series") or args.moving_series)


def run(args) -> int:
    if args.manifest and (args.fixed or args.moving):
        raise InvalidInputError("give either FIXED MOVING or --manifest, not both.")
    if not args.manifest and not (args.fixed and args.moving):
        raise InvalidInputError("give FIXED and MOVING, or --manifest MANIFEST.csv.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out}: exists and is not a folder.")
    if not out.parent.exists():
        raise InvalidInputError(f"{out}: its parent folder {out.parent} does not exist.")
    check_output_folder(out, folder_output=True)  # writable: fail before the comparison runs
    resolve_methods(args.methods)  # fail on a typo before any reading or registration
    keys = resolve_keys(args.metrics)
    if args.manifest:
        rows = read_pairs_manifest(args.manifest)
    else:
        rows = [{"fixed": args.fixed, "moving": args.moving,
                 "name": Path(args.fixed).name.split(".")[0] or "pair1"}]
    # every pair is read and registered by the pair job's own first half (job.align_spec), as
    # fuse and batch do: same series choice, luminance, masks, initial transform and strictness
    pairs = [PairInput(name=r["name"], fixed_name=r["fixed"], moving_name=r["moving"],
                       spec=pair_spec(args, r)) for r in rows]
    # no report file may overwrite an input or the manifest (before any work)
    check_outputs([args.manifest] + [i for p in pairs for i in p.spec.inputs()],
                  [out / name for name in report_files([p.name for p in pairs], keys)],
                  within=out)
    progress = None if args.quiet else TextProgress(sys.stderr)
    result = run_comparison(pairs, methods=args.methods, keys=args.metrics,
                            registration=args.registration, device=args.device,
                            ct_window=args.ct_window, seed=args.seed, max_slices=args.max_slices,
                            progress=progress)
    files = write_report(result, out, title=args.title)
    failed = {(p.name, m): e for p in result.pairs for m, e in p.errors.items()}
    for (pair, m), e in failed.items():
        print(f"medfusion compare: {pair}: {m} failed: {e}", file=sys.stderr)
    if not args.quiet:
        print(f"wrote {len(files)} files to {out} (open {files['report.html']})", file=sys.stderr)
    return 3 if failed else 0

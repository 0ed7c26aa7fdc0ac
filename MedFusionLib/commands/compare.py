"""``medfusion compare``: every fusion method on the same registered pair(s), with a report.

``medfusion compare FIXED MOVING --out DIR [--methods LIST|all]`` compares on one pair;
``medfusion compare --manifest MANIFEST.csv --out DIR`` on many, averaging over them as the review
averages over its datasets. The manifest is a CSV with a header naming the columns ``fixed`` and
``moving`` (paths relative to the CSV's folder unless absolute) and optionally ``name``,
``fixed_modality``, ``moving_modality``, ``fixed_series`` and ``moving_series``; the sources are
read as every pair job reads them (:func:`MedFusionLib.job.read_sources`). Each pair is
registered once and every method fuses that same aligned pair. See :mod:`MedFusionLib.report`
for what ``DIR`` receives.

Exit status: 0 when every method ran on every pair, 3 when some failed (they are named on standard
error and in the report; the others are still compared), 2 on unusable input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidInputError
from ..job import PairSpec, read_sources
from ..outputs import check_output_folder
from ..progress import TextProgress
from ..registration import REGISTRATION_MODES
from ..report import PairInput, resolve_methods, run_comparison, write_report
from ._common import read_manifest

NAME = "compare"
HELP = "run every fusion method on the same pair(s) and write tables, charts and an HTML report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fixed", nargs="?", help="fixed (reference) image: file or DICOM folder")
    p.add_argument("moving", nargs="?", help="moving image: file or DICOM folder")
    p.add_argument("--manifest", metavar="CSV", help="many pairs: CSV with columns fixed,moving[,name,"
                   "fixed_modality,moving_modality,fixed_series,moving_series] (instead of FIXED MOVING)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--methods", default="all", metavar="LIST",
                   help="comma-separated method names, or all (default: every available method)")
    p.add_argument("--metrics", default=None, metavar="KEYS",
                   help="comma-separated metric keys, or review / standard (default: all)")
    p.add_argument("--register", dest="registration", default=None, choices=REGISTRATION_MODES,
                   help="registration of MOVING onto FIXED; default rigid for 3D, none for 2D")
    p.add_argument("--device", default="auto", help="device for torch methods: auto|cpu|cuda")
    p.add_argument("--fixed-modality", default=None, metavar="M", help="modality of FIXED (CT, MR, PET, SPECT, 8BIT)")
    p.add_argument("--moving-modality", default=None, metavar="M", help="modality of MOVING")
    p.add_argument("--ct-window", default=None, metavar="W", help="CT window: preset or LEVEL,WIDTH")
    p.add_argument("--max-slices", type=int, default=16, metavar="N",
                   help="volumes: score about N slices spread along the fusion axis (default 16)")
    p.add_argument("--seed", type=int, default=0, help="registration seed (default 0)")
    p.add_argument("--title", default="MedFusion method comparison", help="title of the HTML report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def read_pairs_manifest(path: str | Path) -> list[dict]:
    """Rows (``fixed``, ``moving``, ``name``, modalities) of a compare manifest, paths resolved.

    Raises
    ------
    InvalidInputError
        If the file is missing, lacks the fixed/moving columns, has no rows, or a row lacks a path.
    """
    rows = read_manifest(path, ("fixed", "moving"))
    for i, row in enumerate(rows):
        for c in ("fixed", "moving"):
            if not row.get(c):
                raise InvalidInputError(f"{path}, line {row['_line']}: the {c} path is empty.")
        row["name"] = row.get("name") or f"pair{i + 1}"
    return rows


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
    if args.manifest:
        rows = read_pairs_manifest(args.manifest)
    else:
        rows = [{"fixed": args.fixed, "moving": args.moving,
                 "name": Path(args.fixed).name.split(".")[0] or "pair1"}]
    pairs = []
    for r in rows:
        # read the way every pair job reads (batch, fuse): same series choice, same luminance
        spec = PairSpec(r["fixed"], r["moving"], output="", grey=True,
                        fixed_series=r.get("fixed_series") or None,
                        moving_series=r.get("moving_series") or None)
        fixed, moving = read_sources(spec)
        pairs.append(PairInput(name=r["name"], fixed=fixed, moving=moving,
                               fixed_name=r["fixed"], moving_name=r["moving"],
                               fixed_modality=r.get("fixed_modality") or args.fixed_modality,
                               moving_modality=r.get("moving_modality") or args.moving_modality))
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

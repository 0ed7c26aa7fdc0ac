"""``medfusion batch MANIFEST.csv``: fuse many pairs in one process.

The manifest is a CSV file with a header row and the columns ``fixed,moving,output`` (paths
relative to the CSV's folder unless absolute); optional columns ``fixed_modality`` and
``moving_modality`` override the modality per row. A bad row is reported and skipped; the others
still run. Exit status: 0 when every row succeeded, 3 when some rows failed, 2 when the manifest
itself is unusable.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import InvalidInputError, MedFusionError
from ..io import read_image, write_image
from ..methods import get_method
from ..pipeline import fuse_images
from ..progress import TextProgress
from ._common import add_fusion_options, method_params, read_manifest
from .fuse import check_outputs_distinct

NAME = "batch"
HELP = "fuse every row (fixed,moving,output) of a CSV manifest"

REQUIRED = ("fixed", "moving", "output")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="CSV with columns fixed,moving,output (relative to the CSV)")
    add_fusion_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    rows = read_manifest(args.manifest, REQUIRED)
    params = method_params(args.param)
    if args.method:
        get_method(args.method).validate_params(params)  # fail once, before any row
    bar = None if args.quiet else TextProgress(sys.stderr)
    done, failed = [], []
    t0 = time.perf_counter()
    for i, row in enumerate(rows):
        label = f"line {row['_line']}"
        if bar:
            bar(i / len(rows), f"pair {i + 1}/{len(rows)}: {Path(row.get('fixed') or '?').name}")
        try:
            missing = [c for c in REQUIRED if not row.get(c)]
            if missing:
                raise InvalidInputError(f"empty column(s): {', '.join(missing)}")
            check_outputs_distinct([row["fixed"], row["moving"]], [row["output"]])
            if not Path(row["output"]).parent.exists():
                raise InvalidInputError(f"{row['output']}: the output folder does not exist.")
            result = fuse_images(
                read_image(row["fixed"]), read_image(row["moving"]), method=args.method,
                registration=args.registration, device=args.device,
                fixed_modality=row.get("fixed_modality") or args.fixed_modality,
                moving_modality=row.get("moving_modality") or args.moving_modality,
                ct_window=args.ct_window, seed=args.seed, fixed_name=row["fixed"],
                moving_name=row["moving"], **params)
            write_image(result.fused, row["output"])
            done.append(row["output"])
        except MedFusionError as exc:
            failed.append((label, str(exc)))
            print(f"medfusion batch: {label}: skipped: {exc}", file=sys.stderr)
    if bar:
        bar(1.0, f"{len(rows)} pairs in {time.perf_counter() - t0:.1f} s")
    print(f"batch summary: {len(done)} fused, {len(failed)} failed, {len(rows)} rows "
          f"({time.perf_counter() - t0:.1f} s)")
    for label, msg in failed:
        print(f"  FAILED {label}: {msg}")
    return 0 if not failed else 3

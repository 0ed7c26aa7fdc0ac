"""``medfusion fuse FIXED MOVING -o OUT``: register, fuse and write one pair (one pair job)."""

from __future__ import annotations

import argparse
import sys

from ..job import PairSpec, run_pair
from ..methods.cnn import last_kernels
from ..progress import TextProgress
from ._common import add_fusion_options, add_pair_options, add_threads_option, fusion_options

NAME = "fuse"
HELP = "register MOVING onto FIXED and write the fused image"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fixed", help="fixed (reference) image: file or DICOM folder; the result is on its grid")
    p.add_argument("moving", help="moving image: file or DICOM folder")
    p.add_argument("-o", "--output", required=True,
                   help="fused image (.nii.gz, .nrrd, .mha, .png, ...); with --dicom a folder")
    add_fusion_options(p)
    p.add_argument("--metrics", metavar="OUT.json", help="also write fusion metrics (and what was done) as JSON")
    p.add_argument("--transform", metavar="OUT.tfm", help="also write the registration transform (ITK .tfm)")
    p.add_argument("--weights-map", metavar="OUT", help="also write the contribution map of FIXED in [0, 1]")
    add_pair_options(p)
    add_threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def spec_from_args(args) -> PairSpec:
    """The :class:`~MedFusionLib.job.PairSpec` that ``medfusion fuse`` runs for ``args``."""
    return PairSpec(fixed=args.fixed, moving=args.moving, output=args.output,
                    fusion=fusion_options(args), metrics=args.metrics,
                    metrics_keys=args.metrics_keys, transform=args.transform,
                    weights_map=args.weights_map, fixed_series=args.fixed_series,
                    moving_series=args.moving_series, dicom=args.dicom, color=args.color,
                    grey=args.grey)


def run(args) -> int:
    progress = None if args.quiet else TextProgress(sys.stderr)
    record = run_pair(spec_from_args(args), progress=progress)
    if not args.quiet:
        t = record.stages
        kernels = f", {last_kernels()}" if record.method == "cnn" and last_kernels() else ""
        print(f"wrote {args.output} ({record.method} on {record.device}{kernels}; registration "
              f"{record.registration['mode']} {t['register']:.1f} s, fusion {t['fuse']:.2f} s)",
              file=sys.stderr)
    return 0

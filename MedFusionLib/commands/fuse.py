"""``medfusion fuse FIXED MOVING -o OUT``: register, fuse and write one pair."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import SimpleITK as sitk

from ..errors import InvalidInputError
from ..colour import fuse_colour
from ..io import is_colour, read_image, write_image
from ..pipeline import fuse_images
from ..progress import TextProgress
from ._common import OutputSet, add_fusion_options, method_params, write_json

NAME = "fuse"
HELP = "register MOVING onto FIXED and write the fused image"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fixed", help="fixed (reference) image: file or DICOM folder; the result is on its grid")
    p.add_argument("moving", help="moving image: file or DICOM folder")
    p.add_argument("-o", "--output", required=True,
                   help="fused image (.nii.gz, .nrrd, .mha, .png, ...); with --dicom a folder")
    add_fusion_options(p)
    p.add_argument("--metrics", metavar="OUT.json", help="also write fusion metrics (and what was done) as JSON")
    p.add_argument("--metrics-keys", metavar="KEYS", default=None,
                   help="comma-separated metric keys for --metrics (default: all; for 3D volumes "
                        "all but the slow feature-MI family FMI_pixel, FMI_dct, FMI_w)")
    p.add_argument("--transform", metavar="OUT.tfm", help="also write the registration transform (ITK .tfm)")
    p.add_argument("--weights-map", metavar="OUT", help="also write the contribution map of FIXED in [0, 1]")
    p.add_argument("--fixed-series", metavar="UID", help="SeriesInstanceUID to read from a FIXED DICOM folder")
    p.add_argument("--moving-series", metavar="UID", help="SeriesInstanceUID to read from a MOVING DICOM folder")
    p.add_argument("--dicom", action="store_true",
                   help="write the fused volume as a derived DICOM series into the folder -o, in the "
                        "study of FIXED (a CT or MR DICOM series), with the registration as a DICOM "
                        "Spatial Registration object when MOVING is DICOM")
    colour = p.add_mutually_exclusive_group()
    colour.add_argument("--color", "--colour", dest="color", nargs="?", const="heat", default=None,
                        metavar="TABLE",
                        help="colour fusion: the PET/SPECT (or RGB) source keeps its colours over the "
                             "anatomical detail; TABLE for a greyscale PET/SPECT: heat (default), "
                             "rainbow, grey. Default when an input is an RGB image.")
    colour.add_argument("--grey", "--gray", dest="grey", action="store_true",
                        help="greyscale result even when an input is an RGB image")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def check_outputs_distinct(inputs: list[str], outputs: list[str | None]) -> None:
    """Refuse to write over an input file (inputs are never changed)."""
    ins = {Path(i).resolve() for i in inputs}
    for o in outputs:
        if o and Path(o).resolve() in ins:
            raise InvalidInputError(f"{o}: this output path is one of the inputs; choose another name "
                                    "(inputs are never overwritten).")


#: Metrics left out of the default set for 3D volumes: about 1 s per slice each.
SLOW_VOLUME_KEYS = ("FMI_pixel", "FMI_dct", "FMI_w")


def volume_metrics_for(result, keys: str | None) -> dict:
    """Metrics of a :class:`~MedFusionLib.pipeline.FusionResult`, per slice along its axis.

    ``keys`` is a comma-separated list; ``None`` means every metric, except
    :data:`SLOW_VOLUME_KEYS` for 3D volumes (they stay available by name).
    """
    from ..metrics import ALL_KEYS, resolve_keys, volume_metrics

    fused = sitk.GetArrayFromImage(result.fused)
    if keys:
        key_list = resolve_keys([k.strip() for k in keys.split(",") if k.strip()])
    elif fused.ndim == 3 and fused.shape[result.axis] > 1:
        key_list = [k for k in ALL_KEYS if k not in SLOW_VOLUME_KEYS]
    else:
        key_list = list(ALL_KEYS)
    return volume_metrics(result.fixed01, result.moving01, fused, axis=result.axis, keys=key_list,
                          data_range=1.0)


def run(args) -> int:
    check_outputs_distinct([args.fixed, args.moving],
                           [args.output, args.metrics, args.transform, args.weights_map])
    outputs = OutputSet([args.output, args.metrics, args.transform, args.weights_map])
    fixed = read_image(args.fixed, series_uid=args.fixed_series, keep_colour=not args.grey)
    if args.dicom:
        from ..dicom import check_derived_reference

        check_derived_reference(args.fixed, fixed)
    moving = read_image(args.moving, series_uid=args.moving_series, keep_colour=not args.grey)
    colour = args.color is not None or is_colour(fixed) or is_colour(moving)
    if colour and args.dicom:
        raise InvalidInputError(f"{args.output}: --dicom writes a greyscale series; add --grey "
                                "(or leave out --color).")
    progress = None if args.quiet else TextProgress(sys.stderr)
    fuse = fuse_colour if colour else fuse_images
    extra = {"table": args.color or "heat"} if colour else {}
    result = fuse(
        fixed, moving, method=args.method, registration=args.registration, device=args.device,
        fixed_modality=args.fixed_modality, moving_modality=args.moving_modality,
        ct_window=args.ct_window, return_weights=bool(args.weights_map), seed=args.seed,
        progress=progress, fixed_name=args.fixed, moving_name=args.moving,
        **extra, **method_params(args.param))
    report = None
    if args.metrics:
        report = {"fixed": args.fixed, "moving": args.moving, "output": args.output,
                  **result.summary(), "metrics": volume_metrics_for(result, args.metrics_keys)}
    with outputs:
        if args.dicom:
            from ..dicom import write_fusion_dicom

            for path in write_fusion_dicom(
                    result.fused, args.output, fixed=args.fixed, moving=args.moving,
                    fixed_series_uid=args.fixed_series, moving_series_uid=args.moving_series,
                    transform=result.registration.transform, method=result.method):
                outputs.add(path)
        else:
            outputs.add(write_image(result.rgb if colour else result.fused, args.output))
        if args.weights_map:
            outputs.add(write_image(result.weights, args.weights_map))
        if args.transform:
            sitk.WriteTransform(result.registration.transform, args.transform)
            outputs.add(Path(args.transform))
        if report is not None:
            outputs.add(write_json(report, args.metrics))
    if not args.quiet:
        t = result.timings
        print(f"wrote {args.output} ({result.method} on {result.device}; registration "
              f"{result.registration.mode} {t['register']:.1f} s, fusion {t['fuse']:.2f} s)",
              file=sys.stderr)
    return 0

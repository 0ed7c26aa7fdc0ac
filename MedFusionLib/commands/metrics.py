"""``medfusion metrics A B F``: fusion-quality metrics of a fused image against its two sources.

How the three images are put on a common [0, 1] scale (``--normalize``, recorded in the JSON):

``modality`` (default)
    A and B follow the same rules as ``medfusion fuse`` (:func:`MedFusionLib.normalize.normalize`:
    CT window, MR percentiles, PET/SPECT uptake range, 8-bit / 255; modality from
    ``--a-modality``/``--b-modality``, the DICOM header or a guess). F, the fusion output, is
    used as it is when its values already lie in [0, 1] (what ``fuse`` writes as floating point),
    divided by 255 when it is 8-bit, and min-max scaled otherwise. So ``metrics`` on the inputs
    and output of ``fuse --register none`` gives the numbers of ``fuse --metrics``.
``minmax``
    Each image min-max scaled to [0, 1] on its own.
``none``
    Values used as given; they must lie in [0, ``--data-range``].

NaN/Inf voxels of A and B follow the rule of ``fuse`` (:func:`MedFusionLib.normalize.replace_nonfinite`:
a warning, and the counts under ``normalization.nonfinite_voxels`` in the JSON); F must be
finite (it is what is scored). The metrics then quantise [0, 1] to 8-bit grey levels, ``round(255 x)`` (the library's
convention, :data:`MedFusionLib.metrics.GREY_SCALE`): an 8-bit file scores exactly as its
integers, and a fused volume exactly as the 8-bit image of it. 3D images are scored
per slice along the acquisition axis and averaged over the slices where no image is constant.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import SimpleITK as sitk

from ..driver import acquisition_axis
from ..errors import InvalidInputError
from ..io import RASTER_EXTENSIONS, check_same_grid, extension_of, read_image
from ..metrics import GREY_SCALE, METRICS, MI_SETTINGS, resolve_keys, volume_metrics
from ..normalize import CT_WINDOWS, MODALITIES, normalize, replace_nonfinite, resolve_modality
from ..progress import TextProgress

NAME = "metrics"
HELP = "fusion-quality metrics of a fused image F against its sources A and B"

NORMALIZATIONS = ("modality", "minmax", "none")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="first source image (the fixed image of the fusion): file or DICOM folder")
    p.add_argument("b", help="second source image, on the same grid as A (the registered moving image)")
    p.add_argument("fused", help="fused image, on the same grid")
    p.add_argument("--json", action="store_true", help="print JSON (values, directions, settings)")
    p.add_argument("--only", metavar="KEYS", default=None,
                   help="comma-separated metric keys, or 'review' / 'standard' (default: all): "
                        + ", ".join(METRICS))
    p.add_argument("--normalize", choices=NORMALIZATIONS, default="modality",
                   help="how the images are mapped to [0, 1] (default modality; see the module notes)")
    p.add_argument("--a-modality", default=None, metavar="M", help=f"modality of A: {'|'.join(MODALITIES)}")
    p.add_argument("--b-modality", default=None, metavar="M", help="modality of B (as above)")
    p.add_argument("--ct-window", default=None, metavar="W",
                   help=f"CT window for a CT source: {'|'.join(CT_WINDOWS)} or LEVEL,WIDTH (default bone)")
    p.add_argument("--data-range", type=float, default=None, metavar="R",
                   help="with --normalize none: the images' value span [0, R] (default 1)")
    p.add_argument("--mask", metavar="MASK", default=None,
                   help="foreground mask on the same grid: each slice is cropped to its mask's box")
    p.add_argument("--axis", type=int, default=None,
                   help="numpy axis (z=0, y=1, x=2) of the slices for 3D images (default: acquisition axis)")
    p.add_argument("--max-slices", type=int, default=None, metavar="N",
                   help="3D: score about N slices spread along the axis (default: every slice; "
                        "the full set costs about a second per 256 x 256 slice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _fused01(image: sitk.Image, name: str) -> tuple[np.ndarray, str]:
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name}: the fused image contains NaN or Inf values.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return arr, "as is (values already in [0, 1])"
    if image.GetPixelID() == sitk.sitkUInt8:
        return arr / 255.0, "8-bit scale (x / 255)"
    if hi == lo:
        raise InvalidInputError(f"{name}: the fused image is constant ({lo:g}); nothing to score.")
    return (arr - lo) / (hi - lo), f"min-max [{lo:g}, {hi:g}]"


def _minmax(arr: np.ndarray | None, image: sitk.Image, name: str) -> tuple[np.ndarray, str]:
    if arr is None:
        arr = sitk.GetArrayFromImage(image).astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name}: the image contains NaN or Inf values.")
    lo, hi = float(arr.min()), float(arr.max())
    if hi == lo:
        raise InvalidInputError(f"{name}: the image is constant ({lo:g}); nothing to score.")
    return (arr - lo) / (hi - lo), f"min-max [{lo:g}, {hi:g}]"


def load_triplet(args) -> tuple[list[np.ndarray], dict, float, sitk.Image]:
    """Read A, B and F and put them on a common scale; returns arrays, the mapping, data range."""
    images = {"a": read_image(args.a), "b": read_image(args.b), "fused": read_image(args.fused)}
    paths = {"a": args.a, "b": args.b, "fused": args.fused}
    sizes = {k: im.GetSize() for k, im in images.items()}
    if len(set(sizes.values())) > 1:
        desc = ", ".join(f"{paths[k]} {sizes[k]}" for k in sizes)
        raise InvalidInputError(f"the three images must have the same size (x, y[, z]), got {desc}; "
                                "resample B and F onto A first (medfusion fuse writes F on A's grid).")
    for k in ("b", "fused"):  # raster files (PNG, ...) carry no geometry to compare
        if extension_of(paths[k]) not in RASTER_EXTENSIONS and \
                extension_of(paths["a"]) not in RASTER_EXTENSIONS:
            check_same_grid(images["a"], images[k], paths["a"], paths[k])
    mapping: dict = {}
    nonfinite = {"a": 0, "b": 0}
    arrays: list[np.ndarray] = []
    data_range = 1.0
    if args.normalize == "modality":
        for key, mod in (("a", args.a_modality), ("b", args.b_modality)):
            window = args.ct_window
            arr, info = normalize(images[key], mod, window=window if _is_ct(images[key], mod) else None,
                                  name=paths[key])
            arrays.append(arr.astype(np.float64))
            mapping[key] = f"{info.modality} ({info.modality_source}): {info.rule}"
            nonfinite[key] = info.nonfinite_voxels
    else:
        # the sources follow the one NaN/Inf rule of fuse (normalize.replace_nonfinite)
        sources = {}
        for key in ("a", "b"):
            arr = sitk.GetArrayFromImage(images[key]).astype(np.float64)
            sources[key], nonfinite[key] = replace_nonfinite(arr, paths[key])
    if args.normalize == "modality":
        arr, rule = _fused01(images["fused"], paths["fused"])
        arrays.append(arr)
        mapping["fused"] = rule
    elif args.normalize == "minmax":
        for key in ("a", "b", "fused"):
            arr, rule = _minmax(sources.get(key), images[key], paths[key])
            arrays.append(arr)
            mapping[key] = rule
    else:
        data_range = 1.0 if args.data_range is None else float(args.data_range)
        for key in ("a", "b", "fused"):
            arr = sources[key] if key in sources else \
                sitk.GetArrayFromImage(images[key]).astype(np.float64)
            if key == "fused" and not np.all(np.isfinite(arr)):
                raise InvalidInputError(f"{paths[key]}: the fused image contains NaN or Inf values.")
            arrays.append(arr)
            mapping[key] = f"as given, data range [0, {data_range:g}]"
    mapping["nonfinite_voxels"] = nonfinite
    return arrays, mapping, data_range, images["a"]


def _is_ct(image: sitk.Image, modality: str | None) -> bool:
    if modality is not None:
        return modality.strip().upper() == "CT"

    return resolve_modality(image, None)[0] == "CT"


def _format_value(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if abs(v) >= 1000 or (v != 0 and abs(v) < 1e-3):
        return f"{v:.4g}"
    return f"{v:.4f}"


def _json_value(v: float):
    return v if math.isfinite(v) else None


def run(args) -> int:
    if args.data_range is not None and args.normalize != "none":
        raise InvalidInputError("--data-range applies only with --normalize none.")
    if args.axis is not None and args.axis not in (0, 1, 2):
        raise InvalidInputError(f"--axis {args.axis}: give 0 (z), 1 (y) or 2 (x), the numpy axis "
                                "of the slices.")
    keys = resolve_keys(args.only)
    arrays, mapping, data_range, ref = load_triplet(args)
    mask = None
    if args.mask:
        mimg = read_image(args.mask)
        check_same_grid(ref, mimg, args.a, args.mask)
        mask = sitk.GetArrayFromImage(mimg) > 0
    if ref.GetDimension() == 3:
        if args.axis is None:
            axis = acquisition_axis(ref.GetSpacing()[::-1])
        else:
            axis = args.axis
    else:
        axis = 0
    if args.max_slices is not None and args.max_slices < 1:
        raise InvalidInputError(f"--max-slices must be at least 1, got {args.max_slices}.")
    n_slices = arrays[0].shape[axis] if arrays[0].ndim == 3 else 1
    step = 1 if args.max_slices is None else max(1, math.ceil(n_slices / args.max_slices))
    progress = None if (args.quiet or args.json or ref.GetDimension() == 2) else TextProgress(sys.stderr)
    values = volume_metrics(*arrays, axis=axis, keys=keys, mask=mask, data_range=data_range,
                            slice_step=step, progress=progress)
    used, total = values.pop("slices_used"), values.pop("slices_total")
    if used == 0:
        raise InvalidInputError(
            f"no usable slice: in every one of the {total} slices along axis {axis}, A, B or F is "
            "constant (or outside the mask); check that the images overlap."
        )
    if args.json:
        out = {
            "a": args.a, "b": args.b, "fused": args.fused,
            "normalization": mapping, "mi_settings": MI_SETTINGS, "grey_scale": GREY_SCALE,
            "slice_axis": axis, "slice_step": step, "slices_used": used, "slices_total": total,
            "metrics": {k: {"value": _json_value(v), "text": _format_value(v),
                            "direction": METRICS[k].direction,
                            "range": [_json_value(r) for r in METRICS[k].range],
                            "group": METRICS[k].group}
                        for k, v in values.items()},
        }
        print(json.dumps(out, indent=2, default=str))
        return 0
    print(f"{'metric':10s} {'value':>12s}  direction")
    for k, v in values.items():
        print(f"{k:10s} {_format_value(v):>12s}  {METRICS[k].direction_text}")
    print(f"(mean over {used} of {total} slices; A: {mapping['a']}; B: {mapping['b']}; "
          f"F: {mapping['fused']})")
    return 0

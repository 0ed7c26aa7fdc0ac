"""Argument helpers shared by the subcommands: the fusion, alignment and per-pair options."""

from __future__ import annotations

import argparse

from ..devices import DEVICES
from ..normalize import CT_WINDOWS, MODALITIES
from ..registration import REGISTRATION_MODES

__all__ = ["add_fusion_options", "add_alignment_options", "fusion_options", "add_pair_options",
           "add_threads_option"]


def add_fusion_options(p: argparse.ArgumentParser) -> None:
    """The options every fusing command takes: method, registration, device, modalities.

    Every option added here is carried by a :class:`~MedFusionLib.job.PairSpec` (its ``fusion``
    dict, see :func:`fusion_options`) and may be given per row in a batch manifest, in a column
    named like the flag (``--fixed-modality`` -> ``fixed_modality``).
    """
    known = {a.dest for a in p._actions}
    _add_fusion_arguments(p)
    p.set_defaults(_fusion_actions=tuple(a for a in p._actions if a.dest not in known))


def _add_fusion_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=None,
                   help="fusion method (medfusion list-methods); default: cnn where available")
    p.add_argument("--device", default="auto", help=f"compute device: {'|'.join(DEVICES)} (default auto)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of the method (repeatable), e.g. --param wavelet=db4")
    add_alignment_options(p)


def add_alignment_options(p: argparse.ArgumentParser) -> None:
    """How a pair is read into [0, 1] and registered (every fusing command and ``compare``):
    registration mode, modalities, CT window, seed, masks, initial transform, strictness. Their
    destinations are the keyword names of :func:`MedFusionLib.pipeline.align_pair`."""
    p.add_argument("--register", dest="registration", default=None, choices=REGISTRATION_MODES,
                   help="registration of MOVING onto FIXED; default rigid for 3D, none for 2D")
    p.add_argument("--fixed-modality", default=None, metavar="M",
                   help=f"modality of FIXED: {'|'.join(MODALITIES)} (default: DICOM header or a guess)")
    p.add_argument("--moving-modality", default=None, metavar="M", help="modality of MOVING (as above)")
    p.add_argument("--ct-window", default=None, metavar="W",
                   help=f"CT window: {'|'.join(CT_WINDOWS)} or LEVEL,WIDTH in HU (default bone)")
    p.add_argument("--seed", type=int, default=0, help="registration sampling seed (default 0)")
    p.add_argument("--fixed-mask", metavar="LABELS",
                   help="label image (non-zero = use) limiting registration to this part of FIXED")
    p.add_argument("--moving-mask", metavar="LABELS",
                   help="label image (non-zero = use) limiting registration to this part of MOVING")
    p.add_argument("--initial-transform", metavar="IN.tfm",
                   help="ITK transform (fixed -> moving) to start registration from instead of the "
                        "global search; with --register none it is applied as is")
    p.add_argument("--strict-registration", action="store_true",
                   help="treat a low-confidence registration as an error (exit 2, nothing written) "
                        "instead of a warning")


def add_pair_options(p: argparse.ArgumentParser) -> None:
    """Per-pair options of ``fuse`` that ``batch`` takes as defaults for every row: metric keys,
    DICOM series, DICOM output, colour."""
    p.add_argument("--metrics-keys", metavar="KEYS", default=None,
                   help="comma-separated metric keys for --metrics (default: all; for 3D volumes "
                        "all but the slow feature-MI family FMI_pixel, FMI_dct, FMI_w)")
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


def add_threads_option(p: argparse.ArgumentParser, *, extra: str = "") -> None:
    """``--threads N``: threads for torch, ITK and MedFusion's pools in this process (applied by
    :func:`MedFusionLib.cli.main` through :func:`MedFusionLib.threads.apply_threads`)."""
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads to use (default: $MEDFUSION_THREADS, else the cores this process "
                        "may use: CPU affinity and cgroup quota)" + extra)


def fusion_options(args: argparse.Namespace) -> dict:
    """``{dest: value}`` of every option :func:`add_fusion_options` added, as parsed."""
    return {a.dest: getattr(args, a.dest) for a in args._fusion_actions}

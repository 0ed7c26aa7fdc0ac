"""``medfusion dicom-ls DIR``: list the DICOM series of a folder, with header-only geometry checks."""

from __future__ import annotations

import argparse
import json
import sys

from ..dicom import list_series

NAME = "dicom-ls"
HELP = "list the DICOM series in a folder (UID, modality, size, spacing, geometry problems)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="folder searched recursively for DICOM files (or one DICOM file)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def _row(s) -> dict:
    return {
        "series_uid": s.series_uid,
        "study_uid": s.study_uid,
        "frame_of_reference_uid": s.frame_of_reference_uid,
        "modality": s.modality,
        "series_number": s.series_number,
        "description": s.description,
        "sop_class": s.sop_class,
        "files": s.n_files,
        "frames": s.n_frames,
        "size": [s.columns, s.rows, s.n_frames] if s.is_image else None,
        "spacing_mm": list(s.spacing) if s.spacing else None,
        "is_image": s.is_image,
        "problems": list(s.problems),
    }


def run(args) -> int:
    series = list_series(args.folder)
    if args.json:
        json.dump([_row(s) for s in series], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not series:
        print(f"{args.folder}: no DICOM series found")
        return 0
    for s in series:
        number = "-" if s.series_number is None else str(s.series_number)
        if s.is_image:
            size = f"{s.columns}x{s.rows}x{s.n_frames}"
            spacing = "x".join(f"{v:.3g}" for v in s.spacing) + " mm" if s.spacing else "spacing ?"
            shape = f"{size}  {spacing}"
        else:
            shape = f"non-image ({s.sop_class or '?'})"
        desc = f" '{s.description}'" if s.description else ""
        print(f"{s.series_uid}  {s.modality or '?':<3} #{number}{desc}  {s.n_files} files  {shape}")
        for problem in s.problems:
            print(f"    ! {problem}")
    images = sum(s.is_image for s in series)
    print(f"{len(series)} series ({images} image series); read one with its UID, e.g. "
          "medfusion fuse --fixed-series UID")
    return 0

"""Reading ITK transform files safely, and refusing transforms that would make nonsense.

``SimpleITK.ReadTransform`` trusts its input: a text ``.tfm`` with a parameter ``nan``, ``inf``,
``1e400``, a hexadecimal or misspelt number, or fewer parameters than its transform type has,
takes the whole process down (a segmentation fault or a corrupted heap), and a NaN in a MINC
``.xfm`` is read as the identity. And a transform that reads fine may still be degenerate: an
all-zero or singular matrix collapses the moving image into one value, silently.

- :func:`check_transform_text` parses a text transform file (``.tfm``/``.txt`` in ITK's format,
  ``.xfm`` in MINC's) before ITK sees it: every number a finite decimal, and for the transform
  types MedFusion knows the parameter count their type needs;
- :func:`read_transform` reads any transform file ITK reads: text files once they pass that
  check, binary ones (``.h5``, ``.hdf5``, ``.mat``) first in a child process, so that a file that
  crashes the reader fails that process only;
- :func:`check_transform` refuses a transform object with non-finite parameters, or a linear part
  (rotation, scaling, shear) that is singular or scales an axis by less than
  :data:`MIN_SCALE` or more than :data:`MAX_SCALE`.

Everything here raises :class:`~MedFusionLib.errors.InvalidInputError` with one line naming the
file. ``fuse``/``batch``/``compare`` use it for ``--initial-transform``; the Slicer bridge can use
:func:`check_transform` on transform nodes it hands to the engine.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InvalidInputError
from .registration.geometry import linear_part

__all__ = ["read_transform", "check_transform_text", "check_transform", "MIN_SCALE",
           "MAX_SCALE", "TEXT_EXTENSIONS"]

#: Smallest and largest factor by which a usable transform's linear part may scale an axis (its
#: singular values): two scans of one patient differ by a few percent, never by 1000 times.
MIN_SCALE = 1e-3
MAX_SCALE = 1e3

#: Text transform formats checked before ITK reads them.
TEXT_EXTENSIONS = (".tfm", ".txt", ".xfm")

#: A plain decimal number (what ITK writes): no nan, inf, hexadecimal or locale commas.
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

#: Largest transform file read as text (bytes); a larger one is not a linear transform.
_MAX_TEXT = 64 << 20

#: Seconds a child process gets to read a binary transform file.
_PROBE_TIMEOUT_S = 60


def _parameter_counts() -> dict[str, int]:
    """``{ITK type name without scalar/dimensions: number of parameters}`` for the transform
    types whose count does not depend on their fixed parameters."""
    counts = {"IdentityTransform": 0}
    for name, make in (("Euler3DTransform", sitk.Euler3DTransform),
                       ("Euler2DTransform", sitk.Euler2DTransform),
                       ("Rigid2DTransform", sitk.Euler2DTransform),
                       ("VersorTransform", sitk.VersorTransform),
                       ("VersorRigid3DTransform", sitk.VersorRigid3DTransform),
                       ("Similarity3DTransform", sitk.Similarity3DTransform),
                       ("Similarity2DTransform", sitk.Similarity2DTransform),
                       ("ScaleVersor3DTransform", sitk.ScaleVersor3DTransform),
                       ("ScaleSkewVersor3DTransform", sitk.ScaleSkewVersor3DTransform),
                       ("ComposeScaleSkewVersor3DTransform",
                        sitk.ComposeScaleSkewVersor3DTransform)):
        counts[name] = make().GetNumberOfParameters()
    return counts


_COUNTS = _parameter_counts()
#: Types whose parameter count is a function of the dimension D.
_BY_DIMENSION = {"AffineTransform": lambda d: d * d + d,
                 "MatrixOffsetTransformBase": lambda d: d * d + d,
                 "TranslationTransform": lambda d: d,
                 "ScaleTransform": lambda d: d}
#: Types whose count follows from their fixed parameters (ITK checks those itself) or that hold
#: no parameters of their own.
_CHECKED_BY_ITK = ("BSplineTransform", "CompositeTransform")


def _numbers(tokens: list[str], where: str) -> list[float]:
    values = []
    for tok in tokens:
        if not _NUMBER.match(tok):
            raise InvalidInputError(f"{where}: '{tok[:40]}' is not a number; transform files "
                                    "hold plain decimal numbers (no NaN or infinity).")
        v = float(tok)
        if not math.isfinite(v):
            raise InvalidInputError(f"{where}: the value {tok[:40]} is beyond the range of "
                                    "double-precision numbers.")
        values.append(v)
    return values


def _check_itk_text(path: Path, text: str) -> bool:
    """Check an ITK text transform file; returns False when it holds a transform type this
    module cannot count (the caller then reads it in a child process)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("#Insight Transform File"):
        raise InvalidInputError(f"{path}: not an ITK transform file (it must start with "
                                "'#Insight Transform File').")
    known = True
    kind = None
    for i, ln in enumerate(lines[1:], start=2):
        key, sep, value = ln.partition(":")
        if ln.startswith("#") or not sep:
            continue
        key = key.strip()
        if key == "Transform":
            kind = value.strip()
            continue
        if key not in ("Parameters", "FixedParameters"):
            continue
        where = f"{path}, {key} of transform {kind or '?'}"
        values = _numbers(value.split(), where)
        if key != "Parameters" or kind is None:
            continue
        base, *rest = kind.split("_")
        try:
            dim = int(rest[-1])
        except (IndexError, ValueError):
            raise InvalidInputError(f"{path}: the transform type '{kind[:60]}' names no "
                                    "dimension.") from None
        want = _COUNTS.get(base)
        if want is None and base in _BY_DIMENSION:
            want = _BY_DIMENSION[base](dim)
        if want is None:
            known = known and base in _CHECKED_BY_ITK
            continue
        if len(values) != want:
            raise InvalidInputError(f"{path}: {kind} has {want} parameters, but the file gives "
                                    f"{len(values)}; the file is damaged.")
    return known


def _check_xfm_text(path: Path, text: str) -> None:
    """Check a MINC ``.xfm``: the numbers of its linear transforms are finite decimals."""
    if not text.lstrip().startswith("MNI Transform File"):
        raise InvalidInputError(f"{path}: not a MINC transform file (it must start with "
                                "'MNI Transform File').")
    for block in re.findall(r"Linear_Transform\s*=([^;]*);", text):
        values = _numbers(block.split(), f"{path}, Linear_Transform")
        if len(values) != 12:
            raise InvalidInputError(f"{path}: a linear transform has 12 numbers, the file gives "
                                    f"{len(values)}; the file is damaged.")


def check_transform_text(path: str | os.PathLike) -> bool:
    """Parse a text transform file (``.tfm``/``.txt``: ITK, ``.xfm``: MINC) before ITK reads it.

    Returns
    -------
    bool
        True when every transform in it is of a type this module fully checks; False when it
        holds another type (:func:`read_transform` then reads it in a child process first).

    Raises
    ------
    InvalidInputError
        Not a transform file, a number that is not a finite plain decimal (``nan``, ``inf``,
        ``1e400``, ``0x1p3``, ``0,5``), or a parameter count that does not fit the type.
    """
    p = Path(path)
    try:
        if p.stat().st_size > _MAX_TEXT:
            raise InvalidInputError(f"{p}: {p.stat().st_size} bytes is too large for a text "
                                    "transform file.")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{p}: not a text transform file (it is not UTF-8 text).") from None
    except OSError as exc:
        raise InvalidInputError(f"{p}: cannot read the transform file "
                                f"({exc.strerror or exc}).") from None
    if p.suffix.lower() == ".xfm":
        _check_xfm_text(p, text)
        return True
    return _check_itk_text(p, text)


def _read_in_child(path: Path) -> None:
    """Read ``path`` with ``SimpleITK.ReadTransform`` in a child process first: a file that
    crashes the reader ends that process, not this one."""
    code = ("import sys, SimpleITK as s\n"
            "try:\n    s.ReadTransform(sys.argv[1])\n"
            "except Exception:\n    sys.exit(3)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                           timeout=_PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return  # no child process here (an embedding application): ITK reads it directly
    if r.returncode == 3:
        raise InvalidInputError(f"{path}: not a readable ITK transform file (.tfm, .txt, .h5).")
    if r.returncode != 0:
        raise InvalidInputError(f"{path}: ITK's transform reader crashes on this file "
                                f"(exit {r.returncode}); it is damaged or not a transform.")


def read_transform(path: str | os.PathLike) -> sitk.Transform:
    """Read a transform file safely and refuse a degenerate transform.

    Text files are checked by :func:`check_transform_text` first; binary ones (and text files
    of types it does not count) are read once in a child process before this process reads
    them; the result is checked by :func:`check_transform`.

    Raises
    ------
    InvalidInputError
        Missing, unreadable, damaged or degenerate (one line naming the file).
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{p}: transform file not found.")
    ext = p.suffix.lower()
    checked = check_transform_text(p) if ext in TEXT_EXTENSIONS else False
    if not checked:
        _read_in_child(p)
    try:
        tx = sitk.ReadTransform(str(p))
    except RuntimeError:
        raise InvalidInputError(f"{p}: not a readable ITK transform file (.tfm, .txt, "
                                ".h5).") from None
    check_transform(tx, p)
    return tx


def check_transform(tx: sitk.Transform, name: str | os.PathLike = "transform") -> None:
    """Refuse a transform that cannot be a registration of two scans of one patient.

    Every parameter and fixed parameter must be finite; where the transform is linear
    (rigid, similarity, affine, translation; composites of them), its matrix must be
    invertible with every singular value in [:data:`MIN_SCALE`, :data:`MAX_SCALE`] (an
    all-zero or singular matrix would collapse the moving image into one value).

    Raises
    ------
    InvalidInputError
    """
    params = np.asarray(tx.GetParameters(), dtype=np.float64)
    fixed = np.asarray(tx.GetFixedParameters(), dtype=np.float64)
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(fixed))):
        raise InvalidInputError(f"{name}: the transform has NaN or infinite parameters.")
    dim = tx.GetDimension()
    try:
        lin = linear_part(tx, dim)
    except (RuntimeError, ValueError):
        lin = None
    if lin is None:
        return
    matrix, offset = lin
    if not (np.all(np.isfinite(matrix)) and np.all(np.isfinite(offset))):
        raise InvalidInputError(f"{name}: the transform maps points to NaN or infinity.")
    scales = np.linalg.svd(matrix, compute_uv=False)
    if scales.min() < MIN_SCALE or scales.max() > MAX_SCALE:
        what = ("singular (an axis collapses to nothing)" if scales.min() < MIN_SCALE
                else f"scales an axis by {scales.max():.3g}")
        raise InvalidInputError(
            f"{name}: the transform is degenerate: its matrix is {what}; a registration of two "
            f"scans scales each axis by about 1 (allowed: {MIN_SCALE:g} to {MAX_SCALE:g}).")

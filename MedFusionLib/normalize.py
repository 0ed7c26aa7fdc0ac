"""Intensity normalisation of each source to [0, 1], the way its modality needs.

===========  =====================================================================================
modality     rule
===========  =====================================================================================
``CT``       a window (level, width) in Hounsfield units: presets ``brain`` (40, 80),
             ``soft-tissue`` (50, 400), ``bone`` (400, 1800, the default: bone bright, soft tissue
             mid-grey, air black — what CT adds to an MR in fusion), or an explicit ``(L, W)``.
``MR``       robust percentiles: [p0.5, p99.5] of the image mapped to [0, 1].
``PET``,     [0, p99.9]: uptake is non-negative and hot spots are what matters, so the top is
``SPECT``    taken high to keep lesions from saturating.
``8BIT``     8-bit images (PNG/JPEG/... or uint8 volumes) keep their 0-255 scale: divided by 255.
===========  =====================================================================================

Where the modality comes from, in order: the caller (``--fixed-modality``), the DICOM header
(``0008|0060`` Modality: CT, MR, PT -> PET, NM -> SPECT), else a guess: 8-bit pixels -> ``8BIT``;
values reaching below -500 and above +300 (Hounsfield air and bone) -> ``CT``; anything else ->
``MR``. PET cannot be told from MR by intensities alone: pass the modality for PET/SPECT files that
are not DICOM. :class:`NormalizationInfo` records what was used and why.

NaN and Inf voxels (masked-out regions of SPM/FSL maps, broken exports): one rule for every
format, :func:`replace_nonfinite` -- NaN and -Inf become the image's smallest finite value
(background), +Inf its largest; the count is logged as a warning (stderr in the CLI) and kept in
:attr:`NormalizationInfo.nonfinite_voxels` (the metrics JSON). An image with no finite voxel is
refused. Floating-point values beyond the float32 range (float64 files) are finite and are
normalised in float64.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from .errors import InvalidInputError
from .options import look_up

__all__ = ["MODALITIES", "CT_WINDOWS", "NormalizationInfo", "guess_modality", "resolve_modality", "normalize",
           "parse_window", "replace_nonfinite", "percentiles"]

logger = logging.getLogger(__name__)

MODALITIES = ("CT", "MR", "PET", "SPECT", "8BIT")

#: CT window presets as (level, width) in Hounsfield units.
CT_WINDOWS = {"brain": (40.0, 80.0), "soft-tissue": (50.0, 400.0), "bone": (400.0, 1800.0)}
#: Largest |level| of a CT window (HU); CT values lie within about -1024 to 30000 HU.
MAX_HU = 1e5
DEFAULT_CT_WINDOW = "bone"

_DICOM_MODALITY = {"CT": "CT", "MR": "MR", "PT": "PET", "PET": "PET", "NM": "SPECT", "ST": "SPECT"}


@dataclass(frozen=True)
class NormalizationInfo:
    """How a source was mapped to [0, 1]: ``out = clip((x - lower) / (upper - lower), 0, 1)``.

    Attributes
    ----------
    modality : str
        One of :data:`MODALITIES`.
    modality_source : str
        ``"user"``, ``"dicom"`` or ``"guess"``.
    lower, upper : float
        Input values mapped to 0 and 1 (in the input's units, e.g. HU for CT).
    rule : str
        Human-readable rule, e.g. ``"CT window bone (L=400, W=1800)"``.
    nonfinite_voxels : int
        Voxels that were NaN or Inf and were replaced (:func:`replace_nonfinite`).
    """

    modality: str
    modality_source: str
    lower: float
    upper: float
    rule: str
    nonfinite_voxels: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _check_modality(modality: str) -> str:
    return look_up(modality, [m.lower() for m in MODALITIES], what="modality").upper()


def parse_window(window) -> tuple[str, float, float]:
    """``"bone"``, ``"40,80"`` or ``(40, 80)`` -> (name, level, width) in HU."""
    if window is None:
        window = DEFAULT_CT_WINDOW
    if isinstance(window, str) and "," not in window:
        name = look_up(window, CT_WINDOWS, what="CT window")
        level, width = CT_WINDOWS[name]
        return name, level, width
    try:
        if isinstance(window, str):
            level, width = (float(v) for v in window.split(","))
        else:
            level, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"CT window {window!r} is neither a preset ({', '.join(CT_WINDOWS)}) nor 'LEVEL,WIDTH'."
        ) from None
    if not (math.isfinite(level) and math.isfinite(width)) or abs(level) > MAX_HU or width > 2 * MAX_HU:
        raise InvalidInputError(f"CT window {window!r}: level and width must be finite numbers of "
                                f"HU, the level within +-{MAX_HU:g} and the width at most "
                                f"{2 * MAX_HU:g}.")
    if not width > 0:
        raise InvalidInputError(f"CT window width must be positive, got {width:g}.")
    return "custom", level, width


def _is_8bit(image: sitk.Image) -> bool:
    if image.GetPixelID() in (sitk.sitkUInt8, sitk.sitkVectorUInt8):
        return True
    return image.HasMetaDataKey("MedFusion.BitsStored") and image.GetMetaData("MedFusion.BitsStored") == "8"


def guess_modality(image: sitk.Image, array: np.ndarray | None = None) -> tuple[str, str]:
    """Best guess of an image's modality: ``(modality, source)`` with source ``dicom`` or ``guess``."""
    if image.HasMetaDataKey("0008|0060"):
        tag = image.GetMetaData("0008|0060").strip().upper()
        if tag in _DICOM_MODALITY:
            return _DICOM_MODALITY[tag], "dicom"
    if _is_8bit(image):
        return "8BIT", "guess"
    arr = sitk.GetArrayViewFromImage(image) if array is None else array
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            return "MR", "guess"
    lo, hi = percentiles(arr, [1, 99.9])
    if lo <= -500 and hi >= 300:
        return "CT", "guess"
    return "MR", "guess"


def resolve_modality(image: sitk.Image, modality: str | None = None) -> tuple[str, str]:
    """``(modality, source)``: the caller's modality (source ``user``) or :func:`guess_modality`."""
    if modality is None:
        return guess_modality(image)
    return _check_modality(modality), "user"


def replace_nonfinite(arr: np.ndarray, name: str = "image") -> tuple[np.ndarray, int]:
    """Apply the NaN/Inf rule: NaN and -Inf -> smallest finite value, +Inf -> largest.

    Parameters
    ----------
    arr : ndarray
        Any real array; integer arrays pass unchanged.
    name : str
        The input's name for the warning and errors.

    Returns
    -------
    arr : ndarray
        ``arr`` itself when every value is finite, else a copy with the replacements.
    count : int
        How many values were replaced (also logged as a warning naming the input).

    Raises
    ------
    InvalidInputError
        If no value is finite.
    """
    if not np.issubdtype(arr.dtype, np.floating):
        return arr, 0
    finite = np.isfinite(arr)
    count = int(arr.size - np.count_nonzero(finite))
    if count == 0:
        return arr, 0
    if count == arr.size:
        raise InvalidInputError(f"{name}: every voxel is NaN or Inf; nothing to fuse.")
    lo, hi = arr[finite].min(), arr[finite].max()
    out = arr.copy()
    out[np.isnan(out) | (out == -np.inf)] = lo
    out[out == np.inf] = hi
    logger.warning("%s: %d voxel(s) are NaN or Inf: NaN and -Inf set to the smallest value (%g), "
                   "+Inf to the largest (%g)", name, count, lo, hi)
    return out, count


#: Elements per chunk of the passes over a volume (1 MB of float32: they stay in the caches).
_CHUNK = 1 << 18


def _tail_statistics(flat: np.ndarray, ks: list[int], sample: np.ndarray, upper: bool) -> dict:
    """Order statistics of ranks ``ks`` that lie in one tail of ``flat``, from the values beyond a
    threshold ``t`` taken from ``sample``: one chunked pass counts the values beyond ``t`` and
    equal to it and keeps those beyond. Ranks the threshold does not cover are left out."""
    n, m = flat.size, sample.size
    edge = min(ks) if upper else max(ks)
    p = (edge + 0.5) / n
    margin = 0.002 + 6.0 * np.sqrt(p * (1 - p) / m)
    j = int(np.clip((p - margin if upper else p + margin) * (m - 1), 0, m - 1))
    t = sample[j]  # sorted
    beyond, kept, ties = 0, [], 0
    for i in range(0, n, _CHUNK):
        c = flat[i:i + _CHUNK]
        mask = c > t if upper else c < t
        part = c[mask]
        beyond += part.size
        kept.append(part)
        ties += int(np.count_nonzero(c == t))
    kept = np.concatenate(kept) if kept else flat[:0]
    # ranks: lower tail, values < t at 0..beyond-1, then ties; upper tail, values > t at
    # n-beyond..n-1, ties just below them
    first = n - beyond if upper else 0
    tie_lo, tie_hi = (n - beyond - ties, n - beyond) if upper else (beyond, beyond + ties)
    inside = [k for k in ks if first <= k < first + beyond]
    out = {}
    if inside:
        kept.sort()  # a small set (np.partition is slow on the many equal values of images)
        out.update((k, kept[k - first]) for k in inside)
    out.update((k, t) for k in ks if tie_lo <= k < tie_hi)
    return out


def _order_statistics(flat: np.ndarray, ks: list[int]) -> dict[int, float]:
    """The ``k``-th smallest values of a 1D array (0-based ``k``), exactly, without sorting it.

    Ranks in the lowest or highest 5 % are found among the values beyond a threshold taken from
    a strided sample of ~65 000 values (one pass over the array, then a sort of that small set);
    ranks the threshold misses (it is checked by counting) and middle ranks come from a full
    partition of a copy, so the result is always exact.
    """
    n = flat.size
    out: dict[int, float] = {}
    if n >= (1 << 18):
        sample = np.sort(flat[::n // (1 << 16)])
        for upper in (False, True):
            tail = [k for k in ks if ((k + 0.5) / n > 0.95 if upper else (k + 0.5) / n < 0.05)]
            if tail:
                out.update(_tail_statistics(flat, tail, sample, upper))
    rest = sorted({k for k in ks if k not in out})
    if rest:
        copy = flat.copy()
        copy.partition(rest)
        out.update((k, copy[k]) for k in rest)
    return out


def percentiles(arr: np.ndarray, qs) -> list[float]:
    """Percentiles of ``arr`` (any shape, finite values) by the ``linear`` rule of
    ``np.percentile`` (Hyndman and Fan's type 7): exact order statistics, interpolated in float64.

    Tail percentiles (the 0.5 / 99.5 / 99.9 of :func:`normalize`, the 1 / 99.9 of
    :func:`guess_modality`) take one pass over the volume per tail instead of partitioning a copy
    of it (issue #23). Equal to ``np.percentile``
    up to its own rounding (it interpolates in the input's precision; tested).
    """
    flat = np.ascontiguousarray(arr).reshape(-1)
    n = flat.size
    qs = [float(q) / 100.0 for q in np.atleast_1d(qs)]
    spots = []
    for q in qs:
        v = (n - 1) * q  # np.percentile's virtual index (method "linear")
        lo = int(np.floor(v))
        if v >= n - 1:
            lo = hi = n - 1
        elif v < 0:
            lo = hi = 0
        else:
            hi = lo + 1
        spots.append((lo, hi, v - lo))
    stats = _order_statistics(flat, [i for lo, hi, _ in spots for i in (lo, hi)])
    out = []
    for lo, hi, g in spots:
        a, b = float(stats[lo]), float(stats[hi])
        out.append(a + (b - a) * g if g < 0.5 else b - (b - a) * (1.0 - g))
    return out


def _finite_min_max(arr: np.ndarray) -> tuple[bool, float, float]:
    """Whether every value is finite, and the smallest and largest value (of the finite ones
    when some are not): one pass, a chunk at a time."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    floating = np.issubdtype(flat.dtype, np.floating)
    finite, lo, hi = True, np.inf, -np.inf
    for i in range(0, flat.size, _CHUNK):
        c = flat[i:i + _CHUNK]
        if floating and not np.isfinite(c).all():
            finite = False
            c = c[np.isfinite(c)]
            if not c.size:
                continue
        lo, hi = min(lo, c.min()), max(hi, c.max())
    return finite, float(lo), float(hi)


def _scaled(arr: np.ndarray, dtype, lower: float, upper: float) -> np.ndarray:
    """``clip((arr - lower) / (upper - lower), 0, 1)`` computed in ``dtype`` and stored as
    float32, a chunk at a time (each chunk's temporary stays in the caches)."""
    out = np.empty(arr.shape, dtype=np.float32)
    src, dst = np.ascontiguousarray(arr).reshape(-1), out.reshape(-1)
    lo, scale = dtype(lower), dtype(1.0 / (upper - lower))
    for i in range(0, src.size, _CHUNK):
        t = src[i:i + _CHUNK].astype(dtype)
        t -= lo
        t *= scale
        np.clip(t, 0.0, 1.0, out=dst[i:i + _CHUNK])
    return out


def normalize(image: sitk.Image, modality: str | None = None, *, window=None,
              name: str = "image", source: str = "user") -> tuple[np.ndarray, NormalizationInfo]:
    """Map an image's intensities to [0, 1] by its modality's rule.

    Parameters
    ----------
    image : SimpleITK.Image
        A scalar 2D or 3D image.
    modality : str, optional
        ``CT``, ``MR``, ``PET``, ``SPECT`` or ``8BIT``; from the DICOM header or guessed if omitted.
    window : str or (float, float), optional
        CT only: a preset name (``brain``, ``soft-tissue``, ``bone``) or ``(level, width)`` in HU.
    name : str, optional
        Name of the input for error messages (e.g. its path).
    source : str, optional
        Where a given ``modality`` came from (recorded in the info): ``user``, ``dicom``, ``guess``.

    Returns
    -------
    array : ndarray
        ``float32`` in [0, 1], numpy (z, y, x) order.
    info : NormalizationInfo
        The rule that was applied (with the count of NaN/Inf voxels replaced).

    Raises
    ------
    InvalidInputError
        If the image is complex-valued, has no finite voxel or is constant, or the
        modality/window is unknown.
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(f"{name}: a scalar image is needed, got a vector image with "
                                f"{image.GetNumberOfComponentsPerPixel()} components per pixel.")
    # a read-only view of the image's buffer: the volume-sized array made here is ``out`` (plus
    # a copy when NaN/Inf voxels are replaced)
    arr = sitk.GetArrayViewFromImage(image)
    if np.iscomplexobj(arr):
        raise InvalidInputError(f"{name}: the pixels are complex-valued; give the magnitude (or the "
                                "real part) as a scalar image.")
    # float64 data is worked on in float64: values beyond the float32 range are not Inf
    work = np.float64 if arr.dtype == np.float64 else np.float32
    nonfinite = 0
    finite, amin, amax = _finite_min_max(arr)
    if not finite:
        arr, nonfinite = replace_nonfinite(arr.astype(work), str(name))
    if amax <= amin:
        raise InvalidInputError(f"{name}: the image is constant (every voxel is {amin:g}); nothing to fuse.")
    if modality is None:
        modality, source = guess_modality(image, arr)
    else:
        modality = _check_modality(modality)
    if window is not None and modality != "CT":
        raise InvalidInputError(f"{name}: a CT window was given but the modality is {modality}.")

    if modality == "CT":
        wname, level, width = parse_window(window)
        lower, upper = level - width / 2, level + width / 2
        rule = f"CT window {wname} (L={level:g}, W={width:g})"
    elif modality == "8BIT":
        lower, upper = 0.0, 255.0
        rule = "8-bit scale (x / 255)"
    elif modality == "MR":
        lower, upper = percentiles(arr, [0.5, 99.5])
        rule = "robust percentiles [p0.5, p99.5]"
    else:  # PET, SPECT
        lower = 0.0
        upper = percentiles(arr, [99.9])[0]
        rule = "uptake [0, p99.9]"
    if upper <= lower:  # sparse images: fall back to the full range
        lower, upper = amin, amax
        rule += " (degenerate percentiles: full range used)"
    out = _scaled(arr, work, lower, upper)
    # the mapping is monotonic: the result's extremes are those of the input's extremes
    ends = _scaled(np.array([amin, amax], dtype=arr.dtype), work, lower, upper)
    if float(ends[1]) <= float(ends[0]):
        raise InvalidInputError(
            f"{name}: after {rule} the image is constant; its values ({amin:g}..{amax:g}) lie "
            "outside the window — check the modality or give another window."
        )
    return out, NormalizationInfo(modality, source, float(lower), float(upper), rule, nonfinite)

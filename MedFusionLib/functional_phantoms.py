"""Synthetic functional brain images (perfusion-SPECT-like, FDG-PET-like) from tissue maps.

The CNN is trained and validated on anatomical + functional pairs that no one scanned: real T1
anatomy (the MNI152 template for training, the Colin27 single subject for validation) with a
functional volume simulated from the same anatomy's tissue maps:

===============  ===========================================  ==================================
                 ``fdg`` (FDG-PET-like)                       ``spect`` (perfusion-SPECT-like)
===============  ===========================================  ==================================
grey matter      1 (relative uptake)                          1 (relative perfusion)
white matter     0.25-0.40 of grey matter                     0.45-0.65 of grey matter
CSF              0.03-0.08                                    0.05-0.12
extracranial     0.05-0.15 (scalp, muscle)                    0.05-0.20
resolution       4-7 mm FWHM                                  8-12 mm FWHM
hot lesions      0-3, 3-10 mm radius, 1.3-2.5 x grey matter   0-2, 5-12 mm, 1.2-1.6 x (ictal)
cold regions     0-2, 6-16 mm radius, 0.25-0.7 x local        1-3, 8-20 mm, 0.2-0.7 x (defects)
noise            Poisson-like, 4-8 % at grey matter           Poisson-like, 6-12 %
                 (correlated over 0.4 x the resolution's sigma, at least 1 mm)
===============  ===========================================  ==================================

plus a smooth regional variation (+-10 %, 25 mm scale). Ratios follow the usual clinical values
(FDG grey/white ~3-4, HMPAO/ECD perfusion grey/white ~1.5-2.2; tumour and ictal foci above grey
matter, infarct and hypometabolic regions well below it).

The 2D *pseudo-colour* form the literature's benchmark pairs use (SPECT/PET rendered through a
clinical colour table, fused on the luminance Y of BT.601) is produced by
:func:`pseudo_colour_luminance` with the tables of :data:`CLINICAL_TABLES` (hot, jet/rainbow,
NIH, spectrum). A rainbow's luminance is *not* monotonic in uptake: jet's red top end is darker
than its yellow/cyan middle, so a hot spot can be darker than its surroundings in Y.

All of it is synthetic: nothing here is a scan of a patient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import optional
from .colour import apply_colour_table, colour_table, rgb_to_ycbcr
from .datasets import sample_volumes
from .errors import InvalidInputError
from .options import look_up

__all__ = ["FUNCTIONAL_KINDS", "CLINICAL_TABLES", "TissueMaps", "FunctionalPhantom",
           "mni_tissue_maps", "colin_tissue_maps", "functional_volume", "clinical_table",
           "pseudo_colour_luminance"]

FUNCTIONAL_KINDS = ("fdg", "spect")

#: Control points ``(position, R, G, B)`` of clinical nuclear-medicine colour tables, in [0, 1]
#: (the usual definitions: hot = black-red-yellow-white; jet = dark blue-blue-cyan-yellow-red-dark
#: red, the classic "rainbow"; NIH = black-violet-blue-cyan-green-yellow-red; spectrum = black
#: then a hue sweep blue-green-yellow-red-white).
CLINICAL_TABLES = {
    "hot": [(0.0, 0, 0, 0), (0.375, 1, 0, 0), (0.75, 1, 1, 0), (1.0, 1, 1, 1)],
    "jet": [(0.0, 0, 0, 0.5), (0.125, 0, 0, 1), (0.375, 0, 1, 1), (0.625, 1, 1, 0),
            (0.875, 1, 0, 0), (1.0, 0.5, 0, 0)],
    "nih": [(0.0, 0, 0, 0), (0.12, 0.45, 0, 0.55), (0.3, 0, 0, 1), (0.45, 0, 0.8, 0.85),
            (0.6, 0, 0.85, 0), (0.75, 1, 1, 0), (0.9, 1, 0.25, 0), (1.0, 1, 0, 0)],
    "spectrum": [(0.0, 0, 0, 0), (0.1, 0.3, 0, 0.5), (0.25, 0, 0, 1), (0.45, 0, 1, 0),
                 (0.65, 1, 1, 0), (0.85, 1, 0, 0), (1.0, 1, 1, 1)],
}

# kind -> parameter ranges (see the module docstring)
_KIND = {
    "fdg": dict(wm=(0.25, 0.40), csf=(0.03, 0.08), extra=(0.05, 0.15), fwhm=(4.0, 7.0),
                hot=(0, 3), hot_r=(3.0, 10.0), hot_gain=(1.3, 2.5),
                cold=(0, 2), cold_r=(6.0, 16.0), cold_gain=(0.25, 0.7), noise=(0.04, 0.08)),
    "spect": dict(wm=(0.45, 0.65), csf=(0.05, 0.12), extra=(0.05, 0.20), fwhm=(8.0, 12.0),
                  hot=(0, 2), hot_r=(5.0, 12.0), hot_gain=(1.2, 1.6),
                  cold=(1, 3), cold_r=(8.0, 20.0), cold_gain=(0.2, 0.7), noise=(0.06, 0.12)),
}


@dataclass
class TissueMaps:
    """Tissue maps of one head on a 1 mm grid, arrays ``float32 (z, y, x)``.

    Attributes
    ----------
    t1 : ndarray
        The T1 image normalised to [0, 1] (robust percentiles).
    gm, wm, csf : ndarray
        Grey matter, white matter and CSF fractions in [0, 1].
    brain : ndarray
        ``bool`` brain mask.
    extra : ndarray
        ``bool`` extracranial head tissue (scalp, muscle); may be empty (skull-stripped T1).
    name : str
        Where the maps come from.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    extra: np.ndarray
    name: str


@dataclass
class FunctionalPhantom:
    """A simulated functional volume and what went into it.

    Attributes
    ----------
    values : ndarray
        ``float32 (z, y, x)`` in [0, 1]: relative uptake divided by its 99.9th percentile (the
        PET/SPECT normalisation of :mod:`MedFusionLib.normalize`), clipped.
    hot, cold : ndarray
        ``bool (z, y, x)`` cores of the hyper- and hypo-functional lesions (their radius minus
        1 mm, before blurring), for lesion-contrast checks.
    kind : str
        ``fdg`` or ``spect``.
    fwhm_mm : float
        Resolution of the simulation.
    """

    values: np.ndarray
    hot: np.ndarray
    cold: np.ndarray
    kind: str
    fwhm_mm: float


def _robust01(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [0.5, 99.5])
    return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def mni_tissue_maps() -> TissueMaps:
    """Tissue maps of the MNI152 2009a template (nilearn), ``(z, y, x)`` like
    :func:`MedFusionLib.datasets.sample_volumes`; extracranial tissue from the synthetic CT's
    scalp."""
    nds = optional.require("nilearn.datasets", what="the MNI152 tissue maps")
    vols = sample_volumes()
    t1 = sitk.GetArrayFromImage(vols["mr_t1"]).astype(np.float32)
    ct = sitk.GetArrayFromImage(vols["ct"]).astype(np.float32)

    def as_zyx(img):  # nilearn (x, y, z) -> (z, y, x)
        return np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)

    gm = as_zyx(nds.load_mni152_gm_template(resolution=1))
    wm = as_zyx(nds.load_mni152_wm_template(resolution=1))
    brain = as_zyx(nds.load_mni152_brain_mask(resolution=1)) > 0
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0, 1)
    extra = (ct > -200) & (ct < 200) & ~brain
    return TissueMaps(_robust01(t1), gm, wm, csf, brain, extra, "MNI152 2009a")


def _kmeans_1d(x: np.ndarray, k: int = 3, iters: int = 30) -> np.ndarray:
    centres = np.percentile(x, np.linspace(15, 85, k))
    for _ in range(iters):
        labels = np.argmin(np.abs(x[:, None] - centres[None]), axis=1)
        centres = np.array([x[labels == i].mean() if np.any(labels == i) else centres[i]
                            for i in range(k)])
    return labels


def colin_tissue_maps(path: str | Path) -> TissueMaps:
    """Tissue maps of the Colin27 brain-extracted T1 (``ch2bet.nii.gz``): k-means classes of the
    brain's T1 intensities (CSF < grey < white matter), softened by a 0.7 mm Gaussian into
    partial-volume fractions. No extracranial tissue (the image is skull-stripped)."""

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: Colin27 T1 not found; run "
                                "Resources/SampleData/fetch-colin27.sh (make data).")
    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    brain = t1 > np.percentile(t1[t1 > 0], 2)
    labels = np.zeros(t1.shape, np.int8)
    labels[brain] = _kmeans_1d(t1[brain]) + 1
    fr = [ndimage.gaussian_filter((labels == c).astype(np.float32), 0.7) for c in (1, 2, 3)]
    return TissueMaps(_robust01(t1), fr[1], fr[2], fr[0], brain, np.zeros_like(brain),
                      "Colin27")


def _ellipsoid(shape, centre, radii, grid) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def functional_volume(tissues: TissueMaps, kind: str, rng, *, z_range=None) -> FunctionalPhantom:
    """Simulate one FDG-PET-like or perfusion-SPECT-like volume on ``tissues``' grid.

    Parameters
    ----------
    tissues : TissueMaps
        The anatomy (1 mm grid).
    kind : {"fdg", "spect"}
        Which tracer's contrast, resolution, lesions and noise (module docstring table).
    rng : numpy.random.Generator
        Draws every random parameter: one seed, one volume.
    z_range : (int, int), optional
        Axial slices ``[z0, z1)`` where lesion centres may lie (default: the whole brain).

    Returns
    -------
    FunctionalPhantom
    """

    kind = look_up(kind, FUNCTIONAL_KINDS, what="functional kind")
    p = _KIND[kind]
    u = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
    t = tissues
    shape = t.gm.shape
    act = (t.gm + u(p["wm"]) * t.wm + u(p["csf"]) * t.csf) * t.brain
    act = act + u(p["extra"]) * t.extra
    # smooth regional variation (+-10 %, ~25 mm)
    field = ndimage.gaussian_filter(rng.standard_normal(
        tuple(max(2, s // 8) for s in shape)).astype(np.float32), 1.5)
    field = ndimage.zoom(field / max(float(field.std()), 1e-6), [s / f for s, f in
                                                                 zip(shape, field.shape)], order=1)
    act = act * (1.0 + 0.1 * np.clip(field[:shape[0], :shape[1], :shape[2]], -2.5, 2.5))

    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    zs, ys, xs = np.nonzero(t.brain)
    if z_range is not None:
        keep = (zs >= z_range[0]) & (zs < z_range[1])
        zs, ys, xs = zs[keep], ys[keep], xs[keep]
    hot = np.zeros(shape, bool)
    cold = np.zeros(shape, bool)
    for which, count, radius, gain in (("cold", "cold", "cold_r", "cold_gain"),
                                       ("hot", "hot", "hot_r", "hot_gain")):
        for _ in range(int(rng.integers(p[count][0], p[count][1] + 1))):
            i = int(rng.integers(zs.size))
            centre = (zs[i], ys[i], xs[i])
            r = u(p[radius])
            radii = [r * float(rng.uniform(0.7, 1.3)) for _ in range(3)]
            blob = _ellipsoid(shape, centre, radii, grid) & t.brain
            core = _ellipsoid(shape, centre, [max(ri - 1.0, 1.0) for ri in radii], grid) & t.brain
            g = u(p[gain])
            if which == "hot":
                act = np.where(blob, np.maximum(act, g), act)
                hot |= core
            else:
                act = np.where(blob, act * g, act)
                cold |= core
    fwhm = u(p["fwhm"])
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    vol = ndimage.gaussian_filter(act.astype(np.float32), sigma)
    # Poisson-like noise, relative level `noise` at grey-matter uptake, correlated over ~40 % of
    # the resolution (the reconstruction's post-filter: SPECT noise is blotchy, not speckled)
    level = u(p["noise"])
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                                    max(1.0, 0.4 * sigma))
    noise /= max(float(noise.std()), 1e-6)
    vol = np.clip(vol + level * np.sqrt(np.maximum(vol, 0.0)) * noise * (vol > 0.01), 0, None)
    top = float(np.percentile(vol, 99.9))
    values = np.clip(vol / max(top, 1e-6), 0, 1).astype(np.float32)
    return FunctionalPhantom(values, hot, cold, kind, fwhm)


def clinical_table(name: str, n: int = 256) -> np.ndarray:
    """One of :data:`CLINICAL_TABLES` as an ``(n, 3)`` float array in [0, 1]."""

    key = look_up(name, CLINICAL_TABLES, what="clinical colour table")
    pts = np.array(CLINICAL_TABLES[key], dtype=float)
    x = np.linspace(0.0, 1.0, n)
    return colour_table(np.stack([np.interp(x, pts[:, 0], pts[:, c]) for c in (1, 2, 3)], 1), n)


def pseudo_colour_luminance(values01: np.ndarray, table: str, *, quantise: bool = True) -> np.ndarray:
    """Luminance Y (BT.601) of ``values01`` rendered through a clinical colour table.

    This is the functional source as the literature's pseudo-colour benchmark pairs give it to a
    greyscale fusion method (:mod:`MedFusionLib.colour` fuses the same Y plane).

    Parameters
    ----------
    values01 : ndarray
        Uptake in [0, 1], any shape.
    table : str
        A key of :data:`CLINICAL_TABLES`.
    quantise : bool
        Round the RGB to 8 bits first, as a PNG stores it.

    Returns
    -------
    ndarray
        ``float32``, same shape, in [0, 1].
    """

    rgb = apply_colour_table(values01, clinical_table(table))
    if quantise:
        rgb = np.rint(rgb * 255.0) / 255.0
    y, _, _ = rgb_to_ycbcr(rgb)
    return np.clip(y, 0.0, 1.0).astype(np.float32)

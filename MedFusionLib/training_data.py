"""The CNN's training data: a bank of co-registered 2D slices and its augmented pairs.

- :class:`SliceBank`: slices of several "modalities" on one grid, and a sampler of augmented pairs
  (flips, 90 degree turns, crops, contrast changes, functional sources rendered through clinical
  colour tables);
- :func:`mni_bank`, :func:`functional_bank`: the bundled MNI152 T1 with synthetic CT/PET, and
  FDG-PET-like / perfusion-SPECT-like volumes made from its tissue maps;
- :func:`folder_bank`: a user's own pairs (``DIR/A/<name>``, ``DIR/B/<name>``).

Nothing here needs torch: :mod:`MedFusionLib.training` turns the sampled pairs into tensors.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import optional
from .datasets import sample_volumes
from .errors import InvalidInputError
from .functional_phantoms import (CLINICAL_TABLES, functional_volume, mni_tissue_maps,
                                  pseudo_colour_luminance)
from .io import read_image
from .normalize import normalize

__all__ = ["SliceBank", "mni_bank", "functional_bank", "folder_bank"]


class SliceBank:
    """Co-registered 2D slices of several "modalities", and a sampler of augmented pairs.

    Parameters
    ----------
    images : dict of str -> ndarray
        ``name -> float32 (S, H, W)`` in [0, 1]; every entry has the same shape (slice ``s`` of
        every entry shows the same anatomy).
    tissues : ndarray, optional
        ``float32 (S, K, H, W)`` tissue fractions for random-contrast synthesis.
    ct_hu : ndarray, optional
        ``float32 (S, H, W)`` CT in HU, windowed at random when the ``ct`` entry is drawn.
    pairs : list of (str, str), optional
        Which entries may be paired (default: every two different entries).
    functional : iterable of str, optional
        Entries that are functional (PET/SPECT uptake in [0, 1]). They are not given the anatomical
        contrast augmentation; instead :func:`_render_functional` scales their uptake and, with
        probability ``colour_prob``, renders them through a clinical colour table and keeps the
        luminance (the literature's pseudo-colour form). :meth:`sample` can report which source
        of each pair is functional.
    colour_prob : float
        Probability that a functional source is given as pseudo-colour luminance.
    """

    CT_WINDOWS = ((40.0, 80.0), (40.0, 400.0), (300.0, 1500.0), (600.0, 2800.0), (50.0, 2000.0))

    def __init__(self, images: dict, *, tissues=None, ct_hu=None, pairs=None, functional=(),
                 colour_prob: float = 0.6):
        if not images:
            raise InvalidInputError("the training data set is empty.")
        shapes = {v.shape for v in images.values()}
        if len(shapes) != 1:
            raise InvalidInputError(f"training images differ in shape: {sorted(shapes)}.")
        self.images = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in images.items()}
        self.tissues = tissues
        self.ct_hu = ct_hu
        names = list(self.images) + (["synth"] if tissues is not None else [])
        self.names = names
        self.pairs = pairs or [(p, q) for i, p in enumerate(names) for q in names[i + 1:]]
        self.n_slices, self.height, self.width = next(iter(self.images.values())).shape
        self.functional = frozenset(functional)
        unknown = self.functional - set(self.images)
        if unknown:
            raise InvalidInputError(f"functional entries {sorted(unknown)} are not in the bank.")
        self.colour_prob = float(colour_prob)

    def _source(self, name: str, s: int, rng) -> np.ndarray:
        if name == "synth":
            t = self.tissues[s]
            c = rng.uniform(0.0, 1.0, size=t.shape[0]).astype(np.float32)
            img = np.tensordot(c, t, axes=1)
            return img / max(float(img.max()), 1e-3)
        if name == "ct" and self.ct_hu is not None:
            level, width = self.CT_WINDOWS[rng.integers(len(self.CT_WINDOWS))]
            return np.clip((self.ct_hu[s] - (level - width / 2)) / width, 0.0, 1.0)
        return self.images[name][s]

    def _prepare(self, name: str, x: np.ndarray, rng) -> np.ndarray:
        if name in self.functional:
            return _render_functional(x, rng, self.colour_prob)
        return _augment(x, rng)

    def sample(self, n: int, patch: int, rng, *, identity_prob: float = 0.0,
               return_roles: bool = False):
        """``n`` pairs of ``patch x patch`` crops: two ``float32 (n, patch, patch)`` arrays, and
        with ``return_roles`` an ``int64 (n,)`` array saying which source is functional (0 = the
        first, 1 = the second, -1 = neither, or a slice paired with itself)."""
        out_a = np.zeros((n, patch, patch), np.float32)
        out_b = np.zeros((n, patch, patch), np.float32)
        roles = np.full(n, -1, np.int64)
        for i in range(n):
            s = int(rng.integers(self.n_slices))
            p, q = self.pairs[rng.integers(len(self.pairs))]
            a = self._source(p, s, rng)
            b = a if rng.random() < identity_prob else self._source(q, s, rng)
            if rng.random() < 0.5:
                a, b = b, a
                p, q = q, p
            if b is a:
                a = b = self._prepare(p, a, rng)
            else:
                a, b = self._prepare(p, a, rng), self._prepare(q, b, rng)
                if (p in self.functional) != (q in self.functional):
                    roles[i] = 0 if p in self.functional else 1
            h, w = a.shape
            # centre the crop on a random foreground pixel (most of a slice is air)
            fg = np.flatnonzero((a > 0.05) | (b > 0.05))
            cy, cx = divmod(int(fg[rng.integers(fg.size)]), w) if fg.size else (h // 2, w // 2)
            y0 = int(np.clip(cy - patch // 2 + rng.integers(-patch // 4, patch // 4 + 1), 0,
                             max(0, h - patch)))
            x0 = int(np.clip(cx - patch // 2 + rng.integers(-patch // 4, patch // 4 + 1), 0,
                             max(0, w - patch)))
            ca, cb = a[y0:y0 + patch, x0:x0 + patch], b[y0:y0 + patch, x0:x0 + patch]
            k = int(rng.integers(4))
            flip = rng.random() < 0.5
            for dst, src in ((out_a, ca), (out_b, cb)):
                src = np.rot90(src, k)
                if flip:
                    src = src[:, ::-1]
                dst[i, :src.shape[0], :src.shape[1]] = src
        if return_roles:
            return out_a, out_b, roles
        return out_a, out_b


def _augment(x: np.ndarray, rng) -> np.ndarray:
    """Random contrast of one source: gamma, head inversion, scale, blur, noise (stays in [0, 1])."""

    x = np.asarray(x, np.float32)
    fg = x > 0.02
    y = x ** np.float32(math.exp(rng.uniform(math.log(0.6), math.log(1.7))))
    if rng.random() < 0.15:  # polarity swap inside the head (a T2/PD-like contrast)
        y = np.where(fg, 1.0 - y, 0.0).astype(np.float32)
    if rng.random() < 0.3:
        y = y * np.float32(rng.uniform(0.6, 1.0))
    if rng.random() < 0.25:
        y = ndimage.gaussian_filter(y, float(rng.uniform(0.5, 1.5)))
    if rng.random() < 0.3:
        y = y + rng.normal(0.0, rng.uniform(0.005, 0.03), y.shape).astype(np.float32) * fg
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def _render_functional(x: np.ndarray, rng, colour_prob: float) -> np.ndarray:
    """A functional source as a fusion method gets it: uptake in [0, 1] with a random gamma
    (0.8-1.25, display scaling) and, with probability ``colour_prob``, the luminance of its
    rendering through a random clinical colour table (hot, jet, NIH, spectrum)."""

    y = np.asarray(x, np.float32) ** np.float32(math.exp(rng.uniform(math.log(0.8),
                                                                     math.log(1.25))))
    if rng.random() < colour_prob:
        tables = list(CLINICAL_TABLES)
        y = pseudo_colour_luminance(y, tables[int(rng.integers(len(tables)))])
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def _mni_sources():
    """MNI-grid volumes (z, y, x): T1, CT (HU), PET and tissue fractions."""
    nds = optional.require("nilearn.datasets", what="the CNN's training data (MNI152 template)")
    vols = sample_volumes()
    t1 = sitk.GetArrayFromImage(vols["mr_t1"]).astype(np.float32)
    ct = sitk.GetArrayFromImage(vols["ct"]).astype(np.float32)
    pet = sitk.GetArrayFromImage(vols["pet"]).astype(np.float32)

    def as_zyx(img):  # nilearn (x, y, z) -> the (z, y, x) array order of sample_volumes
        return np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)

    gm = as_zyx(nds.load_mni152_gm_template(resolution=1))
    wm = as_zyx(nds.load_mni152_wm_template(resolution=1))
    brain = as_zyx(nds.load_mni152_brain_mask(resolution=1)) > 0
    if gm.shape != t1.shape:
        raise InvalidInputError(f"MNI tissue maps {gm.shape} do not match the T1 {t1.shape}.")
    return t1, ct, pet, gm, wm, brain


def _mr01(t1: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(t1, [0.5, 99.5])
    return np.clip((t1 - lo) / (hi - lo), 0, 1).astype(np.float32)


def mni_bank(*, z_range=(12, 176), exclude=(75, 115)) -> SliceBank:
    """The default training bank: MNI axial slices in ``z_range`` outside ``exclude``.

    Entries ``mr`` (T1), ``ct`` (HU, random window at sampling), ``pet`` and ``synth`` (random
    tissue contrasts). Pairs: mr-ct, mr-pet, ct-pet, and synth with each.
    """
    t1, ct, pet, gm, wm, brain = _mni_sources()
    zs = [z for z in range(*z_range) if not exclude[0] <= z < exclude[1]]
    mr = _mr01(t1)[zs]
    pet01 = np.clip(pet / np.percentile(pet, 99.9), 0, 1).astype(np.float32)[zs]
    ct_hu = ct[zs]
    gm, wm, brain = gm[zs], wm[zs], brain[zs]
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0, 1)
    bone = np.clip((ct_hu - 300.0) / 700.0, 0, 1)
    head = (mr > 0.05) | (bone > 0)
    soft = (head & ~brain).astype(np.float32) * (1 - bone) * mr
    tissues = np.stack([gm, wm, csf, bone, soft], axis=1).astype(np.float32)
    ct01 = np.clip((ct_hu + 160.0) / 400.0, 0, 1).astype(np.float32)
    return SliceBank({"mr": mr, "ct": ct01, "pet": pet01}, tissues=tissues, ct_hu=ct_hu,
                     pairs=[("mr", "ct"), ("mr", "pet"), ("ct", "pet"), ("mr", "synth"),
                            ("ct", "synth"), ("pet", "synth")])


def functional_bank(*, z_range=(12, 176), exclude=(75, 115), n_volumes: int = 4,
                    seed: int = 0, colour_prob: float = 0.6) -> SliceBank:
    """Anatomical + functional training pairs on the MNI152 anatomy (issue #16).

    Anatomical entries: ``mr`` (T1, contrast-augmented: gamma, inversion for T2/PD-like
    contrasts, blur, noise), ``ct`` (random window) and ``synth`` (random tissue contrasts).
    Functional entries: the sample ``pet`` and ``n_volumes`` FDG-PET-like and ``n_volumes``
    perfusion-SPECT-like volumes of :func:`MedFusionLib.functional_phantoms.functional_volume`
    (seeds ``seed * 1000 + 1, ...``; lesions anywhere in the training slices), given grey or as
    pseudo-colour luminance (:func:`_render_functional`). Every pair is one anatomical and one
    functional source, in random order. Slices in ``exclude`` are never used (validation slab).
    """

    base = mni_bank(z_range=z_range, exclude=exclude)
    zs = [z for z in range(*z_range) if not exclude[0] <= z < exclude[1]]
    tissues = mni_tissue_maps()
    images = dict(base.images)
    functional = ["pet"]
    for kind in ("fdg", "spect"):
        for i in range(n_volumes):
            rng = np.random.default_rng(seed * 1000 + 1 + len(functional))
            name = f"{kind}{i}"
            images[name] = functional_volume(tissues, kind, rng, z_range=z_range).values[zs]
            functional.append(name)
    pairs = [(anat, func) for anat in ("mr", "ct", "synth") for func in functional]
    return SliceBank(images, tissues=base.tissues, ct_hu=base.ct_hu, pairs=pairs,
                     functional=functional, colour_prob=colour_prob)


def folder_bank(folder: str | os.PathLike, *, patch: int = 96) -> SliceBank:
    """A bank of a user's co-registered pairs: ``folder/A/<name>`` with ``folder/B/<name>``.

    Every slice is zero-padded to the largest slice size (at least ``patch``).
    """

    folder = Path(folder)
    da, db = folder / "A", folder / "B"
    if not da.is_dir() or not db.is_dir():
        raise InvalidInputError(f"{folder}: a fine-tuning folder needs sub-folders A/ and B/ with "
                                "co-registered images of the same names.")
    names = sorted(p.name for p in da.iterdir() if not p.name.startswith("."))
    pairs = [(da / n, db / n) for n in names if (db / n).exists()]
    if not pairs:
        raise InvalidInputError(f"{folder}: no file in A/ has a partner of the same name in B/.")
    slices_a, slices_b = [], []
    for pa, pb in pairs:
        ia, ib = read_image(pa), read_image(pb)
        if ia.GetSize() != ib.GetSize():
            raise InvalidInputError(f"{pa.name}: A is {ia.GetSize()} but B is {ib.GetSize()}; the "
                                    "pairs must be co-registered on one grid.")
        xa, _ = normalize(ia, name=str(pa))
        xb, _ = normalize(ib, name=str(pb))
        if xa.ndim == 2:
            xa, xb = xa[None], xb[None]
        slices_a.extend(xa)
        slices_b.extend(xb)
    h = max(patch, max(s.shape[0] for s in slices_a))
    w = max(patch, max(s.shape[1] for s in slices_a))
    a = np.zeros((len(slices_a), h, w), np.float32)
    b = np.zeros_like(a)
    for i, (sa, sb) in enumerate(zip(slices_a, slices_b)):
        a[i, :sa.shape[0], :sa.shape[1]] = sa
        b[i, :sb.shape[0], :sb.shape[1]] = sb
    return SliceBank({"A": a, "B": b})

"""The Harvard Whole Brain Atlas (AANLIB) fusion pairs: layout, split by case, and loading.

The pairs come from the public repository ``xianming-gu/Havard-Medical-Image-Fusion-Datasets``
(fetched by ``Resources/SampleData/fetch-aanlib.sh``; the images carry no redistribution licence
and are never part of MedFusion). Its layout::

    CT-MRI/{CT,MRI}/<name>.png        184 registered 256 x 256 pairs (grey)
    PET-MRI/{PET,MRI}/<name>.png      269 pairs, PET as pseudo-colour RGB
    SPECT-MRI/{SPECT,MRI}/<name>.png  357 pairs, SPECT as pseudo-colour RGB
    MyDatasets/<folder>/{train,test}/{<modality>,MRI}/<name>.png   the repository's own split

**Case rule.** A file name is the atlas case number followed by a three-digit slice number:
``16003.png`` is case 16, slice 3; ``2004.png`` is case 2, slice 4 (:func:`case_of`). Adjacent
slices of one case are near copies, so every split here keeps a case whole
(:func:`check_split`). The three PET-MRI "cases" (25, 30, 41) are one FDG study in three planes
(coronal, sagittal, axial); the split keeps each plane whole.

**Luminance protocol** (how the pairs are fused and scored, as ``fuse`` does for 8-bit files):
the MR is read as its 8-bit grey levels / 255; a pseudo-colour PET/SPECT is reduced to its BT.601
luminance / 255 (:func:`MedFusionLib.colour.rgb_to_ycbcr`), whose chroma the colour path keeps.
The MR is source ``a``, the CT/PET/SPECT source ``b`` (:func:`load_pairs`).

The split file (``Resources/SampleData/aanlib-split.json``) names, per pair type, the cases of
the ``train``, ``val`` (checkpoint selection) and ``test`` (reporting only) parts; files of the
repository's ``MyDatasets/*/test`` folders are left out of training wherever their case lies
(:func:`split_names`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .colour import rgb_to_ycbcr
from .errors import InvalidInputError
from .io import read_image
from .jsonfiles import read_json_object

__all__ = ["PAIR_TYPES", "PARTS", "PairType", "REPOSITORY", "COMMIT", "DEFAULT_SPLIT",
           "case_of", "pair_names", "read_split", "check_split", "split_names", "is_atlas_folder",
           "load_pairs", "AtlasPairs"]

#: The public repository and the commit every figure of MedFusion was made with.
REPOSITORY = "https://github.com/xianming-gu/Havard-Medical-Image-Fusion-Datasets"
COMMIT = "984d169e8abd01baa130db3c5b9be3ba80191c1f"
#: The split shipped with MedFusion (repository-relative path).
DEFAULT_SPLIT = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "aanlib-split.json"
#: Parts of a split: ``train`` (gradient steps), ``val`` (checkpoint selection), ``test`` (report).
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class PairType:
    """One pair type of the atlas.

    Attributes
    ----------
    key : str
        MedFusion's name (``ct-mr``, ``pet-mr``, ``spect-mr``).
    folder : str
        The repository's folder (``CT-MRI``, ...).
    other : str
        The sub-folder of the non-MR source (``CT``, ``PET``, ``SPECT``).
    modalities : tuple of str
        Modalities of sources ``a`` (the MR) and ``b``, as :mod:`MedFusionLib.normalize` names
        them (what ``models.json`` ``pair_defaults`` is keyed by).
    functional : bool
        Whether ``b`` is a functional (pseudo-colour) source.
    """

    key: str
    folder: str
    other: str
    modalities: tuple
    functional: bool


#: The modalities are those ``fuse`` sees for such files: an 8-bit grey MR PNG is ``8BIT`` and a
#: pseudo-colour PET (or, given ``--moving-modality SPECT``, SPECT) is the functional source; the
#: CT-MR entry names the modalities of a CT-MR pair whose modalities are known (an 8-bit CT PNG
#: cannot be told from an MR one: give ``--param model=fusionnet-ct-mr``).
PAIR_TYPES = {
    "ct-mr": PairType("ct-mr", "CT-MRI", "CT", ("MR", "CT"), False),
    "pet-mr": PairType("pet-mr", "PET-MRI", "PET", ("8BIT", "PET"), True),
    "spect-mr": PairType("spect-mr", "SPECT-MRI", "SPECT", ("8BIT", "SPECT"), True),
}

_NAME = re.compile(r"^(\d+)(\d{3})\.png$")


def case_of(name: str) -> tuple[int, int]:
    """``(case, slice)`` of an atlas file name: ``"16003.png"`` -> ``(16, 3)``.

    Raises
    ------
    InvalidInputError
        If the name is not digits (at least four) followed by ``.png``.
    """
    m = _NAME.match(Path(name).name)
    if not m:
        raise InvalidInputError(f"{name}: not an atlas file name (case number + 3-digit slice "
                                "number + .png, e.g. 16003.png).")
    return int(m.group(1)), int(m.group(2))


def _pair_type(key: str) -> PairType:
    try:
        return PAIR_TYPES[key]
    except KeyError:
        raise InvalidInputError(f"unknown atlas pair type {key!r}; known: "
                                f"{', '.join(PAIR_TYPES)}.") from None


def is_atlas_folder(root: str | os.PathLike) -> bool:
    """True when ``root`` has the atlas layout (``CT-MRI/``, ``PET-MRI/``, ``SPECT-MRI/``)."""
    root = Path(root)
    return all((root / pt.folder / "MRI").is_dir() for pt in PAIR_TYPES.values())


def pair_names(root: str | os.PathLike, pair_type: str) -> list[str]:
    """Sorted file names present in both sub-folders of a pair type (by case, then slice)."""
    pt = _pair_type(pair_type)
    root = Path(root)
    da, db = root / pt.folder / "MRI", root / pt.folder / pt.other
    if not da.is_dir() or not db.is_dir():
        raise InvalidInputError(f"{root}: no {pt.folder}/MRI and {pt.folder}/{pt.other} folders; "
                                "is this the atlas folder (Resources/SampleData/fetch-aanlib.sh)?")
    names = {p.name for p in da.iterdir() if _NAME.match(p.name)}
    names &= {p.name for p in db.iterdir() if _NAME.match(p.name)}
    return sorted(names, key=case_of)


def _repo_test_names(root: Path, pt: PairType) -> set:
    folder = root / "MyDatasets" / pt.folder / "test" / pt.other
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def read_split(path: str | os.PathLike | None = None) -> dict:
    """Read a split file (default :data:`DEFAULT_SPLIT`) and check it (:func:`check_split`)."""
    path = Path(path) if path is not None else DEFAULT_SPLIT
    split = read_json_object(path, "split file")
    check_split(split, name=str(path))
    return split


def check_split(split: dict, *, name: str = "split") -> None:
    """Raise unless every pair type of ``split`` gives disjoint, non-empty case lists.

    ``split["pair_types"][key]`` holds ``train``, ``val`` and ``test`` lists of case numbers; a
    case may appear in one part only (a split by case, never by file).
    """
    types = split.get("pair_types") if isinstance(split, dict) else None
    if not isinstance(types, dict) or not types:
        raise InvalidInputError(f"{name}: a split file has a 'pair_types' table.")
    for key, parts in types.items():
        _pair_type(key)
        seen: dict = {}
        for part in PARTS:
            cases = parts.get(part)
            if not isinstance(cases, list) or not cases:
                raise InvalidInputError(f"{name}: {key} has no '{part}' cases.")
            for c in cases:
                if c in seen:
                    raise InvalidInputError(f"{name}: {key} case {c} is in both '{seen[c]}' and "
                                            f"'{part}'; a case belongs to one part only.")
                seen[c] = part


def split_names(root: str | os.PathLike, pair_type: str, part: str,
                split: dict | None = None) -> list[str]:
    """File names of one part of the split, as present in ``root``.

    ``train`` leaves out the files of the repository's ``MyDatasets/<folder>/test`` folder (its
    test set is never trained on); ``val`` and ``test`` hold every file of their cases. Cases of
    the folder that the split does not name are in no part (reported by the caller).
    """
    if part not in PARTS:
        raise InvalidInputError(f"unknown split part {part!r}; known: {', '.join(PARTS)}.")
    pt = _pair_type(pair_type)
    split = read_split() if split is None else split
    if pair_type not in split["pair_types"]:
        raise InvalidInputError(f"the split names no cases for {pair_type}.")
    cases = set(split["pair_types"][pair_type][part])
    names = [n for n in pair_names(root, pair_type) if case_of(n)[0] in cases]
    if part == "train":
        held = _repo_test_names(Path(root), pt)
        names = [n for n in names if n not in held]
    return names


@dataclass
class AtlasPairs:
    """Loaded pairs of one pair type (luminance protocol, see the module docstring).

    Attributes
    ----------
    pair_type : PairType
    names : list of str
        File names, one per pair.
    mr : ndarray
        ``float32 (N, 256, 256)`` in [0, 1]: source ``a``.
    other : ndarray
        ``float32 (N, 256, 256)`` in [0, 1]: source ``b`` (CT grey levels, or PET/SPECT
        luminance).
    cb, cr : ndarray or None
        ``float32 (N, 256, 256)`` chroma of a pseudo-colour source (for colour figures).
    """

    pair_type: PairType
    names: list
    mr: np.ndarray
    other: np.ndarray
    cb: np.ndarray | None = None
    cr: np.ndarray | None = None

    @property
    def cases(self) -> list[int]:
        """Case number of each pair."""
        return [case_of(n)[0] for n in self.names]


def _read01(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(read_image(path, keep_colour=True)).astype(np.float32) / 255.0


def load_pairs(root: str | os.PathLike, pair_type: str, names=None) -> AtlasPairs:
    """Read pairs of a pair type (all, or ``names``) under the luminance protocol.

    Raises
    ------
    InvalidInputError
        If a file is missing or unreadable, or the two images of a pair differ in size.
    """
    pt = _pair_type(pair_type)
    root = Path(root)
    names = pair_names(root, pair_type) if names is None else list(names)
    mr, other, cb, cr = [], [], [], []
    for n in names:
        a = _read01(root / pt.folder / "MRI" / n)
        b = _read01(root / pt.folder / pt.other / n)
        if a.ndim == 3:  # a grey picture saved as RGB
            a = rgb_to_ycbcr(a)[0]
        if b.ndim == 3:
            y, u, v = rgb_to_ycbcr(b)
            b = np.clip(y, 0.0, 1.0)
        else:
            u = v = np.zeros_like(b)
        if a.shape != b.shape:
            raise InvalidInputError(f"{pt.folder}/{n}: the MRI is {a.shape} but the {pt.other} is "
                                    f"{b.shape}; the pairs must be co-registered on one grid.")
        mr.append(a)
        other.append(b)
        cb.append(u)
        cr.append(v)
    if not names:
        raise InvalidInputError(f"{root}: no {pt.folder} pairs to load.")
    stack = lambda xs: np.stack(xs).astype(np.float32)  # noqa: E731
    return AtlasPairs(pt, names, stack(mr), stack(other),
                      stack(cb) if pt.functional else None, stack(cr) if pt.functional else None)

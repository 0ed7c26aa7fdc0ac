"""Training on the Harvard Whole Brain Atlas pairs: the training bank and checkpoint selection.

A training config with ``"pair_type": "ct-mr" | "pet-mr" | "spect-mr"`` trains on that pair type
of the atlas folder given as ``medfusion train --data DIR`` (:mod:`MedFusionLib.aanlib`; fetch it
with ``Resources/SampleData/fetch-aanlib.sh``):

- :func:`atlas_bank`: the ``train`` cases of the split as a :class:`AtlasBank` (the real slices
  as they are, luminance protocol; only flips, 90 degree rotations, source order, crops and
  identity pairs vary);
- :class:`AtlasValidator`: scores the network on the ``val`` cases every ``val_every`` steps, and
  the run keeps the checkpoint with the best :func:`MedFusionLib.pair_targets.selection_key`
  against pixel maximum and today's default model on the same pairs. The ``test`` cases are
  never read.

Built on torch (imported at the top): ``medfusion train`` reaches it through
:mod:`MedFusionLib.optional`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import aanlib
from .errors import InvalidInputError
from .nets.weights import load_model
from .pair_targets import keeps_anatomy, score_pairs, selection_key
from .training_data import SliceBank

__all__ = ["AtlasBank", "atlas_bank", "AtlasValidator"]


class AtlasBank(SliceBank):
    """A :class:`~MedFusionLib.training_data.SliceBank` of real pairs: no contrast augmentation.

    Entries ``mr`` and ``other`` (the CT, or the PET/SPECT luminance, marked functional); the
    sampler pairs them in random order and crops, flips and rotates both alike.
    """

    def __init__(self, mr: np.ndarray, other: np.ndarray, *, functional: bool):
        super().__init__({"mr": mr, "other": other}, pairs=[("mr", "other")],
                         functional=["other"] if functional else ())

    def _prepare(self, name: str, x: np.ndarray, rng) -> np.ndarray:
        return x


def _split(split) -> dict:
    return split if isinstance(split, dict) else aanlib.read_split(split)


def atlas_bank(root: str | os.PathLike, pair_type: str, split=None) -> AtlasBank:
    """The ``train`` part of ``pair_type`` (split file path, dict, or the default split)."""
    split = _split(split)
    pairs = aanlib.load_pairs(root, pair_type, aanlib.split_names(root, pair_type, "train", split))
    return AtlasBank(pairs.mr, pairs.other, functional=pairs.pair_type.functional)


def _run_net(net, a: np.ndarray, b: np.ndarray, batch: int = 16) -> np.ndarray:
    out = []
    device = next(net.parameters()).device
    with torch.inference_mode():
        for i in range(0, len(a), batch):
            ta = torch.from_numpy(a[i:i + batch])[:, None].to(device)
            tb = torch.from_numpy(b[i:i + batch])[:, None].to(device)
            out.append(net(ta, tb)[0].clamp(0.0, 1.0)[:, 0].float().cpu().numpy())
    return np.concatenate(out)


class AtlasValidator:
    """Scores a network on the ``val`` cases of one pair type (luminance protocol, 8-bit).

    Parameters
    ----------
    root : path
        The atlas folder.
    pair_type : str
        ``ct-mr``, ``pet-mr`` or ``spect-mr``.
    split : path or dict, optional
        The split (default: the shipped one).
    reference : str
        Registry name of today's default model (the anatomy guard's reference).
    limit : int, optional
        Score only every k-th validation pair so that at most ``limit`` are used (faster).
    guard, hot
        Passed to :func:`~MedFusionLib.pair_targets.selection_key` (the config's ``val_guard``
        and ``val_hot``).
    per_case : bool
        Also require the target's anatomy guard on each validation case on its own (the
        config's ``val_per_case``); the scores then carry ``cases_kept``, the fraction of cases
        that keep it.

    Calling it with a network returns ``(key, scores)``: the
    :func:`~MedFusionLib.pair_targets.selection_key` (larger is better) and the mean metrics.
    """

    def __init__(self, root, pair_type: str, split=None, *, reference: str = "fusionnet",
                 limit: int | None = None, guard: dict | None = None, hot: bool = False,
                 per_case: bool = False):
        split = _split(split)
        names = aanlib.split_names(root, pair_type, "val", split)
        if limit and len(names) > limit:
            names = names[::int(np.ceil(len(names) / limit))]
        pairs = aanlib.load_pairs(root, pair_type, names)
        self.pair_type = pair_type
        self.guard, self.hot = dict(guard or {}), bool(hot)
        self.names = names
        self.cases = [aanlib.case_of(n)[0] for n in names] if per_case else None
        self.a, self.b = pairs.mr, pairs.other
        self.maximum = score_pairs(self.a, self.b, np.maximum(self.a, self.b))
        self.reference_name = reference
        self.reference, self.reference_cases = self._score(load_model(reference))

    def _score(self, net) -> tuple[dict, dict | None]:
        fused = _run_net(net, self.a, self.b)
        if self.cases is None:
            return score_pairs(self.a, self.b, fused), None
        return score_pairs(self.a, self.b, fused, groups=self.cases)

    def __call__(self, net) -> tuple[tuple, dict]:
        scores, cases = self._score(net)
        cases_kept = True
        if cases is not None:
            kept = [keeps_anatomy(cases[c], self.reference_cases[c]) for c in cases]
            scores["cases_kept"] = sum(kept) / len(kept)
            cases_kept = all(kept)
        return selection_key(scores, self.maximum, self.reference, guard=self.guard,
                             hot=self.hot, cases_kept=cases_kept), scores

    def summary(self) -> dict:
        """The reference values on the validation pairs (for the model's record)."""
        return {"pairs": len(self.names), "maximum": self.maximum,
                self.reference_name: self.reference}


def check_atlas_folder(root) -> Path:
    """``root`` as a Path, or a one-line error when it is not the atlas folder."""
    if root is None:
        raise InvalidInputError("this training config trains on the Harvard atlas pairs: give "
                                "--data DIR with the folder Resources/SampleData/fetch-aanlib.sh "
                                "made.")
    root = Path(root)
    if not aanlib.is_atlas_folder(root):
        raise InvalidInputError(f"{root}: not the atlas folder (no CT-MRI/, PET-MRI/ and "
                                "SPECT-MRI/ with MRI/ sub-folders); fetch it with "
                                "Resources/SampleData/fetch-aanlib.sh DIR.")
    return root

"""Issue #24's quality targets for a fusion method on one pair type, from mean metric values.

The ten metrics :data:`TEN_KEYS` (all "higher is better") and the fusion symmetry FS (lower is
better) are averaged over the pairs of one pair type (8-bit scoring, luminance protocol). A
candidate meets the targets (:func:`check_targets`) when

- against pixel maximum it is at least as good on at least 8 of the ten and its FS is no higher;
- against today's default model its Q^AB/F and VIF are at most 2 % lower and its SSIM no lower;
- against every classical baseline it is at least as good on at least 8 of the ten.

"At least as good" compares the means as printed with three decimals (a tie at that precision
counts for the candidate). :func:`selection_key` orders checkpoints by these checks on the
validation pairs, anatomy guard first: the issue asks for the best point that keeps the anatomy.
"""

from __future__ import annotations

import numpy as np

from .metrics import compute_metrics

__all__ = ["TEN_KEYS", "SCORED_KEYS", "score_pairs", "count_as_good", "check_targets",
           "selection_key", "DEFAULT_GUARD"]

#: The ten metrics of the targets (every one: higher is better).
TEN_KEYS = ("EN", "SD", "SF", "AG", "MI", "SCD", "Qabf", "SSIM", "VIFF", "VIF")
#: What is scored per pair: the ten and the fusion symmetry FS (lower is better).
SCORED_KEYS = TEN_KEYS + ("FS",)
#: Largest relative loss against today's default allowed on Q^AB/F and VIF; SSIM: none.
DEFAULT_GUARD = {"Qabf": 0.02, "VIF": 0.02, "SSIM": 0.0}


def score_pairs(a: np.ndarray, b: np.ndarray, fused: np.ndarray) -> dict:
    """Mean of :data:`SCORED_KEYS` over slices.

    Parameters
    ----------
    a, b, fused : ndarray
        ``float (N, H, W)`` sources and fused slices in [0, 1] (scored as 8-bit grey levels).

    Returns
    -------
    dict
        ``key -> mean value`` (float).
    """
    rows = [compute_metrics(a[i], b[i], fused[i], keys=list(SCORED_KEYS), data_range=1.0)
            for i in range(len(fused))]
    return {k: float(np.mean([r[k] for r in rows])) for k in SCORED_KEYS}


def _ge(x: float, y: float) -> bool:
    return round(x, 3) >= round(y, 3)


def count_as_good(cand: dict, ref: dict) -> int:
    """How many of :data:`TEN_KEYS` ``cand`` is at least as good on as ``ref`` (0..10)."""
    return sum(_ge(cand[k], ref[k]) for k in TEN_KEYS)


def check_targets(cand: dict, maximum: dict, default: dict | None = None,
                  baselines: dict | None = None) -> dict:
    """The targets, each as ``name -> bool``, plus the counts behind them.

    Parameters
    ----------
    cand, maximum, default : dict
        Mean values (:func:`score_pairs`) of the candidate, pixel maximum and today's default.
    baselines : dict, optional
        ``name -> mean values`` of the classical baselines.

    Returns
    -------
    dict
        ``vs_max`` (count), ``max8`` (>= 8), ``fs`` (FS no higher than maximum's), ``anatomy``
        (the default guard), ``baselines_min`` (the smallest count over the baselines) and
        ``baselines8``, and ``all`` (every check met).
    """
    out = {"vs_max": count_as_good(cand, maximum)}
    out["max8"] = out["vs_max"] >= 8
    out["fs"] = round(cand["FS"], 3) <= round(maximum["FS"], 3)
    checks = [out["max8"], out["fs"]]
    if default is not None:
        out["anatomy"] = all(_ge(cand[k], default[k] * (1.0 - tol)) for k, tol in
                             DEFAULT_GUARD.items())
        checks.append(out["anatomy"])
    if baselines:
        counts = {name: count_as_good(cand, ref) for name, ref in baselines.items()}
        out["baselines_min"] = min(counts.values())
        out["baselines8"] = out["baselines_min"] >= 8
        checks.append(out["baselines8"])
    out["all"] = all(checks)
    return out


def selection_key(cand: dict, maximum: dict, default: dict) -> tuple:
    """Sort key of a checkpoint (larger is better).

    Checkpoints that keep the anatomy (the default guard) come first, ordered by the number of
    metrics at least as good as pixel maximum's plus 1 if FS is no higher, then by lower FS, then
    by the guard's margin; the others follow, ordered by the guard's margin (the smallest of
    ``cand / (default x (1 - tolerance))`` over Q^AB/F, VIF and SSIM; 1 = on the limit), so that
    without any point keeping the anatomy the one closest to it is chosen.
    """
    t = check_targets(cand, maximum, default)
    margin = min(cand[k] / max(default[k] * (1.0 - tol), 1e-9) for k, tol in DEFAULT_GUARD.items())
    score = t["vs_max"] + int(t["fs"])
    if t["anatomy"]:
        return (1, score, -round(cand["FS"], 3), round(margin, 4))
    return (0, round(margin, 4), score, -round(cand["FS"], 3))

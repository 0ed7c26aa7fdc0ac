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

The ten metrics do not see whether a small hot focus of the PET/SPECT survives (5 % of the
functional source's pixels move them little), so :func:`score_pairs` also reports ``HOT``
(:func:`hot_gap`): how far the fused image stays below the second source where that source is
clearly brighter than the MR, pooled over the pairs (0 = as bright as the source, as pixel
maximum; more negative = the focus fades into the MR).
"""

from __future__ import annotations

import numpy as np

from .metrics import compute_metrics

__all__ = ["TEN_KEYS", "SCORED_KEYS", "score_pairs", "hot_gap", "count_as_good",
           "check_targets", "keeps_anatomy", "selection_key", "DEFAULT_GUARD", "HOT_MARGIN"]

#: The ten metrics of the targets (every one: higher is better).
TEN_KEYS = ("EN", "SD", "SF", "AG", "MI", "SCD", "Qabf", "SSIM", "VIFF", "VIF")
#: What is scored per pair: the ten and the fusion symmetry FS (lower is better).
SCORED_KEYS = TEN_KEYS + ("FS",)
#: Largest relative loss against today's default allowed on Q^AB/F and VIF; SSIM: none.
DEFAULT_GUARD = {"Qabf": 0.02, "VIF": 0.02, "SSIM": 0.0}
#: A pixel is in a hot focus of the second source when that source exceeds the MR by this much
#: (and is above :data:`HOT_FLOOR`); both on the [0, 1] scale.
HOT_MARGIN, HOT_FLOOR = 0.2, 0.1


def hot_gap(a: np.ndarray, b: np.ndarray, fused: np.ndarray, *, margin: float = HOT_MARGIN,
            floor: float = HOT_FLOOR) -> float:
    """Mean ``F - B`` over the pixels where ``B > A + margin`` and ``B > floor``.

    Parameters
    ----------
    a, b, fused : ndarray
        Sources (``a`` the MR) and fused image(s) in [0, 1], any equal shapes; the mean is pooled
        over every pixel of every slice given.

    Returns
    -------
    float
        On the [0, 1] scale: 0 when the hot foci of ``b`` are as bright in F as in ``b`` (pixel
        maximum), negative when they fade; NaN when ``b`` has no such pixel.
    """
    mask = (b > a + margin) & (b > floor)
    if not mask.any():
        return float("nan")
    return float(np.mean(fused[mask] - b[mask]))


def score_pairs(a: np.ndarray, b: np.ndarray, fused: np.ndarray, *,
                groups=None) -> dict | tuple[dict, dict]:
    """Mean of :data:`SCORED_KEYS` over slices.

    Parameters
    ----------
    a, b, fused : ndarray
        ``float (N, H, W)`` sources and fused slices in [0, 1] (scored as 8-bit grey levels).
    groups : sequence, optional
        A label per slice (e.g. the atlas case): the means are also given per label, from the
        same per-slice scores.

    Returns
    -------
    dict
        ``key -> mean value`` (float), and ``HOT`` (:func:`hot_gap` pooled over the slices);
        with ``groups``, ``(means, {label: means of its slices})``.
    """
    rows = [compute_metrics(a[i], b[i], fused[i], keys=list(SCORED_KEYS), data_range=1.0)
            for i in range(len(fused))]

    def means(idx):
        out = {k: float(np.mean([rows[i][k] for i in idx])) for k in SCORED_KEYS}
        out["HOT"] = hot_gap(a[idx], b[idx], fused[idx])
        return out

    whole = means(np.arange(len(rows)))
    if groups is None:
        return whole
    labels = np.asarray(groups)
    return whole, {g: means(np.flatnonzero(labels == g)) for g in dict.fromkeys(groups)}


def keeps_anatomy(cand: dict, default: dict, guard: dict | None = None) -> bool:
    """Whether ``cand`` is within the guard's tolerances of ``default`` on Q^AB/F, VIF and SSIM
    (default :data:`DEFAULT_GUARD`; each given tolerance overrides its entry)."""
    guard = dict(DEFAULT_GUARD, **(guard or {}))
    return all(_ge(cand[k], default[k] * (1.0 - tol)) for k, tol in guard.items())


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
        (the default guard), ``hot`` (``HOT`` no lower than the default's: the hot foci stay at
        least as visible; only when both rows have a finite ``HOT``), ``baselines_min`` (the
        smallest count over the baselines) and ``baselines8``, and ``all`` (every check met).
    """
    out = {"vs_max": count_as_good(cand, maximum)}
    out["max8"] = out["vs_max"] >= 8
    out["fs"] = round(cand["FS"], 3) <= round(maximum["FS"], 3)
    checks = [out["max8"], out["fs"]]
    if default is not None:
        out["anatomy"] = keeps_anatomy(cand, default)
        checks.append(out["anatomy"])
        if np.isfinite(cand.get("HOT", np.nan)) and np.isfinite(default.get("HOT", np.nan)):
            out["hot"] = _ge(cand["HOT"], default["HOT"])
            checks.append(out["hot"])
    if baselines:
        counts = {name: count_as_good(cand, ref) for name, ref in baselines.items()}
        out["baselines_min"] = min(counts.values())
        out["baselines8"] = out["baselines_min"] >= 8
        checks.append(out["baselines8"])
    out["all"] = all(checks)
    return out


def selection_key(cand: dict, maximum: dict, default: dict, *, guard: dict | None = None,
                  hot: bool = False, cases_kept: bool = True) -> tuple:
    """Sort key of a checkpoint (larger is better).

    Checkpoints that keep the anatomy come first, ordered by the number of metrics at least as
    good as pixel maximum's plus 1 if FS is no higher, then by lower FS, then by the guard's
    margin; the others follow, ordered by the guard's margin (the smallest of
    ``cand / (default x (1 - tolerance))`` over Q^AB/F, VIF and SSIM; 1 = on the limit), so that
    without any point keeping the anatomy the one closest to it is chosen.

    Parameters
    ----------
    guard : dict, optional
        Tolerances of the anatomy guard on these pairs (default :data:`DEFAULT_GUARD`): a tighter
        guard on the validation pairs leaves room for the held-out cases to differ.
    hot : bool
        Also keep the hot foci: a checkpoint counts as keeping the anatomy only if its ``HOT`` is
        no lower than the default's; those that also meet the count target (at least as good as
        pixel maximum on 8 of 10) come first, ordered by the ``HOT`` gain (to 0.01) before the
        count: a focus that stays visible matters more than a ninth metric.
    cases_kept : bool
        Whether the target's guard also holds on each validation case on its own (computed by
        the caller, :class:`~MedFusionLib.training_atlas.AtlasValidator` ``per_case``); False
        counts as not keeping the anatomy. A mean that keeps it while one case loses SSIM is
        the checkpoint most likely to lose it on new cases.
    """
    guard = dict(DEFAULT_GUARD, **(guard or {}))
    t = check_targets(cand, maximum, default)
    margin = min(cand[k] / max(default[k] * (1.0 - tol), 1e-9) for k, tol in guard.items())
    keeps = keeps_anatomy(cand, default, guard) and cases_kept
    score = t["vs_max"] + int(t["fs"])
    if hot:
        gain = cand["HOT"] - default["HOT"]
        if keeps and round(gain, 3) >= 0:
            if t["max8"]:
                return (2, round(gain, 2), score, -round(cand["FS"], 3), round(margin, 4))
            return (1, score, round(gain, 2), -round(cand["FS"], 3), round(margin, 4))
        return (0, round(min(margin, 1.0 + gain), 4), score, -round(cand["FS"], 3))
    if keeps:
        return (1, score, -round(cand["FS"], 3), round(margin, 4))
    return (0, round(margin, 4), score, -round(cand["FS"], 3))

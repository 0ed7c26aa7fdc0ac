"""Is a registration result trustworthy? Checks that need no ground truth.

A result is *converged* (confidence ``high``) when all of these hold, else ``low`` with the
failed checks, in words, as the reason:

- **the images share information**: the similarity (mutual information) at the result is at least
  :data:`MIN_INFORMATION`; below that the images share next to nothing (a blank image, no
  overlap) and every ratio of it below is meaningless, so none is computed;
- **distinct optimum**: no other start of the global search reached a similarity within
  :data:`AMBIGUITY_RATIO` of the result's at a pose more than a few mm away (two equally good,
  different alignments mean the images do not determine one). Each rival is compared with the
  result on the same working level; :func:`MedFusionLib.registration.core.register` re-chooses
  when a rival beats the result, so the result is never one that another start beat;
- **sharp optimum**: moving the result by :data:`PROBE_MM` mm or turning it by :data:`PROBE_DEG`
  degrees along or about each axis lowers the similarity by a median :data:`MIN_SHARPNESS` of its
  value or more (unrelated images: 2-8 %; real pairs 30-60 %), and no such move raises it by more
  than :data:`NOT_OPTIMUM`;
- **foreground overlap**: the smaller of the two foregrounds lies at least :data:`MIN_CONTAINMENT`
  inside the other after registration;
- **optimiser settled**: it stopped on its step size, or, if it ran out of iterations, its last
  :data:`SETTLE_ITERATIONS` iterations moved the transform by less than :data:`SETTLE_MM`;
- **within the search range**: the translation is within :data:`MAX_TRANSLATION_MM` of the
  nearest start (and, from a given initial transform, the rotation under
  :data:`MAX_ROTATION_DEG`): a result at or beyond the edge of what was searched is a guess.

:func:`orientation` names the axis-aligned turn (e.g. 180 degrees about A-P) nearest the result
when it is not near the identity: a flip between two scans often means a header or positioning
error that the user should know about.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .geometry import mean_distance
from .search import axis_aligned_orientations

__all__ = ["Assessment", "assess", "orientation", "percent", "AMBIGUITY_RATIO", "MIN_SHARPNESS",
           "MIN_CONTAINMENT", "MIN_INFORMATION"]

AMBIGUITY_RATIO = 0.9
PROBE_MM = 6.0
PROBE_DEG = 6.0
MIN_SHARPNESS = 0.15
NOT_OPTIMUM = 0.01
MIN_CONTAINMENT = 0.6
SETTLE_ITERATIONS = 10
SETTLE_MM = 0.1
#: Smallest similarity (minus the Mattes mutual information, 32 bins, at the coarse level) below
#: which the images are taken to share no information: a blank or constant image gives about 0,
#: the pairs of the tests and benchmark 0.5-1.0 (and a head against an unrelated textured
#: ellipsoid still 0.4: this guards the ratios below against dividing by about zero; whether the
#: images are related is for the other checks).
MIN_INFORMATION = 0.01
#: A refinement from a given initial transform turns it by a few degrees, not by this much.
MAX_ROTATION_DEG = 150.0
MAX_TRANSLATION_MM = 80.0

#: LPS axis names (x, y, z) and the direction names of +/- each axis.
_AXES = ("L–R", "A–P", "S–I")
_DIRECTIONS = (("left", "right"), ("posterior", "anterior"), ("superior", "inferior"))


@dataclass
class Assessment:
    """Outcome of :func:`assess`: ``converged``, ``confidence`` (high/low), ``reason`` and figures."""

    converged: bool
    confidence: str
    reason: str
    checks: dict = field(default_factory=dict)


def percent(fraction: float) -> str:
    """``fraction`` as a percentage for a reason text: ``"12%"``, ``"0.4%"``, ``"over 1000%"``."""
    value = 100.0 * abs(float(fraction))
    if not np.isfinite(value) or value > 1000:
        return "over 1000%"
    return f"{value:.1f}%" if value < 10 else f"{value:.0f}%"


def _rotation_deg(matrix: np.ndarray) -> float:
    if matrix.shape == (2, 2):
        return float(abs(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))))
    u, _, vt = np.linalg.svd(matrix)
    r = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def _direction(v: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(v)))
    return _DIRECTIONS[axis][0 if v[axis] > 0 else 1]


def orientation(transform: sitk.Transform, dim: int) -> dict:
    """How the moving image's anatomy lies turned relative to the fixed image's.

    Parameters
    ----------
    transform : SimpleITK.Transform
        A rigid or affine result (fixed -> moving points, LPS mm).
    dim : int
        2 or 3.

    Returns
    -------
    dict
        ``rotation_deg``: the rotation's angle (deg, 0-180); ``axis_aligned``: the nearest
        axis-aligned turn in words (``"none"`` for the identity, else e.g. ``"180° about A–P"``);
        ``description``: for a turn other than the identity, a sentence for the user
        (e.g. ``"rotated 180° about A–P (anterior stays anterior, superior points inferior)"``),
        else ``""``. Empty for a transform without a linear part.
    """
    lin = _linear(transform, dim)
    if lin is None:
        return {}
    u, _, vt = np.linalg.svd(lin[0])
    R = u @ vt
    nearest = max(axis_aligned_orientations(dim), key=lambda O: float(np.trace(O.T @ R)))
    out = {"rotation_deg": round(_rotation_deg(R), 1), "axis_aligned": "none", "description": ""}
    if np.allclose(nearest, np.eye(dim)):
        return out
    angle = _rotation_deg(nearest)
    if dim == 2:
        words = f"{angle:.0f}° in plane"
    else:
        w, v = np.linalg.eig(nearest)
        axis = np.real(v[:, int(np.argmin(np.abs(w - 1)))])
        main = int(np.argmax(np.abs(axis)))
        words = (f"{angle:.0f}° about {_AXES[main]}" if np.isclose(abs(axis[main]), 1.0)
                 else f"{angle:.0f}° about an oblique axis")
    out["axis_aligned"] = words
    # fixed-image anatomical directions (LPS: anterior = -y, superior = +z) in the moving image
    dirs = [("anterior", -np.eye(dim)[1])] + ([("superior", np.eye(dim)[2])] if dim == 3 else [])
    where = [(name, _direction(R @ d)) for name, d in dirs]
    out["description"] = f"rotated {words} (" + ", ".join(
        f"{name} stays {name}" if name == to else f"{name} points {to}" for name, to in where) + ")"
    return out


def assess(*, final_value: float, rivals: list[tuple[float, float, sitk.Transform]] | None,
           transform: sitk.Transform, probe_base: float | None, probe_values: list[float] | None,
           points: np.ndarray, containment: float, trace: list, start: sitk.Transform,
           dim: int, stop_reason: str, from_initial: bool = False) -> Assessment:
    """Decide whether to trust a registration.

    Parameters
    ----------
    final_value : float
        The result's metric at the coarse level (minus the Mattes MI: lower is better).
    rivals : list of (result value, rival value, rival transform) or None
        Other optima of the global search, each with the result's metric on the level the two
        were compared on (None: no search was run).
    transform : SimpleITK.Transform
        The result (fixed -> moving points).
    probe_base, probe_values : float, list of float, or None
        Metric of the result and of the result moved by the probe steps (at the middle level).
    points : ndarray
        (N, dim) fixed foreground points, mm.
    containment : float
        Fraction of the smaller foreground inside the other after registration.
    trace : list
        (iteration, value, position) of the final level's optimiser.
    start : SimpleITK.Transform
        The start nearest the result (centres of mass or field-of-view candidate, in the result's
        orientation), or the given initial transform.
    from_initial : bool
        The start is the caller's initial transform (the rotation from it is checked too).
    """
    checks: dict = {"information": round(-float(final_value), 4) if np.isfinite(final_value) else 0.0}
    failed, passed = [], []
    informative = np.isfinite(final_value) and -final_value >= MIN_INFORMATION
    if not informative:
        failed.append(f"the images share almost no information at the result (mutual information "
                      f"{max(0.0, -float(final_value)) if np.isfinite(final_value) else 0.0:.3f}, "
                      f"under {MIN_INFORMATION}): one may be nearly blank, or they may not "
                      "overlap")
    # 1. distinct optimum
    far = [(fv, rv, t) for fv, rv, t in (rivals or [])
           if mean_distance(t, transform, points) > 2 * PROBE_MM]
    if informative and far:
        ratios = [rv / fv if fv < 0 and -fv >= MIN_INFORMATION else 0.0 for fv, rv, _ in far]
        i = int(np.argmax(ratios))
        ratio = float(ratios[i])
        checks["runner_up_ratio"] = round(ratio, 4)
        away = mean_distance(far[i][2], transform, points)
        if ratio > 1.0:  # not expected: register() re-chooses; said plainly if it happens
            failed.append(f"a different alignment found by the search ({away:.0f} mm away on "
                          f"average) fits better than the result: the images do not determine "
                          "one alignment")
        elif ratio > AMBIGUITY_RATIO:
            failed.append(f"a different alignment found by the search ({away:.0f} mm away on "
                          f"average) fits almost as well ({percent(ratio)} of the result's "
                          "similarity): the images do not determine one alignment")
        else:
            passed.append(f"the next-best alignment fits {percent(1 - ratio)} worse")
    # 2. sharp optimum
    if (informative and probe_values and probe_base is not None and np.isfinite(probe_base)
            and -probe_base >= MIN_INFORMATION):
        rises = (np.asarray(probe_values) - probe_base) / abs(probe_base)
        sharp = float(np.median(rises))
        checks["sharpness"] = round(sharp, 4)
        checks["best_probe_change"] = round(float(rises.min()), 4)
        move = f"moved {PROBE_MM:.0f} mm or turned {PROBE_DEG:.0f}°"
        if sharp < 0:
            failed.append(f"the similarity improves when the result is {move} (by "
                          f"{percent(sharp)} on median): the result is not the best alignment "
                          "nearby")
        elif sharp < MIN_SHARPNESS:
            failed.append(f"the similarity hardly changes when the result is {move} "
                          f"({percent(sharp)} on median; a reliable alignment loses "
                          f"{percent(MIN_SHARPNESS)} or more): the images do not pin the "
                          "alignment down")
        if rises.min() < -NOT_OPTIMUM and sharp >= 0:
            failed.append(f"the similarity improves by {percent(rises.min())} when the result is "
                          f"{move} along or about one axis: the result is not the best "
                          "alignment nearby")
    # 3. foreground overlap
    checks["foreground_overlap"] = round(float(containment), 4)
    if containment < MIN_CONTAINMENT:
        failed.append(f"only {percent(containment)} of the smaller image's anatomy lies inside "
                      "the other's after registration")
    else:
        passed.append(f"foreground overlap {percent(containment)}")
    # 4. optimiser settled
    if len(trace) > SETTLE_ITERATIONS and "Maximum number of iterations" in stop_reason:
        p0 = np.asarray(trace[-SETTLE_ITERATIONS - 1][2])
        p1 = np.asarray(trace[-1][2])
        a, b = sitk.Transform(transform), sitk.Transform(transform)
        if len(p0) == a.GetNumberOfParameters():
            a.SetParameters(tuple(p0))
            b.SetParameters(tuple(p1))
            drift = mean_distance(a, b, points)
            checks["final_drift_mm"] = round(drift, 4)
            if drift > SETTLE_MM:
                failed.append(f"the optimiser was still moving when it ran out of iterations "
                              f"({drift:.2f} mm over its last {SETTLE_ITERATIONS})")
    # 5. within the search range
    lin, lin0 = _linear(transform, dim), _linear(start, dim)
    if lin is not None and lin0 is not None:
        rel = lin[0] @ np.linalg.inv(lin0[0])
        rot = _rotation_deg(rel)
        centre = points.mean(0)
        shift = float(np.linalg.norm((lin[0] @ centre + lin[1]) - (lin0[0] @ centre + lin0[1])))
        checks["rotation_from_start_deg"] = round(rot, 2)
        checks["translation_from_start_mm"] = round(shift, 2)
        if shift > MAX_TRANSLATION_MM or (from_initial and rot > MAX_ROTATION_DEG):
            failed.append(f"the result lies at the edge of what was searched ({shift:.0f} mm"
                          + (f", {rot:.0f}°" if from_initial else "") + " from the nearest start)")
    converged = not failed
    reason = "; ".join(failed) if failed else ", ".join(passed) or "all checks passed"
    return Assessment(converged, "high" if converged else "low", reason, checks)


def _linear(tx: sitk.Transform, dim: int):
    t = tx.Downcast() if not hasattr(tx, "GetMatrix") else tx
    if not hasattr(t, "GetMatrix"):
        return None
    return (np.asarray(t.GetMatrix(), float).reshape(dim, dim),
            np.asarray(t.TransformPoint((0.0,) * dim), float))

"""Is a registration result trustworthy? Checks that need no ground truth.

A result is *converged* (confidence ``high``) when all of these hold, else ``low`` with the
failed checks as the reason:

- **distinct optimum**: no other start of the global search reached a metric within
  :data:`AMBIGUITY_RATIO` of the result's at a pose more than a few mm away (two equally good,
  different alignments mean the images do not determine one);
- **sharp optimum**: moving the result by :data:`PROBE_MM` mm or :data:`PROBE_DEG` degrees along
  or about each axis worsens the metric by a median :data:`MIN_SHARPNESS` of its value or more
  (unrelated images have a flat metric: 2-8 %; real pairs 30-60 %), and no such move improves it
  by more than :data:`NOT_OPTIMUM`;
- **foreground overlap**: the smaller of the two foregrounds lies at least :data:`MIN_CONTAINMENT`
  inside the other after registration;
- **optimiser settled**: it stopped on its step size, or, if it ran out of iterations, its last
  :data:`SETTLE_ITERATIONS` iterations moved the transform by less than :data:`SETTLE_MM`;
- **within the search range**: the rotation found is under :data:`MAX_ROTATION_DEG` and the
  translation within :data:`MAX_TRANSLATION_MM` of the start (a result at or beyond the edge of
  what was searched is a guess).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .geometry import mean_distance

__all__ = ["Assessment", "assess", "AMBIGUITY_RATIO", "MIN_SHARPNESS", "MIN_CONTAINMENT"]

AMBIGUITY_RATIO = 0.9
PROBE_MM = 6.0
PROBE_DEG = 6.0
MIN_SHARPNESS = 0.15
NOT_OPTIMUM = 0.01
MIN_CONTAINMENT = 0.6
SETTLE_ITERATIONS = 10
SETTLE_MM = 0.1
#: The rotation grid reaches 90 degrees about each axis (:data:`.search.ROTATION_RANGE_DEG`):
#: up to 180 degrees of rotation at its corners, 110-150 along most of its faces.
MAX_ROTATION_DEG = 150.0
MAX_TRANSLATION_MM = 80.0


@dataclass
class Assessment:
    """Outcome of :func:`assess`: ``converged``, ``confidence`` (high/low), ``reason`` and figures."""

    converged: bool
    confidence: str
    reason: str
    checks: dict = field(default_factory=dict)


def _rotation_deg(matrix: np.ndarray) -> float:
    if matrix.shape == (2, 2):
        return float(abs(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))))
    u, _, vt = np.linalg.svd(matrix)
    r = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def assess(*, final_value: float, others: list[tuple[float, sitk.Transform]] | None,
           transform: sitk.Transform, probe_base: float | None, probe_values: list[float] | None,
           points: np.ndarray, containment: float, trace: list, start: sitk.Transform,
           dim: int, stop_reason: str) -> Assessment:
    """Decide whether to trust a registration.

    Parameters
    ----------
    final_value : float
        The result's metric at the coarse level (negative Mattes MI: lower is better).
    others : list of (value, transform) or None
        Other optima of the global search at the coarse level (None: no search was run).
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
        Where the search started (centres of mass, or the given initial transform).
    """
    checks: dict = {}
    failed, passed = [], []
    # 1. distinct optimum
    if others:
        rivals = [(v, t) for v, t in others if mean_distance(t, transform, points) > 2 * PROBE_MM]
        if rivals:
            ratio = float(min(v for v, _ in rivals) / final_value) if final_value < 0 else 1.0
            checks["runner_up_ratio"] = round(ratio, 4)
            if ratio > AMBIGUITY_RATIO:
                failed.append(f"another start reached {100 * ratio:.0f}% of the best metric at a "
                              "different pose (ambiguous)")
            else:
                passed.append(f"next-best start {100 * (1 - ratio):.0f}% worse")
    # 2. sharp optimum
    if probe_values and probe_base is not None and np.isfinite(probe_base) and probe_base < 0:
        rises = (np.asarray(probe_values) - probe_base) / abs(probe_base)
        sharp = float(np.median(rises))
        checks["sharpness"] = round(sharp, 4)
        checks["best_probe_change"] = round(float(rises.min()), 4)
        if sharp < MIN_SHARPNESS:
            failed.append(f"flat metric around the result ({100 * sharp:.1f}% median change for "
                          f"a {PROBE_MM:.0f} mm / {PROBE_DEG:.0f} deg move)")
        if rises.min() < -NOT_OPTIMUM:
            failed.append(f"a pose {PROBE_MM:.0f} mm / {PROBE_DEG:.0f} deg away has a better "
                          f"metric ({-100 * rises.min():.1f}%): not at an optimum")
    # 3. foreground overlap
    checks["foreground_overlap"] = round(float(containment), 4)
    if containment < MIN_CONTAINMENT:
        failed.append(f"only {100 * containment:.0f}% foreground overlap")
    else:
        passed.append(f"foreground overlap {100 * containment:.0f}%")
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
                failed.append(f"optimiser still moving ({drift:.2f} mm over its last "
                              f"{SETTLE_ITERATIONS} iterations; {stop_reason.strip()})")
    # 5. within the search range
    lin, lin0 = _linear(transform, dim), _linear(start, dim)
    if lin is not None and lin0 is not None:
        rel = lin[0] @ np.linalg.inv(lin0[0])
        rot = _rotation_deg(rel)
        centre = points.mean(0)
        shift = float(np.linalg.norm((lin[0] @ centre + lin[1]) - (lin0[0] @ centre + lin0[1])))
        checks["rotation_from_start_deg"] = round(rot, 2)
        checks["translation_from_start_mm"] = round(shift, 2)
        if rot > MAX_ROTATION_DEG or shift > MAX_TRANSLATION_MM:
            failed.append(f"result at the edge of the search ({rot:.0f} deg, {shift:.0f} mm from "
                          "the start)")
    converged = not failed
    reason = "; ".join(failed) if failed else ", ".join(passed) or "all checks passed"
    return Assessment(converged, "high" if converged else "low", reason, checks)


def _linear(tx: sitk.Transform, dim: int):
    t = tx.Downcast() if not hasattr(tx, "GetMatrix") else tx
    if not hasattr(t, "GetMatrix"):
        return None
    return (np.asarray(t.GetMatrix(), float).reshape(dim, dim),
            np.asarray(t.TransformPoint((0.0,) * dim), float))

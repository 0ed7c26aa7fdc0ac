"""Where the rigid optimisation starts: centres of mass, field-of-view candidates, a global search.

The local optimiser of :mod:`.register` converges from about 15 degrees and 20 mm away; real
repositioning between two sessions and different fields of view bring more. The start is
therefore found at the coarsest working level:

1. Translation candidates: the foreground centres of mass aligned; and, for the axes where
   the two foregrounds' extents differ by more than :data:`FOV_DIFFERENCE_MM` (a CT with neck and
   shoulders against a brain-only MR, a partial field of view), every combination of their
   centres, low ends or high ends aligned along each of those axes.
2. Around each candidate an exhaustive grid of translations (+-20 mm, 10 mm steps) is scored
   with the metric (no optimisation; a thousand samples); about the best
   :data:`TRANSLATION_BASES` distinct translations an exhaustive grid of rotations
   (:data:`ROTATION_STEP_DEG` steps up to :data:`ROTATION_RANGE_DEG` about each axis) is scored.
3. The best :data:`STARTS` distinct poses are each optimised locally at the coarse level; their
   optima are returned best first (the self-check compares them).
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

from .geometry import mean_distance
from .optimise import Level, execute, exhaustive, metric_method

__all__ = ["rigid_transform", "compose_rigid", "translation_candidates", "global_search", "local_rigid",
           "ROTATION_RANGE_DEG", "ROTATION_STEP_DEG", "STARTS"]

#: Half-width of the rotation grid about each axis: 13 x 13 x 13 poses of 1,000 samples at 6 mm
#: cost about a second more than 30 degrees did. Rotations of 60-90 degrees about two or three axes
#: mostly converge; those that do not are flagged by the self-check (bench_registration.py).
ROTATION_RANGE_DEG = 90.0
ROTATION_STEP_DEG = 15.0
#: Translation offsets tried around each translation candidate: +-steps x step mm per axis.
TRANSLATION_STEP_MM = 10.0
TRANSLATION_STEPS = 2
#: Best distinct translations whose rotations are searched.
TRANSLATION_BASES = 2
FOV_DIFFERENCE_MM = 45.0
#: Distinct grid poses optimised at the coarse level.
STARTS = 5
#: Poses closer than this (mean distance over the fixed foreground, mm) count as the same.
DISTINCT_MM = 6.0
#: Step shrink factor of the gradient descent on a change of direction: a gentle one, so that
#: rotations (slow to converge) are not frozen while the translations oscillate.
RELAXATION = 0.8
#: Metric samples for the exhaustive scoring and the coarse optimisation.
GRID_SAMPLES = 1000
COARSE_SAMPLES = 12000


def rigid_transform(dim: int, centre, params=None) -> sitk.Transform:
    """An Euler transform about ``centre`` (mm) with ``params`` (angles in radians, then mm)."""
    tx = sitk.Euler2DTransform() if dim == 2 else sitk.Euler3DTransform()
    tx.SetCenter(tuple(float(c) for c in centre))
    if params is not None:
        tx.SetParameters(tuple(float(p) for p in params))
    return tx


def translation_candidates(fixed_pts: np.ndarray, moving_pts: np.ndarray) -> list[np.ndarray]:
    """Translations (fixed -> moving, mm) that bring the two foregrounds together.

    Parameters
    ----------
    fixed_pts, moving_pts : ndarray
        (N, dim) physical coordinates of the foreground voxels.

    Returns
    -------
    list of ndarray
        Centres of mass aligned first; then, for the axes whose extents differ by more than
        :data:`FOV_DIFFERENCE_MM`, every combination of centres, low ends or high ends aligned
        along each of them (a tilted head CT with neck and shoulders is off in two axes at once).
    """

    com = moving_pts.mean(0) - fixed_pts.mean(0)
    flo, fhi = np.percentile(fixed_pts, [1, 99], axis=0)
    mlo, mhi = np.percentile(moving_pts, [1, 99], axis=0)
    options = []
    for axis in range(fixed_pts.shape[1]):
        choices = [com[axis]]
        if abs((fhi[axis] - flo[axis]) - (mhi[axis] - mlo[axis])) > FOV_DIFFERENCE_MM:
            choices += [mlo[axis] - flo[axis], mhi[axis] - fhi[axis]]
        options.append(choices)
    return [np.array(t, float) for t in itertools.product(*options)]


def _grids(dim: int):
    """(steps, scales) of the translation grid (rotation fixed) and of the rotation grid."""
    n_rot = 1 if dim == 2 else 3
    k = int(round(ROTATION_RANGE_DEG / ROTATION_STEP_DEG))
    translations = ([0] * n_rot + [TRANSLATION_STEPS] * dim,
                    [1.0] * n_rot + [TRANSLATION_STEP_MM] * dim)
    rotations = ([k] * n_rot + [0] * dim,
                 [np.radians(ROTATION_STEP_DEG)] * n_rot + [1.0] * dim)
    return translations, rotations


def local_rigid(level: Level, start: sitk.Transform, *, samples: float, seed: int, step: float,
                min_step: float, iterations: int, progress, stage: str,
                moving_initial: sitk.Transform | None = None):
    """Regular-step gradient descent of the rigid ``start`` on one level.

    The optimiser moves a small rigid update about the same centre, applied before ``start``
    (ITK's moving initial transform), not ``start``'s own Euler angles: far from the identity
    those meet gimbal lock (an angle about x near 90 degrees), where the descent crawls and stops
    early.

    Returns
    -------
    transform : SimpleITK.Transform
        Same type and centre as ``start``: ``start`` after the update.
    value : float
        Final metric value (lower is better).
    R : SimpleITK.ImageRegistrationMethod
        The method (stop condition, iterations).
    trace : list
        (iteration, value, position) per iteration; positions are the update's parameters (the
        same distances between iterates as the composed transforms', a rigid ``start`` being an
        isometry).
    """
    dim = level.fixed.GetDimension()
    centre = start.GetFixedParameters()[:dim]
    R = metric_method(level, samples, seed)
    R.SetOptimizerAsRegularStepGradientDescent(learningRate=step, minStep=min_step,
                                               numberOfIterations=iterations,
                                               relaxationFactor=RELAXATION,
                                               gradientMagnitudeTolerance=1e-8)
    R.SetOptimizerScalesFromPhysicalShift()
    outer = sitk.Transform(start)
    if moving_initial is not None:
        outer = sitk.CompositeTransform([moving_initial, start])
    R.SetMovingInitialTransform(outer)
    R.SetInitialTransform(rigid_transform(dim, centre), inPlace=False)
    tx, trace = execute(R, level, stage, None if progress is None else progress)
    inner = tx
    if tx.GetName() == "CompositeTransform":
        inner = sitk.CompositeTransform(tx).GetNthTransform(0)
    update = rigid_transform(dim, centre, inner.GetParameters())
    return compose_rigid(start, update), float(R.GetMetricValue()), R, trace


def compose_rigid(outer: sitk.Transform, inner: sitk.Transform) -> sitk.Transform:
    """``outer`` after ``inner`` (x -> outer(inner(x))) as one Euler transform about ``outer``'s
    centre; both rigid (Euler) transforms of the same dimension."""
    dim = outer.GetDimension()
    centre = tuple(float(c) for c in outer.GetFixedParameters()[:dim])
    product = (np.asarray(outer.GetMatrix(), float).reshape(dim, dim)
               @ np.asarray(inner.GetMatrix(), float).reshape(dim, dim))
    u, _, vt = np.linalg.svd(product)  # orthonormal to rounding, as Euler's SetMatrix requires
    out = rigid_transform(dim, centre)
    out.SetMatrix(tuple((u @ vt).ravel()))
    out.SetTranslation(tuple(np.subtract(outer.TransformPoint(inner.TransformPoint(centre)), centre)))
    return out


def global_search(level: Level, centre, translations, points: np.ndarray, *, seed: int,
                  progress) -> list[tuple[float, sitk.Transform]]:
    """Coarse-level optima from the best distinct poses of an exhaustive rotation grid.

    Parameters
    ----------
    level : Level
        The coarsest working level.
    centre : array_like
        Centre of rotation (the fixed foreground's centre of mass, mm).
    translations : list of ndarray
        Translation candidates (:func:`translation_candidates`).
    points : ndarray
        (N, dim) fixed foreground points used to tell poses apart.

    Returns
    -------
    list of (metric value, transform), best first, distinct poses only.
    """
    dim = level.fixed.GetDimension()
    n_rot = 1 if dim == 2 else 3
    (t_steps, t_scales), (r_steps, r_scales) = _grids(dim)
    # 1. translations around every candidate, without rotation: the best distinct ones
    shifted = []
    for i, t in enumerate(translations):
        start = rigid_transform(dim, centre, [0.0] * n_rot + list(t))
        shifted += exhaustive(level, start, t_steps, t_scales, samples=GRID_SAMPLES, seed=seed,
                              progress=progress,
                              stage=f"global search: translations {i + 1}/{len(translations)}")
    shifted.sort(key=lambda vp: vp[0])
    bases = []
    for _, params in shifted:
        if all(np.linalg.norm(np.subtract(params[n_rot:], b[n_rot:])) > 2 * TRANSLATION_STEP_MM
               for b in bases):
            bases.append(params)
        if len(bases) == TRANSLATION_BASES:
            break
    # 2. rotations about each of them
    scored = []
    for i, params in enumerate(bases):
        start = rigid_transform(dim, centre, params)
        scored += exhaustive(level, start, r_steps, r_scales, samples=GRID_SAMPLES, seed=seed,
                             progress=progress,
                             stage=f"global search: rotations {i + 1}/{len(bases)}")
    scored.sort(key=lambda vp: vp[0])
    picked: list[sitk.Transform] = []
    for _, params in scored:
        cand = rigid_transform(dim, centre, params)
        if all(mean_distance(cand, p, points) > DISTINCT_MM for p in picked):
            picked.append(cand)
        if len(picked) == STARTS:
            break
    optima = []
    for i, cand in enumerate(picked):
        tx, value, _, _ = local_rigid(level, cand, samples=COARSE_SAMPLES, seed=seed,
                                      step=2.0 * level.spacing, min_step=0.02 * level.spacing,
                                      iterations=80, progress=progress,
                                      stage=f"rigid start {i + 1}/{len(picked)}")
        optima.append((value, tx))
    optima.sort(key=lambda vt: vt[0])
    distinct = []
    for value, tx in optima:
        if all(mean_distance(tx, d, points) > DISTINCT_MM for _, d in distinct):
            distinct.append((value, tx))
    return distinct

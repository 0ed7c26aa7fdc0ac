"""Where the rigid optimisation starts: centres of mass, field-of-view candidates, a global search.

The local optimiser of :mod:`.core` converges from about 15 degrees and 20 mm away; real
repositioning between two sessions, different fields of view and scans in other orientations
(head-first vs feet-first, prone vs supine, a flipped phantom or specimen) bring more. The start
is therefore found at the coarsest working level, over every orientation:

1. For each of the 24 :func:`axis_aligned_orientations` (identity first), translation candidates
   for the fixed foreground turned that way: the foreground centres of mass aligned; and, for the
   axes where the two foregrounds' extents differ by more than :data:`FOV_DIFFERENCE_MM` (a CT
   with neck and shoulders against a brain-only MR, a partial field of view), every combination
   of their centres, low ends or high ends aligned along each of them. The centres and the
   candidate under which the two foregrounds agree best (Dice where both images have data,
   :func:`_agreement`) are scored on a small translation grid (+-:data:`TRANSLATION_STEP_MM`).
2. About the best translation, a grid of rotations (:data:`ORIENTATION_OFFSETS_DEG` about each
   axis, applied before the orientation) is scored with the metric (no optimisation; a thousand
   samples): 3,000 poses that come within 15 degrees of any rotation. In the scans' own
   orientation (identity), where moves of +-45 degrees and 90 mm are expected, every candidate
   gets a wider translation grid and the rotations are searched more finely
   (:data:`IDENTITY_STEP_DEG` steps to :data:`IDENTITY_RANGE_DEG`) about the best
   :data:`IDENTITY_BASES` distinct translations.
3. The best :data:`RESCORE` distinct poses are scored again with more samples (a thousand samples
   flatter poses where little of the fixed anatomy lands on the moving image); the best
   :data:`STARTS` of them at least :data:`START_APART_MM` apart, and the best
   :data:`IDENTITY_STARTS` of the identity's grid, are each optimised locally at the coarse
   level; their distinct optima are returned best first (the caller refines the best,
   re-chooses if another one beats it, and the self-check compares them).

Euler angles are computed by :func:`set_rotation`, not by ITK's ``SetMatrix``, which returns a
different rotation at the gimbal lock (two of the 24 turns).
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

from .geometry import mean_distance
from .optimise import Level, evaluate, execute, exhaustive, metric_method

__all__ = ["rigid_transform", "set_rotation", "compose_rigid", "translation_candidates", "global_search", "local_rigid",
           "axis_aligned_orientations", "nearest_start", "ORIENTATION_OFFSETS_DEG", "STARTS"]

#: Offsets (deg) of the rotation grid about each axis, applied before each of the 24
#: axis-aligned orientations: 5 x 5 x 5 x 24 = 3000 rotations, every rotation within 15 degrees
#: of one of them (a flip of 180 degrees, a head-first/feet-first or prone/supine pair included).
ORIENTATION_OFFSETS_DEG = (-36.0, -18.0, 0.0, 18.0, 36.0)
#: Translation offsets tried around each translation candidate: +-1 step per axis, and in the
#: scans' own orientation (where moves of +-45 degrees and 90 mm are searched) +-2 steps around
#: every candidate, with the rotations searched about the best IDENTITY_BASES distinct ones.
TRANSLATION_STEP_MM = 12.0
IDENTITY_TRANSLATION_STEPS = 2
IDENTITY_BASES = 2
FOV_DIFFERENCE_MM = 45.0

#: In the scans' own orientation the rotation grid is finer and wider: IDENTITY_STEP_DEG steps
#: up to IDENTITY_RANGE_DEG about each axis (the moves within +-45 degrees that the README
#: promises), and its best IDENTITY_STARTS distinct poses are always optimised.
IDENTITY_RANGE_DEG = 45.0
IDENTITY_STEP_DEG = 15.0
IDENTITY_STARTS = 3
#: Grid poses optimised at the coarse level: the best ones at least START_APART_MM apart (mean
#: distance over the fixed foreground), so that they are of different basins, not neighbours
#: in the best one's.
STARTS = 4
START_APART_MM = 20.0
#: Best distinct grid poses scored again with COARSE_SAMPLES before the starts are chosen.
RESCORE = 24
#: Iterations of each start's optimisation (most stop on their step size well before).
START_ITERATIONS = 80
#: Poses closer than this (mean distance over the fixed foreground, mm) count as the same.
DISTINCT_MM = 6.0
#: Step shrink factor of the gradient descent on a change of direction: a gentle one, so that
#: rotations (slow to converge) are not frozen while the translations oscillate.
RELAXATION = 0.8
#: Metric samples for the exhaustive scoring and the coarse optimisation.
GRID_SAMPLES = 1000
COARSE_SAMPLES = 6000


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


def set_rotation(tx: sitk.Transform, matrix) -> sitk.Transform:
    """Give the Euler transform ``tx`` the rotation ``matrix`` (orthonormal, dim x dim); returns it.

    ITK's own ``Euler3DTransform.SetMatrix`` decomposes some matrices at the gimbal lock (angle
    about x of -90 degrees, e.g. two of the 24 axis-aligned turns) into angles of a *different*
    rotation; the angles are therefore computed here for ITK's Z-X-Y order
    (``R = Rz(gamma) Rx(alpha) Ry(beta)``), with gamma = 0 at the lock.
    """
    R = np.asarray(matrix, float).reshape(tx.GetDimension(), -1)
    if R.shape == (2, 2):
        tx.SetAngle(float(np.arctan2(R[1, 0], R[0, 0])))
        return tx
    alpha = float(np.arcsin(np.clip(R[2, 1], -1.0, 1.0)))
    if np.hypot(R[2, 0], R[2, 2]) > 1e-9:
        beta = float(np.arctan2(-R[2, 0], R[2, 2]))
        gamma = float(np.arctan2(-R[0, 1], R[1, 1]))
    else:  # gimbal lock: only beta + or - gamma is defined
        beta, gamma = float(np.arctan2(R[0, 2], R[0, 0])), 0.0
    tx.SetRotation(alpha, beta, gamma)
    return tx


def compose_rigid(outer: sitk.Transform, inner: sitk.Transform) -> sitk.Transform:
    """``outer`` after ``inner`` (x -> outer(inner(x))) as one Euler transform about ``outer``'s
    centre; both rigid (Euler) transforms of the same dimension."""
    dim = outer.GetDimension()
    centre = tuple(float(c) for c in outer.GetFixedParameters()[:dim])
    product = (np.asarray(outer.GetMatrix(), float).reshape(dim, dim)
               @ np.asarray(inner.GetMatrix(), float).reshape(dim, dim))
    u, _, vt = np.linalg.svd(product)  # orthonormal to rounding
    out = set_rotation(rigid_transform(dim, centre), u @ vt)
    out.SetTranslation(tuple(np.subtract(outer.TransformPoint(inner.TransformPoint(centre)), centre)))
    return out


def axis_aligned_orientations(dim: int) -> list[np.ndarray]:
    """The rotations that map the coordinate axes onto themselves, identity first.

    Returns
    -------
    list of ndarray
        24 (3, 3) matrices in 3D (90/180/270 degree turns about each axis and their
        compositions), 4 (2, 2) in 2D; entries 0 and +-1, determinant +1.
    """
    out = []
    for perm in itertools.permutations(range(dim)):
        for signs in itertools.product((1.0, -1.0), repeat=dim):
            m = np.zeros((dim, dim))
            m[np.arange(dim), perm] = signs
            if np.linalg.det(m) > 0:
                out.append(m)
    return out


def _rigid_pose(dim: int, centre, matrix, translation) -> sitk.Transform:
    """The rigid transform x -> matrix (x - centre) + centre + translation (about ``centre``)."""
    tx = set_rotation(rigid_transform(dim, centre), matrix)
    tx.SetTranslation(tuple(float(v) for v in translation))
    return tx


def _distinct(poses, points: np.ndarray, limit: int, apart: float) -> list[int]:
    """Indices of the first ``limit`` of ``poses`` ((value, A, b), best first) that lie more than
    ``apart`` mm (mean over ``points``) from every earlier pick."""
    picked: list[int] = []
    for i, (_, A, b) in enumerate(poses):
        moved = points @ A.T + b
        if all(np.linalg.norm(moved - (points @ poses[j][1].T + poses[j][2]), axis=1).mean() > apart
               for j in picked):
            picked.append(i)
        if len(picked) == limit:
            break
    return picked


def nearest_start(tx: sitk.Transform, centre, fixed_pts: np.ndarray, moving_pts: np.ndarray,
                  points: np.ndarray) -> sitk.Transform:
    """The search's start nearest ``tx``: ``tx``'s rotation (about ``centre``) with the nearest of
    the translation candidates for the fixed foreground turned that way (what the range of the
    search is measured from)."""
    dim = len(centre)
    A = np.asarray(tx.GetMatrix(), float).reshape(dim, dim)
    sub = fixed_pts[:: max(1, len(fixed_pts) // 4000)]
    cands = translation_candidates((sub - centre) @ A.T + centre, moving_pts)
    starts = [_rigid_pose(dim, centre, A, t) for t in cands]
    return min(starts, key=lambda st: mean_distance(st, tx, points))


def _grid_points(fg: tuple[np.ndarray, sitk.Image], n: int = 12000):
    """An even sample of the voxel centres of ``fg``'s grid: (N, dim) mm and their labels (N,)."""
    mask, img = fg
    step = max(1, int(round((mask.size / n) ** (1.0 / mask.ndim))))
    sl = tuple(slice(None, None, step) for _ in range(mask.ndim))
    idx = np.argwhere(np.ones(mask[sl].shape, bool)) * step  # (z, y, x) order
    dim = img.GetDimension()
    d = np.asarray(img.GetDirection()).reshape(dim, dim)
    pts = np.asarray(img.GetOrigin()) + (idx[:, ::-1] * np.asarray(img.GetSpacing())) @ d.T
    return pts, mask[tuple(idx.T)]


def _agreement(pts: np.ndarray, labels: np.ndarray, fg: tuple[np.ndarray, sitk.Image]) -> np.ndarray:
    """Dice coefficients of two foregrounds where both images have data.

    Parameters
    ----------
    pts : ndarray
        (..., N, dim) mm: a sample of the fixed image's grid (:func:`_grid_points`) moved by
        one pose or by each of a stack of poses.
    labels : ndarray
        (N,) whether each point is in the fixed foreground.
    fg : (ndarray, SimpleITK.Image)
        The moving foreground: boolean (z, y, x) mask and the image of its grid.

    Returns
    -------
    ndarray
        (...) 2 |F and M| / (|F| + |M|) over the points inside the moving image's field of view,
        in [0, 1]: a field of view larger or smaller than the other's costs nothing, anatomy
        where the other image shows none does.
    """
    mask, img = fg
    dim = img.GetDimension()
    d = np.asarray(img.GetDirection()).reshape(dim, dim)
    idx = np.rint(((pts - np.asarray(img.GetOrigin())) @ d) / np.asarray(img.GetSpacing())).astype(int)
    ok = np.all((idx >= 0) & (idx < np.asarray(mask.shape[::-1])), axis=-1)
    idx = np.where(ok[..., None], idx, 0)
    moving = mask[tuple(np.moveaxis(idx[..., ::-1], -1, 0))] & ok
    fixed = labels & ok
    total = fixed.sum(-1) + moving.sum(-1)
    return 2.0 * (fixed & moving).sum(-1) / np.maximum(total, 1)


def global_search(level: Level, centre, fixed_pts: np.ndarray, moving_pts: np.ndarray,
                  points: np.ndarray, *, seed: int, progress,
                  fixed_fg: tuple[np.ndarray, sitk.Image],
                  moving_fg: tuple[np.ndarray, sitk.Image]) -> list[tuple[float, sitk.Transform]]:
    """Coarse-level optima from the best distinct poses of a grid over all orientations.

    Steps 1-3 of the module's description: for each of the :func:`axis_aligned_orientations`
    (identity first) the translation candidates for the fixed foreground turned that way, a
    translation grid about them and a rotation grid about the best; the best poses re-scored;
    the starts optimised locally at this level.

    Parameters
    ----------
    level : Level
        The coarsest working level.
    centre : array_like
        Centre of rotation (the fixed foreground's centre of mass, mm).
    fixed_pts, moving_pts : ndarray
        (N, dim) physical coordinates of the two foregrounds (mm).
    points : ndarray
        (M, dim) fixed foreground points used to tell poses apart (a few thousand).
    fixed_fg, moving_fg : (ndarray, SimpleITK.Image)
        The foreground masks and the images of their grids: which translation candidates make
        the foregrounds agree best (:func:`_agreement`).

    Returns
    -------
    list of (metric value, transform), best first, distinct poses only.
    """
    dim = level.fixed.GetDimension()
    n_rot = 1 if dim == 2 else 3
    centre = np.asarray(centre, float)
    k = len(ORIENTATION_OFFSETS_DEG) // 2
    step = float(np.radians(ORIENTATION_OFFSETS_DEG[1] - ORIENTATION_OFFSETS_DEG[0]))
    r_steps, r_scales = [k] * n_rot + [0] * dim, [step] * n_rot + [1.0] * dim
    k0 = int(round(IDENTITY_RANGE_DEG / IDENTITY_STEP_DEG))
    r0_steps = [k0] * n_rot + [0] * dim
    r0_scales = [float(np.radians(IDENTITY_STEP_DEG))] * n_rot + [1.0] * dim
    t_steps, t_scales = [0] * n_rot + [1] * dim, [1.0] * n_rot + [TRANSLATION_STEP_MM] * dim
    identity = rigid_transform(dim, centre)
    inner: dict[tuple, np.ndarray] = {}  # grid parameters -> rotation matrix about the centre
    poses = []  # (value, A, b): x -> A x + b
    orientations = axis_aligned_orientations(dim)
    sub = fixed_pts[:: max(1, len(fixed_pts) // 4000)]
    moving_pts = moving_pts[:: max(1, len(moving_pts) // 20000)]
    grid_pts, grid_labels = _grid_points(fixed_fg)
    for i, O in enumerate(orientations):
        stage = f"global search: orientation {i + 1}/{len(orientations)}"
        turned = (sub - centre) @ O.T + centre
        cands = translation_candidates(turned, moving_pts)
        thorough = i == 0  # the scans' own orientation: every candidate, a wider grid, two bases
        if len(cands) > 1 and not thorough:
            # the centres, and the candidate under which the foregrounds agree best
            on_grid = (grid_pts - centre) @ O.T + centre
            scores = _agreement(on_grid[None] + np.asarray(cands)[:, None], grid_labels, moving_fg)
            best = int(np.argmax(scores))
            cands = [cands[0]] + ([cands[best]] if best > 0 else [])
        steps = list(t_steps) if not thorough else [0] * n_rot + [IDENTITY_TRANSLATION_STEPS] * dim
        shifts = []
        for t in cands:
            scored = exhaustive(level, identity, steps, t_scales, samples=GRID_SAMPLES,
                                seed=seed, progress=progress, stage=stage,
                                moving_initial=_rigid_pose(dim, centre, O, t))
            # a translation d before the turn is a translation O d after it
            shifts += [(v, t + O @ np.asarray(p[n_rot:])) for v, p in scored[: IDENTITY_BASES if thorough else 1]]
        shifts.sort(key=lambda vt: vt[0])
        bases: list[np.ndarray] = []
        for _, t in shifts:
            if all(np.linalg.norm(t - b) > 2 * TRANSLATION_STEP_MM for b in bases):
                bases.append(t)
            if len(bases) == (IDENTITY_BASES if thorough else 1):
                break
        for shift in bases or [cands[0]]:
            grid = exhaustive(level, identity, r0_steps if thorough else r_steps,
                              r0_scales if thorough else r_scales, samples=GRID_SAMPLES,
                              seed=seed, progress=progress, stage=stage,
                              moving_initial=_rigid_pose(dim, centre, O, shift))
            for value, params in grid:
                key = tuple(np.round(params, 9))
                if key not in inner:
                    inner[key] = np.asarray(rigid_transform(dim, centre, params).GetMatrix()).reshape(dim, dim)
                A = O @ inner[key]
                poses.append((value, A, centre + np.asarray(shift) - A @ centre))
        if thorough:
            own = sorted(poses, key=lambda p: p[0])
    poses.sort(key=lambda p: p[0])
    # the grid's few samples flatter poses where little of the fixed anatomy lands on the moving
    # image (fewer valid samples: a biased mutual information); the best distinct ones are
    # scored again with the coarse optimisation's samples before the starts are chosen
    R = metric_method(level, COARSE_SAMPLES, seed)
    rescored = []
    for i in _distinct(poses, points, RESCORE, DISTINCT_MM):
        _, A, b = poses[i]
        rescored.append((evaluate(R, level, _rigid_pose(dim, centre, A, A @ centre + b - centre)), A, b))
    rescored.sort(key=lambda p: p[0])
    picked = [rescored[i] for i in _distinct(rescored, points, STARTS, START_APART_MM)]
    # and the best poses in the scans' own orientation, whatever the other orientations scored
    for i in _distinct(own, points, IDENTITY_STARTS, DISTINCT_MM):
        _, A, b = own[i]
        if all(np.linalg.norm(points @ (A - P[1]).T + (b - P[2]), axis=1).mean() > DISTINCT_MM
               for P in picked):
            picked.append(own[i])
    optima = []
    for i, (_, A, b) in enumerate(picked):
        cand = _rigid_pose(dim, centre, A, A @ centre + b - centre)
        tx, value, _, _ = local_rigid(level, cand, samples=COARSE_SAMPLES, seed=seed,
                                      step=2.0 * level.spacing, min_step=0.02 * level.spacing,
                                      iterations=START_ITERATIONS, progress=progress,
                                      stage=f"rigid start {i + 1}/{len(picked)}")
        optima.append((value, tx))
    optima.sort(key=lambda vt: vt[0])
    distinct = []
    for value, tx in optima:
        if all(mean_distance(tx, d, points) > DISTINCT_MM for _, d in distinct):
            distinct.append((value, tx))
    return distinct

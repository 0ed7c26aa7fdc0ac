"""Registration of the moving image onto the fixed image (SimpleITK, Mattes mutual information).

Recipe:

1. **Working pyramid** (:mod:`.working`): both images are reduced to isotropic grids of
   ``4s, 2s, s`` mm, with ``s`` the fixed image's finest spacing clipped to
   [:data:`FINEST_MM`, 3] mm in 3D (native spacing in 2D), never the input's full matrix.
   Foreground masks drop air, noise and objects apart from the patient (a CT couch); the metric
   samples the fixed foreground (plus a margin).
2. **Start** (:mod:`.search`): over all 24 axis-aligned orientations, foreground centres of
   mass and extra candidates for different fields of view, an exhaustive rotation/translation
   grid at the coarsest level and local optimisation of its best poses; or the caller's initial
   transform.
3. **Refinement**: regular-step gradient descent of a rigid (Euler) transform at the middle and
   the finest level. When another optimum of the search beats the refined best one at the
   coarse level, it is refined too and the better of the two goes on (:func:`_rechoose`), so the
   result is never a pose that another start beat. ``affine`` continues from the rigid result;
   ``bspline`` adds a free-form B-spline on top of the affine result.
4. **Self-check** (:mod:`.selfcheck`): converged / confidence with the reason in words, and the
   orientation found (e.g. "rotated 180° about A–P") when it is far from the fixed image's.

Every ITK evaluation runs on one thread with REGULAR (seeded) sampling, so the same inputs and seed
give the same transform whatever ITK's thread setting (:mod:`.optimise`).

Transforms follow ITK's convention: they map points of the *fixed* image (LPS, mm) to the
*moving* image, so ``sitk.Resample(moving, fixed, transform)`` puts the moving image on the fixed
grid. Save them with ``sitk.WriteTransform`` (``--transform out.tfm``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InvalidInputError, RegistrationError
from ..options import look_up
from ..progress import ProgressCallback, report
from .geometry import flatten, linear_part, mean_distance, overlap_fraction
from .optimise import Level, evaluate, execute, exhaustive, metric_method
from .search import (COARSE_SAMPLES, global_search, local_rigid, nearest_start, rigid_transform,
                     set_rotation, translation_candidates)
from .selfcheck import PROBE_DEG, PROBE_MM, assess, orientation
from .working import foreground_mask, label_mask, mask_points, working_image

__all__ = ["REGISTRATION_MODES", "RegistrationResult", "register", "default_mode"]

REGISTRATION_MODES = ("none", "rigid", "affine", "bspline")

#: Minimum fraction of the fixed image that the moving image must cover.
MIN_OVERLAP = 0.05

#: Finest working voxel size (mm) of 3D registration.
FINEST_MM = 1.5

#: Metric samples at the middle and the finest level, and for the self-check's probes.
MIDDLE_SAMPLES = 20000
FINEST_SAMPLES = 30000
PROBE_SAMPLES = 10000

#: First step (mm) of the affine refinement, which starts from the rigid result.
AFFINE_STEP = 0.5

#: Gaussian smoothing (sigma, in voxels of the level) of the coarse levels.
COARSE_SIGMA = 0.5

#: Iterations of the rigid refinement on each finer level, and how many times it is restarted
#: when it runs out of them still moving by more than a voxel.
REFINE_ITERATIONS = 150
REFINE_ROUNDS = 3

#: Rivals that beat the search's best after its refinement and are refined in turn (re-choice).
RECHOOSE = 2


@dataclass
class RegistrationResult:
    """Outcome of :func:`register`.

    Attributes
    ----------
    transform : SimpleITK.Transform
        Maps fixed-image points to moving-image points (mm, LPS).
    mode : str
        ``none``, ``rigid``, ``affine`` or ``bspline``.
    metric_value : float
        Final Mattes MI metric (negative: lower is better); NaN for ``none``.
    iterations : int
        Optimiser iterations of the last stage.
    stop_reason : str
        The optimiser's stop condition of the last stage.
    overlap : float
        Fraction of the fixed image covered by the moving image after registration.
    seconds : float
        Wall time.
    converged : bool
        The self-check passed (see :mod:`MedFusionLib.registration.selfcheck`).
    confidence : str
        ``high``, ``low``, or ``unchecked`` (registration ``none``).
    confidence_reason : str
        Why: the checks that failed, or the figures that support the result.
    checks : dict
        The self-check's figures (information, runner-up ratio, sharpness, foreground overlap,
        ...), which are of the rigid stage; for ``affine``/``bspline`` also
        ``departure_from_rigid_mm``, the mean distance between where the result and the rigid
        result send the fixed foreground.
    start : str
        How the optimisation started: ``global search`` or ``initial transform``.
    orientation : dict
        How the moving image's anatomy lies turned relative to the fixed image's (of the rigid
        result): ``rotation_deg``, ``axis_aligned`` (the nearest axis-aligned turn in words,
        ``"none"`` near the identity) and ``description`` (see
        :func:`MedFusionLib.registration.selfcheck.orientation`); empty for ``none``.
    """

    transform: sitk.Transform
    mode: str
    metric_value: float = float("nan")
    iterations: int = 0
    stop_reason: str = ""
    overlap: float = 1.0
    seconds: float = 0.0
    converged: bool = True
    confidence: str = "unchecked"
    confidence_reason: str = ""
    checks: dict = field(default_factory=dict)
    start: str = ""
    orientation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "converged": self.converged, "confidence": self.confidence,
                "confidence_reason": self.confidence_reason, "checks": self.checks,
                "start": self.start, "orientation": self.orientation,
                "orientation_note": self.orientation_note() or "",
                "metric_value": self.metric_value,
                "iterations": self.iterations, "stop_reason": self.stop_reason,
                "overlap": self.overlap, "seconds": self.seconds,
                "transform_parameters": list(self.transform.GetParameters())
                if self.transform.GetNumberOfParameters() < 100 else "(bspline, see .tfm)"}

    def orientation_note(self) -> str | None:
        """A sentence when the moving image was found turned far from the fixed image's
        orientation (nearest axis-aligned turn not the identity), else None: such a turn often
        means a header or positioning error (head-first vs feet-first, prone vs supine)."""
        words = self.orientation.get("description") if self.orientation else ""
        if not words:
            return None
        return (f"the moving image was found {words} relative to the fixed image; check the "
                "scans' orientation and positioning if that is not expected")

    def warning(self) -> str | None:
        """A one-line warning when the result is not trustworthy, else None."""
        if self.confidence != "low":
            return None
        return (f"{self.mode} registration may have failed (low confidence: "
                f"{self.confidence_reason}); check the alignment before using the result.")


def default_mode(image: sitk.Image) -> str:
    """``rigid`` for 3D volumes, ``none`` for 2D images and single-slice volumes (published 2D
    pairs are pre-aligned; a 3D rigid search on one slice is ill-posed)."""
    return "none" if image.GetDimension() == 2 or image.GetSize()[2] == 1 else "rigid"


def _spacings(fixed: sitk.Image) -> list[float]:
    """Working voxel sizes, coarse to fine: ``4s, 2s, s`` (fewer when the image is small)."""
    dim = fixed.GetDimension()
    native = float(min(fixed.GetSpacing()))
    fine = float(np.clip(native, FINEST_MM, 3.0)) if dim == 3 else native
    extent = float(min(np.asarray(fixed.GetSize()) * np.asarray(fixed.GetSpacing())))
    out = [fine]
    while len(out) < 3 and extent / (out[0] * 2) >= 16:
        out.insert(0, out[0] * 2)
    return out


def _dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=voxels) if voxels > 0 else mask


def _mask_image(mask: np.ndarray, like: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.CopyInformation(like)
    return img


def _pyramid(f: sitk.Image, m: sitk.Image, fixed_mask, moving_mask, names):
    """The coarse and middle working levels, and the foreground masks at the middle level.

    Returns
    -------
    levels : list of Level
        Coarse to middle (the finest level is made by :func:`_fine_level` once the transform
        is roughly known, on the region where the two foregrounds meet).
    fg : dict
        ``fixed``/``moving`` -> (boolean mask, middle working image).
    spacings : list of float
        Every level's voxel size, coarse to fine.
    """
    spacings = _spacings(f)
    mid = spacings[-2] if len(spacings) > 1 else spacings[0]
    f_mid, m_mid = working_image(f, mid), working_image(m, mid)
    fg = {}
    for key, img, user, name in (("fixed", f_mid, fixed_mask, names[0]),
                                 ("moving", m_mid, moving_mask, names[1])):
        if user is not None:
            arr = label_mask(user, img)
            if not arr.any():
                raise InvalidInputError(f"the {key} mask has no voxel inside {name}; give a label "
                                        "image (non-zero = inside) on the same anatomy.")
        else:
            arr = foreground_mask(img)
            if arr.sum() < 8:
                arr = np.ones(arr.shape, bool)  # no recognisable foreground: use everything
        fg[key] = (arr, img)
    keep = (_mask_image(_dilate(fg["fixed"][0], 2), f_mid), _mask_image(_dilate(fg["moving"][0], 2), m_mid))
    levels = []
    for s in spacings[:-1] if len(spacings) > 1 else spacings:
        fw = f_mid if s == mid else working_image(f_mid, s)
        mw = m_mid if s == mid else working_image(m_mid, s)
        if s > mid and min(fw.GetSize()) >= 4 and min(mw.GetSize()) >= 4:
            # coarse levels: also smooth, to widen the capture range
            fw = sitk.SmoothingRecursiveGaussian(fw, COARSE_SIGMA * s)
            mw = sitk.SmoothingRecursiveGaussian(mw, COARSE_SIGMA * s)
        levels.append(_make_level(s, fw, mw, keep, fixed_mask, moving_mask))
    return levels, fg, keep, spacings


def _make_level(spacing, fw, mw, keep, fixed_mask, moving_mask) -> Level:
    """A level from working images: sampling mask, anatomy kept, user masks."""
    if fixed_mask is not None:
        sampling = label_mask(fixed_mask, fw)
    else:
        sampling = label_mask(keep[0], fw)
        fw = sitk.Mask(fw, _mask_image(sampling, fw))
    mmask = None
    if moving_mask is not None:
        mmask = _mask_image(label_mask(moving_mask, mw), mw)
    else:
        mw = sitk.Mask(mw, _mask_image(label_mask(keep[1], mw), mw))
    return Level(spacing, fw, mw, _mask_image(sampling, fw), mmask, int(sampling.sum()))


def _box(points: np.ndarray, image: sitk.Image, margin: float):
    """Bounds of ``points`` (N, dim) along ``image``'s axes, widened by ``margin`` mm."""
    d = np.asarray(image.GetDirection()).reshape(image.GetDimension(), -1)
    local = points @ d
    return local.min(0) - margin, local.max(0) + margin


def _fine_level(f, m, spacing, tx, f_pts, m_pts, keep, fixed_mask, moving_mask) -> Level:
    """The finest level, cropped to where the two foregrounds meet through ``tx`` (+ 20 mm)."""
    inv = tx.GetInverse()
    f_to_m = np.array([tx.TransformPoint(tuple(map(float, p))) for p in f_pts[:: max(1, len(f_pts) // 4000)]])
    m_to_f = np.array([inv.TransformPoint(tuple(map(float, p))) for p in m_pts[:: max(1, len(m_pts) // 4000)]])
    fb = [_box(pts, f, 20.0) for pts in (f_pts, m_to_f)]
    mb = [_box(pts, m, 20.0) for pts in (m_pts, f_to_m)]
    fbox = (np.maximum(fb[0][0], fb[1][0]), np.minimum(fb[0][1], fb[1][1]))
    mbox = (np.maximum(mb[0][0], mb[1][0]), np.minimum(mb[0][1], mb[1][1]))
    return _make_level(spacing, working_image(f, spacing, fbox), working_image(m, spacing, mbox),
                       keep, fixed_mask, moving_mask)


def _check_mask(mask, image, what: str, name: str):
    if mask is None:
        return None
    if not isinstance(mask, sitk.Image):
        raise InvalidInputError(f"the {what} mask must be a SimpleITK label image, got "
                                f"{type(mask).__name__}.")
    if mask.GetDimension() != image.GetDimension():
        raise InvalidInputError(f"the {what} mask is {mask.GetDimension()}D but {name} is "
                                f"{image.GetDimension()}D.")
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(f"the {what} mask must be a scalar label image.")
    return sitk.Cast(mask, sitk.sitkUInt8) if mask.GetPixelID() != sitk.sitkUInt8 else mask


def _containment(fg: dict, tx: sitk.Transform) -> float:
    """Share of the smaller foreground that lies inside the other one through ``tx``."""
    f_arr, f_img = fg["fixed"]
    m_arr, m_img = fg["moving"]
    m_mask = _mask_image(m_arr, m_img)
    on_fixed = sitk.Resample(m_mask, f_img, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    inter = float(np.logical_and(sitk.GetArrayViewFromImage(on_fixed) > 0, f_arr).sum())
    # volumes in voxels of the same (middle) spacing
    return inter / max(1.0, float(min(f_arr.sum(), m_arr.sum())))


def _probe(level: Level, tx: sitk.Transform, seed: int) -> tuple[float, list[float]]:
    """The metric of ``tx`` and of ``tx`` moved by +-PROBE_MM along and +-PROBE_DEG about each axis."""
    dim = level.fixed.GetDimension()
    n_rot = 1 if dim == 2 else 3
    values, base = [], float("inf")
    for block, scale in ((range(n_rot), np.radians(PROBE_DEG)), (range(n_rot, n_rot + dim), PROBE_MM)):
        steps = [1 if i in block else 0 for i in range(n_rot + dim)]
        scales = [scale if i in block else 1.0 for i in range(n_rot + dim)]
        grid = exhaustive(level, tx, steps, scales, samples=PROBE_SAMPLES, seed=seed,
                          progress=None, stage="self-check")
        p0 = np.asarray(tx.GetParameters())
        for value, params in grid:
            moved = int(np.sum(np.abs(np.asarray(params) - p0) > 1e-9))
            if moved == 0:
                base = min(base, value)
            elif moved == 1:  # one parameter moved: the axis-aligned probes
                values.append(value)
    return base, values


def register(fixed: sitk.Image, moving: sitk.Image, *, mode: str | None = None, seed: int = 0,
             progress: ProgressCallback | None = None, fixed_name: str = "fixed",
             moving_name: str = "moving", fixed_mask: sitk.Image | None = None,
             moving_mask: sitk.Image | None = None,
             initial_transform: sitk.Transform | None = None) -> RegistrationResult:
    """Find the transform that aligns ``moving`` onto ``fixed``.

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        Scalar images of the same dimension (2D or 3D); intensities in any units (mutual
        information does not need them to match).
    mode : {"none", "rigid", "affine", "bspline"}, optional
        Default: ``rigid`` for 3D, ``none`` for 2D.
    seed : int, optional
        Seed of the metric's sampling grid jitter: the same seed gives the same transform.
    progress : callable, optional
        ``progress(fraction, message)``; iteration messages carry ``fraction=None``.
    fixed_mask, moving_mask : SimpleITK.Image, optional
        Label images (non-zero = use) in their image's physical space: the metric only samples
        the fixed mask and only counts samples that land in the moving mask. Default: the
        automatic foregrounds.
    initial_transform : SimpleITK.Transform, optional
        A start (fixed -> moving points) to refine instead of searching globally; with
        ``mode="none"`` it is the result.

    Returns
    -------
    RegistrationResult
        With ``converged``/``confidence``: a low-confidence result is returned, not raised
        (``--strict-registration`` turns it into an error).

    Raises
    ------
    InvalidInputError
        If the dimensions differ, or a mask is unusable.
    RegistrationError
        If the images do not overlap after initialisation or after registration.
    CancelledError, KeyboardInterrupt
        When the progress callback cancels or the user presses Ctrl-C.
    """
    if fixed.GetDimension() != moving.GetDimension():
        raise InvalidInputError(
            f"cannot register a {moving.GetDimension()}D {moving_name} onto a "
            f"{fixed.GetDimension()}D {fixed_name}; give two 2D images or two 3D volumes."
        )
    mode = default_mode(fixed) if mode is None else look_up(mode, REGISTRATION_MODES, what="registration mode")
    fixed_mask = _check_mask(fixed_mask, fixed, "fixed", fixed_name)
    moving_mask = _check_mask(moving_mask, moving, "moving", moving_name)
    dim = fixed.GetDimension()
    if initial_transform is not None:
        if not isinstance(initial_transform, sitk.Transform) or initial_transform.GetDimension() != dim:
            raise InvalidInputError(f"the initial transform must be a {dim}D SimpleITK transform.")
    t0 = time.perf_counter()
    if mode == "none":
        tx = initial_transform if initial_transform is not None else sitk.Transform(dim, sitk.sitkIdentity)
        ov = overlap_fraction(fixed, moving, tx)
        if ov < MIN_OVERLAP:
            raise RegistrationError(
                f"{moving_name} does not overlap {fixed_name} in physical space ({100 * ov:.1f}% of "
                "the fixed image covered) and registration is 'none'; use --register rigid."
            )
        return RegistrationResult(tx, "none", overlap=ov, seconds=time.perf_counter() - t0,
                                  confidence_reason="registration 'none': not checked",
                                  start="initial transform" if initial_transform is not None else "")

    report(progress, 0.0, "registration: building the working grids")
    f = fixed if fixed.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(fixed, sitk.sitkFloat32)
    m = moving if moving.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(moving, sitk.sitkFloat32)
    levels, fg, keep, spacings = _pyramid(f, m, fixed_mask, moving_mask, (fixed_name, moving_name))
    f_pts = mask_points(fg["fixed"][1], fg["fixed"][0])
    m_pts = mask_points(fg["moving"][1], fg["moving"][0])
    probe_pts = f_pts[:: max(1, len(f_pts) // 2000)]
    centre = f_pts.mean(0)

    base = None  # a non-rigid initial transform that the rigid one is composed after
    optima = None
    if initial_transform is not None:
        lin = linear_part(initial_transform, dim)
        if lin is not None and abs(np.linalg.det(lin[0]) - 1) < 1e-3 and np.allclose(
                lin[0] @ lin[0].T, np.eye(dim), atol=1e-3):
            start = set_rotation(rigid_transform(dim, centre), lin[0])
            start.SetTranslation(tuple(lin[0] @ centre + lin[1] - centre))
        else:
            base = initial_transform
            start = rigid_transform(dim, centre)
        search_start = sitk.Transform(start)
        best = start
        start_kind = "initial transform"
    else:
        cands = translation_candidates(f_pts, m_pts)
        search_start = rigid_transform(dim, centre, [0.0] * (1 if dim == 2 else 3) + list(cands[0]))
        if overlap_fraction(fixed, moving, search_start) < MIN_OVERLAP:
            raise RegistrationError(
                f"{moving_name} and {fixed_name} do not overlap after centring; they may be of "
                "different body parts.")
        report(progress, 0.05, "registration: global search over rotations")
        optima = global_search(levels[0], centre, f_pts, m_pts, probe_pts, seed=seed,
                               progress=progress, fixed_fg=fg["fixed"],
                               moving_fg=fg["moving"])
        if not optima:
            raise RegistrationError(
                f"{moving_name} and {fixed_name} do not overlap after centring; they may be of "
                "different body parts.")
        best = optima[0][1]
        start_kind = "global search"

    rigid_levels = levels[1:] if optima is not None else list(levels)
    if not rigid_levels and len(spacings) == 1:
        rigid_levels = list(levels)  # one level only (a small image): refine the search's best there
    trace, R_last = [], None

    def _refine(lv, best, samples, step):
        """Gradient descent on ``lv``; restarted with a fresh step from where it got to when it
        ran out of iterations still moving (a start far from the optimum crawls once its step
        has shrunk), at most :data:`REFINE_ROUNDS` times."""
        for _ in range(REFINE_ROUNDS):
            out = local_rigid(lv, best, samples=samples, seed=seed, step=step, min_step=0.002,
                              iterations=REFINE_ITERATIONS, progress=progress,
                              stage=f"rigid {lv.spacing:g} mm", moving_initial=base)
            moved = mean_distance(out[0], best, probe_pts)
            best = out[0]
            if ("Maximum number of iterations" not in out[2].GetOptimizerStopConditionDescription()
                    or moved < lv.spacing):
                break
        return out

    def _through(levels_, start):
        """``start`` refined on each of ``levels_``: (transform, method, trace)."""
        R, tr = None, []
        for lv in levels_:
            report(progress, 0.3, f"rigid registration at {lv.spacing:g} mm")
            start, _, R, tr = _refine(lv, start, MIDDLE_SAMPLES, lv.spacing)
        return start, R, tr

    best, R_last, trace = _through(rigid_levels, best)
    rivals = None
    if optima is not None:
        best, R_last, trace, rivals = _rechoose(best, R_last, trace, optima, levels[0],
                                                rigid_levels, _through, probe_pts, seed)
    if len(spacings) > 1:
        report(progress, 0.5, f"rigid registration at {spacings[-1]:g} mm")
        rough = best if base is None else _composite(base, best)
        fine = _fine_level(f, m, spacings[-1], rough, f_pts, m_pts, keep, fixed_mask, moving_mask)
        levels.append(fine)
        best, _, R_last, trace = _refine(fine, best, FINEST_SAMPLES, 0.5 * fine.spacing)
    tx = best
    last, last_trace = R_last, trace
    if mode in ("affine", "bspline"):
        affine = sitk.AffineTransform(dim)
        affine.SetCenter(best.GetCenter())
        affine.SetMatrix(best.GetMatrix())
        affine.SetTranslation(best.GetTranslation())
        for lv in levels[-2:]:
            R = metric_method(lv, FINEST_SAMPLES if lv is levels[-1] else MIDDLE_SAMPLES, seed)
            R.SetOptimizerAsRegularStepGradientDescent(learningRate=AFFINE_STEP, minStep=1e-4,
                                                       numberOfIterations=100,
                                                       relaxationFactor=0.5,
                                                       gradientMagnitudeTolerance=1e-8)
            R.SetOptimizerScalesFromPhysicalShift()
            if base is not None:
                R.SetMovingInitialTransform(base)
            R.SetInitialTransform(affine, inPlace=True)
            _, last_trace = execute(R, lv, f"affine {lv.spacing:g} mm", progress)
            last = R
        tx = affine
    if base is not None:
        tx = _composite(base, tx)
    if mode == "bspline":
        tx, last, last_trace = _bspline(levels[-1], tx, seed, progress)
    tx = flatten(tx)
    ov = overlap_fraction(fixed, moving, tx)
    if ov < MIN_OVERLAP:
        raise RegistrationError(
            f"registration of {moving_name} onto {fixed_name} ended with only {100 * ov:.1f}% "
            "overlap; the images probably show different anatomy."
        )

    report(progress, 0.9, "registration: self-check")
    coarse = metric_method(levels[0], COARSE_SAMPLES, seed)
    coarse_value = evaluate(coarse, levels[0], best)
    if rivals is not None:  # those compared with the result at the coarse level: its final value
        rivals = [(coarse_value if same_level else fv, rv, t) for fv, rv, t, same_level in rivals]
    mid = levels[len(levels) // 2] if len(levels) > 1 else levels[0]
    probe_base, probe_values = (None, None)
    if base is None:
        probe_base, probe_values = _probe(mid, best, seed)
    if optima is not None:  # the edge of the search: from the nearest start of the same orientation
        search_start = nearest_start(best, centre, f_pts, m_pts, probe_pts)
    check = assess(final_value=coarse_value, rivals=rivals, transform=best,
                   probe_base=probe_base, probe_values=probe_values, points=probe_pts,
                   containment=_containment(fg, tx), trace=trace, start=search_start,
                   dim=dim, stop_reason=R_last.GetOptimizerStopConditionDescription(),
                   from_initial=optima is None)
    if mode != "rigid" and base is None:
        # how far the extra degrees of freedom moved the anatomy from the rigid result (the
        # checks above are of the rigid result)
        check.checks["departure_from_rigid_mm"] = round(mean_distance(tx, best, probe_pts), 3)
    result = RegistrationResult(
        transform=tx, mode=mode, metric_value=float(last.GetMetricValue()),
        iterations=int(last.GetOptimizerIteration()),
        stop_reason=last.GetOptimizerStopConditionDescription(), overlap=ov,
        seconds=time.perf_counter() - t0, converged=check.converged,
        confidence=check.confidence, confidence_reason=check.reason, checks=check.checks,
        start=start_kind, orientation=orientation(best if base is None else tx, dim))
    note = result.orientation_note()
    report(progress, 1.0, f"{mode} registration done in {result.seconds:.1f} s "
                          f"(confidence {result.confidence}: {result.confidence_reason})"
                          + (f"; {note}" if note else ""))
    return result


def _rechoose(best, R_last, trace, optima, coarse_level, rigid_levels, through, points, seed):
    """Never return a pose that another start beat.

    ``best`` is the search's best start refined on ``rigid_levels``; the search's other optima
    are rivals. A rival whose coarse-level value beats ``best``'s after that refinement (at most
    :data:`RECHOOSE` of them, best first) is refined on the same levels and the two are compared
    there; the better one goes on. The others keep their coarse-level values (they did not beat
    the result there).

    Returns
    -------
    best, R_last, trace
        The pose that goes on, with its last optimiser and trace.
    rivals : list of (result value or None, rival value, rival transform, on the coarse level)
        What the self-check compares: for a rival on the coarse level the result's value is
        filled in later (from the final pose).
    """
    R = metric_method(coarse_level, COARSE_SAMPLES, seed)
    finest = rigid_levels[-1] if rigid_levels else coarse_level
    F = metric_method(finest, MIDDLE_SAMPLES, seed)
    value = evaluate(R, coarse_level, best)
    compared, coarse_only = [], []
    for v, t in optima[1:]:
        if mean_distance(t, best, points) <= 2 * PROBE_MM:
            continue
        if v < value and len(compared) < RECHOOSE and rigid_levels:
            refined, R_r, tr_r = through(rigid_levels, t)
            compared.append((evaluate(F, finest, refined), refined, R_r, tr_r))
        else:
            coarse_only.append((v, t))
    mine = evaluate(F, finest, best)
    pool = [(mine, best, R_last, trace)] + compared
    winner = min(range(len(pool)), key=lambda i: pool[i][0])
    w_value, best, R_last, trace = pool[winner]
    rivals = [(w_value, v, t, False) for i, (v, t, _, _) in enumerate(pool) if i != winner]
    rivals += [(None, v, t, True) for v, t in coarse_only]
    return best, R_last, trace, rivals


def _composite(base: sitk.Transform, tx: sitk.Transform) -> sitk.Transform:
    """``base`` applied after ``tx`` (points: x -> base(tx(x))), as ITK's moving initial transform."""
    composite = sitk.CompositeTransform(base.GetDimension())
    composite.AddTransform(base)
    composite.AddTransform(tx)
    return composite


def _bspline(level: Level, tx: sitk.Transform, seed: int, progress):
    """A free-form B-spline (50 mm control points) on top of ``tx``, on the finest level."""
    dim = level.fixed.GetDimension()
    f = level.fixed
    mesh = [max(2, int(round(sz * sp / 50.0))) for sz, sp in zip(f.GetSize(), f.GetSpacing())]
    bspline = sitk.BSplineTransformInitializer(f, mesh, order=3)
    R = metric_method(level, 20000, seed)
    R.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=50,
                           maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=200)
    R.SetMovingInitialTransform(tx)
    R.SetInitialTransform(bspline, inPlace=True)
    _, trace = execute(R, level, "bspline", progress)
    composite = sitk.CompositeTransform(dim)
    composite.AddTransform(tx)
    composite.AddTransform(bspline)
    return composite, R, trace

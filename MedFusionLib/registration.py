"""Registration of the moving image onto the fixed image (SimpleITK, Mattes mutual information).

Recipe (multi-modal, as in the SimpleITK registration notebooks): centred geometric
initialisation; Mattes mutual information with 50 bins on every voxel of small (2D) images and
on a random, seeded sample of large ones (50,000 per coarse level, 200,000 at the finest);
regular-step gradient descent (initial step 2 mm, relaxation 0.5) with scales from physical
shift; a multi-resolution pyramid (shrink 4/2/1, smoothing 2/1/0 voxels). ``rigid`` optimises an
Euler transform; ``affine`` starts from the rigid result; ``bspline`` adds a free-form B-spline
on top of the affine result.

Transforms follow ITK's convention: they map points of the *fixed* image (LPS, mm) to the
*moving* image, so ``sitk.Resample(moving, fixed, transform)`` puts the moving image on the fixed
grid. Save them with ``sitk.WriteTransform`` (``--transform out.tfm``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import CancelledError, InvalidInputError, RegistrationError
from .methods import look_up
from .progress import ProgressCallback, report

__all__ = ["REGISTRATION_MODES", "RegistrationResult", "register", "resample_to",
           "overlap_fraction", "same_grid", "default_mode"]

REGISTRATION_MODES = ("none", "rigid", "affine", "bspline")

#: Minimum fraction of the fixed image that the moving image must cover.
MIN_OVERLAP = 0.05

#: Random metric samples at the finest registration level (coarser levels use 50,000).
FINEST_SAMPLES = 200000.0

#: First step (mm) of the affine refinement, which starts from the rigid result.
AFFINE_STEP = 0.5


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
    """

    transform: sitk.Transform
    mode: str
    metric_value: float = float("nan")
    iterations: int = 0
    stop_reason: str = ""
    overlap: float = 1.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"mode": self.mode, "metric_value": self.metric_value, "iterations": self.iterations,
                "stop_reason": self.stop_reason, "overlap": self.overlap, "seconds": self.seconds,
                "transform_parameters": list(self.transform.GetParameters())
                if self.transform.GetNumberOfParameters() < 100 else "(bspline, see .tfm)"}


def default_mode(image: sitk.Image) -> str:
    """``rigid`` for 3D volumes, ``none`` for 2D images and single-slice volumes (published 2D
    pairs are pre-aligned; a 3D rigid search on one slice is ill-posed)."""
    return "none" if image.GetDimension() == 2 or image.GetSize()[2] == 1 else "rigid"


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-6) -> bool:
    """True when two images share size, origin, spacing and direction."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def resample_to(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform | None = None, *,
                default: float = 0.0, interpolator=sitk.sitkLinear) -> sitk.Image:
    """Resample ``moving`` on ``fixed``'s grid through ``transform`` (fixed -> moving points).

    With no transform (or an identity) and identical grids the image is returned unchanged, so an
    aligned 2D pair stays pixel-aligned exactly.
    """
    if transform is None:
        transform = sitk.Transform(fixed.GetDimension(), sitk.sitkIdentity)
    if same_grid(moving, fixed) and _is_identity(transform, fixed):
        return moving
    return sitk.Resample(moving, fixed, transform, interpolator, default, moving.GetPixelID())


def _is_identity(transform: sitk.Transform, ref: sitk.Image) -> bool:
    """True when ``transform`` moves no corner of ``ref`` by more than 1e-6 mm."""
    size = np.array(ref.GetSize())
    for corner in np.ndindex(*(2,) * ref.GetDimension()):
        idx = [int(c * (s - 1)) for c, s in zip(corner, size)]
        pt = ref.TransformIndexToPhysicalPoint(idx)
        if np.linalg.norm(np.subtract(transform.TransformPoint(pt), pt)) > 1e-6:
            return False
    return True


def overlap_fraction(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Fraction of ``fixed``'s grid that maps inside ``moving`` through ``transform`` (coarse grid)."""
    factor = [max(1, int(np.ceil(s / 48))) for s in fixed.GetSize()]
    coarse = sitk.Shrink(fixed, factor)
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    cover = sitk.Resample(ones, coarse, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return float(sitk.GetArrayViewFromImage(cover).mean())


def _initial_transform(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    base = sitk.Euler2DTransform() if fixed.GetDimension() == 2 else sitk.Euler3DTransform()
    return sitk.CenteredTransformInitializer(
        fixed, moving, base, sitk.CenteredTransformInitializerFilter.GEOMETRY)


def _method(fixed: sitk.Image, seed: int, shrink, sigmas, iterations: int,
            step: float = 2.0) -> sitk.ImageRegistrationMethod:
    R = sitk.ImageRegistrationMethod()
    R.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    # about 50,000 random samples per coarse level and 200,000 at the finest (all voxels where
    # there are fewer): a stable MI estimate, and a final level precise to a few tenths of a mm,
    # at a cost that does not grow with the volume
    npix = fixed.GetNumberOfPixels()
    dim = fixed.GetDimension()
    samples = [50000.0] * (len(shrink) - 1) + [FINEST_SAMPLES]
    pct = [float(np.clip(n * s ** dim / npix, 0.001, 1.0)) for n, s in zip(samples, shrink)]
    if min(pct) >= 1.0:
        # small images (2D slices): every voxel at every level, which is also deterministic
        # (ITK's threaded random sampler is not, even with a seed)
        R.SetMetricSamplingStrategy(R.NONE)
    else:
        R.SetMetricSamplingStrategy(R.RANDOM)
        R.SetMetricSamplingPercentagePerLevel(pct, seed)
    R.SetInterpolator(sitk.sitkLinear)
    R.SetOptimizerAsRegularStepGradientDescent(learningRate=step, minStep=1e-4,
                                               numberOfIterations=iterations,
                                               relaxationFactor=0.5,
                                               gradientMagnitudeTolerance=1e-8)
    R.SetOptimizerScalesFromPhysicalShift()
    R.SetShrinkFactorsPerLevel(list(shrink))
    R.SetSmoothingSigmasPerLevel(list(sigmas))
    R.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return R


def _run(R: sitk.ImageRegistrationMethod, fixed, moving, stage: str, progress,
         nlev: int) -> sitk.Transform:
    state = {"level": 0, "last": -1}

    def _level():
        state["level"] += 1
        state["last"] = -1

    def _iteration():
        it = R.GetOptimizerIteration()
        if it != state["last"] and it % 10 == 0:
            state["last"] = it
            try:
                report(progress, None, f"{stage}: level {state['level']}/{nlev}, iteration {it}, "
                                       f"MI={R.GetMetricValue():.4f}")
            except CancelledError as exc:
                # an exception cannot cross ITK's C++ callback: stop the optimiser, re-raise after
                state["cancelled"] = exc
                R.StopRegistration()

    R.AddCommand(sitk.sitkMultiResolutionIterationEvent, _level)
    R.AddCommand(sitk.sitkIterationEvent, _iteration)
    try:
        tx = R.Execute(fixed, moving)
    except RuntimeError as exc:
        if "cancelled" in state:
            raise state["cancelled"] from None
        msg = str(exc)
        if "outside" in msg or "samples" in msg.lower():
            raise RegistrationError(
                f"{stage} registration failed: the images do not overlap enough to be compared "
                "(check that both show the same anatomy and that their origins/orientations are "
                "sensible)."
            ) from None
        raise RegistrationError(f"{stage} registration failed: {msg.strip().splitlines()[-1]}") from None
    if "cancelled" in state:
        raise state["cancelled"]
    return tx


def register(fixed: sitk.Image, moving: sitk.Image, *, mode: str | None = None, seed: int = 0,
             progress: ProgressCallback | None = None, fixed_name: str = "fixed",
             moving_name: str = "moving") -> RegistrationResult:
    """Find the transform that aligns ``moving`` onto ``fixed``.

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        Scalar images of the same dimension (2D or 3D); intensities in any units (mutual
        information does not need them to match).
    mode : {"none", "rigid", "affine", "bspline"}, optional
        Default: ``rigid`` for 3D, ``none`` for 2D.
    seed : int, optional
        Seed of the metric's random sampling: the same seed gives the same transform.
    progress : callable, optional
        ``progress(fraction, message)``; iteration messages carry ``fraction=None``.

    Returns
    -------
    RegistrationResult

    Raises
    ------
    InvalidInputError
        If the dimensions differ.
    RegistrationError
        If the images do not overlap after initialisation or after registration.
    """
    if fixed.GetDimension() != moving.GetDimension():
        raise InvalidInputError(
            f"cannot register a {moving.GetDimension()}D {moving_name} onto a "
            f"{fixed.GetDimension()}D {fixed_name}; give two 2D images or two 3D volumes."
        )
    mode = default_mode(fixed) if mode is None else look_up(mode, REGISTRATION_MODES, what="registration mode")
    t0 = time.perf_counter()
    dim = fixed.GetDimension()
    if mode == "none":
        tx = sitk.Transform(dim, sitk.sitkIdentity)
        ov = overlap_fraction(fixed, moving, tx)
        if ov < MIN_OVERLAP:
            raise RegistrationError(
                f"{moving_name} does not overlap {fixed_name} in physical space ({100 * ov:.1f}% of "
                "the fixed image covered) and registration is 'none'; use --register rigid."
            )
        return RegistrationResult(tx, "none", overlap=ov, seconds=time.perf_counter() - t0)

    f = sitk.Cast(fixed, sitk.sitkFloat32)
    m = sitk.Cast(moving, sitk.sitkFloat32)
    init = _initial_transform(f, m)
    ov = overlap_fraction(f, m, init)
    if ov < MIN_OVERLAP:
        raise RegistrationError(
            f"{moving_name} and {fixed_name} do not overlap after centring ({100 * ov:.1f}% of the "
            "fixed image covered); they may be of different body parts."
        )
    small = min(f.GetSize()) < 64
    shrink, sigmas = ((2, 1), (1, 0)) if small else ((4, 2, 1), (2, 1, 0))

    R = _method(f, seed, shrink, sigmas, iterations=200)
    R.SetInitialTransform(init, inPlace=False)
    rigid = _run(R, f, m, "rigid", progress, len(shrink))
    last = R
    tx = rigid
    if mode in ("affine", "bspline"):
        rigid_inner = rigid.GetNthTransform(0) if isinstance(rigid, sitk.CompositeTransform) else rigid
        rigid_inner = sitk.Euler2DTransform(rigid_inner) if dim == 2 else sitk.Euler3DTransform(rigid_inner)
        affine = sitk.AffineTransform(dim)
        affine.SetMatrix(rigid_inner.GetMatrix())
        affine.SetTranslation(rigid_inner.GetTranslation())
        affine.SetCenter(rigid_inner.GetCenter())
        # refine from the rigid result: finer levels only and a smaller first step, so the extra
        # degrees of freedom (scale, shear) cannot throw away the rigid alignment
        R = _method(f, seed, shrink[-2:], sigmas[-2:], iterations=100, step=AFFINE_STEP)
        R.SetInitialTransform(affine, inPlace=False)
        tx = _run(R, f, m, "affine", progress, len(shrink[-2:]))
        last = R
    if mode == "bspline":
        mesh = [max(2, int(round(sz * sp / 50.0))) for sz, sp in zip(f.GetSize(), f.GetSpacing())]
        bspline = sitk.BSplineTransformInitializer(f, mesh, order=3)
        R = sitk.ImageRegistrationMethod()
        R.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
        pct = float(np.clip(20000.0 / f.GetNumberOfPixels() * 4 ** dim, 0.01, 1.0))
        if pct >= 1.0:
            R.SetMetricSamplingStrategy(R.NONE)
        else:
            R.SetMetricSamplingStrategy(R.RANDOM)
            R.SetMetricSamplingPercentage(pct, seed)
        R.SetInterpolator(sitk.sitkLinear)
        R.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=50,
                               maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=200)
        R.SetShrinkFactorsPerLevel([2, 1])
        R.SetSmoothingSigmasPerLevel([1, 0])
        R.SetMovingInitialTransform(tx)
        R.SetInitialTransform(bspline, inPlace=True)
        _run(R, f, m, "bspline", progress, 2)
        composite = sitk.CompositeTransform(dim)
        composite.AddTransform(tx)
        composite.AddTransform(bspline)
        tx = composite
        last = R
    tx = _flatten(tx)
    ov = overlap_fraction(f, m, tx)
    if ov < MIN_OVERLAP:
        raise RegistrationError(
            f"registration of {moving_name} onto {fixed_name} ended with only {100 * ov:.1f}% "
            "overlap; the images probably show different anatomy."
        )
    result = RegistrationResult(
        transform=tx, mode=mode, metric_value=float(last.GetMetricValue()),
        iterations=int(last.GetOptimizerIteration()),
        stop_reason=last.GetOptimizerStopConditionDescription(), overlap=ov,
        seconds=time.perf_counter() - t0)
    report(progress, None, f"{mode} registration done in {result.seconds:.1f} s "
                           f"(MI={result.metric_value:.4f}; {result.stop_reason})")
    return result


def _flatten(tx: sitk.Transform) -> sitk.Transform:
    """Unwrap a one-element composite (what ``Execute`` returns with ``inPlace=False``)."""
    if tx.GetName() == "CompositeTransform":
        c = sitk.CompositeTransform(tx)
        return c.GetNthTransform(0).Downcast() if c.GetNumberOfTransforms() == 1 else c
    return tx.Downcast()

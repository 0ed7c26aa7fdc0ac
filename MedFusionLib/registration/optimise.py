"""Running ITK's registration method deterministically, cancellably, on one working level.

ITK's Mattes mutual information adds the joint histograms of its worker threads in whatever
order they finish, so with more than one thread the same registration ends a few 1e-5 mm apart
from run to run. Every metric evaluation and optimisation here therefore runs with one ITK
thread (:func:`single_itk_thread`); the sampling is ITK's REGULAR grid (jittered by the seed),
so the same inputs and seed give bit-identical transforms whatever the thread setting.

A Ctrl-C (KeyboardInterrupt) or a cancelling progress callback cannot cross ITK's C++ callback
(SimpleITK would print a traceback and report "error executing the Python Callable"). While ITK
runs, SIGINT only sets a flag (:func:`deferred_interrupt`); the iteration callback then stops the
optimiser, and KeyboardInterrupt is raised once ``Execute`` has returned. A cancelling progress
callback is handled the same way, so the caller sees the cancellation, not an ITK error.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import RegistrationError
from ..progress import report

__all__ = ["Level", "single_itk_thread", "deferred_interrupt", "metric_method", "execute", "evaluate", "exhaustive"]

#: Histogram bins of the Mattes mutual information.
BINS = 32


@dataclass
class Level:
    """One level of the working pyramid.

    Attributes
    ----------
    spacing : float
        Isotropic voxel size (mm).
    fixed, moving : SimpleITK.Image
        ``float32`` working images (anatomy only: objects outside the foreground are zeroed).
    sampling_mask : SimpleITK.Image
        ``uint8`` mask on ``fixed``'s grid where the metric samples.
    moving_mask : SimpleITK.Image or None
        The user's moving mask on ``moving``'s grid, if any.
    n_sampling : int
        Voxels in ``sampling_mask``.
    """

    spacing: float
    fixed: sitk.Image
    moving: sitk.Image
    sampling_mask: sitk.Image
    moving_mask: sitk.Image | None
    n_sampling: int


@contextlib.contextmanager
def single_itk_thread():
    """Run ITK with one thread inside the block (restoring the caller's setting after)."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


@contextlib.contextmanager
def deferred_interrupt():
    """Inside the block SIGINT sets ``state["interrupted"]``; KeyboardInterrupt is raised after it.

    Only where Python's own Ctrl-C handler is installed and on the main thread (an application
    such as Slicer that handles SIGINT itself is left alone).
    """
    state = {"interrupted": False}
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield state
        return

    def _flag(signum, frame):
        state["interrupted"] = True

    signal.signal(signal.SIGINT, _flag)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if state["interrupted"]:
        raise KeyboardInterrupt


def metric_method(level: Level, samples: float, seed: int) -> sitk.ImageRegistrationMethod:
    """A registration method with the Mattes MI metric sampling about ``samples`` mask voxels."""
    R = sitk.ImageRegistrationMethod()
    R.SetMetricAsMattesMutualInformation(numberOfHistogramBins=BINS)
    pct = samples / max(level.n_sampling, 1)
    if pct >= 1.0:
        R.SetMetricSamplingStrategy(R.NONE)
    else:
        R.SetMetricSamplingStrategy(R.REGULAR)
        R.SetMetricSamplingPercentage(float(pct), int(seed) % (2 ** 31 - 1) + 1)
    R.SetMetricFixedMask(level.sampling_mask)
    if level.moving_mask is not None:
        R.SetMetricMovingMask(level.moving_mask)
    # image gradients by central differences at the samples only: ITK would otherwise filter
    # both whole images first, which costs more than the optimisation on a fine working level
    R.MetricUseFixedImageGradientFilterOff()
    R.MetricUseMovingImageGradientFilterOff()
    R.SetInterpolator(sitk.sitkLinear)
    return R


def execute(R: sitk.ImageRegistrationMethod, level: Level, stage: str, progress,
            every: int = 10) -> tuple[sitk.Transform, list]:
    """``R.Execute`` on ``level`` with progress, cancellation and a trace of the optimiser.

    Returns
    -------
    transform : SimpleITK.Transform
    trace : list of (iteration, metric value, position)

    Raises
    ------
    CancelledError, KeyboardInterrupt
        Re-raised from the progress callback / Ctrl-C.
    RegistrationError
        If ITK fails (e.g. too few samples overlap).
    """
    state = {"trace": []}
    flags = {"interrupted": False}

    def _iteration():
        try:
            if flags["interrupted"]:
                R.StopRegistration()
                return
            it = R.GetOptimizerIteration()
            state["trace"].append((it, R.GetMetricValue(), tuple(R.GetOptimizerPosition())))
            if it % every == 0:
                report(progress, None, f"{stage}: iteration {it}, MI={R.GetMetricValue():.4f}")
        except BaseException as exc:  # noqa: BLE001 - Ctrl-C and cancel must cross the C++ callback
            state["error"] = exc
            R.StopRegistration()

    R.AddCommand(sitk.sitkIterationEvent, _iteration)
    try:
        with single_itk_thread(), deferred_interrupt() as flags:
            tx = R.Execute(level.fixed, level.moving)
    except RuntimeError as exc:
        if "error" in state:
            raise state["error"] from None
        msg = str(exc)
        if "Python Callable" in msg:
            # an interrupt that arrived before the callback's try block
            raise KeyboardInterrupt from None
        if "outside" in msg or "samples" in msg.lower():
            raise RegistrationError(
                f"{stage} registration failed: the images do not overlap enough to be compared "
                "(check that both show the same anatomy and that their origins/orientations are "
                "sensible).") from None
        raise RegistrationError(f"{stage} registration failed: {msg.strip().splitlines()[-1]}") from None
    if "error" in state:
        raise state["error"]
    return tx, state["trace"]


def evaluate(R: sitk.ImageRegistrationMethod, level: Level, transform: sitk.Transform) -> float:
    """The metric of ``transform`` on ``level`` (lower is better; +inf when nothing overlaps)."""
    R.SetInitialTransform(transform, inPlace=False)
    try:
        with single_itk_thread(), deferred_interrupt():
            return float(R.MetricEvaluate(level.fixed, level.moving))
    except RuntimeError:
        return float("inf")


def exhaustive(level: Level, start: sitk.Transform, steps, scales, *, samples: float, seed: int,
               progress, stage: str, moving_initial: sitk.Transform | None = None
               ) -> list[tuple[float, tuple]]:
    """Metric values on the grid ``start +- k * scales`` (k = 0..steps per parameter).

    ``moving_initial``, if given, is applied after the grid's transform (ITK's moving initial
    transform: points x -> moving_initial(grid(x))); the parameters returned are the grid's.

    Returns
    -------
    list of (metric value, parameters), best (lowest) first.
    """
    R = metric_method(level, samples, seed)
    R.SetOptimizerAsExhaustive(list(steps), stepLength=1.0)
    R.SetOptimizerScales(list(scales))
    if moving_initial is not None:
        R.SetMovingInitialTransform(moving_initial)
    R.SetInitialTransform(start, inPlace=False)
    values = []
    state = {}
    flags = {"interrupted": False}

    def _iteration():
        try:
            if flags["interrupted"]:
                R.StopRegistration()
                return
            values.append((R.GetMetricValue(), tuple(R.GetOptimizerPosition())))
            if len(values) % 500 == 0:
                report(progress, None, f"{stage}: {len(values)} poses tried")
        except BaseException as exc:  # noqa: BLE001
            state["error"] = exc
            R.StopRegistration()

    R.AddCommand(sitk.sitkIterationEvent, _iteration)
    try:
        with single_itk_thread(), deferred_interrupt() as flags:
            R.Execute(level.fixed, level.moving)
    except RuntimeError as exc:
        if "error" in state:
            raise state["error"] from None
        if "Python Callable" in str(exc):
            raise KeyboardInterrupt from None
        # poses that leave too little overlap make ITK give up; keep what was evaluated
    if "error" in state:
        raise state["error"]
    values = [(v, p) for v, p in values if np.isfinite(v)]
    values.sort(key=lambda vp: vp[0])
    return values

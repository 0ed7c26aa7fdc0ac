"""The whole fusion job on two images: normalise, register, resample, fuse slice by slice.

This is the single entry point that the ``medfusion`` command, the Slicer module (through
:mod:`MedFusionLib.slicer_bridge`) and the benchmarks share.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .devices import resolve_device
from .driver import acquisition_axis, fuse_arrays
from .errors import InvalidInputError, RegistrationError
from .io import copy_geometry
from .methods import default_method, get_method
from .normalize import NormalizationInfo, normalize, resolve_modality
from .progress import ProgressCallback, report, scaled
from .registration import RegistrationResult, default_mode, register, resample_to, same_grid
from .transformfiles import check_transform

__all__ = ["AlignedPair", "FusionResult", "align_pair", "fuse_aligned", "fuse_images", "check_method"]

logger = logging.getLogger(__name__)


@dataclass
class FusionResult:
    """Outcome of :func:`fuse_images`.

    Attributes
    ----------
    fused : SimpleITK.Image
        ``float32`` in [0, 1], with the fixed image's exact geometry.
    weights : SimpleITK.Image or None
        Contribution of the fixed source per pixel, in [0, 1] (that of the moving source is
        ``1 - weights``); only when asked for.
    fixed01, moving01 : ndarray
        ``float32`` (z, y, x) arrays in [0, 1] on the fixed grid: exactly what the method fused.
    registration : RegistrationResult
        The transform (fixed -> moving points), how it was found and whether it can be trusted
        (``registration.converged``, ``registration.confidence`` and its reason).
    fixed_norm, moving_norm : NormalizationInfo
        How each source was mapped to [0, 1].
    axis : int
        Numpy axis of the slices that were fused (0 for 2D images).
    method, device : str
        Method name and the device it ran on.
    timings : dict
        Seconds spent in ``normalise``, ``register``, ``resample`` and ``fuse``.
    """

    fused: sitk.Image
    weights: sitk.Image | None
    fixed01: np.ndarray
    moving01: np.ndarray
    registration: RegistrationResult
    fixed_norm: NormalizationInfo
    moving_norm: NormalizationInfo
    axis: int
    method: str
    device: str
    params: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready description of what was done (no pixel data)."""
        return {
            "method": self.method, "device": self.device, "params": self.params,
            "slice_axis": self.axis,
            "fixed_normalization": self.fixed_norm.to_dict(),
            "moving_normalization": self.moving_norm.to_dict(),
            "registration": self.registration.to_dict(),
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }


@dataclass
class AlignedPair:
    """Two sources normalised to [0, 1] and on the fixed grid: what a fusion method needs.

    Attributes
    ----------
    fixed01, moving01 : ndarray
        ``float32`` (z, y, x) arrays in [0, 1] on the fixed grid.
    registration : RegistrationResult
    fixed_norm, moving_norm : NormalizationInfo
    axis : int
        Numpy axis of the slices to fuse (the acquisition axis; 0 for 2D images).
    timings : dict
        Seconds spent in ``normalise``, ``register`` and ``resample``.
    grid : tuple
        The fixed image's ``(size, origin, spacing, direction)``: where results are put.
    """

    fixed01: np.ndarray
    moving01: np.ndarray
    registration: RegistrationResult
    fixed_norm: NormalizationInfo
    moving_norm: NormalizationInfo
    axis: int
    timings: dict = field(default_factory=dict)
    grid: tuple = ()

    def empty_image(self) -> sitk.Image:
        """A ``float32`` image of zeros on the fixed grid."""
        size, origin, spacing, direction = self.grid
        image = sitk.Image(size, sitk.sitkFloat32)
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        return image


def align_pair(fixed: sitk.Image, moving: sitk.Image, *, registration: str | None = None,
               fixed_modality: str | None = None, moving_modality: str | None = None,
               ct_window=None, seed: int = 0, progress: ProgressCallback | None = None,
               fixed_name: str = "fixed image", moving_name: str = "moving image",
               fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None,
               initial_transform: sitk.Transform | None = None,
               strict_registration: bool = False, while_registering=None) -> AlignedPair:
    """Normalise both sources, register ``moving`` onto ``fixed`` and resample it there.

    Parameters are those of :func:`fuse_images`; progress fractions run from 0 to 0.55. A
    low-confidence registration is logged as a one-line warning (or raised when
    ``strict_registration``), and so is a moving image found turned far from the fixed image's
    orientation (e.g. 180 degrees about A-P: often a header or positioning error).
    ``while_registering``, a callable, is called just before the registration starts: work to
    start in the background there has a core to itself (ITK registers on one thread and
    releases the GIL); the pair job imports torch there (:func:`MedFusionLib.devices.preload_torch`).

    Raises
    ------
    InvalidInputError, UnknownOptionError, RegistrationError, CancelledError
    """
    for name, img in ((fixed_name, fixed), (moving_name, moving)):
        if not isinstance(img, sitk.Image):
            raise InvalidInputError(f"{name}: expected a SimpleITK image, got {type(img).__name__}.")
    if fixed.GetDimension() != moving.GetDimension():
        raise InvalidInputError(
            f"cannot fuse a {moving.GetDimension()}D {moving_name} with a "
            f"{fixed.GetDimension()}D {fixed_name}; give two 2D images or two 3D volumes."
        )
    if isinstance(initial_transform, sitk.Transform):
        check_transform(initial_transform, "the initial transform")  # a singular one collapses
    t = {}
    t0 = time.perf_counter()
    report(progress, 0.0, "normalising intensities")
    (fmod, fsrc), (mmod, msrc) = (resolve_modality(img, mod) for img, mod in
                                  ((fixed, fixed_modality), (moving, moving_modality)))
    if ct_window is not None and "CT" not in (fmod, mmod):
        raise InvalidInputError(f"a CT window was given but neither source is CT "
                                f"({fixed_name}: {fmod}, {moving_name}: {mmod}).")
    f01, fnorm = normalize(fixed, fmod, window=ct_window if fmod == "CT" else None,
                           name=fixed_name, source=fsrc)
    m01, mnorm = normalize(moving, mmod, window=ct_window if mmod == "CT" else None,
                           name=moving_name, source=msrc)
    t["normalise"] = time.perf_counter() - t0

    # Memory: the normalised sources exist once as arrays (f01, m01); SimpleITK copies of them
    # are made only where registration or resampling needs an image, and dropped right after.
    t0 = time.perf_counter()
    if while_registering is not None:
        while_registering()
    only_check = (registration or default_mode(fixed)).strip().lower() == "none"
    if only_check:
        # no optimisation: the overlap check needs the geometry only
        fixed_n = moving_n = None
        reg = register(fixed, moving, mode="none", seed=seed, progress=scaled(progress, 0.02, 0.5),
                       fixed_name=fixed_name, moving_name=moving_name,
                       initial_transform=initial_transform)
    else:
        fixed_n = copy_geometry(f01, fixed)
        moving_n = copy_geometry(m01, moving)
        reg = register(fixed_n, moving_n, mode=registration, seed=seed,
                       progress=scaled(progress, 0.02, 0.5), fixed_name=fixed_name,
                       moving_name=moving_name, fixed_mask=fixed_mask, moving_mask=moving_mask,
                       initial_transform=initial_transform)
    del fixed_n
    t["register"] = time.perf_counter() - t0
    if reg.warning():
        if strict_registration:
            raise RegistrationError(f"registration of {moving_name} onto {fixed_name} is not "
                                    f"trustworthy (low confidence: {reg.confidence_reason}); "
                                    "nothing was written (--strict-registration).")
        logger.warning("%s (%s onto %s)", reg.warning(), moving_name, fixed_name)
    if reg.orientation_note():  # a flip between two scans: often a header or positioning error
        logger.warning("%s onto %s: %s", moving_name, fixed_name, reg.orientation_note())

    if reg.mode == "none" and moving.GetSize() != fixed.GetSize():
        logger.warning("%s (%s) is resampled onto the grid of %s (%s) by physical position, "
                       "without registration: parts outside the overlap become 0",
                       moving_name, "x".join(map(str, moving.GetSize())), fixed_name,
                       "x".join(map(str, fixed.GetSize())))
    t0 = time.perf_counter()
    report(progress, 0.5, "resampling the moving image on the fixed grid")
    if only_check and initial_transform is None and same_grid(moving, fixed):
        m01_on_fixed = m01  # 'none' on the same grid: already float32 in [0, 1] there
    else:
        if moving_n is None:
            moving_n = copy_geometry(m01, moving)
        del m01
        moved = resample_to(moving_n, fixed, reg.transform, default=0.0)
        del moving_n
        m01_on_fixed = sitk.GetArrayFromImage(moved).astype(np.float32, copy=False)
        del moved
        np.clip(m01_on_fixed, 0.0, 1.0, out=m01_on_fixed)
    t["resample"] = time.perf_counter() - t0
    axis = 0 if fixed.GetDimension() == 2 else acquisition_axis(fixed.GetSpacing()[::-1])
    grid = (fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    return AlignedPair(f01, m01_on_fixed, reg, fnorm, mnorm, axis, t, grid)


def _paste_slices(image: sitk.Image, axis: int, start: int, stop: int, batch: np.ndarray) -> None:
    """Write ``batch`` (``(k, h, w)``: slices ``start:stop`` along numpy ``axis``) into ``image``
    in place (SimpleITK's slice assignment pastes without copying the volume)."""
    if image.GetDimension() == 2:
        image[:, :] = sitk.GetImageFromArray(batch[0])
        return
    block = sitk.GetImageFromArray(np.moveaxis(batch, 0, axis))
    index = [slice(None)] * 3
    index[2 - axis] = slice(start, stop)  # numpy axes 0, 1, 2 are SimpleITK indices 2, 1, 0
    image[tuple(index)] = block


def fuse_images(fixed: sitk.Image, moving: sitk.Image, *, method: str | None = None,
                registration: str | None = None, device: str = "auto",
                fixed_modality: str | None = None, moving_modality: str | None = None,
                ct_window=None, return_weights: bool = False, seed: int = 0,
                progress: ProgressCallback | None = None, fixed_name: str = "fixed image",
                moving_name: str = "moving image", fixed_mask: sitk.Image | None = None,
                moving_mask: sitk.Image | None = None,
                initial_transform: sitk.Transform | None = None,
                strict_registration: bool = False, **method_params) -> FusionResult:
    """Register ``moving`` onto ``fixed`` and fuse them slice by slice.

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        Scalar 2D images or 3D volumes (any units); the result lives on ``fixed``'s grid.
    method : str, optional
        A registered fusion method; default :func:`MedFusionLib.methods.default_method`.
    registration : {"none", "rigid", "affine", "bspline"}, optional
        Default ``rigid`` for 3D and ``none`` for 2D.
    device : {"auto", "cpu", "cuda"}, optional
        Where torch methods run.
    fixed_modality, moving_modality : str, optional
        ``CT``, ``MR``, ``PET``, ``SPECT`` or ``8BIT``; from the DICOM header or guessed if omitted.
    ct_window : str or (float, float), optional
        Window for whichever source is CT (preset name or ``(level, width)`` in HU).
    return_weights : bool, optional
        Also return the per-pixel contribution map.
    seed : int, optional
        Registration sampling seed (same seed, same result, whatever the ITK thread count).
    progress : callable, optional
        ``progress(fraction, message)``; returning False cancels.
    fixed_mask, moving_mask : SimpleITK.Image, optional
        Label images (non-zero = inside) restricting the registration metric to these regions
        of the fixed / moving image (default: the automatic foregrounds).
    initial_transform : SimpleITK.Transform, optional
        Start of the registration (fixed -> moving points) instead of the global search; with
        ``registration="none"`` the transform used as is.
    strict_registration : bool, optional
        Raise :class:`RegistrationError` when the registration's self-check gives low confidence
        (default: a one-line warning on the ``MedFusionLib`` logger).
    **method_params
        Parameters of the fusion method.

    Returns
    -------
    FusionResult

    Raises
    ------
    InvalidInputError, UnknownOptionError, RegistrationError, DeviceUnavailableError,
    MissingDependencyError, CancelledError
    """
    check_method(method, method_params, return_weights=return_weights, device=device)
    pair = align_pair(fixed, moving, registration=registration, fixed_modality=fixed_modality,
                      moving_modality=moving_modality, ct_window=ct_window, seed=seed,
                      progress=progress, fixed_name=fixed_name, moving_name=moving_name,
                      fixed_mask=fixed_mask, moving_mask=moving_mask,
                      initial_transform=initial_transform,
                      strict_registration=strict_registration)
    return fuse_aligned(pair, method=method, device=device, return_weights=return_weights,
                        progress=progress, **method_params)


def check_method(method: str | None, method_params: dict, *, return_weights: bool = False,
                 device: str = "auto") -> str:
    """Check a fusion method, its parameters and the device before any work; the method's name.

    Raises
    ------
    UnknownOptionError, InvalidInputError, DeviceUnavailableError
    """
    info = get_method(default_method() if method is None else method)
    info.validate_params(method_params)
    if return_weights and not info.provides_weights:
        raise InvalidInputError(
            f"method '{info.name}' does not produce a contribution map; choose one of the methods "
            "marked 'weights' in medfusion list-methods.")
    if not (isinstance(device, str) and device.strip().lower() == "auto"):
        resolve_device(device)  # 'auto' cannot fail: it is resolved (torch imported) at fusion
    return info.name


def fuse_aligned(pair: AlignedPair, *, method: str | None = None, device: str = "auto",
                 return_weights: bool = False, progress: ProgressCallback | None = None,
                 **method_params) -> FusionResult:
    """Fuse an :class:`AlignedPair` slice by slice (the second half of :func:`fuse_images`).

    The fused batches go straight into the result image, so besides the pair's two arrays the
    memory used is one batch of slices and the result. Parameters are those of
    :func:`fuse_images`; progress fractions run from 0.55 to 1.

    Returns
    -------
    FusionResult
    """
    info = get_method(check_method(method, method_params, return_weights=return_weights,
                                   device=device))
    dev = resolve_device(device)
    t = dict(pair.timings)
    t0 = time.perf_counter()
    run_params = info.with_modalities(method_params, (pair.fixed_norm.modality,
                                                      pair.moving_norm.modality))
    fused = pair.empty_image()
    weights = pair.empty_image() if return_weights else None

    def sink(start, stop, f, w):
        _paste_slices(fused, pair.axis, start, stop, f)
        if weights is not None:
            _paste_slices(weights, pair.axis, start, stop, w)

    fuse_arrays(pair.fixed01, pair.moving01, method=info.name, axis=pair.axis, device=dev,
                return_weights=return_weights, progress=scaled(progress, 0.55, 1.0), sink=sink,
                **run_params)
    t["fuse"] = time.perf_counter() - t0
    return FusionResult(fused=fused, weights=weights,
                        fixed01=pair.fixed01, moving01=pair.moving01,
                        registration=pair.registration, fixed_norm=pair.fixed_norm,
                        moving_norm=pair.moving_norm, axis=pair.axis, method=info.name,
                        device=dev if info.supports_cuda else "cpu",
                        params=dict(method_params), timings=t)

"""Colour fusion of a functional source (PET, SPECT) with an anatomical one (MR, CT).

Nuclear-medicine images are read by colour. The colour path keeps the functional image's colours
on top of the anatomical detail:

1. the functional source is mapped through a colour table (``heat``, ``rainbow``, a table given as
   an ``(N, 3)`` array — e.g. the one a Slicer display node uses) or, for an RGB input, taken as
   it is;
2. both are brought onto the fixed grid (:func:`MedFusionLib.pipeline.align_pair`; registration
   runs on the greyscale images);
3. the functional RGB is converted to YCbCr (ITU-R BT.601, full range); its luminance Y is fused
   with the anatomical source by the chosen method, its chroma (Cb, Cr) is kept;
4. the fused Y and the kept chroma are converted back to RGB.

Metrics of a colour result are computed on luminance, as the literature does: the result's
``fixed01``/``moving01``/``fused`` are the luminance planes that were fused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .devices import resolve_device
from .driver import fuse_arrays
from .errors import InvalidInputError
from .io import copy_geometry, is_colour, to_luminance
from .methods import default_method, get_method
from .normalize import resolve_modality
from .options import look_up
from .pipeline import FusionResult, align_pair
from .progress import ProgressCallback, scaled
from .registration import resample_to

__all__ = ["COLOUR_TABLES", "colour_table", "apply_colour_table", "rgb_to_ycbcr", "ycbcr_to_rgb",
           "ColourFusionResult", "fuse_colour", "functional_source", "rgb_image"]

# Control points (position, R, G, B) of the built-in tables, all components in [0, 1].
_CONTROL_POINTS = {
    # black -> dark red -> red -> orange -> yellow -> white: the usual PET "heat" look
    "heat": [(0.0, 0, 0, 0), (0.25, 0.5, 0, 0), (0.5, 0.95, 0.15, 0), (0.75, 1, 0.65, 0),
             (0.9, 1, 0.95, 0.3), (1.0, 1, 1, 1)],
    # black -> blue -> cyan -> green -> yellow -> red: the SPECT "rainbow" look
    "rainbow": [(0.0, 0, 0, 0), (0.1, 0.1, 0, 0.6), (0.3, 0, 0.5, 1), (0.5, 0, 0.85, 0.3),
                (0.7, 0.95, 0.95, 0), (1.0, 1, 0, 0)],
    "grey": [(0.0, 0, 0, 0), (1.0, 1, 1, 1)],
    # contribution maps: 0 = all from the moving source (blue), 0.5 = equal (white),
    # 1 = all from the fixed source (orange)
    "contribution": [(0.0, 0.13, 0.40, 0.85), (0.5, 1, 1, 1), (1.0, 0.95, 0.50, 0.08)],
}
COLOUR_TABLES = tuple(_CONTROL_POINTS)

# BT.601 full-range RGB -> YCbCr (Cb, Cr centred on 0, in [-0.5, 0.5])
_RGB2YCC = np.array([[0.299, 0.587, 0.114],
                     [-0.168736, -0.331264, 0.5],
                     [0.5, -0.418688, -0.081312]])
_YCC2RGB = np.linalg.inv(_RGB2YCC)


def colour_table(table="heat", n: int = 256) -> np.ndarray:
    """A colour table as an ``(n, 3)`` float array in [0, 1].

    Parameters
    ----------
    table : str or array_like
        A built-in name (:data:`COLOUR_TABLES`) or an ``(N, 3)`` array of RGB rows in [0, 1]
        (or 0-255 integers), e.g. read from a Slicer colour node; it is resampled to ``n`` rows.
    """
    if isinstance(table, str):
        name = look_up(table, COLOUR_TABLES, what="colour table")
        pts = np.array(_CONTROL_POINTS[name], dtype=float)
        x = np.linspace(0.0, 1.0, n)
        return np.stack([np.interp(x, pts[:, 0], pts[:, c]) for c in (1, 2, 3)], axis=1)
    arr = np.asarray(table, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] < 2:
        raise InvalidInputError(f"a colour table must be an (N, 3) array with N >= 2, got shape {arr.shape}.")
    if arr.max() > 1.0:
        arr = arr / 255.0
    x = np.linspace(0.0, 1.0, arr.shape[0])
    xi = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(xi, x, arr[:, c]) for c in range(3)], axis=1)


def apply_colour_table(values01: np.ndarray, table="heat") -> np.ndarray:
    """Map values in [0, 1] through a colour table: shape ``(...)`` -> ``(..., 3)`` float32."""
    lut = colour_table(table).astype(np.float32)
    idx = np.clip(np.rint(np.asarray(values01, dtype=np.float32) * (len(lut) - 1)), 0, len(lut) - 1)
    return lut[idx.astype(np.intp)]


def rgb_to_ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(..., 3)`` RGB in [0, 1] -> (Y in [0, 1], Cb, Cr in [-0.5, 0.5]), float32 (BT.601)."""
    ycc = np.asarray(rgb, dtype=np.float32) @ _RGB2YCC.T.astype(np.float32)
    return ycc[..., 0], ycc[..., 1], ycc[..., 2]


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`; the result is clipped to [0, 1], shape ``(..., 3)``."""
    ycc = np.stack([y, cb, cr], axis=-1).astype(np.float32)
    return np.clip(ycc @ _YCC2RGB.T.astype(np.float32), 0.0, 1.0)


def rgb_image(rgb01: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """``(z, y, x, 3)`` or ``(y, x, 3)`` RGB in [0, 1] -> an RGB ``uint8`` vector image on ``reference``'s grid."""
    img = sitk.GetImageFromArray(np.clip(rgb01 * 255.0 + 0.5, 0, 255).astype(np.uint8), isVector=True)
    img.CopyInformation(reference)
    return img


@dataclass
class ColourFusionResult(FusionResult):
    """A :class:`~MedFusionLib.pipeline.FusionResult` whose planes are luminance, plus the colour image.

    Attributes
    ----------
    rgb : SimpleITK.Image or None
        The colour result: ``uint8`` RGB vector image on the fixed grid.
    functional : str
        Which source gave the colour: ``"fixed"`` or ``"moving"``.
    colour_table : str
        The table used (``"input RGB"`` when the functional source was already colour).
    functional_rgb : ndarray or None
        The functional source in colour on the fixed grid, ``uint8 (..., 3)``, for display.
    """

    rgb: sitk.Image | None = None
    functional_rgb: np.ndarray | None = None
    functional: str = "moving"
    colour_table: str = ""

    def summary(self) -> dict:
        out = super().summary()
        out["colour"] = {"functional_source": self.functional, "colour_table": self.colour_table,
                         "metrics_on": "luminance (Y of BT.601 YCbCr)"}
        return out


def functional_source(fixed: sitk.Image, moving: sitk.Image, *, fixed_modality: str | None = None,
                      moving_modality: str | None = None, functional: str | None = None,
                      names=("fixed image", "moving image")) -> str:
    """Which source carries the colour: ``"fixed"`` or ``"moving"``.

    ``functional`` if given; else the RGB image; else the one whose modality (given, DICOM
    header or guess) is PET or SPECT.

    Raises
    ------
    InvalidInputError
        Both sources are colour, or neither is RGB, PET or SPECT.
    """
    if functional is not None:
        return look_up(functional, ("fixed", "moving"), what="functional source")
    colour = [is_colour(fixed), is_colour(moving)]
    if all(colour):
        raise InvalidInputError(
            f"both {names[0]} and {names[1]} are colour images; colour fusion needs one anatomical "
            "(greyscale) source. Use --grey, or convert one of them to greyscale.")
    if colour[0] or colour[1]:
        return "fixed" if colour[0] else "moving"

    mods = [resolve_modality(to_luminance(img), m)[0] for img, m in
            ((fixed, fixed_modality), (moving, moving_modality))]
    functional_mods = [m in ("PET", "SPECT") for m in mods]
    if functional_mods[0] != functional_mods[1]:
        return "fixed" if functional_mods[0] else "moving"
    raise InvalidInputError(
        f"colour fusion needs one functional source (PET or SPECT) or one RGB image; got "
        f"{names[0]}: {mods[0]} and {names[1]}: {mods[1]}. Give --moving-modality PET (or SPECT), "
        "or fuse in greyscale.")


def fuse_colour(fixed: sitk.Image, moving: sitk.Image, *, method: str | None = None,
                table="heat", functional: str | None = None, registration: str | None = None,
                device: str = "auto", fixed_modality: str | None = None,
                moving_modality: str | None = None, ct_window=None, return_weights: bool = False,
                seed: int = 0, progress: ProgressCallback | None = None,
                fixed_name: str = "fixed image", moving_name: str = "moving image",
                fixed_mask=None, moving_mask=None, initial_transform=None,
                strict_registration: bool = False, **method_params) -> ColourFusionResult:
    """Fuse an anatomical and a functional source into a colour image (see the module docstring).

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        2D images or 3D volumes; either may be RGB (a vector image with 3 components), the other
        must then be greyscale.
    table : str or array_like, optional
        Colour table for a greyscale functional source: ``heat`` (default), ``rainbow``, ``grey``
        or an ``(N, 3)`` array. Ignored for an RGB functional source (its colours are kept).
    functional : {"fixed", "moving"}, optional
        Which source is functional; by default the RGB one, else the one whose modality is PET or
        SPECT.
    Other parameters
        As :func:`MedFusionLib.pipeline.fuse_images`.

    Returns
    -------
    ColourFusionResult
        ``rgb`` is the colour image; ``fused``, ``fixed01``, ``moving01`` are the luminance planes.
    """
    method = default_method() if method is None else method
    info = get_method(method)
    info.validate_params(method_params)
    if return_weights and not info.provides_weights:
        raise InvalidInputError(f"method '{info.name}' does not produce a contribution map.")
    dev = resolve_device(device)
    names = (fixed_name, moving_name)
    which = functional_source(fixed, moving, fixed_modality=fixed_modality,
                              moving_modality=moving_modality, functional=functional, names=names)
    lum = [to_luminance(fixed, fixed_name), to_luminance(moving, moving_name)]
    pair = align_pair(lum[0], lum[1], registration=registration, fixed_modality=fixed_modality,
                      moving_modality=moving_modality, ct_window=ct_window, seed=seed,
                      progress=progress, fixed_name=fixed_name, moving_name=moving_name,
                      fixed_mask=fixed_mask, moving_mask=moving_mask,
                      initial_transform=initial_transform,
                      strict_registration=strict_registration)
    t = dict(pair.timings)
    src = fixed if which == "fixed" else moving
    if src.GetNumberOfComponentsPerPixel() in (3, 4):
        # RGB input: its own colours, on the fixed grid through the same transform
        scale = 255.0 if src.GetPixelID() == sitk.sitkVectorUInt8 else float(
            max(1.0, sitk.GetArrayViewFromImage(src).max()))
        channels = []
        for c in range(3):
            ch = sitk.Cast(sitk.VectorIndexSelectionCast(src, c), sitk.sitkFloat32) / scale
            if which == "moving":
                ch = resample_to(ch, lum[0], pair.registration.transform, default=0.0)
            channels.append(sitk.GetArrayFromImage(ch))
        func_rgb = np.clip(np.stack(channels, axis=-1), 0.0, 1.0)
        table_name = "input RGB"
    else:
        func_rgb = apply_colour_table(pair.moving01 if which == "moving" else pair.fixed01, table)
        table_name = table if isinstance(table, str) else "custom"
    y_func, cb, cr = rgb_to_ycbcr(func_rgb)
    y_func = np.clip(y_func, 0.0, 1.0)
    a, b = (pair.fixed01, y_func) if which == "moving" else (y_func, pair.moving01)
    t0 = time.perf_counter()
    # the luminance of a colour-rendered source is functional whatever its file said (8-bit RGB)
    mods = [pair.fixed_norm.modality, pair.moving_norm.modality]
    func_i = 0 if which == "fixed" else 1
    if mods[func_i] not in ("PET", "SPECT"):
        mods[func_i] = "PET"
    run_params = info.with_modalities(method_params, mods)
    out = fuse_arrays(a, b, method=info.name, axis=pair.axis, device=dev,
                      return_weights=return_weights, progress=scaled(progress, 0.55, 1.0),
                      **run_params)
    t["fuse"] = time.perf_counter() - t0
    fused_y, weights = out if return_weights else (out, None)
    rgb = ycbcr_to_rgb(fused_y, cb, cr)
    reference = lum[0]
    return ColourFusionResult(
        fused=copy_geometry(fused_y, reference),
        weights=copy_geometry(weights, reference) if weights is not None else None,
        fixed01=a, moving01=b, registration=pair.registration, fixed_norm=pair.fixed_norm,
        moving_norm=pair.moving_norm, axis=pair.axis, method=info.name,
        device=dev if info.supports_cuda else "cpu", params=dict(method_params), timings=t,
        rgb=rgb_image(rgb, reference), functional=which, colour_table=str(table_name),
        functional_rgb=np.clip(func_rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))

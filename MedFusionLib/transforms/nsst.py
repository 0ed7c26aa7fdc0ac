"""Nonsubsampled shearlet transform (NSST), batched in torch.

Follows the construction of G. Easley, D. Labate and W.-Q. Lim, "Sparse directional image
representations using the discrete shearlet transform", Appl. Comput. Harmon. Anal.
25(1):25-46, 2008:

1. a nonsubsampled Laplacian pyramid (à trous, maximally flat filters by default) splits the
   image into a lowpass and ``len(levels)`` band-pass levels;
2. each band-pass level ``i`` is split into ``2**levels[i]`` directional subbands by shearing
   windows: smooth Meyer windows on the pseudo-polar grid, equally spaced in shear (slope), half
   in the horizontal and half in the vertical cone, normalised so that their squares sum to one.

Everything is a frequency-domain multiplication on a symmetrically padded grid (see
:mod:`MedFusionLib.transforms._frame`), so the transform is shift-invariant, runs batched on CPU
or CUDA, and is perfectly reconstructing for any image size. The default ``levels=(3, 3, 4, 4)``
gives 8, 8, 16, 16 directions from coarse to fine, as in Yin et al. (IEEE TIM 68(1):49-64, 2019).
This is a clean-room implementation from the papers; its filters are not numerically those of the
MATLAB toolbox.
"""

from __future__ import annotations

from . import _frame

__all__ = ["nsst_bank", "nsst_decompose", "nsst_reconstruct", "DEFAULT_LEVELS", "TRANSITION"]

#: log2 of the number of shear directions per level, coarse to fine (8, 8, 16, 16).
DEFAULT_LEVELS = (3, 3, 4, 4)

#: Half-width of the Meyer transitions between neighbouring shear windows, as a fraction of the
#: window width.
TRANSITION = 0.25


def nsst_bank(shape, *, levels=DEFAULT_LEVELS, pfilt: str = "maxflat",
              device: str = "cpu") -> _frame.FrameBank:
    """The (cached) NSST filter bank for images of ``shape = (H, W)`` on ``device``."""
    return _frame.cached_bank(tuple(int(v) for v in shape), _frame.check_levels("nsst", levels),
                              _frame.check_pfilt("nsst", pfilt), str(device), "shear",
                              TRANSITION)


def nsst_decompose(x, *, levels=DEFAULT_LEVELS, pfilt: str = "maxflat",
                   device: str | None = None) -> _frame.Coefficients:
    """Nonsubsampled shearlet decomposition of a batch of slices.

    Parameters
    ----------
    x : array or Tensor, shape (N, H, W) or (H, W)
        Images (any range; float32 internally).
    levels : sequence of int, optional
        ``log2`` of the number of directions of each band-pass level, coarse to fine; the number
        of pyramid levels is ``len(levels)``. Default ``(3, 3, 4, 4)``.
    pfilt : {'maxflat', '9-7'}, optional
        Pyramid filters.
    device : str, optional
        Torch device; default: that of ``x`` (CPU for numpy input).

    Returns
    -------
    Coefficients
        ``lowpass`` (N, H_pad, W_pad) and ``bands[i]`` (N, 2**levels[i], H_pad, W_pad) on the
        symmetrically padded grid; use ``Coefficients.crop`` for the part over the image.
    """
    return _frame.decompose(
        x, lambda shape, dev: nsst_bank(shape, levels=levels, pfilt=pfilt, device=dev), device)


def nsst_reconstruct(coeffs: _frame.Coefficients):
    """Inverse of :func:`nsst_decompose`: Tensor (N, H, W) float32."""
    return _frame.synthesis(coeffs.bank, coeffs.lowpass, coeffs.bands)

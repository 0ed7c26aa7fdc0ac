"""Nonsubsampled contourlet transform (NSCT), batched in torch.

Follows A.L. da Cunha, J. Zhou and M.N. Do, "The nonsubsampled contourlet transform: theory,
design, and applications", IEEE Trans. Image Process. 15(10):3089-3101, 2006:

1. a nonsubsampled pyramid (NSP): an iterated two-channel à trous filter bank satisfying the
   Bezout identity ``H0 G0 + H1 G1 = 1``, with filters upsampled by ``2**j`` at level ``j``;
2. a nonsubsampled directional filter bank (NSDFB) on each band-pass level: a binary tree of
   two-channel fan filter banks, ``levels[i]`` stages giving ``2**levels[i]`` wedge-shaped
   directional subbands. Stage one separates the horizontal and vertical cones; every later stage
   splits every wedge in two with the same (periodically repeated) power-complementary pair,
   the frequency-domain counterpart of the quincunx/parallelogram-upsampled fan filters.

Each filter is applied as a multiplication on a symmetrically padded FFT grid (see
:mod:`MedFusionLib.transforms._frame`), batched and CUDA-capable, and the transform is perfectly
reconstructing for any image size. The default ``levels=(2, 3, 3, 4)`` (4, 8, 8, 16 directions,
coarse to fine) and the 9/7-derived pyramid follow the fusion settings of Liu et al.
(Information Fusion 24:147-164, 2015), who used the toolbox's 'pyrexc' pyramid and 'vk' fan
filters; this clean-room implementation uses smooth Meyer-type fan responses instead of the
toolbox's FIR filters, so its coefficients are not numerically those of the MATLAB toolbox.
"""

from __future__ import annotations

from . import _frame

__all__ = ["nsct_bank", "nsct_decompose", "nsct_reconstruct", "DEFAULT_LEVELS", "TRANSITION"]

#: Directional filter bank stages per pyramid level, coarse to fine (4, 8, 8, 16 directions).
DEFAULT_LEVELS = (2, 3, 3, 4)

#: Half-width of the transition band of each two-channel fan split, as a fraction of the width
#: of the wedges it produces.
TRANSITION = 0.25


def nsct_bank(shape, *, levels=DEFAULT_LEVELS, pfilt: str = "9-7",
              device: str = "cpu") -> _frame.FrameBank:
    """The (cached) NSCT filter bank for images of ``shape = (H, W)`` on ``device``."""
    return _frame.cached_bank(tuple(int(v) for v in shape), _frame.check_levels("nsct", levels),
                              _frame.check_pfilt("nsct", pfilt), str(device), "dfb",
                              TRANSITION)


def nsct_decompose(x, *, levels=DEFAULT_LEVELS, pfilt: str = "9-7",
                   device: str | None = None) -> _frame.Coefficients:
    """Nonsubsampled contourlet decomposition of a batch of slices.

    Parameters
    ----------
    x : array or Tensor, shape (N, H, W) or (H, W)
        Images (any range; float32 internally).
    levels : sequence of int, optional
        Directional filter bank stages of each pyramid level, coarse to fine (``2**l``
        directions; 0 leaves the level undivided). Default ``(2, 3, 3, 4)``.
    pfilt : {'9-7', 'maxflat'}, optional
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
        x, lambda shape, dev: nsct_bank(shape, levels=levels, pfilt=pfilt, device=dev), device)


def nsct_reconstruct(coeffs: _frame.Coefficients):
    """Inverse of :func:`nsct_decompose`: Tensor (N, H, W) float32."""
    return _frame.synthesis(coeffs.bank, coeffs.lowpass, coeffs.bands)

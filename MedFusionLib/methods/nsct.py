"""NSCT fusion: nonsubsampled contourlet transform with averaging / max-abs rules.

Transform: :mod:`MedFusionLib.transforms.nsct` (da Cunha, Zhou and Do 2006). Defaults follow the
NSCT fusion settings of Liu, Liu and Wang (Information Fusion 24:147-164, 2015): directional
filter bank stages ``[2, 3, 3, 4]`` (4, 8, 8, 16 directions, coarse to fine), a 9/7-derived
pyramid, low-pass averaged and every directional subband fused max-abs with the 3 x 3
consistency check. Runs in torch, batched over slices, on CPU or CUDA.
"""

from __future__ import annotations

import numpy as np

from ..transforms._frame import check_levels
from ..transforms.nsct import nsct_bank
from ._registry import register
from ._rules import check_bool, check_choice
from ._transform_fusion import average_maxabs_rules, fuse_in_frame

__all__ = ["nsct"]


@register("nsct", title="Nonsubsampled contourlet transform (NSCT)", family="multiscale",
          requires=("torch", "pywt"), supports_cuda=True, slices_per_batch=8,
          reference="A.L. da Cunha, J. Zhou, M.N. Do, IEEE Trans. Image Process. 15(10):3089-3101, "
                    "2006; rules and levels: Y. Liu, S. Liu, Z. Wang, Information Fusion "
                    "24:147-164, 2015.")
def nsct(a: np.ndarray, b: np.ndarray, *, levels=(2, 3, 3, 4), pfilt: str = "9-7",
         consistency: bool = True, device: str = "cpu") -> np.ndarray:
    """Fuse in the nonsubsampled contourlet domain.

    Parameters
    ----------
    a, b : ndarray, float32, shape (N, H, W)
        Co-registered sources in [0, 1]; any ``H``, ``W``.
    levels : sequence of int or str, optional
        Directional filter bank stages per pyramid level, coarse to fine (1 to 6 levels, each 0
        to 6; ``2**l`` directions). Default ``(2, 3, 3, 4)``. A string such as ``"2,3,3,4"`` is
        accepted.
    pfilt : {'9-7', 'maxflat'}, optional
        Pyramid filters (default ``'9-7'``).
    consistency : bool, optional
        3 x 3 majority consistency check of the max-abs decisions (default True).
    device : str, optional
        Torch device (``"cpu"`` or ``"cuda"``).

    Returns
    -------
    ndarray, float32, shape (N, H, W), values in [0, 1]
    """
    levels = check_levels("method 'nsct'", levels)
    pfilt = check_choice("nsct", "pfilt", pfilt, ("9-7", "maxflat"))
    consistency = check_bool("nsct", "consistency", consistency)
    fuse_low, fuse_band = average_maxabs_rules(consistency)
    return fuse_in_frame(lambda shape, dev: nsct_bank(shape, levels=levels, pfilt=pfilt, device=dev),
                         a, b, device=device, fuse_low=fuse_low, fuse_band=fuse_band)

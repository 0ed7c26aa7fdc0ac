"""NSST fusion: nonsubsampled shearlet transform with averaging/max-abs or PA-PCNN rules.

Transform: :mod:`MedFusionLib.transforms.nsst` (Easley, Labate and Lim 2008), default 4 levels
with 8, 8, 16, 16 shear directions (coarse to fine) and maximally flat pyramid filters, as in
NSST-PAPCNN (Yin et al., IEEE TIM 68(1):49-64, 2019). Rules:

* ``rule='avg_maxabs'`` (default, the review's baseline): average the low-pass, keep the
  larger-magnitude directional coefficient, with the 3 x 3 consistency check when
  ``consistency`` is True;
* ``rule='papcnn'``: Yin et al.'s rules, WLE x WSEML activity for the low-pass and
  parameter-adaptive PCNN firing counts (110 iterations) for every directional subband
  (see :mod:`MedFusionLib.methods._pcnn`). Markedly slower.

Runs in torch, batched over slices, on CPU or CUDA.
"""

from __future__ import annotations

import numpy as np

from ..transforms._frame import check_levels
from ..transforms.nsst import nsst_bank
from . import _pcnn
from ._registry import register
from ._rules import check_bool, check_choice
from ._transform_fusion import average_maxabs_rules, fuse_in_frame

__all__ = ["nsst", "RULES"]

#: Coefficient fusion rules offered by :func:`nsst`.
RULES = ("avg_maxabs", "papcnn")


@register("nsst", title="Nonsubsampled shearlet transform (NSST)", family="multiscale",
          requires=("torch", "pywt"), supports_cuda=True, slices_per_batch=8,
          reference="G. Easley, D. Labate, W.-Q. Lim, Appl. Comput. Harmon. Anal. 25(1):25-46, "
                    "2008; rules: M. Yin, X. Liu, Y. Liu, X. Chen, IEEE Trans. Instrum. Meas. "
                    "68(1):49-64, 2019.")
def nsst(a: np.ndarray, b: np.ndarray, *, levels=(3, 3, 4, 4), pfilt: str = "maxflat",
         rule: str = "avg_maxabs", consistency: bool = True, device: str = "cpu") -> np.ndarray:
    """Fuse in the nonsubsampled shearlet domain.

    Parameters
    ----------
    a, b : ndarray, float32, shape (N, H, W)
        Co-registered sources in [0, 1]; any ``H``, ``W``.
    levels : sequence of int or str, optional
        ``log2`` of the number of shear directions per pyramid level, coarse to fine (1 to 6
        levels, each 0 to 6). Default ``(3, 3, 4, 4)``: 8, 8, 16, 16 directions. A string such as
        ``"3,3,4,4"`` is accepted.
    pfilt : {'maxflat', '9-7'}, optional
        Pyramid filters (default ``'maxflat'``).
    rule : {'avg_maxabs', 'papcnn'}, optional
        Coefficient fusion rule (see the module docstring).
    consistency : bool, optional
        3 x 3 majority consistency check of the max-abs decisions (``avg_maxabs`` only).
    device : str, optional
        Torch device (``"cpu"`` or ``"cuda"``).

    Returns
    -------
    ndarray, float32, shape (N, H, W), values in [0, 1]
    """
    levels = check_levels("method 'nsst'", levels)
    pfilt = check_choice("nsst", "pfilt", pfilt, ("maxflat", "9-7"))
    rule = check_choice("nsst", "rule", rule, RULES)
    consistency = check_bool("nsst", "consistency", consistency)

    if rule == "papcnn":
        def fuse_low(la, lb):
            return _pcnn.activity_select(la, lb)

        def fuse_band(ca, cb, level):
            return _pcnn.papcnn_select(ca, cb)
    else:
        fuse_low, fuse_band = average_maxabs_rules(consistency)

    return fuse_in_frame(lambda shape, dev: nsst_bank(shape, levels=levels, pfilt=pfilt, device=dev),
                         a, b, device=device, fuse_low=fuse_low, fuse_band=fuse_band)

"""Shared driver of the NSCT and NSST fusion methods: numpy in, torch frame fusion, numpy out."""

from __future__ import annotations

import numpy as np

from .. import optional
from ..threads import run_in_ranges
from ..transforms import _frame
from ._rules import select_maxabs_torch

torch = optional.lazy("torch", what="the NSCT/NSST methods")

__all__ = ["fuse_in_frame", "average_maxabs_rules"]


def fuse_in_frame(bank_for, a: np.ndarray, b: np.ndarray, *, device: str, fuse_low,
                  fuse_band) -> np.ndarray:
    """Fuse two ``float32 (N, H, W)`` batches in a redundant frame on ``device``.

    Parameters
    ----------
    bank_for : callable
        ``bank_for((H, W), device) -> FrameBank``.
    a, b : ndarray, float32, shape (N, H, W)
    device : str
        Torch device.
    fuse_low, fuse_band : callable
        Coefficient rules, see :func:`MedFusionLib.transforms._frame.fuse`.

    Returns
    -------
    ndarray, float32, shape (N, H, W), clipped to [0, 1]
    """
    on_cpu = torch.device(device).type == "cpu"
    n = a.shape[0]
    with torch.no_grad():
        ta = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32).to(device)
        tb = torch.as_tensor(np.ascontiguousarray(b), dtype=torch.float32).to(device)
        bank = bank_for(tuple(a.shape[-2:]), str(ta.device))

    def run(lo: int, hi: int):
        with torch.no_grad():
            return _frame.fuse(bank, ta[lo:hi], tb[lo:hi], fuse_low=fuse_low, fuse_band=fuse_band)

    if not on_cpu:
        fused = run(0, n)
    else:
        # The CPU path works on cache-sized chunks (a few planes). Intra-op threading of such
        # small operations costs more than it gains (and on a busy machine the spinning OpenMP
        # workers slow it down by orders of magnitude), so the slices are shared among as many
        # Python threads as torch had intra-op threads, torch single-threaded meanwhile.
        workers = min(torch.get_num_threads(), n)
        fused = torch.cat(run_in_ranges(run, n, workers=workers, grain=-(-n // max(1, workers))))
    return fused.clamp_(0.0, 1.0).cpu().numpy().astype(np.float32, copy=False)


def average_maxabs_rules(consistency: bool):
    """``(fuse_low, fuse_band)`` of the standard rules: average the low-pass, max-abs the bands
    (with the 3 x 3 consistency check when ``consistency`` is True)."""
    def fuse_low(la, lb):
        return 0.5 * (la + lb)

    def fuse_band(ca, cb, level):
        return select_maxabs_torch(ca, cb, consistency=consistency)

    return fuse_low, fuse_band

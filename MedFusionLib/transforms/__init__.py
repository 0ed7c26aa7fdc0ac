"""Redundant multiscale-directional transforms used by the transform-domain fusion baselines.

* :mod:`MedFusionLib.transforms.nsct`: nonsubsampled contourlet transform (da Cunha, Zhou and Do
  2006): nonsubsampled pyramid + tree-structured nonsubsampled directional filter bank.
* :mod:`MedFusionLib.transforms.nsst`: nonsubsampled shearlet transform (Easley, Labate and Lim
  2008): nonsubsampled Laplacian pyramid + shearing (pseudo-polar) directional windows.

Both are undecimated tight or biorthogonal frames realised in the frequency domain with torch
FFTs, batched over slices and runnable on CUDA; ``reconstruct(decompose(x))`` returns ``x`` up to
floating-point rounding. Torch is imported inside the functions, so importing this package does
not need it.
"""

from __future__ import annotations

from .nsct import nsct_decompose, nsct_reconstruct
from .nsst import nsst_decompose, nsst_reconstruct

__all__ = ["nsct_decompose", "nsct_reconstruct", "nsst_decompose", "nsst_reconstruct"]

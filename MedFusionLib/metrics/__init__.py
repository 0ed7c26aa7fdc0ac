"""Fusion quality metrics: the review's eight and the literature's standard set.

Entry points
------------
- :func:`compute_metrics` scores one 2D slice, :func:`volume_metrics` a volume (per slice along
  the fusion axis, averaged over usable slices).
- :data:`METRICS` maps each result key to a :class:`MetricInfo` (direction, range, citation,
  group, function); :data:`REVIEW_KEYS` and :data:`STANDARD_KEYS` list the two groups.
- One public function per metric (e.g. :func:`qabf`, :func:`entropy`), each taking 2D arrays and a
  ``data_range``.

Conventions (``metrics-and-baselines.md`` §0)
--------------------------------------------
Images are mapped from ``[0, data_range]`` to **8-bit grey levels** -- ``round(x * 255 /
data_range)``, integers 0..255 held as float64 -- before any metric runs, for every caller
(``compare``, ``fuse --metrics``, ``metrics``, the Slicer table, the benchmarks): the score is
that of the 8-bit image a user saves, and equals the published evaluators' (which read 8-bit
files) on 8-bit input. The reference implementations assume the 0..255 scale; several constants
depend on it: VIFF's noise variance, SSIM's L, the 256 histogram bins. Colour images are scored
on their luminance Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, :func:`MedFusionLib.io.to_luminance`),
quantised to 8 bits like any other image; MATLAB's ``rgb2gray`` uses 0.2989/0.5870/0.1140, which
gives the same integer except where the sum lies within 0.001 of a half level. MI-family metrics (MI, FF, FS, FI, NMI, Q_TE,
Q_NCIE) min-max quantise each image to 256 levels and measure in bits (:data:`MI_SETTINGS`).
Flat windows (black backgrounds) are guarded: 0/0 weights become equal weights and 0/0 ratios
full preservation, never NaN.

The review's FS, FI and FMI
---------------------------
The review reports FS = 0.86-0.99 ("lower is better"), FI = 20-32 and FMI up to 1.21. No published
formula gives these: FS = |I_AF/(I_AF + I_BF) - 0.5| lies in [0, 0.5] (its "2 - |.|" form in
[1.5, 2]), FI = I_AF/I_BF is near 1, and normalised Fast-FMI is at most 1. The library implements
the documented forms (FS and FI are pluggable via ``variant``); the review's absolute FS, FI and
FMI values cannot be reproduced, only orderings and trends compared.
"""

from __future__ import annotations

from ._common import GREY_SCALE
from ._fmi import FMI_FEATURES, fmi, fmi_dct, fmi_pixel, fmi_wavelet
from ._gradient import qabf
from ._hvs import chen_blum, chen_varshney
from ._information import (MI_SETTINGS, entropy, fusion_factor, fusion_index, fusion_symmetry,
                           mutual_information, ncie, normalized_mutual_information,
                           tsallis_mutual_information)
from ._statistics import (average_gradient, correlation_coefficient, mean_intensity, psnr, scd,
                          spatial_frequency, standard_deviation)
from ._structural import MS_SSIM_WEIGHTS, cvejic, ms_ssim, piella_e, piella_s, piella_w, ssim, yang
from ._table import (ALL_KEYS, METRICS, REVIEW_KEYS, STANDARD_KEYS, MetricInfo, best_index,
                     compute_metrics, is_better, resolve_keys)
from ._vif import vif, viff
from ._volume import volume_metrics

__all__ = [
    # entry points and the table
    "compute_metrics", "volume_metrics", "METRICS", "MetricInfo", "REVIEW_KEYS", "STANDARD_KEYS",
    "ALL_KEYS", "resolve_keys", "is_better", "best_index", "MI_SETTINGS", "FMI_FEATURES",
    "MS_SSIM_WEIGHTS", "GREY_SCALE",
    # the review's eight
    "scd", "fusion_symmetry", "fmi_pixel", "fusion_factor", "standard_deviation",
    "mean_intensity", "entropy", "fusion_index",
    # the standard set
    "spatial_frequency", "average_gradient", "mutual_information",
    "normalized_mutual_information", "tsallis_mutual_information", "ncie", "fmi", "fmi_dct",
    "fmi_wavelet", "qabf", "chen_blum", "chen_varshney", "viff", "vif", "ssim", "ms_ssim", "yang",
    "cvejic", "piella_s", "piella_w", "piella_e", "psnr", "correlation_coefficient",
]

"""Registration of the moving image onto the fixed image: rigid, affine or B-spline, self-checked.

Modules: :mod:`.core` (:func:`register` and its result), :mod:`.working` (working grids and
foreground masks), :mod:`.search` (initialisation and global search), :mod:`.optimise`
(deterministic, cancellable ITK runs), :mod:`.selfcheck` (is the result trustworthy?),
:mod:`.geometry` (grid and transform helpers), :mod:`.cases` (seeded misalignments for tests and
benchmarks).
"""

from .geometry import overlap_fraction, resample_to, same_grid
from .core import REGISTRATION_MODES, RegistrationResult, default_mode, register

__all__ = ["REGISTRATION_MODES", "RegistrationResult", "register", "resample_to",
           "overlap_fraction", "same_grid", "default_mode"]

"""Coefficient fusion rules and parameter checks shared by the multiscale baselines.

The transform-domain baselines (DWT, SWT, WPD, MSVD, NSCT, NSST) all combine two decompositions
with the same two rules of the literature:

* **low-pass / approximation:** arithmetic mean of the two sources' coefficients;
* **high-pass / detail:** the coefficient of larger magnitude ("max-abs"), optionally followed by
  the consistency verification of Li, Manjunath and Mitra (Graph. Models Image Process.
  57(3):235-245, 1995): a 3 x 3 majority filter on the binary decision map, so that a coefficient
  is taken from the source that wins in most of its neighbourhood.

Numpy versions work on arrays whose last two axes are the image plane; the ``*_torch`` versions
do the same on torch tensors (torch is imported lazily, inside the functions).
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

from .. import optional
from ..errors import InvalidInputError

torch = optional.lazy("torch", what="the NSCT/NSST fusion rules")

__all__ = [
    "majority_filter",
    "select_maxabs",
    "majority_filter_torch",
    "select_maxabs_torch",
    "check_int",
    "check_bool",
    "check_choice",
]


# ------------------------------------------------------------------------------------------------
# Parameter checks
# ------------------------------------------------------------------------------------------------

def check_int(method: str, name: str, value, low: int, high: int) -> int:
    """Return ``value`` as an int if it is an integer in ``[low, high]``, else raise.

    Raises
    ------
    InvalidInputError
        Naming the method, the parameter, the allowed range and the value received.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInputError(
            f"method '{method}': parameter '{name}' must be an integer in [{low}, {high}], "
            f"got {type(value).__name__} {value!r}."
        )
    if not low <= int(value) <= high:
        raise InvalidInputError(
            f"method '{method}': parameter '{name}' must be in [{low}, {high}], got {value}."
        )
    return int(value)


def check_bool(method: str, name: str, value) -> bool:
    """Return ``value`` if it is a bool (or numpy bool), else raise :class:`InvalidInputError`."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(
            f"method '{method}': parameter '{name}' must be True or False, "
            f"got {type(value).__name__} {value!r}."
        )
    return bool(value)


def check_choice(method: str, name: str, value, allowed) -> str:
    """Return ``value`` (stripped, lower-case) if it is one of ``allowed``, else raise.

    Raises
    ------
    InvalidInputError
        Naming the parameter and listing the allowed values.
    """
    allowed = list(allowed)
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        if len(allowed) > 30:
            shown = ", ".join(repr(a) for a in allowed[:30]) + ", ..."
        raise InvalidInputError(
            f"method '{method}': parameter '{name}' must be one of {shown}; got {value!r}."
        )
    return key


# ------------------------------------------------------------------------------------------------
# Numpy rules
# ------------------------------------------------------------------------------------------------

def majority_filter(choose_a: np.ndarray, size: int = 3) -> np.ndarray:
    """Consistency verification: majority vote of a binary decision map in a square window.

    Parameters
    ----------
    choose_a : ndarray of bool, shape (..., H, W)
        True where the first source's coefficient was selected.
    size : int, optional
        Odd window side (3 in Li-Manjunath-Mitra and in the MST toolbox).

    Returns
    -------
    ndarray of bool, same shape
        True where more than half of the window (border pixels: mirrored window) chose the first
        source.
    """
    window = (1,) * (choose_a.ndim - 2) + (size, size)
    share = ndimage.uniform_filter(choose_a.astype(np.float32), size=window, mode="reflect")
    return share > 0.5


def select_maxabs(ca: np.ndarray, cb: np.ndarray, *, consistency: bool = False) -> np.ndarray:
    """Max-abs selection of detail coefficients, optionally with the consistency check.

    Parameters
    ----------
    ca, cb : ndarray, shape (..., H, W)
        Coefficients of the two sources for one subband.
    consistency : bool, optional
        Apply :func:`majority_filter` to the decision map before selecting.

    Returns
    -------
    ndarray, same shape and dtype as ``ca``
        ``ca`` where ``|ca| >= |cb|`` (after the optional vote), else ``cb``.
    """
    choose_a = np.abs(ca) >= np.abs(cb)
    if consistency:
        choose_a = majority_filter(choose_a)
    return np.where(choose_a, ca, cb)


# ------------------------------------------------------------------------------------------------
# Torch rules
# ------------------------------------------------------------------------------------------------

def majority_filter_torch(choose_a):
    """Torch version of :func:`majority_filter` (3 x 3 window) for a bool tensor ``(..., H, W)``.

    The window sum is computed with shifted additions on an edge-extended ``uint8`` map (the same
    half-sample symmetric border as the numpy version), which is several times faster on the CPU
    than a pooling layer.
    """
    x = choose_a.to(torch.uint8)
    x = torch.cat([x[..., :1, :], x, x[..., -1:, :]], dim=-2)
    x = torch.cat([x[..., :1], x, x[..., -1:]], dim=-1)
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    return box > 4


def select_maxabs_torch(ca, cb, *, consistency: bool = False):
    """Torch version of :func:`select_maxabs`."""
    choose_a = ca.abs() >= cb.abs()
    if consistency:
        choose_a = majority_filter_torch(choose_a)
    return torch.where(choose_a, ca, cb)

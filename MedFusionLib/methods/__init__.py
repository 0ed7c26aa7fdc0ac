"""Fusion methods and their registry.

Importing this package registers every built-in method. Use :func:`get_method` to look one up
(with a "did you mean" error for typos) and :func:`list_methods` to enumerate them.
"""

from __future__ import annotations

from ._registry import METHODS, MethodInfo, MethodRegistry, method_params, register
from . import pixel  # noqa: F401  (registers average, maximum, pca)
from . import msvd  # noqa: F401  (registers msvd)
from . import nsct  # noqa: F401  (registers nsct)
from . import nsst  # noqa: F401  (registers nsst)
from . import wavelet  # noqa: F401  (registers dwt, swt, wpd)
from . import cnn  # noqa: F401  (registers cnn, the default; torch is imported only when it runs)

__all__ = ["METHODS", "MethodInfo", "MethodRegistry", "register", "method_params", "get_method",
           "list_methods", "default_method"]


def get_method(name: str) -> MethodInfo:
    """Return the :class:`MethodInfo` registered under ``name`` (case-insensitive)."""
    return METHODS[name]


def list_methods(details: bool = False):
    """Sorted method names, or ``{name: MethodInfo}`` when ``details`` is True."""
    if details:
        return {n: METHODS[n] for n in METHODS.names}
    return list(METHODS.names)


def default_method() -> str:
    """The method used when none is given: ``cnn`` where it is registered and torch is
    installed, else ``maximum``."""
    if "cnn" in METHODS and METHODS["cnn"].available:
        return "cnn"
    return "maximum"

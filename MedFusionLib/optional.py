"""The heavy optional packages: PyTorch, PyWavelets, Dask, matplotlib, nilearn (and Pillow,
which comes with matplotlib).

``import MedFusionLib`` loads none of them, so the engine (and the Slicer panel, which 3D Slicer
opens without PyTorch or PyWavelets) starts fast and works with what is installed. A module that
uses one names it at its top, like any import, but through :func:`lazy`::

    from .. import optional
    torch = optional.lazy("torch")          # imported on first use: torch.from_numpy(...)
    pywt = optional.lazy("pywt")

The package is imported the first time an attribute of the placeholder is read, through
:func:`require`, which turns a missing package, or a broken install that fails to import, into a
one-line :class:`~MedFusionLib.errors.MissingDependencyError` that says what to install.
MedFusionLib modules built on torch (``nets``, ``transforms``, ``training``) import torch at
their top as usual; the light modules that call them name them with ``lazy(..., needs="torch")``.

:func:`available` answers "is it installed?" without importing anything (for menus);
:func:`problem` answers "does it import?" (for a panel that must explain why a method is off).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from .errors import MissingDependencyError

__all__ = ["PACKAGES", "require", "lazy", "available", "problem", "pyplot"]

#: The optional packages: import name -> (name a user knows, how to install it).
PACKAGES = {
    "torch": ("PyTorch", "pip install torch==2.13.0 (in 3D Slicer: the PyTorch extension's "
                         "PyTorch Utils module)"),
    "pywt": ("PyWavelets", "pip install PyWavelets"),
    "dask": ("Dask", "pip install 'medfusion[dask]'"),
    "distributed": ("Dask", "pip install 'medfusion[dask]'"),
    "matplotlib": ("matplotlib", "pip install matplotlib"),
    "nilearn": ("nilearn", "pip install nilearn"),
    # installed with matplotlib; reads grey+alpha PNGs, which SimpleITK cannot
    "PIL": ("Pillow", "pip install Pillow"),
}


def _package_of(name: str) -> str:
    top = name.split(".")[0]
    if top not in PACKAGES:
        raise ValueError(f"{name!r} is not one of MedFusion's optional packages "
                         f"({', '.join(PACKAGES)}).")
    return top


def available(name: str) -> bool:
    """True if the optional package ``name`` (``"torch"``, ``"pywt"``, ...) is installed.

    Nothing is imported (a broken install still counts as installed: see :func:`problem`).
    """
    top = _package_of(name)
    if top in sys.modules:
        return sys.modules[top] is not None
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def require(name: str, *, needs: str | None = None, what: str = "this"):
    """Import and return the module ``name`` of an optional package (``"torch"``,
    ``"torch.nn.functional"``, ``"matplotlib.pyplot"``, ...).

    Parameters
    ----------
    name : str
        The module to import. With ``needs``, a MedFusionLib module built on that package (e.g.
        ``"MedFusionLib.nets.fusionnet"`` with ``needs="torch"``).
    needs : str, optional
        The optional package ``name`` is built on; checked first.
    what : str, optional
        What needs it, for the message (e.g. ``"fusion method 'cnn'"``).

    Raises
    ------
    MissingDependencyError
        The package is not installed, or is installed but fails to import (a broken install:
        the message gives the underlying error's first line).
    """
    top = _package_of(needs or name)
    module = sys.modules.get(name)
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        return module  # imported (one being imported by another thread: import_module waits)
    title, hint = PACKAGES[top]
    try:
        if needs:
            importlib.import_module(top)
        return importlib.import_module(name)
    except ImportError as exc:
        if not available(top) or getattr(exc, "name", None) == top:
            raise MissingDependencyError(
                f"{what} needs {title}, which is not installed; install it: {hint}.") from None
        if needs and getattr(exc, "name", "") and str(exc.name).startswith("MedFusionLib"):
            raise
        raise _broken(title, hint, what, exc) from exc
    except Exception as exc:  # a broken binary install raises OSError, RuntimeError, ...
        raise _broken(title, hint, what, exc) from exc


def _broken(title: str, hint: str, what: str, exc: BaseException) -> MissingDependencyError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return MissingDependencyError(
        f"{what} needs {title}, which is installed but fails to import ({type(exc).__name__}: "
        f"{first}); reinstall it: {hint}.")


def pyplot(*, what: str = "figures"):
    """``matplotlib.pyplot`` on the Agg backend (figures go to files; no window is opened),
    imported on first use.

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed or fails to import.
    """
    require("matplotlib", what=what).use("Agg", force=False)
    return require("matplotlib.pyplot", what=what)


def problem(name: str, *, what: str = "this") -> str | None:
    """``None`` if the optional package ``name`` imports, else the one-line reason it does not
    (not installed, or a broken install). Imports the package when it is installed."""
    try:
        require(name, what=what)
    except MissingDependencyError as exc:
        return str(exc)
    return None


class _Lazy(types.ModuleType):
    """A placeholder for an optional module: the first attribute read imports it (:func:`require`)."""

    def __init__(self, name: str, needs: str | None, what: str):
        super().__init__(name)
        self.__dict__["_lazy"] = (needs, what)

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        needs, what = self.__dict__["_lazy"]
        return getattr(require(self.__name__, needs=needs, what=what), attr)

    def __repr__(self) -> str:
        return f"<optional module {self.__name__!r}, imported on first use>"


def lazy(name: str, *, needs: str | None = None, what: str | None = None) -> types.ModuleType:
    """A placeholder for the optional module ``name``, to assign at the top of a file; reading any
    attribute imports the module (:func:`require`, same arguments) and returns the attribute.

    Examples
    --------
    >>> from MedFusionLib import optional
    >>> pywt = optional.lazy("pywt")       # nothing imported yet
    >>> pywt.Wavelet("db2").dec_len        # doctest: +SKIP
    4
    """
    _package_of(needs or name)
    return _Lazy(name, needs, what or f"this ({name.split('.')[-1]})")

"""The registry of fusion methods shared by the CLI, the Slicer module and the benchmarks.

A fusion method is a plain function over a batch of co-registered, normalised 2D slices::

    @register("maximum", title="Pixel maximum", family="pixel")
    def maximum(a, b, *, device="cpu"):
        ...

Contract of a method function
-----------------------------
- ``a``, ``b``: ``float32`` arrays of shape ``(N, H, W)``, values in [0, 1], same shape, already
  registered and normalised (see :mod:`MedFusionLib.normalize`).
- ``device``: ``"cpu"`` or ``"cuda"`` (a resolved device, never ``"auto"``); numpy-only methods
  ignore it.
- further keyword-only parameters with defaults are the method's documented parameters; unknown
  names are rejected by the registry before the method runs.
- returns a ``float32`` array ``(N, H, W)`` in [0, 1]. A method registered with
  ``provides_weights=True`` also accepts ``return_weights: bool`` and then returns
  ``(fused, weight_a)`` where ``weight_a`` is ``(N, H, W)`` in [0, 1], the per-pixel share of source
  ``a`` (the share of ``b`` is ``1 - weight_a``).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Callable

from .. import optional
from ..errors import InvalidInputError
from ..options import look_up

__all__ = ["MethodInfo", "MethodRegistry", "METHODS", "register", "method_params"]


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows of one fusion method.

    Attributes
    ----------
    name : str
        Registry key, lower-case (``"cnn"``, ``"dwt"``, ...).
    title : str
        Human-readable name for menus and reports.
    func : callable
        The method function (see the module docstring for its contract).
    family : str
        ``"pixel"``, ``"multiscale"`` or ``"deep"``; used to group methods in reports.
    reference : str
        Citation of the method.
    requires : tuple of str
        The optional packages the method runs on (``"torch"``, ``"pywt"``; see
        :mod:`MedFusionLib.optional`); it is unavailable where one is not installed.
    supports_cuda : bool
        True if the method runs on CUDA when ``device="cuda"``.
    provides_weights : bool
        True if the method can return a per-pixel contribution map.
    slices_per_batch : int
        Batch size for 256 x 256 slices; the driver scales it by slice area.
    """

    name: str
    title: str
    func: Callable
    family: str = "pixel"
    reference: str = ""
    requires: tuple = ()
    supports_cuda: bool = False
    provides_weights: bool = False
    slices_per_batch: int = 64
    params: dict = field(default_factory=dict)

    @property
    def needs_torch(self) -> bool:
        """True if the method runs on PyTorch."""
        return "torch" in self.requires

    @property
    def available(self) -> bool:
        """True when every package of :attr:`requires` is installed (nothing is imported)."""
        return all(optional.available(p) for p in self.requires)

    def missing(self) -> list[str]:
        """Names users know (``"PyTorch"``, ``"PyWavelets"``) of the :attr:`requires` packages
        that are not installed here."""
        return [optional.PACKAGES[p][0] for p in self.requires if not optional.available(p)]

    def with_modalities(self, params: dict, modalities) -> dict:
        """``params`` plus ``modalities=(a, b)`` for a method that takes the pair's modalities
        (it has a ``modalities`` parameter, e.g. ``cnn`` to choose its model) and was not given
        them; other methods get ``params`` unchanged."""
        if "modalities" in self.params and params.get("modalities") is None:
            return dict(params, modalities=tuple(modalities))
        return params

    def validate_params(self, params: dict) -> dict:
        """Return ``params`` if every key is a documented parameter of the method, else raise."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            known = ", ".join(sorted(self.params)) or "none"
            raise InvalidInputError(
                f"method '{self.name}' has no parameter {', '.join(repr(u) for u in unknown)}; "
                f"its parameters are: {known}."
            )
        return params


class MethodRegistry:
    """A name -> :class:`MethodInfo` mapping that fails loudly on duplicates and typos."""

    def __init__(self):
        self._entries: dict[str, MethodInfo] = {}

    def register(self, name: str, *, title: str, family: str = "pixel", reference: str = "",
                 requires: tuple = (), supports_cuda: bool = False,
                 provides_weights: bool = False, slices_per_batch: int = 64):
        """Decorator that registers a method function under ``name``.

        The method's parameters are read from its keyword-only arguments with defaults (other than
        ``device`` and ``return_weights``).
        """
        key = name.strip().lower()

        def _decorator(func: Callable) -> Callable:
            if key in self._entries:
                raise ValueError(f"A fusion method is already registered under the name '{key}'.")
            sig = inspect.signature(func)
            params = {
                p.name: p.default
                for p in sig.parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY
                and p.name not in ("device", "return_weights")
            }
            self._entries[key] = MethodInfo(
                name=key, title=title, func=func, family=family, reference=reference,
                requires=tuple(requires), supports_cuda=supports_cuda,
                provides_weights=provides_weights, slices_per_batch=slices_per_batch,
                params=params,
            )
            return func

        return _decorator

    @property
    def names(self) -> tuple[str, ...]:
        """Sorted names of every registered method."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: str) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __getitem__(self, name: str) -> MethodInfo:
        return self._entries[look_up(name, self._entries, what="fusion method")]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self._entries)


METHODS = MethodRegistry()
register = METHODS.register


def method_params(pairs: list[str]) -> dict:
    """Parse a method's parameters given as text (``--param``, a manifest's ``param`` cell).

    ``["levels=3", "wavelet=db4"]`` -> ``{"levels": 3, "wavelet": "db4"}``: a value is read as
    JSON when it parses (numbers, lists, true/false), else kept as the string. The names are
    checked against the method by :meth:`MethodInfo.validate_params`.

    Raises
    ------
    InvalidInputError
        An item is not ``KEY=VALUE``.
    """
    params = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--param {item!r}: expected KEY=VALUE.")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params

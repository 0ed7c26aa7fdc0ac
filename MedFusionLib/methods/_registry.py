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
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..errors import InvalidInputError, UnknownOptionError

__all__ = ["MethodInfo", "MethodRegistry", "METHODS", "register", "look_up"]


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein (optimal string alignment) distance between two short strings."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def look_up(value: str, supported: Iterable[str], *, what: str = "option") -> str:
    """Return ``value`` normalised (stripped, lower-case) if it is in ``supported``.

    Raises
    ------
    UnknownOptionError
        With a "did you mean" suggestion (edit distance <= 3) and the list of valid values.
    """
    supported = list(supported)
    if not isinstance(value, str):
        raise UnknownOptionError(f"{what} must be a string, got {type(value).__name__} {value!r}.")
    key = value.strip().lower()
    if key in supported:
        return key
    close = sorted(supported, key=lambda s: _edit_distance(key, s))
    hint = ""
    if close and _edit_distance(key, close[0]) <= 3:
        hint = f" Did you mean '{close[0]}'?"
    raise UnknownOptionError(
        f"unknown {what} '{value}'.{hint} Available: {', '.join(sorted(supported))}."
    )


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
    needs_torch : bool
        True if the method imports torch (it is then unavailable where torch is missing).
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
    needs_torch: bool = False
    supports_cuda: bool = False
    provides_weights: bool = False
    slices_per_batch: int = 64
    params: dict = field(default_factory=dict)

    @property
    def available(self) -> bool:
        """False when the method needs torch and torch is not installed."""
        if not self.needs_torch:
            return True
        import importlib.util

        return importlib.util.find_spec("torch") is not None

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
                 needs_torch: bool = False, supports_cuda: bool = False,
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
                needs_torch=needs_torch, supports_cuda=supports_cuda,
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

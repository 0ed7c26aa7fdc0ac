"""Looking up a named option (method, device, modality, registration mode, column, model, ...).

Every place that takes a name from the user checks it here, so a typo gets the same one-line
error everywhere: the value, a "did you mean" suggestion and the valid values.
"""

from __future__ import annotations

from typing import Iterable

from .errors import UnknownOptionError

__all__ = ["look_up", "suggest"]


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


def suggest(value: str, supported: Iterable[str]) -> str | None:
    """The supported name a user most likely meant by ``value``, or None.

    A name that ``value`` starts (``max`` -> ``maximum``) comes first, then the closest by edit
    distance (at most 3 edits, and fewer than the typed name has letters: ``XRAY`` suggests
    nothing rather than ``mr``).
    """
    key = str(value).strip().lower()
    supported = sorted(supported)
    if not key:
        return None
    starts = [s for s in supported if s.startswith(key)]
    if starts:
        return min(starts, key=len)
    close = sorted(supported, key=lambda s: (_edit_distance(key, s), s))
    if close:
        d = _edit_distance(key, close[0])
        if d <= 3 and d < len(key) and d <= max(1, len(close[0]) // 2):
            return close[0]
    return None


def look_up(value: str, supported: Iterable[str], *, what: str = "option") -> str:
    """Return ``value`` normalised (stripped, lower-case) if it is in ``supported``.

    Raises
    ------
    UnknownOptionError
        With a "did you mean" suggestion (:func:`suggest`) and the list of valid values.
    """
    supported = list(supported)
    if not isinstance(value, str):
        raise UnknownOptionError(f"{what} must be a string, got {type(value).__name__} {value!r}.")
    key = value.strip().lower()
    if key in supported:
        return key
    best = suggest(key, supported)
    hint = f" Did you mean '{best}'?" if best else ""
    raise UnknownOptionError(
        f"unknown {what} '{value}'.{hint} Available: {', '.join(sorted(supported))}."
    )

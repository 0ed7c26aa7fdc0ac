"""Looking up a named option (method, device, modality, registration mode, column, model, ...).

Every place that takes a name from the user checks it here, so a typo gets the same one-line
error everywhere: the value, a "did you mean" suggestion and the valid values.
"""

from __future__ import annotations

from typing import Iterable

from .errors import UnknownOptionError

__all__ = ["look_up"]


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

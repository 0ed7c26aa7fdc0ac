"""Progress reporting shared by the CLI, the Slicer module and the benchmarks.

A progress callback has the signature ``callback(fraction, message) -> bool | None``:

- ``fraction`` is in [0, 1], or ``None`` when the position is unknown (e.g. an optimiser iteration);
- ``message`` says where the work is ("slice 12/96", "level 2/3, iteration 40");
- returning ``False`` asks the work to stop: the engine then raises :class:`CancelledError` and
  writes nothing. Returning ``None`` or ``True`` continues.

Every message is also logged at INFO level on the ``MedFusionLib`` logger.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional, TextIO

from .errors import CancelledError

__all__ = ["ProgressCallback", "report", "scaled", "TextProgress"]

ProgressCallback = Callable[[Optional[float], str], Optional[bool]]

logger = logging.getLogger("MedFusionLib")


def report(progress: ProgressCallback | None, fraction: float | None, message: str) -> None:
    """Log ``message`` and pass it to ``progress``; raise :class:`CancelledError` if it returns False."""
    logger.info(message)
    if progress is not None and progress(fraction, message) is False:
        raise CancelledError(f"cancelled by the user at: {message}")


def scaled(progress: ProgressCallback | None, start: float, stop: float) -> ProgressCallback | None:
    """Map a sub-task's fractions [0, 1] onto [start, stop] of the caller's progress."""
    if progress is None:
        return None

    def _inner(fraction: float | None, message: str):
        f = None if fraction is None else start + (stop - start) * min(max(fraction, 0.0), 1.0)
        return progress(f, message)

    return _inner


class TextProgress:
    """A one-line text progress bar for terminals (used by the ``medfusion`` command).

    Parameters
    ----------
    stream : file, optional
        Where to draw; standard error by default.
    width : int, optional
        Bar width in characters.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, fraction: float | None, message: str) -> bool:
        now = time.perf_counter()
        final = fraction is not None and fraction >= 1.0
        if not self._tty and not final and now - self._last < 2.0:
            return True  # logs and CI: one line every 2 s at most
        self._last = now
        if fraction is None:
            bar = " " * self.width
            pct = "   "
        else:
            n = int(round(self.width * min(max(fraction, 0.0), 1.0)))
            bar = "#" * n + "-" * (self.width - n)
            pct = f"{int(100 * fraction):3d}"
        line = f"[{bar}] {pct}% {now - self.t0:6.1f}s {message[:80]}"
        if self._tty:
            self.stream.write("\r" + line.ljust(130) + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        return True

"""Ctrl-C (SIGINT) and SIGTERM: stop cleanly, never in the middle of putting outputs in place.

- :func:`terminate_like_interrupt` makes SIGTERM (what ``kill``, a batch scheduler or a
  container runtime sends) behave exactly as Ctrl-C: it is handed to whatever SIGINT handler is
  installed at that moment (Python's, the registration's deferral, ``batch``'s), and
  :func:`terminated` tells the command line to exit with 143 instead of 130.
- :func:`held` defers both signals to the end of a block: an output set's commit (the renames
  that put a finished set of files in place, and the results line of a batch row) is never cut
  in half by an interrupt; the interrupt lands right after it.
- :func:`quiet_after_interrupt`: once the command line has handled an interrupt, a second Ctrl-C
  (or SIGTERM) while it shuts down is ignored with a short note instead of a traceback from
  an exit handler.

Only the main thread may install signal handlers; everywhere else these do nothing, and an
application that handles the signals itself (3D Slicer) is left alone: handlers are changed only
where a Python-level handler is already installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

__all__ = ["Terminated", "terminate_like_interrupt", "terminated", "held",
           "quiet_after_interrupt", "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

#: Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: Exit status after SIGTERM (128 + SIGTERM).
EXIT_TERMINATED = 143

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"terminated": False}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where no SIGINT handler could take it (SIGINT ignored)."""


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _on_sigterm(signum, frame) -> None:
    _state["terminated"] = True
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # SIGINT ignored (a background job): SIGTERM still stops
        raise Terminated
    handler(signal.SIGINT, frame)  # exactly what Ctrl-C would do here (raise, or defer)


def terminate_like_interrupt() -> None:
    """Treat SIGTERM as Ctrl-C in this process (main thread; SIGTERM still at its default)."""
    if _main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def terminated() -> bool:
    """True once SIGTERM was received (the exit status is then 143, not 130)."""
    return _state["terminated"]


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Run the block without interruption: SIGINT/SIGTERM arriving inside are delivered to the
    handlers installed before, right after the block (also when the block raised)."""
    if not _main_thread():
        yield
        return
    pending: list[int] = []
    saved = {}
    for s in _SIGNALS:
        h = signal.getsignal(s)
        if callable(h):
            saved[s] = h
            signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


def quiet_after_interrupt() -> None:
    """After an interrupt was handled: further SIGINT/SIGTERM while the process shuts down print
    one note and are otherwise ignored (no traceback from exit handlers)."""
    if not _main_thread():
        return
    told = []

    def note(signum, frame):
        if signum == signal.SIGTERM:
            _state["terminated"] = True
        if not told:
            told.append(signum)
            try:
                print(f"medfusion: still stopping cleanly (kill -9 {os.getpid()} to force).",
                      file=sys.stderr, flush=True)
            except (OSError, ValueError):
                pass

    for s in _SIGNALS:
        if signal.getsignal(s) != signal.SIG_IGN:
            signal.signal(s, note)

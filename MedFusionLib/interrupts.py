"""Ctrl-C (SIGINT) and SIGTERM: stop cleanly, never in the middle of putting outputs in place.

- :func:`terminate_like_interrupt` makes SIGTERM (what ``kill``, a batch scheduler or a
  container runtime sends) behave exactly as Ctrl-C: it is handed to whatever SIGINT handler is
  installed at that moment (Python's, the registration's deferral, ``batch``'s), and
  :func:`terminated` tells the command line to exit with 143 instead of 130.
- :func:`held` defers both signals to the end of a block: an output set's commit (the renames
  that put a finished set of files in place, and the results line of a batch row) is never cut
  in half by an interrupt; the interrupt lands right after it.
- :func:`flagged_interrupts` (``batch``): the first Ctrl-C raises KeyboardInterrupt at once and
  is remembered (:func:`received`), so that work which swallowed it (ITK turns it into an error
  inside its callbacks) is still seen as interrupted; further ones are noted and ignored while
  the run stops cleanly.
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

__all__ = ["Terminated", "terminate_like_interrupt", "terminated", "held", "flagged_interrupts",
           "received", "quiet_after_interrupt", "exit_status", "EXIT_INTERRUPTED",
           "EXIT_TERMINATED"]

#: Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: Exit status after SIGTERM (128 + SIGTERM).
EXIT_TERMINATED = 143

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"terminated": False, "received": False}


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


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM is Ctrl-C (main thread, where SIGTERM is at its default)."""
    if not _main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    _state["terminated"] = False
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def terminated() -> bool:
    """True once SIGTERM was received (the exit status is then 143, not 130)."""
    return _state["terminated"]


def exit_status() -> int:
    """130 after Ctrl-C, 143 after SIGTERM."""
    return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED


def received() -> bool:
    """True once Ctrl-C (or SIGTERM) reached :func:`flagged_interrupts`' handler."""
    return _state["received"]


def _note_once(told: list) -> None:
    if not told:
        told.append(True)
        try:
            print(f"medfusion: still stopping cleanly (kill -9 {os.getpid()} to force).",
                  file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass


@contextlib.contextmanager
def flagged_interrupts() -> Iterator[None]:
    """Inside the block the first Ctrl-C sets :func:`received` and raises KeyboardInterrupt;
    later ones print one note and are otherwise ignored. Left alone where SIGINT is ignored (a
    background job) or off the main thread."""
    _state["received"] = False
    if not _main_thread() or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield
        return
    told: list = []

    def handler(signum, frame):
        if _state["received"]:
            _note_once(told)
            return
        _state["received"] = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
    told: list = []

    def note(signum, frame):
        if signum == signal.SIGTERM:
            _state["terminated"] = True
        _note_once(told)

    for s in _SIGNALS:
        if signal.getsignal(s) != signal.SIG_IGN:
            signal.signal(s, note)

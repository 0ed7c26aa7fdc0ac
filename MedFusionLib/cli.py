"""The ``medfusion`` command: fuse, batch, metrics, compare, demo, train and friends.

Each subcommand is a module of :mod:`MedFusionLib.commands` with ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Errors that are the user's (a
:class:`~MedFusionLib.errors.MedFusionError`) print one line naming the input and exit with 2;
anything else is a bug and prints a traceback (exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from . import __version__, interrupts
from .errors import CancelledError, MedFusionError
from .threads import apply_threads

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

#: Subcommand modules, in the order ``medfusion --help`` lists them.
COMMAND_MODULES = ["fuse", "batch", "metrics", "compare", "list_methods", "demo", "train", "dicom_ls"]


def _available_commands():
    for name in COMMAND_MODULES:
        yield importlib.import_module(f"{__package__}.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medfusion",
        description="Multi-modal medical image fusion (CT/PET/SPECT + MRI): registration, CNN and "
                    "classical fusion, and fusion-quality metrics.")
    parser.add_argument("--version", action="version", version=f"medfusion {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step (INFO level)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _available_commands():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 bad input, 1 bug, 130 Ctrl-C,
    143 SIGTERM)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    with warnings.catch_warnings(), interrupts.terminate_like_interrupt():
        _quiet_library_warnings(args.verbose)
        try:
            # torch, ITK and pools: --threads, else $MEDFUSION_THREADS, else the usable cores
            apply_threads(getattr(args, "threads", None))
            return int(args._run(args) or 0)
        except CancelledError as exc:
            return _stopped(f"cancelled: {exc}")
        except KeyboardInterrupt:
            return _stopped("cancelled (interrupted by "
                            f"{'SIGTERM' if interrupts.terminated() else 'Ctrl-C'}); "
                            "no output was written.")
        except MedFusionError as exc:
            print(f"medfusion {args.command}: error: {exc}", file=sys.stderr)
            return 2


def _quiet_library_warnings(verbose: bool) -> None:
    """Python warnings reach the user as one line (``WARNING MedFusionLib: ...``), never with
    the source line under them; numpy's floating-point warnings ("invalid value encountered")
    and the warnings of torch and Dask are for developers: shown only with -v."""
    def one_line(message, category, filename, lineno, file=None, line=None):
        logging.getLogger("MedFusionLib").warning("%s", str(message).splitlines()[0])

    warnings.showwarning = one_line
    if not verbose:
        warnings.filterwarnings("ignore", message=r".*encountered in", category=RuntimeWarning)
        for module in (r"torch(\..*)?$", r"distributed(\..*)?$", r"dask(\..*)?$"):
            warnings.filterwarnings("ignore", module=module)


def _stopped(message: str) -> int:
    """Say why the run stopped; 130 (Ctrl-C) or 143 (SIGTERM). A second Ctrl-C while the process
    shuts down is ignored with a note (no traceback from an exit handler)."""
    interrupts.quiet_after_interrupt()
    print(f"medfusion: {message}", file=sys.stderr)
    return interrupts.exit_status()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

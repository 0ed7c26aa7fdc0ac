"""Writing outputs safely, and checking planned outputs before any work starts.

Rules every output of MedFusion follows (the fused volume, PNGs, contribution maps, transforms,
metrics JSON, reports, DICOM series):

- **Atomic.** :func:`atomic_output` hands out a path inside a private temporary folder next to
  the destination; only when the block succeeds are the files renamed into place (detached data
  files first, the named file last). A failure, a full disk or Ctrl-C leaves nothing behind.
- **Verified.** The writer checks what it wrote (read back, or size) *before* the rename: some
  writers (ITK's NIfTI writer) report a full disk on stderr and return normally.
- **No litter from dead writers.** Temporary folders are named ``.medfusion-HOST-PID-RANDOM``; a
  writer removes those beside its output that a dead process left (same host, that process no
  longer running), and any left untouched for :data:`STALE_TEMP_S` (another host's), e.g. when a
  Dask worker was killed while writing.
- **Ordinary permissions.** Files are created as any program creates them, so the user's umask
  applies (0644 under the usual 0022), not the 0600 of ``mkstemp``.
- **Inputs are never touched.** :func:`check_outputs` refuses, before any work, an output whose
  file -- or whose detached data file (``X.mhd`` writes ``X.zraw``) -- is a file that an input
  reads (its header, its ``.raw``/``.zraw``, a file of its DICOM folder; links and hard links
  included), two outputs that are the same file, and outputs whose folder is missing or not
  writable.

Failures are :class:`~MedFusionLib.errors.OutputError` (the CLI's one-line error, exit 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .errors import InvalidInputError, OutputError
from .imagefiles import companion_files, files_of

__all__ = ["atomic_output", "write_text", "write_json", "check_outputs", "check_output_folder",
           "make_temp_folder", "sweep_stale_temp", "OutputSet", "jsonable"]


#: Prefix of the temporary folders outputs are written in.
TEMP_PREFIX = ".medfusion-"

#: A temporary folder of another host untouched this long (seconds) is litter: no write takes a day.
STALE_TEMP_S = 24 * 3600.0


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def sweep_stale_temp(folder: str | os.PathLike, *, now: float | None = None) -> list[Path]:
    """Remove the temporary folders of dead writers in ``folder``; return what was removed.

    A folder ``.medfusion-HOST-PID-RANDOM`` is stale when HOST is this host and process PID no longer
    runs, or (any host) when nothing in it changed for :data:`STALE_TEMP_S`. Anything else,
    including every other hidden file, is left alone. Errors are ignored: this is housekeeping.
    """
    host, removed = _host(), []
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        if not e.name.startswith(TEMP_PREFIX) or not e.is_dir(follow_symlinks=False):
            continue
        parts = e.name[len(TEMP_PREFIX):].rsplit("-", 2)
        try:
            dead = (len(parts) == 3 and parts[0] == host and parts[1].isdigit()
                    and int(parts[1]) != os.getpid() and not _alive(int(parts[1])))
            old = now - e.stat(follow_symlinks=False).st_mtime > STALE_TEMP_S
        except OSError:
            continue
        if dead or old:
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(Path(e.path))
    return removed


def make_temp_folder(parent: str | os.PathLike) -> Path:
    """A new private temporary folder in ``parent`` (named for this host and process), after
    removing dead writers' ones there (:func:`sweep_stale_temp`).

    Raises
    ------
    OSError
        As :func:`tempfile.mkdtemp`.
    """
    sweep_stale_temp(parent)
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{_host()}-{os.getpid()}-", dir=parent))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Context manager: a temporary path to write ``path``'s content to, moved into place on success.

    The temporary path has ``path``'s file name inside a new hidden folder in the same directory,
    so writers that add data files named after the header (``.mhd`` -> ``.zraw``) name them right.
    Everything written into that folder is renamed next to ``path`` when the block ends without
    an exception -- other files first, ``path`` itself last -- and the folder is removed either
    way.

    Raises
    ------
    OutputError
        If the folder does not exist or is not writable, the disk is full, or another OS error
        occurs while writing (an ``OSError`` inside the block becomes an ``OutputError``).
    """
    p = Path(path)
    try:
        tmpdir = make_temp_folder(p.parent)
    except FileNotFoundError:
        raise OutputError(f"{p}: the output folder {p.parent} does not exist.") from None
    except OSError as exc:
        raise OutputError(f"{p}: cannot write in {p.parent}: {_reason(exc)}.") from None
    moved: list[Path] = []
    try:
        try:
            yield tmpdir / p.name
            names = sorted((f.name for f in tmpdir.iterdir()), key=lambda n: n == p.name)
            if p.name not in names:
                raise OutputError(f"{p}: the writer produced no file.")
            for name in names:
                os.replace(tmpdir / name, p.parent / name)
                moved.append(p.parent / name)
        except OutputError:
            for f in moved:
                f.unlink(missing_ok=True)
            raise
        except OSError as exc:
            for f in moved:
                f.unlink(missing_ok=True)
            raise OutputError(f"{p}: could not write the file: {_reason(exc)}; nothing was "
                              "written.") from None
        except BaseException:
            for f in moved:
                f.unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    p = Path(path)
    with atomic_output(p) as tmp:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if tmp.stat().st_size != len(text.encode("utf-8")):
            raise OutputError(f"{p}: the file was not written completely; nothing was written.")
    return p


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON (numpy scalars and arrays, paths allowed), atomically."""
    return write_text(path, json.dumps(data, indent=2, default=jsonable) + "\n")


def jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# Pre-flight


def check_output_folder(path: str | os.PathLike, *, folder_output: bool = False) -> None:
    """Raise unless ``path`` can be created: its folder exists and is writable, and ``path`` is
    not an existing folder. With ``folder_output`` (a folder the run fills), ``path`` must not be
    an existing file, and the nearest existing folder on its way must be writable.

    Raises
    ------
    OutputError
    """
    p = Path(path)
    if folder_output:
        if p.exists() and not p.is_dir():
            raise OutputError(f"{p}: exists and is not a folder; give a folder for this output.")
        # the folder (and missing parents) is created by the writer: the nearest existing one
        # must be a writable folder
        parent = next(a for a in (p, *p.absolute().parents) if a.exists())
        if not parent.is_dir():
            raise OutputError(f"{p}: {parent} is not a folder.")
    else:
        if p.is_dir():
            raise OutputError(f"{p}: is a folder; give a file name for this output.")
        parent = p.parent
    if not parent.is_dir():
        raise OutputError(f"{p}: the output folder {parent} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{p}: the output folder {parent} is not writable.")


def _identity(f: Path):
    try:
        st = f.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def check_outputs(inputs: Iterable[str | os.PathLike | None],
                  outputs: Iterable[str | os.PathLike | None], *,
                  folders: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other.

    Parameters
    ----------
    inputs : paths
        Every file or DICOM folder the run reads (``None`` entries are ignored).
    outputs : paths
        Every file the run writes (``None`` ignored); a header-only format counts with the data
        file it creates (:func:`MedFusionLib.imagefiles.companion_files`).
    folders : paths
        Output folders whose content the run writes (``--dicom``, ``compare --out``): no input
        may lie inside them.

    Raises
    ------
    OutputError
        Naming the output, the file it would overwrite and the input that reads it; or the
        output folder that is missing or not writable.
    """
    read: dict[Path, str] = {}
    ids: dict[tuple, str] = {}
    for i in inputs:
        if not i:
            continue
        for f in files_of(i):
            read[f] = str(i)
            key = _identity(f)
            if key is not None:
                ids[key] = str(i)
    planned: dict[Path, str] = {}
    for o in outputs:
        if not o:
            continue
        check_output_folder(o)
        for f in [Path(o)] + companion_files(o):
            r = f.resolve()
            owner = read.get(r) or ids.get(_identity(f) or ())
            if owner is not None:
                if f == Path(o):
                    raise OutputError(f"{o}: this output path is one of the inputs ({owner}); "
                                      "choose another name (inputs are never overwritten).")
                raise OutputError(f"{o}: this output would also write {f}, which the input {owner} "
                                  "reads; choose another name (inputs are never overwritten).")
            if r in planned:
                raise OutputError(f"{o}: the same file {f} would be written by two outputs "
                                  f"({planned[r]} and {o}).")
            planned[r] = str(o)
    for d in folders:
        if not d:
            continue
        check_output_folder(d, folder_output=True)
        root = Path(d).resolve()
        for f, owner in read.items():
            if f == root or root in f.parents:
                raise OutputError(f"{d}: this output folder holds the input {owner}; write into "
                                  "another folder (inputs are never overwritten).")


class OutputSet:
    """Outputs of one run: written one by one, all removed again if any later step fails.

    Use as a context manager; call :meth:`add` after writing each file. On an exception every
    file added so far is deleted, so a failed run leaves no partial output behind.
    """

    def __init__(self, paths: list[str | os.PathLike | None]):
        self.planned = [Path(p) for p in paths if p]
        self.written: list[Path] = []
        seen = set()
        for p in self.planned:
            if p.resolve() in seen:
                raise InvalidInputError(f"{p}: the same path is given for two outputs.")
            seen.add(p.resolve())
            if not p.parent.exists():
                raise InvalidInputError(f"{p}: the output folder {p.parent} does not exist.")

    def add(self, path: Path) -> None:
        self.written.append(Path(path))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            for p in self.written:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
        return False

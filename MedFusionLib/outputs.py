"""Writing outputs safely, and checking planned outputs before any work starts.

Rules every output of MedFusion follows (the fused volume, PNGs, contribution maps, transforms,
metrics JSON, reports, DICOM series, the results file of a batch):

- **All or nothing.** The files of one run -- ``fuse``'s image, contribution map, transform and
  metrics JSON; a DICOM series; a ``compare`` report -- are one :class:`OutputSet`. Every file is
  written under a temporary name in a private hidden folder beside its destination and verified
  there (read back, or its size) first; only when every file of the set is written and verified
  are they all renamed into place (:meth:`OutputSet.commit`). If anything fails -- a write, a
  verification, a full disk, Ctrl-C, SIGTERM -- the files that were there before are left
  exactly as they were (a failed re-run never deletes the last good result) and nothing new
  remains. A single file written outside a set (:func:`atomic_output`) is a set of one.
- **The commit.** Before the first rename, the set writes a journal (``commit.json``) into its
  hidden folder, naming every destination, where its staged file is and where the previous file
  is kept (a hard link in the hidden folder, so the old file stays byte for byte and inode for
  inode). Each destination is then replaced by one rename; the journal is removed once all are in
  place. Ctrl-C and SIGTERM wait for the renames (:func:`MedFusionLib.interrupts.held`); a rename
  that fails puts every previous file back. Only a process killed outright (SIGKILL, power loss)
  during the renames can leave the set half replaced; then its hidden folder
  ``.medfusion-HOST-PID-RANDOM`` still holds ``commit.json`` (:func:`interrupted_commits`
  finds it), and the next MedFusion write in that folder **rolls the set back**: each file the
  dead process had replaced gets its previous version again, files it added are removed, and a
  warning names them. So a fused image never stays beside a metrics JSON that describes another
  run.
- **Verified.** The writer checks what it wrote (read back, or size) *before* the commit: some
  writers (ITK's NIfTI writer) report a full disk on stderr and return normally.
- **No litter from dead writers.** Temporary folders are named ``.medfusion-HOST-PID-RANDOM``; a
  writer removes (or, holding a journal, rolls back) those beside its output that a dead process
  left (same host, that process no longer running), and any left untouched for
  :data:`STALE_TEMP_S` (another host's), e.g. when a Dask worker was killed while writing.
- **Ordinary permissions.** Files are created as any program creates them, so the user's umask
  applies (0644 under the usual 0022), not the 0600 of ``mkstemp``.
- **Inputs are never touched.** :func:`check_outputs` refuses, before any work, an output whose
  file -- or whose detached data file (``X.mhd`` writes ``X.zraw``) -- is a file that an input
  reads (its header, its ``.raw``/``.zraw``, a file of its DICOM folder; links and hard links
  included), two outputs that are the same file, and outputs whose folder is missing or not
  writable.
- **Standard JSON.** :func:`json_text` writes NaN and infinities as ``null`` (bare ``NaN`` is
  not JSON: JavaScript's ``JSON.parse`` and most parsers reject it).

Failures are :class:`~MedFusionLib.errors.OutputError` (the CLI's one-line error, exit 2).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from .errors import InvalidInputError, OutputError
from .imagefiles import companion_files, files_of
from .interrupts import held

__all__ = ["atomic_output", "staged_folder", "write_text", "write_json", "json_text",
           "check_outputs", "check_output_folder", "check_path", "make_temp_folder",
           "sweep_stale_temp",
           "OutputSet", "interrupted_commits", "jsonable", "JOURNAL"]

logger = logging.getLogger(__name__)


#: Prefix of the temporary folders outputs are written in.
TEMP_PREFIX = ".medfusion-"

#: A temporary folder of another host untouched this long (seconds) is litter: no write takes a day.
STALE_TEMP_S = 24 * 3600.0

#: The commit journal of an output set, in its (first) temporary folder while files are renamed.
JOURNAL = "commit.json"
#: In the set's other temporary folders while files are renamed: where the journal is.
_PART = "commit-part.json"
#: Subfolder of a temporary folder keeping the previous files during a commit.
_PREVIOUS = "previous"
_RESERVED = (JOURNAL, _PART, _PREVIOUS)

#: The output set that writes in this thread / context (see :class:`OutputSet`).
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("medfusion_output_set", default=None)


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


def _temp_owner(name: str) -> tuple[str, int] | None:
    """``(host, pid)`` of a temporary folder named ``.medfusion-HOST-PID-RANDOM``, else None."""
    parts = name[len(TEMP_PREFIX):].rsplit("-", 2)
    if not name.startswith(TEMP_PREFIX) or len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _dead(owner: tuple[str, int] | None) -> bool:
    return (owner is not None and owner[0] == _host() and owner[1] != os.getpid()
            and not _alive(owner[1]))


def sweep_stale_temp(folder: str | os.PathLike, *, now: float | None = None) -> list[Path]:
    """Remove the temporary folders of dead writers in ``folder``; return what was removed.

    A folder ``.medfusion-HOST-PID-RANDOM`` is stale when HOST is this host and process PID no longer
    runs, or (any host) when nothing in it changed for :data:`STALE_TEMP_S`. A stale folder that
    holds a commit journal (its writer was killed while renaming a set into place) is rolled back
    first (:func:`_roll_back`). Anything else, including every other hidden file, is left alone.
    Errors are ignored: this is housekeeping.
    """
    removed = []
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        if not e.name.startswith(TEMP_PREFIX) or not e.is_dir(follow_symlinks=False):
            continue
        try:
            old = now - e.stat(follow_symlinks=False).st_mtime > STALE_TEMP_S
        except OSError:
            continue
        if not (_dead(_temp_owner(e.name)) or old):
            continue
        _finish_dead_commit(Path(e.path))
        shutil.rmtree(e.path, ignore_errors=True)
        removed.append(Path(e.path))
    return removed


def interrupted_commits(folder: str | os.PathLike) -> list[Path]:
    """Journals (``.medfusion-*/commit.json``) in ``folder`` of output sets whose writer is no
    longer running: sets a killed process left half renamed into place. The next MedFusion write
    in ``folder`` rolls them back (:func:`sweep_stale_temp`)."""
    out = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return out
    for e in entries:
        journal = Path(e.path) / JOURNAL
        if _dead(_temp_owner(e.name)) and journal.is_file():
            out.append(journal)
    return out


def _finish_dead_commit(tmpdir: Path) -> None:
    """Roll back the commit that a dead writer's temporary folder ``tmpdir`` took part in."""
    journal = tmpdir / JOURNAL
    if not journal.is_file():
        try:
            journal = Path(json.loads((tmpdir / _PART).read_text(encoding="utf-8"))["journal"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # no commit had begun: the folder holds only staged files
        if not journal.is_file():
            return  # the commit finished (the journal goes first)
    try:
        data = json.loads(journal.read_text(encoding="utf-8"))
        entries, created = data["files"], data.get("folders", [])
    except (OSError, ValueError, KeyError, TypeError):
        return
    restored = _roll_back([(Path(e["dest"]), Path(e["previous"]) if e.get("previous") else None,
                            int(e["inode"])) for e in entries])
    for d in reversed(created):  # folders the commit made, now empty again
        try:
            os.rmdir(d)
        except OSError:
            pass
    if restored:
        logger.warning("put back the previous version of %s: the process that was replacing it "
                       "(%s) was killed in the middle", ", ".join(map(str, restored)),
                       journal.parent.name)
    try:
        journal.unlink()
    except OSError:
        pass


def _roll_back(entries: list[tuple[Path, Path | None, int]]) -> list[Path]:
    """Undo a commit: ``(destination, previous file or None, inode of the new file)`` each.

    A destination that holds the new file (same inode) gets its previous file back, or is removed
    when there was none; one that was moved aside but not yet replaced gets its previous file
    back; the others are left as they are. Returns the destinations changed."""
    changed = []
    for dest, previous, inode in reversed(entries):
        try:
            st = os.lstat(dest)
        except OSError:
            st = None
        try:
            if st is not None and st.st_ino == inode:
                if previous is not None and os.path.lexists(previous):
                    os.replace(previous, dest)
                else:
                    os.unlink(dest)
                changed.append(dest)
            elif st is None and previous is not None and os.path.lexists(previous):
                os.replace(previous, dest)
                changed.append(dest)
        except OSError:
            continue
    return changed


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
    """Context manager: a temporary path to write ``path``'s content to, put in place on success.

    The temporary path has ``path``'s file name inside a hidden folder in the same directory, so
    writers that add data files named after the header (``.mhd`` -> ``.zraw``) name them right.
    Inside an active :class:`OutputSet` that plans ``path``, the file joins that set and is put
    in place with the rest of it; otherwise it is a set of its own, committed when the block
    ends without an exception. Either way the block must leave the file complete and verified.

    Raises
    ------
    OutputError
        If the folder does not exist or is not writable, the disk is full, or another OS error
        occurs while writing (an ``OSError`` inside the block becomes an ``OutputError``).
    """
    p = Path(path)
    active = _ACTIVE.get()
    if active is not None and active.plans(p):
        with _write_errors(p):
            tmp = active.temp_path(p)
            yield tmp
            if not os.path.lexists(tmp):
                raise OutputError(f"{p}: the writer produced no file.")
        return
    with OutputSet([p]) as own:
        with _write_errors(p):
            tmp = own.temp_path(p)
            yield tmp
            if not os.path.lexists(tmp):
                raise OutputError(f"{p}: the writer produced no file.")


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Context manager: a temporary folder whose files land in ``folder`` on success (created
    with its missing parents), all or nothing, as :func:`atomic_output` does for one file.

    Raises
    ------
    OutputError
    """
    d = Path(folder)
    active = _ACTIVE.get()
    if active is not None and active.plans(d):
        with _write_errors(d):
            yield active.temp_path(d, folder=True)
        return
    with OutputSet(folders=[d]) as own:
        with _write_errors(d):
            yield own.temp_path(d, folder=True)


@contextlib.contextmanager
def _write_errors(p: Path) -> Iterator[None]:
    """An ``OSError`` while writing ``p`` becomes the one-line :class:`OutputError`."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"{p}: could not write the file: {_reason(exc)}; nothing was "
                          "written.") from None


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
    """Write ``data`` as indented standard JSON (:func:`json_text`), atomically."""
    return write_text(path, json_text(data, indent=2) + "\n")


def json_text(data, *, indent: int | None = None) -> str:
    """``data`` as standard JSON: numpy scalars and arrays and paths allowed, NaN and +-Inf
    written as ``null`` (bare ``NaN``/``Infinity`` are not JSON)."""
    return json.dumps(_finite(data), indent=indent, default=jsonable, allow_nan=False)


def _finite(value):
    """``value`` with every non-finite float (also inside numpy arrays and scalars) as None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.ndarray):
        return _finite(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def jsonable(value):
    """JSON form of numpy scalars and arrays and of paths (``json.dumps``' ``default``)."""
    if isinstance(value, (np.floating, np.integer, np.bool_)):
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


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_path(path: str | os.PathLike) -> None:
    """Raise unless the file system can take ``path`` as a name: no NUL byte, no part longer
    than the file system allows (255 bytes on most), not a link that loops back on itself.

    Raises
    ------
    InvalidInputError
    """
    text = os.fspath(path)
    if "\x00" in text:
        raise InvalidInputError(f"{_short(repr(text))}: a path cannot hold a NUL byte.")
    p = _abs(text)
    anchor = next((a for a in p.parents if a.is_dir()), Path("/"))
    try:
        name_max = os.pathconf(anchor, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    for part in p.parts:
        if len(os.fsencode(part)) > name_max:
            raise InvalidInputError(f"{_short(text)}: a file or folder name of "
                                    f"{len(os.fsencode(part))} bytes; the file system allows "
                                    f"{name_max}.")
    try:
        os.stat(text)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidInputError(f"{text}: a symbolic link that leads back to itself (a "
                                    "loop).") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise InvalidInputError(f"{_short(text)}: the path is too long for the file "
                                    "system.") from None


def _identity(f: Path):
    try:
        st = f.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def check_outputs(inputs: Iterable[str | os.PathLike | None],
                  outputs: Iterable[str | os.PathLike | None], *,
                  folders: Iterable[str | os.PathLike | None] = (),
                  within: str | os.PathLike | None = None) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other.

    Parameters
    ----------
    inputs : paths
        Every file or DICOM folder the run reads (``None`` entries are ignored).
    outputs : paths
        Every file the run writes (``None`` ignored); a header-only format counts with the data
        file it creates (:func:`MedFusionLib.imagefiles.companion_files`).
    folders : paths
        Output folders whose content the run writes (``--dicom``): no input may lie inside them.
    within : path, optional
        A folder the run creates if missing and fills with ``outputs`` (``compare --out``): it
        is checked as an output folder, and outputs under it need not have an existing folder.

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
        check_path(i)
        for f in files_of(i):
            read[f] = str(i)
            key = _identity(f)
            if key is not None:
                ids[key] = str(i)
    planned: dict[Path, str] = {}
    root = _abs(within) if within else None
    if root is not None:
        check_output_folder(root, folder_output=True)
    for o in outputs:
        if not o:
            continue
        check_path(o)
        if root is None or root not in _abs(o).parents or _abs(o).parent.is_dir():
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


def _abs(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path))


#: Subfolder of a temporary folder holding the staged new files (the others are reserved names).
_NEW = "new"


class OutputSet:
    """The outputs of one run, put in place all together or not at all.

    Inside ``with OutputSet(files, folders):`` every write of a planned file -- and of any file
    under a planned folder -- through :func:`atomic_output` or :func:`staged_folder` (every writer
    of MedFusion: :func:`~MedFusionLib.io.write_image`, :func:`~MedFusionLib.io.write_transform`,
    :func:`write_json`, figures, DICOM series) goes to a staging path in a hidden temporary
    folder beside its destination, where the writer verifies it. When the block ends without an
    exception, :meth:`commit` renames every staged file into place (see the module's rules:
    journal, previous files kept until the end, rolled back on any failure); on an exception the
    staged files are removed and the destinations are not touched.

    Parameters
    ----------
    files : paths
        Files the run writes (``None`` entries ignored); each must have an existing folder.
    folders : paths
        Folders the run fills (a DICOM series, a ``compare`` report): created with their missing
        parents at the commit; every file written under them belongs to the set.
    then : callable, optional
        ``then(paths)`` is called right after the renames, still inside the commit (Ctrl-C held
        back): if it raises, the set is rolled back (``batch`` appends the row's results line
        here, so a row's outputs and its record agree).

    Attributes
    ----------
    written : list of Path
        After the commit: every file put in place.

    Raises
    ------
    InvalidInputError
        Two planned outputs are the same path.
    """

    def __init__(self, files: Iterable[str | os.PathLike | None] = (),
                 folders: Iterable[str | os.PathLike | None] = (), *,
                 then: Callable[[list[Path]], None] | None = None):
        self.files = [_abs(p) for p in files if p]
        self.folders = [_abs(d) for d in folders if d]
        seen = set()
        for p in self.files + self.folders:
            key = os.path.realpath(p)
            if key in seen:
                raise InvalidInputError(f"{p}: the same path is given for two outputs.")
            seen.add(key)
        self.then = then
        self.written: list[Path] = []
        self._temps: dict[Path, Path] = {}  # existing folder -> its temporary folder
        self._token = None
        self._joined: OutputSet | None = None

    # -- staging

    def plans(self, path: str | os.PathLike) -> bool:
        """True when ``path`` is a planned file or lies under a planned folder."""
        p = _abs(path)
        return p in self.files or any(d == p or d in p.parents for d in self.folders)

    def temp_path(self, dest: str | os.PathLike, *, folder: bool = False) -> Path:
        """Where to write ``dest`` (a planned file, or with ``folder`` a planned folder) now."""
        d = _abs(dest)
        parent = d if folder else d.parent
        if not folder and not parent.is_dir() and not any(f in d.parents for f in self.folders):
            if parent.exists():
                raise OutputError(f"{dest}: {parent} is not a folder.")
            raise OutputError(f"{dest}: the output folder {parent} does not exist.")
        anchor = next((a for a in (parent, *parent.parents) if a.is_dir()), None)
        if anchor is None or (folder and anchor != d and d.exists()):
            raise OutputError(f"{dest}: exists and is not a folder.")
        tmp = self._temps.get(anchor)
        if tmp is None:
            try:
                tmp = make_temp_folder(anchor)
            except OSError as exc:
                raise OutputError(f"{dest}: cannot write in {anchor}: {_reason(exc)}.") from None
            self._temps[anchor] = tmp
        staged = tmp / _NEW / d.relative_to(anchor)
        (staged if folder else staged.parent).mkdir(parents=True, exist_ok=True)
        return staged

    # -- the commit

    def _staged(self) -> list[tuple[Path, Path, Path]]:
        """``(staged file, destination, its temporary folder)``, in commit order: data files and
        series files first, then the planned files, the first planned (the main output) last."""
        out = []
        for anchor, tmp in self._temps.items():
            root = tmp / _NEW
            for folder, _, names in os.walk(root):
                for name in names:
                    staged = Path(folder) / name
                    out.append((staged, anchor / staged.relative_to(root), tmp))
        rank = {f: i for i, f in enumerate(self.files)}
        out.sort(key=lambda e: (e[1] in rank, -rank.get(e[1], 0), str(e[1])))
        return out

    def commit(self) -> list[Path]:
        """Put every staged file in place (see the module's rules); returns the destinations.

        Raises
        ------
        OutputError
            A destination is a folder, or a rename failed: every previous file is back.
        """
        entries = self._staged()
        if not entries:
            self._clean()
            return []
        for _, dest, _ in entries:
            if dest.is_dir() and not dest.is_symlink():
                self._clean()
                raise OutputError(f"{dest}: is a folder; nothing was written.")
        lead = entries[-1][2]
        journal = lead / JOURNAL
        plan = [(staged, dest, tmp / _PREVIOUS / staged.relative_to(tmp / _NEW)
                 if os.path.lexists(dest) else None, os.lstat(staged).st_ino)
                for staged, dest, tmp in entries]
        created: list[Path] = []
        for _, dest, _, _ in plan:
            for d in reversed(dest.parents):
                if not d.exists() and d not in created:
                    created.append(d)
        done: list[tuple[Path, Path | None, int]] = []
        with held():
            try:
                for tmp in self._temps.values():
                    if tmp != lead:
                        (tmp / _PART).write_text(json.dumps({"journal": str(journal)}),
                                                 encoding="utf-8")
                with journal.open("w", encoding="utf-8") as fh:
                    fh.write(json.dumps({"pid": os.getpid(), "host": _host(),
                                         "files": [{"dest": str(dest), "staged": str(staged),
                                                    "previous": str(prev) if prev else None,
                                                    "inode": inode}
                                                   for staged, dest, prev, inode in plan],
                                         "folders": [str(d) for d in created]},
                                        indent=1))
                    fh.flush()
                    os.fsync(fh.fileno())
                for d in created:
                    d.mkdir()
                for staged, dest, previous, inode in plan:
                    if previous is not None:
                        previous.parent.mkdir(parents=True, exist_ok=True)
                        try:
                            os.link(dest, previous, follow_symlinks=False)
                        except OSError:  # no hard links here: move it aside instead
                            os.replace(dest, previous)
                    done.append((dest, previous, inode))
                    os.replace(staged, dest)
                written = [dest for _, dest, _, _ in plan]
                if self.then is not None:
                    self.then(written)
            except BaseException as exc:
                _roll_back(done)
                for d in reversed(created):
                    try:
                        d.rmdir()
                    except OSError:
                        pass
                self._clean()
                if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                    raise OutputError(f"{self._name()}: could not put the outputs in place "
                                      f"({_reason(exc)}); the previous files are unchanged, "
                                      "nothing was written.") from None
                raise
            try:
                journal.unlink()
            except OSError:
                pass
            self._clean()
            self.written = written
        return written

    def _name(self) -> Path:
        return (self.files or self.folders or [Path("output")])[0]

    def _clean(self) -> None:
        for tmp in self._temps.values():
            shutil.rmtree(tmp, ignore_errors=True)
        self._temps.clear()

    def __enter__(self) -> "OutputSet":
        outer = _ACTIVE.get()
        if (outer is not None and self.then is None
                and all(outer.plans(p) for p in self.files + self.folders)):
            self._joined = outer  # a part of the caller's set: committed with it
            return self
        self._joined = None
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._joined is not None:
            return False
        _ACTIVE.reset(self._token)
        if exc_type is not None:
            self._clean()
            return False
        self.commit()
        return False

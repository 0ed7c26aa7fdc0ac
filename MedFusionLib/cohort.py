"""Cohorts: a batch manifest as pair jobs, its safety checks, the results file and resume.

A manifest is a CSV file with a header row. ``fixed``, ``moving`` and ``output`` are required;
every other column is optional and overrides, for its row, the command-line option of the same
name (:data:`SPEC_COLUMNS` and every fusion option, named like its flag: ``register``,
``fixed_modality``, ``ct_window``, ``method``, ``seed``, ``param`` ...). An empty cell takes the
command-line value. Paths are relative to the manifest's folder unless absolute.

:func:`read_cohort` turns the manifest into :class:`~MedFusionLib.job.PairSpec` objects. A row
whose own cells are unusable (an empty path, a value its column does not take) fails alone; the
problems of the manifest as a whole -- a column named twice or unknown, two rows writing the same
file, a row writing a file that a row reads or the manifest itself, the results file colliding
with any of these, output folders missing or not writable -- are all reported in one error
before anything runs. :class:`ResultsFile` keeps one record per finished row (``.csv`` or
``.jsonl``), on disk as each row finishes, and tells a resumed run which rows are already done
(same paths, same options, outputs present).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import InvalidInputError, OutputError
from .imagefiles import companion_files, files_of
from .job import INPUT_OPTIONS, PairRecord, PairSpec
from .options import suggest
from .outputs import json_text, write_text

__all__ = ["SPEC_COLUMNS", "Row", "read_manifest", "read_cohort", "check_cross_row_paths",
           "check_row_folders", "ResultsFile", "ResultsWriteError", "RESULT_COLUMNS", "is_done",
           "line_ranges"]

#: Per-row columns that set a :class:`~MedFusionLib.job.PairSpec` field, with their kind.
SPEC_COLUMNS = {
    "metrics": "path", "transform": "path", "weights_map": "path",
    "metrics_keys": "text", "fixed_series": "text", "moving_series": "text",
    "dicom": "bool", "color": "text", "grey": "bool",
}
_ALIASES = {"colour": "color", "gray": "grey"}
_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")

#: The results file's first columns; stage seconds (``seconds_<stage>``) and metric values follow.
RESULT_COLUMNS = ("line", "fixed", "moving", "output", "status", "error", "seconds", "method",
                  "model", "model_sha256", "device", "registration", "worker", "options")
_STAGES = ("read", "normalise", "register", "resample", "fuse", "metrics", "write")


#: Manifest columns that hold paths (resolved against the manifest's folder).
PATH_COLUMNS = ("fixed", "moving", "output")

#: The longest cell a manifest may hold (characters): Python's csv module's limit.
MAX_CELL = csv.field_size_limit()

#: Manifest-level problems shown in full in one error; the rest are counted.
_SHOWN_PROBLEMS = 12


def read_manifest(path: str | os.PathLike, required: tuple[str, ...],
                  path_columns: tuple[str, ...] = PATH_COLUMNS, *,
                  problems: list[str] | None = None) -> list[dict]:
    """Rows of a CSV manifest (``batch``, ``compare``), header names lower-cased.

    ``path_columns`` are resolved against the manifest's folder unless absolute; an empty cell
    stays empty (the caller decides whether that skips the row or fails). Each row gets
    ``_line``, its line number in the file.

    Parameters
    ----------
    problems : list of str, optional
        Where to add the header's problems that still leave the rows readable (a column named
        twice), so that the caller reports them with its own; without it they are raised.

    Raises
    ------
    InvalidInputError
        If the file is missing, not UTF-8 text, not CSV (a NUL byte, a cell longer than
        :data:`MAX_CELL` characters), its header lacks a ``required`` column or names one twice,
        or it has no rows.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{p}: manifest not found.")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{p}: the manifest is not UTF-8 text (byte {exc.start}).") from None
    except OSError as exc:
        raise InvalidInputError(f"{p}: cannot read the manifest ({exc.strerror or exc}).") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise InvalidInputError(f"{p}, line {line}: holds a NUL byte; a manifest is a CSV text "
                                "file.")
    try:
        with io.StringIO(text, newline="") as fh:
            reader = csv.DictReader(fh)
            header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise InvalidInputError(f"{p}: the header must name the columns "
                                        f"{','.join(required)}; missing: {', '.join(missing)}.")
            twice = [f"'{h}' (columns {', '.join(str(i + 1) for i, g in enumerate(header) if g == h)})"
                     for h in dict.fromkeys(header) if h and header.count(h) > 1]
            if twice:
                msg = f"the header names a column twice: {', '.join(twice)}"
                if problems is None:
                    raise InvalidInputError(f"{p}: {msg}; each column must appear once.")
                problems.append(msg)
            rows = []
            for raw in reader:
                line = reader.line_num
                if None in raw:
                    raise InvalidInputError(f"{p}, line {line}: more cells than the header has "
                                            "columns.")
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
                if not any(row.values()):
                    continue
                for c in path_columns:
                    if row.get(c) and not Path(row[c]).is_absolute():
                        row[c] = str(p.parent / row[c])
                row["_line"] = line
                rows.append(row)
    except csv.Error as exc:
        what = (f"a cell is longer than {MAX_CELL} characters" if "field limit" in str(exc)
                else f"not valid CSV ({exc})")
        raise InvalidInputError(f"{p}, line {reader.line_num + 1}: {what}; is this a CSV "
                                "manifest?") from None
    if not rows:
        raise InvalidInputError(f"{p}: the manifest has no rows.")
    return rows


@dataclass
class Row:
    """One manifest row: its line number and its pair job, or why it cannot run."""

    line: int
    spec: PairSpec
    problem: str = ""


def _bool(text: str, where: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise InvalidInputError(f"{where}: expected true or false, got {text!r}.")


def _fusion_columns(actions) -> dict:
    """``{column name: argparse action}`` for the fusion options (``--ct-window`` -> ``ct_window``)."""
    out = {}
    for a in actions:
        longs = [s for s in a.option_strings if s.startswith("--")]
        if longs:
            out[longs[0][2:].replace("-", "_")] = a
    return out


def _fusion_value(action, text: str, where: str, default):
    if action.nargs == 0:  # store_true / store_false
        return action.const if _bool(text, where) else action.default
    if default is not None and isinstance(default, list):  # append (--param): the row's come last
        return list(default) + [t.strip() for t in text.split(";") if t.strip()]
    value = text
    if action.type is not None:
        try:
            value = action.type(text)
        except (TypeError, ValueError):
            raise InvalidInputError(f"{where}: invalid value {text!r}.") from None
    if action.choices is not None and value not in action.choices:
        raise InvalidInputError(f"{where}: {text!r} is not one of {', '.join(map(str, action.choices))}.")
    return value


def read_cohort(manifest: str | os.PathLike, defaults: PairSpec, fusion_actions=(), *,
                results: str | os.PathLike | None = None) -> list[Row]:
    """The rows of a batch manifest as pair jobs.

    Parameters
    ----------
    manifest : path
        CSV with the columns ``fixed,moving,output`` and any per-row option columns.
    defaults : PairSpec
        The command line's options (its paths are ignored): the value of every empty cell.
    fusion_actions : sequence of argparse actions
        The fusion options that may also be given per row (``args._fusion_actions``).
    results : path, optional
        The batch's results file: it joins the collision checks (it must not be the manifest,
        an input or an output of a row).

    Returns
    -------
    list of Row
        In file order. A row whose own cells are unusable -- an empty ``fixed``, ``moving`` or
        ``output``, a value that is not valid for its column (``register``, ``seed``, a
        true/false column ...) -- has a ``problem``: it is reported as failed, the others run.

    Raises
    ------
    InvalidInputError
        The manifest as a whole is unusable, with every such problem in one message: missing,
        unreadable, no rows, a column named twice, an unknown column (a misspelt option must not
        be ignored silently), paths that collide across rows, with the manifest or with the
        results file (:func:`check_cross_row_paths`), output folders that are missing or not
        writable (:func:`check_row_folders`).
    """

    path = Path(manifest)
    problems: list[str] = []
    fusion_cols = _fusion_columns(fusion_actions)
    rows = read_manifest(path, ("fixed", "moving", "output"),
                         path_columns=("fixed", "moving", "output", "metrics", "transform",
                                       "weights_map") + INPUT_OPTIONS, problems=problems)
    known = ("fixed", "moving", "output", *SPEC_COLUMNS, *_ALIASES, *fusion_cols)
    for col in rows[0]:
        if col != "_line" and not col.startswith(("x_", "#")) and col not in known:
            best = suggest(col, known)
            problems.append(f"unknown column '{col}'" + (f" (did you mean '{best}'?)" if best else
                                                         "") + "; prefix your own columns with x_")
    out = []
    for row in rows:
        line = row["_line"]
        fields, fusion, errors = {}, dict(defaults.fusion), []
        for col, text in row.items():
            if col == "_line" or not text or col.startswith(("x_", "#")):
                continue
            where = f"column {col}"
            col = _ALIASES.get(col, col)
            try:
                if col in ("fixed", "moving", "output"):
                    fields[col] = text
                elif col in SPEC_COLUMNS:
                    fields[col] = _bool(text, where) if SPEC_COLUMNS[col] == "bool" else text
                elif col in fusion_cols:
                    action = fusion_cols[col]
                    fusion[action.dest] = _fusion_value(action, text, where,
                                                        fusion.get(action.dest))
            except InvalidInputError as exc:
                errors.append(str(exc).rstrip("."))
        if fields.get("color") and fields.get("grey", defaults.grey):
            errors.append("color and grey exclude each other")
        if fields.get("grey") and defaults.color and "color" not in fields:
            fields["color"] = None
        if fields.get("color") and defaults.grey and "grey" not in fields:
            fields["grey"] = False
        missing = [c for c in ("fixed", "moving", "output") if not fields.get(c)]
        if missing:
            errors.insert(0, f"empty column(s): {', '.join(missing)}")
        spec = replace(defaults, fixed=fields.pop("fixed", ""), moving=fields.pop("moving", ""),
                       output=fields.pop("output", ""), fusion=fusion, label=f"line {line}",
                       **fields)
        out.append(Row(line, spec, "; ".join(errors)))
    problems += check_cross_row_paths(path, out, results=results)
    problems += check_row_folders(out)
    if problems:
        shown = "; ".join(problems[:_SHOWN_PROBLEMS])
        more = len(problems) - _SHOWN_PROBLEMS
        raise InvalidInputError(
            (f"{path}: {shown}." if len(problems) == 1 else
             f"{path}: {len(problems)} problems: {shown}" + (f"; and {more} more" if more > 0
                                                               else "") + ".")
            + " Nothing ran.")
    return out


def line_ranges(lines) -> str:
    """``[2, 3, 4, 7]`` -> ``"lines 2-4, 7"``; ``[5]`` -> ``"line 5"``."""
    lines = sorted(set(lines))
    if len(lines) == 1:
        return f"line {lines[0]}"
    spans, start = [], lines[0]
    for prev, cur in zip(lines, lines[1:] + [None]):
        if cur != prev + 1:
            spans.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = cur
    return "lines " + ", ".join(spans)


def _key(path: str | os.PathLike):
    """Identity of a file: (device, inode) when it exists (hard links are the same file),
    else its absolute path with links resolved."""
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return os.path.realpath(path)


def check_cross_row_paths(manifest: str | os.PathLike, rows: list[Row], *,
                          results: str | os.PathLike | None = None) -> list[str]:
    """Every way a manifest's rows would write over a file that is read or written elsewhere.

    Returns
    -------
    list of str
        One problem per collision, naming the lines: two rows (or one row twice) write the same
        file; a row writes a file that a row reads, the manifest itself, or (with ``dicom``) into
        a folder that holds a row's input; the results file is the manifest, an input or an
        output of a row.
    """
    problems: list[str] = []
    manifest_key = _key(manifest)
    writers: dict = {}
    readers: dict = {manifest_key: 0}
    names: dict = {manifest_key: Path(manifest)}
    folders: dict[Path, int] = {}
    for r in rows:
        if r.problem:
            continue
        for p in r.spec.inputs():  # headers and the data files behind them (.mhd -> .zraw)
            for f in files_of(p) or [Path(os.path.realpath(p))]:
                key = _key(f)
                readers.setdefault(key, r.line)
                names.setdefault(key, f)
        for p in r.spec.outputs():  # with the data file a header-only output creates
            for f in [Path(p)] + companion_files(p):
                key = _key(f)
                names.setdefault(key, f)
                if key in writers:
                    where = (f"twice by line {r.line}" if writers[key] == r.line
                             else f"by lines {writers[key]} and {r.line}")
                    problems.append(f"{p} is written {where}; every output must have its own "
                                    "path")
                    continue
                writers[key] = r.line
        if r.spec.dicom:
            folders[Path(os.path.realpath(r.spec.output))] = r.line
    for key, line in writers.items():
        if key == manifest_key:
            problems.append(f"line {line} writes {names[key]}, which is the manifest itself")
        elif key in readers:
            problems.append(f"line {line} writes {names[key]}, which line {readers[key]} reads; "
                            "inputs are never overwritten")
    for folder, line in folders.items():
        for key, reader in readers.items():
            f = Path(os.path.realpath(names.get(key, "")))
            if reader and folder in f.parents:
                problems.append(f"line {line} writes a DICOM series into {folder}, which holds "
                                f"the input {f} of line {reader}")
    if results:
        key = _key(results)
        if key == manifest_key:
            problems.append(f"--results {results} is the manifest itself; choose another name "
                            "for the results file")
        elif key in readers:
            problems.append(f"--results {results} is an input of line {readers[key]}")
        if key in writers:
            problems.append(f"--results {results} is also written by line {writers[key]}")
    return problems


def check_row_folders(rows: list[Row]) -> list[str]:
    """Output folders that are missing or not writable, once each with the lines that write
    there (a DICOM output folder is created, with its parents, by the writer)."""
    missing: dict[Path, list[int]] = {}
    locked: dict[Path, list[int]] = {}
    for r in rows:
        if r.problem:
            continue
        for p in r.spec.outputs():
            q = Path(os.path.abspath(p))
            if r.spec.dicom and p == r.spec.output:
                parent = next((a for a in (q, *q.parents) if a.exists()), None)
                if parent is None or not parent.is_dir():
                    missing.setdefault(q, []).append(r.line)
                    continue
            else:
                parent = q.parent
                if not parent.is_dir():
                    missing.setdefault(parent, []).append(r.line)
                    continue
            if not os.access(parent, os.W_OK | os.X_OK):
                locked.setdefault(parent, []).append(r.line)
    return ([f"the output folder {d} does not exist ({line_ranges(ls)})" for d, ls in missing.items()]
            + [f"the output folder {d} is not writable ({line_ranges(ls)})" for d, ls in locked.items()])


def is_done(spec: PairSpec) -> bool:
    """True when every output of ``spec`` exists (outputs are written atomically, so an existing
    file is a complete one; a DICOM output folder must hold files)."""
    for p in spec.outputs():
        q = Path(p)
        if p == spec.output and spec.dicom:
            if not (q.is_dir() and any(q.iterdir())):
                return False
        elif not q.is_file():
            return False
    return True


class ResultsWriteError(OutputError):
    """A record could not be appended to the results file (a full disk): the batch stops."""


class ResultsFile:
    """The results file of a batch: one record per row, written as rows finish.

    ``.csv`` has the columns :data:`RESULT_COLUMNS`, then ``seconds_<stage>`` and, when metrics
    are computed, one column per metric key. ``.jsonl`` has one standard-JSON object per line
    (NaN written as ``null``) with every field of :class:`~MedFusionLib.job.PairRecord` plus
    ``line``. Each record reaches the disk (one write, then ``fsync``) before the next row is
    handed over; a write that fails (a full disk) is cut back off, so the file never ends in
    half a record.

    Parameters
    ----------
    path : path
        ``.csv`` or ``.jsonl``.
    metric_keys : list of str
        Metric columns of a CSV file (empty when no metrics are computed).
    resume : bool
        Continue an existing file: :meth:`done` names the rows it records as finished with the
        same options. Without it, an existing file is refused (it would be lost).
    """

    def __init__(self, path: str | os.PathLike, *, metric_keys=(), resume: bool = False):
        self.path = Path(path)
        self.kind = self.path.suffix.lower()
        if self.kind not in (".csv", ".jsonl"):
            raise InvalidInputError(f"{self.path}: a results file must end in .csv or .jsonl.")
        if not self.path.parent.is_dir():
            raise InvalidInputError(f"{self.path}: the folder {self.path.parent} does not exist.")
        if self.path.exists() and not resume:
            raise InvalidInputError(f"{self.path}: the results file exists; add --resume to "
                                    "continue that run, or choose another name.")
        self.columns = list(RESULT_COLUMNS) + [f"seconds_{s}" for s in _STAGES] + list(metric_keys)
        self.previous = self._read() if self.path.exists() else []
        #: Lines recorded as done whose options differ now: they run again (see :meth:`done`).
        self.changed: list[int] = []
        self._fd: int | None = None

    def _read(self) -> list[dict]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{self.path}: cannot read the results file ({exc}).") from None
        if self.kind == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
            if rows and not {"line", "status", "output"} <= set(rows[0]):
                raise InvalidInputError(f"{self.path}: this is not a results file of medfusion "
                                        "batch (no line, status and output columns).")
            return rows
        out = []
        for ln in text.splitlines():
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: that row runs again
        return out

    def done(self, rows: list[Row]) -> dict[int, dict]:
        """``{line: previous record}`` of the rows a resumed run skips: recorded ``ok`` (or
        ``skipped``) for the same fixed, moving and output **and the same options** (method,
        registration, parameters, every other option: :meth:`~MedFusionLib.job.PairSpec.options_digest`),
        with every output present. A row recorded with other options (or by a version that
        recorded none) runs again; :attr:`changed` names those lines."""
        def key(fixed, moving, output):
            return tuple(os.path.realpath(p) if p else "" for p in (fixed, moving, output))

        finished = {key(r.get("fixed"), r.get("moving"), r.get("output")): r for r in self.previous
                    if r.get("status") in ("ok", "skipped")}
        out, self.changed = {}, []
        for row in rows:
            s = row.spec
            prev = finished.get(key(s.fixed, s.moving, s.output))
            if prev is None or row.problem or not is_done(s):
                continue
            if prev.get("options") != s.options_digest():
                self.changed.append(row.line)
                continue
            out[row.line] = prev
        return out

    def open(self, kept: list[dict] = ()) -> "ResultsFile":
        """Start the file (atomically, verified) with the ``kept`` records of a resumed run, then
        append.

        Raises
        ------
        OutputError
            The file cannot be written (a full disk, a read-only folder).
        """
        if self.kind == ".csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, self.columns, extrasaction="ignore")
            w.writeheader()
            for rec in kept:
                w.writerow(dict(rec, status="skipped"))
            text = buf.getvalue()
        else:
            text = "".join(json_text(dict(rec, status="skipped")) + "\n" for rec in kept)
        write_text(self.path, text)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot append to the results file "
                              f"({exc.strerror or exc}).") from None
        return self

    def write(self, line: int, record: PairRecord) -> None:
        """Append one record in a single write and ``fsync`` it.

        Raises
        ------
        ResultsWriteError
            The record could not be written (a full disk): the file is cut back to the end of
            the previous record.
        """
        if self.kind == ".csv":
            row = {k: v for k, v in record.to_dict().items() if k in RESULT_COLUMNS}
            row.update(line=line, seconds=round(record.seconds, 3),
                       registration=record.registration.get("mode", ""))
            row.update({f"seconds_{k}": round(v, 3) for k, v in record.stages.items()})
            row.update(record.metrics)
            text = _CsvLine(self.columns).format(row)
        else:
            text = json_text({"line": line, **record.to_dict()}) + "\n"
        data = text.encode("utf-8")
        fd = self._fd
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise ResultsWriteError(f"{self.path}: could not record line {line} "
                                    f"({exc.strerror or exc})") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _CsvLine:
    """Formats one CSV row as a single string, so it reaches the file in one write."""

    def __init__(self, columns):
        self._buf = io.StringIO()
        self._w = csv.DictWriter(self._buf, columns, extrasaction="ignore")

    def format(self, row: dict) -> str:
        self._w.writerow({k: _cell(v) for k, v in row.items()})
        return self._buf.getvalue()


def _cell(value):
    if isinstance(value, float):
        return repr(value)
    return value

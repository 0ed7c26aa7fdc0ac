"""Cohorts: a batch manifest as pair jobs, its safety checks, the results file and resume.

A manifest is a CSV file with a header row. ``fixed``, ``moving`` and ``output`` are required;
every other column is optional and overrides, for its row, the command-line option of the same
name (:data:`SPEC_COLUMNS` and every fusion option, named like its flag: ``register``,
``fixed_modality``, ``ct_window``, ``method``, ``seed``, ``param`` ...). An empty cell takes the
command-line value. Paths are relative to the manifest's folder unless absolute.

:func:`read_cohort` turns the manifest into :class:`~MedFusionLib.job.PairSpec` objects and
refuses, before anything runs, a manifest where two rows write the same file or a row writes a
file that another row reads. :class:`ResultsFile` keeps one record per finished row (``.csv`` or
``.jsonl``), flushed as each row finishes, and tells a resumed run which rows are already done.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import InvalidInputError
from .imagefiles import companion_files, files_of
from .job import INPUT_OPTIONS, PairRecord, PairSpec
from .options import look_up
from .outputs import jsonable

__all__ = ["SPEC_COLUMNS", "Row", "read_manifest", "read_cohort", "check_cross_row_paths", "ResultsFile",
           "RESULT_COLUMNS", "is_done"]

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
                  "model", "model_sha256", "device", "registration", "worker")
_STAGES = ("read", "normalise", "register", "resample", "fuse", "metrics", "write")


#: Manifest columns that hold paths (resolved against the manifest's folder).
PATH_COLUMNS = ("fixed", "moving", "output")


def read_manifest(path: str | os.PathLike, required: tuple[str, ...],
                  path_columns: tuple[str, ...] = PATH_COLUMNS) -> list[dict]:
    """Rows of a CSV manifest (``batch``, ``compare``), header names lower-cased.

    ``path_columns`` are resolved against the manifest's folder unless absolute; an empty cell stays empty (the caller decides whether that skips the row or
    fails). Each row gets ``_line``, its line number in the file.

    Raises
    ------
    InvalidInputError
        If the file is missing, not UTF-8 text, its header lacks a ``required`` column, or it has
        no rows.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{p}: manifest not found.")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{p}: the manifest is not UTF-8 text (byte {exc.start}).") from None
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise InvalidInputError(f"{p}: the header must name the columns {','.join(required)}; "
                                    f"missing: {', '.join(missing)}.")
        rows = []
        for raw in reader:
            line = reader.line_num
            if None in raw:
                raise InvalidInputError(f"{p}, line {line}: more cells than the header has columns.")
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
            if not any(row.values()):
                continue
            for c in path_columns:
                if row.get(c) and not Path(row[c]).is_absolute():
                    row[c] = str(p.parent / row[c])
            row["_line"] = line
            rows.append(row)
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


def read_cohort(manifest: str | os.PathLike, defaults: PairSpec, fusion_actions=()) -> list[Row]:
    """The rows of a batch manifest as pair jobs.

    Parameters
    ----------
    manifest : path
        CSV with the columns ``fixed,moving,output`` and any per-row option columns.
    defaults : PairSpec
        The command line's options (its paths are ignored): the value of every empty cell.
    fusion_actions : sequence of argparse actions
        The fusion options that may also be given per row (``args._fusion_actions``).

    Returns
    -------
    list of Row
        In file order; a row with an empty ``fixed``, ``moving`` or ``output`` has a ``problem``
        (it is reported as failed, the others still run).

    Raises
    ------
    InvalidInputError
        The manifest is unusable: missing, unreadable, no rows, an unknown column (a misspelt
        option must not be ignored silently), a value that is not valid for its column, or paths
        that collide across rows (:func:`check_cross_row_paths`).
    """

    path = Path(manifest)
    fusion_cols = _fusion_columns(fusion_actions)
    rows = read_manifest(path, ("fixed", "moving", "output"),
                         path_columns=("fixed", "moving", "output", "metrics", "transform",
                                       "weights_map") + INPUT_OPTIONS)
    known = ("fixed", "moving", "output", *SPEC_COLUMNS, *_ALIASES, *fusion_cols)
    for col in rows[0]:
        if col != "_line" and not col.startswith(("x_", "#")) and col not in known:
            look_up(col, known, what=f"column of {path} (own columns: prefix them with x_)")
    out = []
    for row in rows:
        line = row["_line"]
        fields, fusion = {}, dict(defaults.fusion)
        for col, text in row.items():
            if col == "_line" or not text or col.startswith(("x_", "#")):
                continue
            where = f"{path}, line {line}, column {col}"
            col = _ALIASES.get(col, col)
            if col in ("fixed", "moving", "output"):
                fields[col] = text
            elif col in SPEC_COLUMNS:
                fields[col] = _bool(text, where) if SPEC_COLUMNS[col] == "bool" else text
            elif col in fusion_cols:
                action = fusion_cols[col]
                fusion[action.dest] = _fusion_value(action, text, where, fusion.get(action.dest))
        if fields.get("color") and fields.get("grey", defaults.grey):
            raise InvalidInputError(f"{path}, line {line}: color and grey exclude each other.")
        if fields.get("grey") and defaults.color and "color" not in fields:
            fields["color"] = None
        if fields.get("color") and defaults.grey and "grey" not in fields:
            fields["grey"] = False
        missing = [c for c in ("fixed", "moving", "output") if not fields.get(c)]
        spec = replace(defaults, fixed=fields.pop("fixed", ""), moving=fields.pop("moving", ""),
                       output=fields.pop("output", ""), fusion=fusion, label=f"line {line}",
                       **fields)
        out.append(Row(line, spec, f"empty column(s): {', '.join(missing)}" if missing else ""))
    check_cross_row_paths(path, out)
    return out


def check_cross_row_paths(manifest: str | os.PathLike, rows: list[Row]) -> None:
    """Refuse a manifest whose rows would write over each other's files.

    Raises
    ------
    InvalidInputError
        Naming the lines: two rows (or one row twice) write the same file, or a row writes a
        file that a row reads (or, with ``dicom``, into a folder that holds a row's input).
    """
    writers: dict[Path, int] = {}
    readers: dict[Path, int] = {}
    folders: dict[Path, int] = {}
    for r in rows:
        if r.problem:
            continue
        for p in r.spec.inputs():  # headers and the data files behind them (.mhd -> .zraw)
            for key in files_of(p) or [Path(p).resolve()]:
                readers.setdefault(key, r.line)
        for p in r.spec.outputs():  # with the data file a header-only output creates
            for key in [Path(p).resolve()] + [c.resolve() for c in companion_files(p)]:
                if key in writers:
                    where = (f"twice by line {r.line}" if writers[key] == r.line
                             else f"by lines {writers[key]} and {r.line}")
                    raise InvalidInputError(f"{manifest}: {p} is written {where}; every output "
                                            "must have its own path.")
                writers[key] = r.line
        if r.spec.dicom:
            folders[Path(r.spec.output).resolve()] = r.line
    for key, line in writers.items():
        if key in readers:
            raise InvalidInputError(f"{manifest}: line {line} writes {key}, which line "
                                    f"{readers[key]} reads; inputs are never overwritten.")
    for folder, line in folders.items():
        for key, reader in readers.items():
            if folder in key.parents:
                raise InvalidInputError(f"{manifest}: line {line} writes a DICOM series into "
                                        f"{folder}, which holds the input {key} of line {reader}.")


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


class ResultsFile:
    """The results file of a batch: one record per row, written as rows finish.

    ``.csv`` has the columns :data:`RESULT_COLUMNS`, then ``seconds_<stage>`` and, when metrics
    are computed, one column per metric key. ``.jsonl`` has one JSON object per line with every
    field of :class:`~MedFusionLib.job.PairRecord` plus ``line``. Each record is flushed to disk
    when it is written, so a crash keeps every finished row.

    Parameters
    ----------
    path : path
        ``.csv`` or ``.jsonl``.
    metric_keys : list of str
        Metric columns of a CSV file (empty when no metrics are computed).
    resume : bool
        Continue an existing file: :meth:`done` names the rows it records as finished. Without
        it, an existing file is refused (it would be lost).
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
        self._fh = None

    def _read(self) -> list[dict]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{self.path}: cannot read the results file ({exc}).") from None
        if self.kind == ".csv":
            return list(csv.DictReader(text.splitlines()))
        out = []
        for ln in text.splitlines():
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: that row runs again
        return out

    def done(self, rows: list[Row]) -> dict[int, dict]:
        """``{line: previous record}`` of the rows a resumed run skips: recorded ``ok`` (or
        ``skipped``) for the same fixed, moving and output, with every output present."""
        def key(fixed, moving, output):
            return tuple(str(Path(p).resolve()) if p else "" for p in (fixed, moving, output))

        finished = {key(r.get("fixed"), r.get("moving"), r.get("output")): r for r in self.previous
                    if r.get("status") in ("ok", "skipped")}
        out = {}
        for row in rows:
            s = row.spec
            prev = finished.get(key(s.fixed, s.moving, s.output))
            if prev is not None and not row.problem and is_done(s):
                out[row.line] = prev
        return out

    def open(self, kept: list[dict] = ()) -> "ResultsFile":
        """Start the file (atomically) with the ``kept`` records of a resumed run, then append."""
        fd, tmp = tempfile.mkstemp(prefix=".medfusion-", suffix=self.kind, dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                if self.kind == ".csv":
                    w = csv.DictWriter(fh, self.columns, extrasaction="ignore")
                    w.writeheader()
                    for rec in kept:
                        w.writerow(dict(rec, status="skipped"))
                else:
                    for rec in kept:
                        fh.write(json.dumps(dict(rec, status="skipped")) + "\n")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._fh = self.path.open("a", encoding="utf-8", newline="")
        return self

    def write(self, line: int, record: PairRecord) -> None:
        """Append one record and flush it to disk."""
        if self.kind == ".csv":
            row = {k: v for k, v in record.to_dict().items() if k in RESULT_COLUMNS}
            row.update(line=line, seconds=round(record.seconds, 3),
                       registration=record.registration.get("mode", ""))
            row.update({f"seconds_{k}": round(v, 3) for k, v in record.stages.items()})
            row.update(record.metrics)
            buf = _CsvLine(self.columns)
            self._fh.write(buf.format(row))
        else:
            self._fh.write(json.dumps({"line": line, **record.to_dict()}, default=jsonable) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

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

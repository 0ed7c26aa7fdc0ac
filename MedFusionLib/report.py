"""Method comparison: run every fusion method on the same registered pair(s), score and report.

:func:`run_comparison` aligns each pair once (:func:`MedFusionLib.pipeline.align_pair`, or for a
pair given as a job spec the pair job's own first half, :func:`MedFusionLib.job.align_spec`), fuses it
with every requested method (:func:`MedFusionLib.driver.fuse_arrays`) and scores each result
with :func:`MedFusionLib.metrics.volume_metrics`. :func:`write_report` writes, into one folder:

=============================  ====================================================================
``table2.csv`` / ``.md``       the review's Table 2 layout (SCD, FS, FMI, FF), mean over pairs
``table3.csv`` / ``.md``       the review's Table 3 layout (SD, M, E, FI)
``standard.csv`` / ``.md``     the literature's standard set
``per_pair.csv``               every value: pair, method, metric, value
``spider_table2.png`` ...      spider charts like the review's Figs. 5-6 (and one for the standard set)
``montage_<pair>.png``         sources and every fused result, like Figs. 3-4
``zoom_<pair>.png``            a zoomed crop of each, like Fig. 7
``boxplots/<metric>.png``      one box plot per metric: spread across pairs, per method
``report.html``                one page showing all of the above
``results.json``               the numbers and settings
=============================  ====================================================================

In the tables the best value of each column is marked (``**bold**`` in Markdown and HTML, a
``best`` row in CSV), following each metric's direction (:data:`MedFusionLib.metrics.METRICS`).
As in the review, dataset figures are arithmetic means over the pairs.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import optional
from .driver import fuse_arrays
from .errors import InvalidInputError, MedFusionError
from .figures import add_contribution_legend, contribution_overlay, save_figure
from .job import align_spec
from .methods import get_method, list_methods
from .metrics import GREY_SCALE, METRICS, MI_SETTINGS, STANDARD_KEYS, best_index, resolve_keys, volume_metrics
from .outputs import write_text
from .pipeline import align_pair
from .progress import ProgressCallback, report

__all__ = ["PairInput", "PairOutcome", "ComparisonResult", "REVIEW_TABLES", "resolve_methods",
           "run_comparison", "write_report"]

#: The review's two tables: file stem -> (caption, metric keys in its column order).
REVIEW_TABLES = {
    "table2": ("Table 2: average quantitative analysis as per SCD, FS, FMI and FF",
               ("SCD", "FS", "FMI_pixel", "FF")),
    "table3": ("Table 3: average quantitative analysis as per SD, M, E and FI",
               ("SD", "M", "EN", "FI")),
}

#: Column titles the review uses where they differ from the metric keys.
_REVIEW_NAMES = {"FMI_pixel": "FMI", "EN": "E"}

_ARROW = {"higher": "↑", "lower": "↓", "target": "→1"}


@dataclass
class PairInput:
    """One source pair to compare methods on.

    Attributes
    ----------
    name : str
        Short label used in file names and tables.
    fixed, moving : SimpleITK.Image
        The sources; results live on ``fixed``'s grid.
    fixed_name, moving_name : str
        Where they came from (paths), for messages and the report.
    fixed_modality, moving_modality : str or None
        Modality overrides (``CT``, ``MR``, ``PET``, ``SPECT``, ``8BIT``).
    spec : MedFusionLib.job.PairSpec, optional
        Instead of ``fixed`` and ``moving`` (then None): a pair job's spec, read and aligned as
        every pair job is (:func:`MedFusionLib.job.align_spec`: paths, DICOM series, masks,
        initial transform, strict registration), when its turn comes. The spec's fusion options
        (registration, modalities, CT window, seed) then replace the comparison's.
    """

    name: str
    fixed: object = None
    moving: object = None
    fixed_name: str = "fixed image"
    moving_name: str = "moving image"
    fixed_modality: str | None = None
    moving_modality: str | None = None
    spec: object = None


@dataclass
class PairOutcome:
    """What one pair gave: display slices, metric values per method, timings and failures."""

    name: str
    fixed_name: str
    moving_name: str
    display: dict[str, np.ndarray]  # "fixed", "moving", then method -> 2D slice in [0, 1]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    slices: dict[str, tuple[int, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    contributions: dict[str, np.ndarray] = field(default_factory=dict)  # method -> RGB overlay


@dataclass
class ComparisonResult:
    """All pairs of a comparison, with the methods and metric keys used."""

    methods: list[str]
    keys: list[str]
    pairs: list[PairOutcome]
    settings: dict = field(default_factory=dict)

    def mean_table(self) -> dict[str, dict[str, float]]:
        """``{method: {key: mean over the pairs where it is defined}}`` (NaN if none)."""
        out = {}
        for m in self.methods:
            row = {}
            for k in self.keys:
                vals = [p.metrics[m][k] for p in self.pairs
                        if m in p.metrics and not math.isnan(p.metrics[m][k])]
                row[k] = float(np.mean(vals)) if vals else float("nan")
            out[m] = row
        return out

    def values(self, method: str, key: str) -> list[float]:
        """Per-pair values of one metric for one method (defined ones only)."""
        return [p.metrics[method][key] for p in self.pairs
                if method in p.metrics and not math.isnan(p.metrics[method][key])]


def resolve_methods(methods) -> list[str]:
    """``None``/``"all"`` -> every available registered method; else validated names (sorted input
    order kept). A comma-separated string is accepted."""
    if methods is None or (isinstance(methods, str) and methods.strip().lower() == "all"):
        return [n for n, info in list_methods(details=True).items() if info.available]
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    names = []
    for m in methods:
        info = get_method(m.strip())
        if info.name not in names:
            names.append(info.name)
    if not names:
        raise InvalidInputError("no fusion method given; use 'all' or a comma-separated list.")
    return names


def _display_index(fixed01: np.ndarray, moving01: np.ndarray, axis: int) -> int:
    """The slice along ``axis`` with the most foreground in both sources."""
    fg = (np.moveaxis(fixed01, axis, 0) > 0.05).sum(axis=(1, 2)) + \
        (np.moveaxis(moving01, axis, 0) > 0.05).sum(axis=(1, 2))
    return int(np.argmax(fg))


def _slice(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.asarray(np.moveaxis(vol, axis, 0)[index], dtype=np.float32) if vol.ndim == 3 else \
        np.asarray(vol, dtype=np.float32)


def run_comparison(pairs: list[PairInput], *, methods=None, keys=None, registration: str | None = None,
                   device: str = "auto", ct_window=None, seed: int = 0, max_slices: int = 16,
                   progress: ProgressCallback | None = None) -> ComparisonResult:
    """Fuse every pair with every method and score the results.

    Parameters
    ----------
    pairs : list of PairInput
        The source pairs (2D images or 3D volumes).
    methods : str or list of str, optional
        Registered method names, ``"all"`` or None for every available one.
    keys : str or list of str, optional
        Metric keys (default all, see :data:`MedFusionLib.metrics.METRICS`).
    registration : {"none", "rigid", "affine", "bspline"}, optional
        How each moving image is aligned (once per pair, shared by all methods); default rigid
        for 3D, none for 2D.
    device : str, optional
        Device of torch methods.
    ct_window : optional
        CT window for a CT source.
    seed : int, optional
        Registration seed.
    max_slices : int, optional
        For volumes, score at most about this many slices (every n-th along the fusion axis);
        the literature's metrics are 2D and a full-set score costs about a second per slice.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    ComparisonResult

    Raises
    ------
    InvalidInputError
        If no pair is given, a pair cannot be aligned, or every method failed on every pair.
    """

    if not pairs:
        raise InvalidInputError("no source pair to compare.")
    if int(max_slices) != max_slices or max_slices < 1:
        raise InvalidInputError(f"max_slices must be a positive integer, got {max_slices!r}.")
    names = resolve_methods(methods)
    keys = list(resolve_keys(keys))
    seen = set()
    for p in pairs:
        if p.name in seen:
            raise InvalidInputError(f"two pairs are named '{p.name}'; pair names must be unique.")
        seen.add(p.name)
    steps = len(pairs) * (len(names) + 1)
    done = 0
    outcomes = []
    for p in pairs:
        report(progress, done / steps, f"{p.name}: normalising and registering")
        if p.spec is not None:
            aligned = align_spec(p.spec)
        else:
            aligned = align_pair(p.fixed, p.moving, registration=registration,
                                 fixed_modality=p.fixed_modality, moving_modality=p.moving_modality,
                                 ct_window=ct_window, seed=seed, fixed_name=p.fixed_name,
                                 moving_name=p.moving_name)
        done += 1
        a, b, axis = aligned.fixed01, aligned.moving01, aligned.axis
        n_slices = a.shape[axis] if a.ndim == 3 else 1
        step = max(1, math.ceil(n_slices / max_slices))
        index = _display_index(a, b, axis) if a.ndim == 3 else 0
        out = PairOutcome(p.name, p.fixed_name, p.moving_name,
                          display={"fixed": _slice(a, axis, index), "moving": _slice(b, axis, index)},
                          settings={"registration": aligned.registration.to_dict(),
                                    "fixed_normalization": aligned.fixed_norm.to_dict(),
                                    "moving_normalization": aligned.moving_norm.to_dict(),
                                    "slice_axis": axis, "display_slice": index,
                                    "slice_step": step})
        for m in names:
            report(progress, done / steps, f"{p.name}: fusing with {m}")
            t0 = time.perf_counter()
            with_weights = get_method(m).provides_weights
            try:
                fused = fuse_arrays(a, b, method=m, axis=axis, device=device,
                                    return_weights=with_weights,
                                    **get_method(m).with_modalities(
                                        {}, (aligned.fixed_norm.modality,
                                             aligned.moving_norm.modality)))
            except MedFusionError as exc:
                out.errors[m] = str(exc)
                done += 1
                continue
            out.seconds[m] = time.perf_counter() - t0
            if with_weights:
                fused, weights = fused
            out.display[m] = _slice(fused, axis, index)
            if with_weights:
                out.contributions[m] = contribution_overlay(out.display[m], _slice(weights, axis, index))
            report(progress, done / steps, f"{p.name}: scoring {m}")
            vals = volume_metrics(a, b, np.clip(fused, 0.0, 1.0), axis=axis, keys=keys,
                                  slice_step=step)
            out.slices[m] = (vals.pop("slices_used"), vals.pop("slices_total"))
            out.metrics[m] = vals
            done += 1
        outcomes.append(out)
    if not any(o.metrics for o in outcomes):
        errs = "; ".join(f"{m}: {e}" for o in outcomes for m, e in o.errors.items())
        raise InvalidInputError(f"every method failed on every pair ({errs}).")
    report(progress, 1.0, f"compared {len(names)} methods on {len(pairs)} pair(s)")
    settings = {"registration": registration or "default (rigid for 3D, none for 2D)",
                "device": device, "seed": seed, "max_slices": max_slices,
                "mi_settings": MI_SETTINGS, "grey_scale": GREY_SCALE}
    return ComparisonResult(names, keys, outcomes, settings)


# ---- writing -------------------------------------------------------------------------------------

def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if abs(v) >= 1000:
        return f"{v:.1f}"
    return f"{v:.4f}"


def _title(key: str) -> str:
    return _REVIEW_NAMES.get(key, key)


def _atomic_write_text(path: Path, text: str) -> Path:
    return write_text(path, text)


def _csv_text(rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(rows)
    return buf.getvalue()


def _table_rows(result: ComparisonResult, keys) -> tuple[list[str], dict[str, dict[str, float]], dict[str, int | None]]:
    table = result.mean_table()
    methods = [m for m in result.methods if any(m in p.metrics for p in result.pairs)]
    best = {k: best_index(k, [table[m][k] for m in methods]) for k in keys}
    return methods, table, best


def _write_table(result: ComparisonResult, out: Path, stem: str, caption: str, keys) -> list[Path]:
    keys = [k for k in keys if k in result.keys]
    methods, table, best = _table_rows(result, keys)
    rows = [["method", *keys]]
    for m in methods:
        rows.append([m, *[("" if math.isnan(table[m][k]) else repr(table[m][k])) for k in keys]])
    rows.append(["best", *[(methods[best[k]] if best[k] is not None else "") for k in keys]])
    csv_path = _atomic_write_text(out / f"{stem}.csv", _csv_text(rows))

    head = "| Method | " + " | ".join(f"{_title(k)} {_ARROW[METRICS[k].direction]}" for k in keys) + " |"
    lines = [f"**{caption}** (mean over {len(result.pairs)} pair(s); best per column in bold)", "",
             head, "|" + "---|" * (len(keys) + 1)]
    for i, m in enumerate(methods):
        cells = []
        for k in keys:
            s = _fmt(table[m][k])
            cells.append(f"**{s}**" if best[k] == i else s)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "↑ higher is better, ↓ lower is better, →1 closest to 1 is best."]
    md_path = _atomic_write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
    return [csv_path, md_path]


def _plt():
    return optional.pyplot(what="the compare report's figures")


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path, dpi=110)


def _spider(result: ComparisonResult, keys, path: Path, title: str) -> Path:
    plt = _plt()
    keys = [k for k in keys if k in result.keys]
    methods, table, _ = _table_rows(result, keys)
    angles = np.linspace(0, 2 * np.pi, len(keys), endpoint=False)
    fig = plt.figure(figsize=(6.4, 6.0))
    ax = fig.add_subplot(111, polar=True)
    scale = {}
    for k in keys:
        vals = [abs(table[m][k]) for m in methods if math.isfinite(table[m][k])]
        scale[k] = max(vals) if vals and max(vals) > 0 else 1.0
    for m in methods:
        r = [table[m][k] / scale[k] if math.isfinite(table[m][k]) else 0.0 for k in keys]
        ax.plot(np.append(angles, angles[0]), r + r[:1], linewidth=1.5, label=m)
        ax.fill(np.append(angles, angles[0]), r + r[:1], alpha=0.06)
    ax.set_xticks(angles)
    ax.set_xticklabels([f"{_title(k)} {_ARROW[METRICS[k].direction]}\n(max {scale[k]:.3g})"
                        for k in keys], fontsize=8)
    ax.set_yticklabels([])
    ax.set_title(title + "\n(each axis divided by its largest value)", fontsize=10)
    ax.legend(loc="upper right", bbox_to_anchor=(1.32, 1.1), fontsize=8)
    return _save(fig, path)


def _panel_grid(images: dict[str, np.ndarray], title: str, path: Path, *, box=None,
                contribution_legend: bool = False) -> Path:
    plt = _plt()
    n = len(images)
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.7 * rows + 0.4), squeeze=False)
    letters = "abcdefghijklmnopqrstuvwxyz"
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        name, img = list(images.items())[i]
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"({letters[i % 26]}) {name}", fontsize=9)
        if box is not None and i == 0:
            r0, r1, c0, c1 = box
            ax.add_patch(plt.Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False,
                                       edgecolor="yellow", linewidth=1.2))
    if contribution_legend:
        add_contribution_legend(fig, axes.ravel().tolist())
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _zoom_box(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    """A square crop (about a third of the smaller side) where the sources have most edges."""

    size = max(8, min(a.shape) // 3)
    energy = sum(np.hypot(*np.gradient(x.astype(np.float64))) for x in (a, b))
    local = ndimage.uniform_filter(energy, size=size, mode="constant")
    r, c = np.unravel_index(int(np.argmax(local)), local.shape)
    r0 = int(np.clip(r - size // 2, 0, max(0, a.shape[0] - size)))
    c0 = int(np.clip(c - size // 2, 0, max(0, a.shape[1] - size)))
    return r0, min(a.shape[0], r0 + size), c0, min(a.shape[1], c0 + size)


def _boxplot(result: ComparisonResult, key: str, path: Path) -> Path:
    plt = _plt()
    methods = [m for m in result.methods if result.values(m, key)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(methods) + 1.5), 3.4))
    if methods:
        ax.boxplot([result.values(m, key) for m in methods], showmeans=True)
        ax.set_xticks(range(1, len(methods) + 1))
        ax.set_xticklabels(methods, rotation=30, fontsize=8)
    info = METRICS[key]
    ax.set_title(f"{key}: {info.name} ({info.direction_text}); {len(result.pairs)} pair(s)",
                 fontsize=9)
    return _save(fig, path)


def _safe_name(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return keep.strip("._") or "pair"


def _html_table(result: ComparisonResult, keys, caption: str) -> str:
    keys = [k for k in keys if k in result.keys]
    methods, table, best = _table_rows(result, keys)
    head = "".join(f"<th title='{html.escape(METRICS[k].name)}'>{html.escape(_title(k))} "
                   f"{_ARROW[METRICS[k].direction]}</th>" for k in keys)
    body = []
    for i, m in enumerate(methods):
        cells = "".join(
            f"<td class='{'best' if best[k] == i else ''}'>{_fmt(table[m][k])}</td>" for k in keys)
        body.append(f"<tr><th>{html.escape(m)}</th>{cells}</tr>")
    return (f"<table><caption>{html.escape(caption)}</caption><tr><th>Method</th>{head}</tr>"
            + "".join(body) + "</table>")


_NOTES = (
    "The review's FS (0.86-0.99), FI (20-32) and FMI (up to 1.21) cannot be reproduced from any "
    "published formula; this report uses the documented forms: FS = |I_AF/(I_AF+I_BF) - 0.5| "
    "(lower is better), FI = I_AF/I_BF (closest to 1 is best) and normalised Fast-FMI on pixels "
    "(at most 1). Compare orderings and trends with the review, not absolute values."
)


def write_report(result: ComparisonResult, out_dir: str | os.PathLike, *,
                 title: str = "MedFusion method comparison") -> dict[str, Path]:
    """Write the tables, figures, HTML page and JSON of a comparison into ``out_dir``.

    Parameters
    ----------
    result : ComparisonResult
        From :func:`run_comparison`.
    out_dir : path-like
        Output folder; created if missing (its parent must exist).
    title : str, optional
        Heading of the HTML page.

    Returns
    -------
    dict of str to Path
        Every file written, by role (``"table2.csv"``, ``"report.html"``, ...).

    Raises
    ------
    InvalidInputError
        If the parent of ``out_dir`` does not exist or ``out_dir`` is a file.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out}: exists and is not a folder.")
    if not out.parent.exists():
        raise InvalidInputError(f"{out}: its parent folder {out.parent} does not exist.")
    out.mkdir(exist_ok=True)
    (out / "boxplots").mkdir(exist_ok=True)
    files: dict[str, Path] = {}

    std_keys = [k for k in STANDARD_KEYS if k in result.keys]
    for stem, (caption, keys) in REVIEW_TABLES.items():
        for p in _write_table(result, out, stem, caption, keys):
            files[p.name] = p
    if std_keys:
        for p in _write_table(result, out, "standard", "The standard fusion metrics", std_keys):
            files[p.name] = p
    rows = [["pair", "method", "metric", "value"]]
    for p in result.pairs:
        for m, vals in p.metrics.items():
            rows += [[p.name, m, k, repr(v)] for k, v in vals.items()]
    files["per_pair.csv"] = _atomic_write_text(out / "per_pair.csv", _csv_text(rows))

    spiders = []
    for stem, (caption, keys) in REVIEW_TABLES.items():
        if len([k for k in keys if k in result.keys]) >= 3:
            path = _spider(result, keys, out / f"spider_{stem}.png", caption.split(":")[0])
            files[path.name] = path
            spiders.append(path.name)
    spider_std = [k for k in ("Qabf", "MI", "SSIM", "VIF", "Q_CB", "SF", "AG", "FMI_dct")
                  if k in result.keys]
    if len(spider_std) >= 3:
        path = _spider(result, spider_std, out / "spider_standard.png", "Standard metrics")
        files[path.name] = path
        spiders.append(path.name)

    montages = []
    for p in result.pairs:
        tag = _safe_name(p.name)
        shown = {"fixed": p.display["fixed"], "moving": p.display["moving"],
                 **{m: p.display[m] for m in result.methods if m in p.display}}
        r0, r1, c0, c1 = box = _zoom_box(p.display["fixed"], p.display["moving"])
        path = _panel_grid(shown, f"{p.name}: sources and fused results (box: zoomed region)",
                           out / f"montage_{tag}.png", box=box)
        files[path.name] = path
        crops = {k: v[r0:r1, c0:c1] for k, v in shown.items()}
        zpath = _panel_grid(crops, f"{p.name}: zoomed region (rows {r0}-{r1}, columns {c0}-{c1})",
                            out / f"zoom_{tag}.png")
        files[zpath.name] = zpath
        shown_names = [path.name, zpath.name]
        if p.contributions:
            cpath = _panel_grid(p.contributions,
                                f"{p.name}: where each fused pixel came from (tint over the fused slice)",
                                out / f"contribution_{tag}.png", contribution_legend=True)
            files[cpath.name] = cpath
            shown_names.append(cpath.name)
        montages.append((p, shown_names))

    boxes = []
    for k in result.keys:
        path = _boxplot(result, k, out / "boxplots" / f"{_safe_name(k)}.png")
        files[f"boxplots/{path.name}"] = path
        boxes.append(f"boxplots/{path.name}")

    data = {
        "title": title, "methods": result.methods, "keys": result.keys,
        "settings": result.settings,
        "mean": {m: {k: (v if math.isfinite(v) else None) for k, v in row.items()}
                 for m, row in result.mean_table().items()},
        "pairs": [{"name": p.name, "fixed": p.fixed_name, "moving": p.moving_name,
                   "settings": p.settings, "seconds": p.seconds, "errors": p.errors,
                   "slices": {m: {"used": u, "total": t} for m, (u, t) in p.slices.items()},
                   "metrics": {m: {k: (v if math.isfinite(v) else None) for k, v in vals.items()}
                               for m, vals in p.metrics.items()}}
                  for p in result.pairs],
        "metric_info": {k: {"name": METRICS[k].name, "direction": METRICS[k].direction,
                            "citation": METRICS[k].citation, "group": METRICS[k].group}
                        for k in result.keys},
    }
    files["results.json"] = _atomic_write_text(out / "results.json",
                                               json.dumps(data, indent=2, default=str) + "\n")
    files["report.html"] = _atomic_write_text(out / "report.html",
                                              _html(result, title, spiders, montages, boxes))
    return files


def _html(result: ComparisonResult, title: str, spiders, montages, boxes) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>",
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}",
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 7px;"
        "text-align:right}caption{font-weight:bold;text-align:left;padding:4px 0}",
        "td.best{font-weight:bold;background:#e8f4e8}img{max-width:100%}"
        ".grid img{width:32%;margin:0.5%}.note{font-size:90%;color:#555}",
        "</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{len(result.methods)} methods ({esc(', '.join(result.methods))}) on "
        f"{len(result.pairs)} pair(s); values are means over the pairs (per pair: the mean over "
        "the scored slices). Best value per column in bold.</p>",
    ]
    for stem, (caption, keys) in REVIEW_TABLES.items():
        if any(k in result.keys for k in keys):
            parts.append(_html_table(result, keys, caption))
    std_keys = [k for k in STANDARD_KEYS if k in result.keys]
    if std_keys:
        parts.append(_html_table(result, std_keys, "The standard fusion metrics"))
    parts.append(f"<p class='note'>{esc(_NOTES)} Arrows: ↑ higher is better, ↓ lower is better, "
                 "→1 closest to 1 is best.</p>")
    if spiders:
        parts.append("<h2>Spider charts</h2><div class='grid'>"
                     + "".join(f"<img src='{esc(s)}' alt='{esc(s)}'>" for s in spiders) + "</div>")
    parts.append("<h2>Images</h2>")
    for p, images in montages:
        parts.append(f"<h3>{esc(p.name)}</h3><p class='note'>fixed: {esc(p.fixed_name)}; moving: "
                     f"{esc(p.moving_name)}; slice {p.settings.get('display_slice')} along axis "
                     f"{p.settings.get('slice_axis')}</p>")
        parts.append("".join(f"<img src='{esc(name)}' alt='{esc(name.split('_')[0])}'>" for name in images))
        if p.errors:
            parts.append("<p>Failed: " + "; ".join(f"{esc(m)}: {esc(e)}" for m, e in p.errors.items())
                         + "</p>")
    parts.append("<h2>Spread across pairs</h2><div class='grid'>"
                 + "".join(f"<img src='{esc(b)}' alt='{esc(b)}'>" for b in boxes) + "</div>")
    parts.append("<h2>Metrics</h2><table><tr><th>key</th><th>name</th><th>direction</th>"
                 "<th>citation</th></tr>")
    for k in result.keys:
        info = METRICS[k]
        parts.append(f"<tr><td>{esc(k)}</td><td style='text-align:left'>{esc(info.name)}</td>"
                     f"<td>{esc(info.direction_text)}</td><td style='text-align:left'>"
                     f"{esc(info.citation)}</td></tr>")
    parts.append("</table>")
    timing = {m: np.mean([p.seconds[m] for p in result.pairs if m in p.seconds])
              for m in result.methods if any(m in p.seconds for p in result.pairs)}
    parts.append("<h2>Settings and timings</h2><pre>"
                 + esc(json.dumps({"settings": result.settings,
                                   "fusion_seconds_mean": {m: round(float(t), 4)
                                                           for m, t in timing.items()},
                                   "pairs": [{"name": p.name, **p.settings} for p in result.pairs]},
                                  indent=2, default=str)) + "</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

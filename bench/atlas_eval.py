"""Issue #24's benchmark on real pairs: every pair type of the Harvard atlas, held-out cases.

Called by ``python bench/eval_cnn.py --atlas DIR [--part test|val] [--atlas-figures DIR]``
(``DIR``: the folder ``Resources/SampleData/fetch-aanlib.sh`` made). For each pair type (CT-MR,
PET-MR, SPECT-MR) it fuses the ``test`` cases of the split (``Resources/SampleData/aanlib-split.json``;
none of them is used in training or checkpoint selection) under the luminance protocol
(:mod:`MedFusionLib.aanlib`) with

- ``cnn``: the ``cnn`` method given the pair's modalities, i.e. the model ``models.json``
  ``pair_defaults`` names for the pair (the per-pair-type model), else the default;
- ``default``: today's general model ``fusionnet`` (the model before issue #24);
- pixel ``maximum`` and the classical baselines (average, PCA, MSVD, DWT, SWT, WPD, NSCT, NSST),

and prints the mean of the ten metrics and FS (8-bit scoring), the time per slice (fusion only,
CPU), the mean absolute difference of the result from each source (grey levels: a pass-through
of one source is near 0 there), ``HOT`` (:func:`MedFusionLib.pair_targets.hot_gap`: how much of
the second source's hot foci survives in the grey result), and the targets (:func:`MedFusionLib.pair_targets.check_targets`):
metrics at least as good as pixel maximum's (of 10) and FS, the anatomy guard against
``default``, and the metrics at least as good as each classical baseline's.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from MedFusionLib import aanlib
from MedFusionLib.driver import fuse_arrays
from MedFusionLib.figures import save_figure
from MedFusionLib.pair_targets import TEN_KEYS, check_targets, count_as_good, score_pairs

#: Classical baselines the targets compare with (pixel maximum is compared on its own).
CLASSICAL = ("average", "pca", "msvd", "dwt", "swt", "wpd", "nsct", "nsst")
#: Registry name of today's general model.
TODAY = "fusionnet"


def methods_for(pair_type: str) -> dict:
    """``label -> (method, params)`` of the benchmark for one pair type."""
    mods = aanlib.PAIR_TYPES[pair_type].modalities
    out = {"cnn": ("cnn", {"modalities": mods}), "default": ("cnn", {"model": TODAY}),
           "maximum": ("maximum", {})}
    out.update({m: (m, {}) for m in CLASSICAL})
    return out


def fuse_all(pairs: aanlib.AtlasPairs, methods: dict) -> tuple[dict, dict]:
    """``({label: fused (N, H, W)}, {label: seconds per slice})``; the time is of the fusion of
    all slices after an untimed first slice (model loading, first-call set-up)."""
    fused, seconds = {}, {}
    for label, (method, params) in methods.items():
        # one slice first, untimed: model loading and first-call set-up are not per-slice costs
        fuse_arrays(pairs.mr[:1], pairs.other[:1], method=method, device="cpu", **params)
        t0 = time.perf_counter()
        fused[label] = fuse_arrays(pairs.mr, pairs.other, method=method, device="cpu", **params)
        seconds[label] = (time.perf_counter() - t0) / len(pairs.names)
    return fused, seconds


def evaluate(root, part: str = "test", split=None, pair_types=None) -> dict:
    """``{pair_type: {"n": pairs, "cases": [...], "rows": {label: values}, "targets": {...}}}``."""
    split = aanlib.read_split(split)
    results = {}
    for key in pair_types or aanlib.PAIR_TYPES:
        names = aanlib.split_names(root, key, part, split)
        pairs = aanlib.load_pairs(root, key, names)
        fused, seconds = fuse_all(pairs, methods_for(key))
        rows = {}
        for label, f in fused.items():
            row = score_pairs(pairs.mr, pairs.other, f)
            row["ms"] = 1000.0 * seconds[label]
            row["dA"] = 255.0 * float(np.abs(f - pairs.mr).mean())
            row["dB"] = 255.0 * float(np.abs(f - pairs.other).mean())
            rows[label] = row
        classical = {m: rows[m] for m in CLASSICAL}
        targets = {label: check_targets(rows[label], rows["maximum"], rows["default"], classical)
                   for label in ("cnn", "default")}
        for label in ("cnn", "default"):
            targets[label]["vs_each"] = {m: count_as_good(rows[label], rows[m]) for m in CLASSICAL}
        results[key] = {"n": len(names), "cases": split["pair_types"][key][part], "rows": rows,
                        "targets": targets, "fused": fused, "pairs": pairs}
    return results


def print_results(results: dict, part: str) -> None:
    cols = list(TEN_KEYS) + ["FS", "HOT", "ms", "dA", "dB"]
    for key, res in results.items():
        print(f"\n[atlas {key}, {part} cases {res['cases']}, {res['n']} pairs; luminance "
              "protocol, 8-bit scoring; HOT = mean F - B where B > MR + 0.2 (0 = the focus as "
              "bright as in B); ms = fusion time per 256x256 slice, CPU; dA/dB = mean "
              "|F - source| in grey levels]")
        print(f"{'method':10s}" + "".join(f"{k:>8s}" for k in cols))
        for label, row in res["rows"].items():
            print(f"{label:10s}" + "".join(f"{row[k]:8.3f}" if k not in ("ms",) else
                                            f"{row[k]:8.1f}" for k in cols))
        for label in ("cnn", "default"):
            t = res["targets"][label]
            print(f"{label}: at least as good as pixel maximum on {t['vs_max']}/10, FS "
                  f"{'<=' if t['fs'] else '>'} maximum's; anatomy guard vs {TODAY} (Q^AB/F, VIF "
                  f">= -2 %, SSIM >=): {'met' if t['anatomy'] else 'NOT met'}; hot foci vs {TODAY}: "
                  f"{'kept' if t.get('hot', True) else 'FADED'}; vs classical "
                  "baselines: " + ", ".join(f"{m} {n}/10" for m, n in t["vs_each"].items())
                  + f"; all targets {'MET' if t['all'] else 'NOT met'}")


def save_figures(results: dict, out: Path, per_type: int = 2) -> list:
    """Two figures per pair type: ``atlas-KEY-before-after.png`` (MR, the other source in colour
    for PET/SPECT, pixel maximum, today's default (before) and the pair's model (after); the
    functional panels show the fused luminance with the source's chroma, as ``fuse --color``
    does) and ``atlas-KEY-grey.png`` (the same in grey, as fused, plus after - before). Slices:
    evenly spaced through the held-out pairs. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from MedFusionLib.colour import ycbcr_to_rgb

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, res in results.items():
        pairs, fused = res["pairs"], res["fused"]
        n = len(pairs.names)
        picks = [int(i) for i in np.linspace(n * 0.3, n * 0.7, per_type)]
        cols = [("MR", pairs.mr), (aanlib.PAIR_TYPES[key].other, pairs.other),
                ("pixel maximum", fused["maximum"]), (f"before ({TODAY})", fused["default"]),
                ("after (pair model)", fused["cnn"])]
        fig, axes = plt.subplots(len(picks), len(cols), figsize=(2.4 * len(cols), 2.5 * len(picks)),
                                 squeeze=False)
        for r, i in enumerate(picks):
            for c, (title, stack) in enumerate(cols):
                ax = axes[r, c]
                img = stack[i]
                if pairs.cb is not None and c > 0:
                    ax.imshow(ycbcr_to_rgb(img, pairs.cb[i], pairs.cr[i]))
                else:
                    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"{title}\n{pairs.names[i]}" if c == 0 else title, fontsize=7)
                ax.axis("off")
        fig.tight_layout()
        written.append(save_figure(fig, out / f"atlas-{key}-before-after.png", dpi=100))
        grey = out / f"atlas-{key}-grey.png"
        fig, axes = plt.subplots(len(picks), len(cols) + 1, figsize=(2.4 * (len(cols) + 1),
                                                                      2.5 * len(picks)),
                                 squeeze=False)
        for r, i in enumerate(picks):
            for c, (title, stack) in enumerate(cols):
                axes[r, c].imshow(stack[i], cmap="gray", vmin=0, vmax=1)
                axes[r, c].set_title(f"{title} (grey)", fontsize=7)
            diff = fused["cnn"][i] - fused["default"][i]
            im = axes[r, -1].imshow(diff, cmap="RdBu_r", vmin=-0.15, vmax=0.15)
            axes[r, -1].set_title("after - before (+-0.15)", fontsize=7)
            for ax in axes[r]:
                ax.axis("off")
        fig.colorbar(im, ax=axes[:, -1].tolist(), fraction=0.05)
        written.append(save_figure(fig, grey, dpi=100))
    return written


def run(root, part: str, figures: Path | None = None, json_out: Path | None = None) -> dict:
    """Evaluate, print, and optionally write the figures and a JSON of the tables."""
    if not aanlib.is_atlas_folder(root):
        print(f"{root}: not the atlas folder (Resources/SampleData/fetch-aanlib.sh DIR)",
              file=sys.stderr)
        raise SystemExit(2)
    results = evaluate(root, part)
    print_results(results, part)
    if figures is not None:
        for path in save_figures(results, figures):
            print(f"wrote {path}")
    if json_out is not None:
        json_out.write_text(json.dumps({k: {"n": v["n"], "cases": v["cases"], "rows": v["rows"],
                                            "targets": v["targets"]}
                                        for k, v in results.items()}, indent=1))
    return results

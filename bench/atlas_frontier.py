"""Where issue #24's targets conflict on real pairs: a frontier on the atlas validation cases.

For each pair type of the Harvard atlas (``--atlas DIR``, the folder of
``Resources/SampleData/fetch-aanlib.sh``) this scores, on the ``val`` cases of the split only
(never the test cases):

- hand-built changes of today's default ``fusionnet`` output C toward the functional (or CT)
  source B: a global blend toward pixel maximum ``C + t (max(A, B) - C)``, a partial maximum
  ``C + t relu(B - C)``, an additive ``clip(C + t B)``, a soft addition ``C + t B (1 - C)`` and
  an unsharp mask ``C + t (C - gauss(C, 1 px))`` (the detail that DWT and WPD win EN, SF and AG
  with; diagnostic only: they do not all keep F(A, A) = A);
- the checkpoints the training runs validated (``--models``: ``.pt`` files written by
  ``medfusion train`` with ``val_every``; their meta holds every validation).

It prints each point's anatomy guard (Q^AB/F and VIF relative to the default, SSIM difference),
its FS against pixel maximum's, how many of the ten metrics are at least as good as pixel
maximum's, the fewest of the ten at least as good as any classical baseline's (``vsbase``: the
baselines of ``atlas_eval.CLASSICAL`` fused on the same pairs), and how much brighter than the
default's its hot foci are (``HOT`` gain, where the second source exceeds the MR by 0.2;
checkpoints validated before ``HOT`` was scored show ``-``; for runs selected with
``val_per_case``, the share of validation cases on which the guard holds on its own is printed
after the mean's verdict). It draws FS against VIF relative to the default (top row) and the
``HOT`` gain against the SSIM difference (bottom row), one column per pair type.

Usage::

    python bench/atlas_frontier.py --atlas DIR [--models a.pt,b.pt] [--figure OUT.png] [--out OUT.txt]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from MedFusionLib import aanlib  # noqa: E402
from MedFusionLib.driver import fuse_arrays  # noqa: E402
from MedFusionLib.figures import save_figure  # noqa: E402
from MedFusionLib.pair_targets import check_targets, count_as_good, score_pairs  # noqa: E402
from atlas_eval import CLASSICAL  # noqa: E402  (bench/ is the script's folder)

FAMILIES = {
    "toward max": (lambda c, a, b, t: c + t * (np.maximum(a, b) - c), (0.25, 0.5, 0.75)),
    "partial max": (lambda c, a, b, t: c + t * np.maximum(b - c, 0.0), (0.25, 0.5, 1.0)),
    "additive": (lambda c, a, b, t: c + t * b, (0.1, 0.2, 0.3, 0.5)),
    "soft addition": (lambda c, a, b, t: c + t * b * (1.0 - c), (0.3, 0.5, 1.0)),
    "sharpen": (lambda c, a, b, t: c + t * (c - ndimage.gaussian_filter(c, (0, 1, 1))),
                (0.25, 0.5, 1.0)),
}


def frontier(root, pair_type: str, models=()) -> dict:
    """``{label: scores}`` on the val cases, with ``maximum`` and ``default`` among them."""
    names = aanlib.split_names(root, pair_type, "val")
    p = aanlib.load_pairs(root, pair_type, names)
    a, b = p.mr, p.other
    c = fuse_arrays(a, b, method="cnn", device="cpu", model="fusionnet")
    points = {"maximum": score_pairs(a, b, np.maximum(a, b)), "default": score_pairs(a, b, c)}
    for family, (make, ts) in FAMILIES.items():
        for t in ts:
            points[f"{family} t={t:g}"] = score_pairs(a, b, np.clip(make(c, a, b, t), 0.0, 1.0))
    for path in models:
        points.update(_validations(Path(path), pair_type))
    return points


def classical_scores(root, pair_type: str) -> dict:
    """``{baseline: scores}`` of the classical baselines on the val cases."""
    p = aanlib.load_pairs(root, pair_type, aanlib.split_names(root, pair_type, "val"))
    return {m: score_pairs(p.mr, p.other, fuse_arrays(p.mr, p.other, method=m, device="cpu"))
            for m in CLASSICAL}


def _validations(path: Path, pair_type: str) -> dict:
    import torch

    meta = torch.load(path, map_location="cpu", weights_only=True).get("meta", {})
    if (meta.get("config") or {}).get("pair_type") != pair_type:
        return {}
    chosen = (meta.get("selected") or {}).get("step")
    return {f"{path.parent.name}/{path.stem} step {v['step']}" + (" (chosen)" if v["step"] == chosen else ""):
            v["scores"] for v in meta.get("validations", [])}


def describe(points: dict, baselines: dict | None = None) -> list:
    """Rows ``(label, vs_max, FS ok, Qabf rel, VIF rel, dSSIM, FS, anatomy, HOT gain,
    vs_baselines)``; ``vs_baselines`` (the smallest count against ``baselines``) is None
    without them."""
    mx, df = points["maximum"], points["default"]
    rows = []
    for label, s in points.items():
        t = check_targets(s, mx, df)
        vs_base = min(count_as_good(s, ref) for ref in baselines.values()) if baselines else None
        rows.append((label, t["vs_max"], t["fs"], s["Qabf"] / df["Qabf"], s["VIF"] / df["VIF"],
                     s["SSIM"] - df["SSIM"], s["FS"], t["anatomy"], _hot_gain(s, df), vs_base))
    return rows


def _hot_gain(s: dict, df: dict) -> float:
    return s.get("HOT", float("nan")) - df["HOT"]


def draw(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5.0 * len(results), 8.8), squeeze=False)
    for col, (key, points) in enumerate(results.items()):
        ax, ax_hot = axes[0, col], axes[1, col]
        mx, df = points["maximum"], points["default"]
        for label, s in points.items():
            t = check_targets(s, mx, df)
            family = label.split(" t=")[0] if " t=" in label else (
                "trained checkpoints" if " step " in label else label)
            marker = {"maximum": "s", "default": "D", "trained checkpoints": "o"}.get(family, "^")
            colour = {"toward max": "tab:orange", "partial max": "tab:red", "additive": "tab:green",
                      "soft addition": "tab:purple", "sharpen": "tab:brown",
                      "trained checkpoints": "tab:blue",
                      "maximum": "black", "default": "grey"}[family]
            style = dict(marker=marker, s=60 if "chosen" in label else 30,
                         facecolors=colour if t["vs_max"] >= 8 else "none", edgecolors=colour,
                         label=family)
            ax.scatter(s["VIF"] / df["VIF"], s["FS"], **style)
            if np.isfinite(_hot_gain(s, df)):
                ax_hot.scatter(s["SSIM"] - df["SSIM"], _hot_gain(s, df), **style)
        ax_hot.axhline(0.0, color="black", lw=0.8, ls="--")
        ax_hot.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax_hot.set_xlabel("SSIM - default's (guard: >= 0)")
        ax_hot.set_ylabel("HOT - default's (foci brighter: > 0; dashed: as the default)")
        ax_hot.set_title(f"{key}, validation cases: hot foci against SSIM", fontsize=9)
        ax.axhline(mx["FS"], color="black", lw=0.8, ls="--")
        ax.axvline(0.98, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("VIF / default's (guard: >= 0.98)")
        ax.set_ylabel("FS (lower = more balanced; dashed: pixel maximum)")
        ax.set_title(f"{key}, validation cases", fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=6, loc="best")
    fig.suptitle("filled: at least as good as pixel maximum on >= 8 of 10 metrics; "
                 "target corners: top row right of the dotted line and below the dashed one, "
                 "bottom row right of the dotted line and above the dashed one", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--atlas", type=Path, required=True, help="the atlas folder")
    ap.add_argument("--models", default="", help="comma-separated trained .pt files")
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args(argv)
    if not aanlib.is_atlas_folder(args.atlas):
        print(f"{args.atlas}: not the atlas folder (Resources/SampleData/fetch-aanlib.sh DIR)",
              file=sys.stderr)
        return 2
    models = [m for m in args.models.split(",") if m]
    lines, results = [], {}
    for key in aanlib.PAIR_TYPES:
        results[key] = frontier(args.atlas, key, models)
        baselines = classical_scores(args.atlas, key)
        lines.append(f"\n[{key}, val cases {aanlib.read_split()['pair_types'][key]['val']}]")
        lines.append(f"{'point':34s}{'vsmax':>6s}{'vsbase':>7s}{'FS<=':>5s}{'Qabf/d':>8s}"
                     f"{'VIF/d':>7s}{'dSSIM':>7s}{'FS':>7s}{'dHOT':>7s}  anatomy (cases)")
        for label, n, fs, q, v, ds, fsv, anat, dh, nb in describe(results[key], baselines):
            hot = f"{dh:+7.3f}" if np.isfinite(dh) else f"{'-':>7s}"
            kept = results[key][label].get("cases_kept")
            cases = f" ({kept:.2f})" if kept is not None else ""
            lines.append(f"{label:34s}{n:6d}{nb:7d}{'yes' if fs else 'no':>5s}{q:8.3f}{v:7.3f}"
                         f"{ds:+7.3f}{fsv:7.3f}{hot}  {'kept' if anat else 'lost'}{cases}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text.lstrip() + "\n")
    if args.figure:
        draw(results, args.figure)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

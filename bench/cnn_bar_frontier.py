"""How far can any fusion of the CNN's weight map go on the quality bar of issue #3?

The bar asks the default CNN to beat pixel-average, pixel-maximum and DWT on at least 6 of EN, SD,
SF, MI, SCD, VIF, Q^AB/F and SSIM (``bench/eval_cnn.py``). This script scores a grid of fusions
built from the CNN's per-pixel weight map ``w`` on the same validation pairs, to separate what the
network could still learn from what the metrics themselves rule out:

    F = w' A + (1 - w') B                             pixel blend, w' = w sharpened (temperature t)
        + c [(1 - w') L(A) + w' L(B)]                 + the other source's detail (band-pass L)
    F = (1 - s) F + s (A + B - AB)                    + soft addition (breaks F(A, A) = A)
    F = F + k (F - gauss(F, 1))                       + unsharp enhancement

and prints, per configuration, the metrics won against all three baselines, the gaps to pixel
maximum on Q^AB/F, VIF and SSIM, the lesion contrast kept (LC), the fusion symmetry (FS) and the
identity error max|F(A, A) - A|; then the best value any configuration reached on each metric.

Usage::

    python bench/cnn_bar_frontier.py [--model NAME]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import eval_cnn as E  # noqa: E402

from MedFusionLib.methods.cnn import cnn_fusion  # noqa: E402
from MedFusionLib.metrics import compute_metrics  # noqa: E402

GRID = {"t": (1.0, 2.0, 4.0), "c": (0.0, 0.5), "s": (0.0, 0.15, 0.3), "k": (0.0, 0.3, 0.5)}


def _band(x: np.ndarray) -> np.ndarray:
    return x - ndimage.gaussian_filter(x, 1.0)


def frontier_fusion(a, b, w, *, t, c, s, k):
    """One fusion of the grid; ``w`` is the CNN's share of ``a`` (same shape, in [0, 1])."""
    w = np.clip(w, 1e-4, 1 - 1e-4)
    w = 1.0 / (1.0 + np.exp(-t * np.log(w / (1.0 - w))))
    f = w * a + (1.0 - w) * b + c * ((1.0 - w) * _band(a) + w * _band(b))
    f = (1.0 - s) * f + s * (a + b - a * b)
    f = f + k * _band(f)
    return np.clip(f, 0.0, 1.0).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", help="CNN model whose weight map is used")
    args = ap.parse_args(argv)

    cases = E.validation_cases()
    weights = [cnn_fusion(a[None], b[None], model=args.model, level="pixel",
                          return_weights=True)[1][0] for _, a, b, _ in cases]
    base = E.evaluate(cases, {m: (m, {}) for m in E.BASELINES})
    base = {m: r["all"] for m, r in base.items()}
    best = {k: (-np.inf, None) for k in E.KEYS}
    print(f"{len(cases)} validation pairs; baselines: " + "; ".join(
        f"{m} " + " ".join(f"{k} {base[m][k]:.3f}" for k in E.KEYS) for m in base))
    print(f"{'t':>4s}{'c':>5s}{'s':>6s}{'k':>5s}  wins  {'Qabf':>7s}{'VIF':>7s}{'SSIM':>7s}"
          f"{'LC':>7s}{'FS':>7s}{'ident':>7s}  won")
    counts = []
    for t, c, s, k in itertools.product(*GRID.values()):
        rows = []
        for (group, a, b, z), w in zip(cases, weights):
            f = frontier_fusion(a, b, w, t=t, c=c, s=s, k=k)
            m = compute_metrics(a, b, f, keys=E.KEYS + ["FS"], data_range=1.0)
            m["LC"] = E.lesion_contrast(f, b, E.LESIONS.get((group, z)))
            rows.append(m)
        r = {key: float(np.nanmean([m[key] for m in rows])) for key in E.COLUMNS}
        a0 = cases[0][1]
        ident = float(np.abs(frontier_fusion(a0, a0, np.full_like(a0, 0.5), t=t, c=c, s=s, k=k)
                             - a0).max())
        won = [key for key in E.KEYS if all(r[key] > base[m][key] for m in base)]
        gaps = [100 * (r[key] / base["maximum"][key] - 1) for key in ("Qabf", "VIF", "SSIM")]
        counts.append(len(won))
        for key in E.KEYS:
            if r[key] > best[key][0]:
                best[key] = (r[key], (t, c, s, k))
        print(f"{t:4.1f}{c:5.1f}{s:6.2f}{k:5.1f}  {len(won):4d}  " + "".join(
            f"{g:+6.1f}%" for g in gaps) + f"{r['LC']:7.3f}{r['FS']:7.3f}{ident:7.3f}  "
            + ",".join(won), flush=True)
    print(f"\nmost metrics won by one configuration: {max(counts)} of 8 (bar: 6)")
    print("best value reached per metric (t, c, s, k) vs the best baseline:")
    for key in E.KEYS:
        top = max(base, key=lambda m: base[m][key])
        print(f"  {key:5s} {best[key][0]:8.3f} at {best[key][1]}   best baseline {top} "
              f"{base[top][key]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

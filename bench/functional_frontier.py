"""Issue #16 without training: can a role-aware change of the default CNN's fusion meet the goal?

The goal on anatomical + functional pairs: FS and FI no higher and SCD and lesion contrast (LC) no
lower than pixel maximum's, Q^AB/F, VIF and SSIM no lower than the default model's. This script
scores, on TRAINING-side pairs only (MNI152 anatomy, slices 42-70, functional phantoms with seeds
never used by the held-out Colin27 groups of ``bench/eval_cnn.py``), three one-parameter families
of changes of the default ``fusionnet``, each of which keeps F(A, A) = A:

``bias``   the weight head's logit of the anatomical source shifted by ``-beta`` (the functional
           source's weight raised everywhere, in feature and residual pixel fusion alike);
``detail`` the functional source's missing band-pass detail added back, the closed form of the
           ``functional`` loss term: for D = gauss(s/2) - gauss(2s) at s = 2 and 4 px and the local
           gain g = gauss(D(u) D(F)) / gauss(D(u)^2), F += c * relu(1 - g) * D(u);
``mix``    a per-pixel blend toward the functional source u by its own saliency:
           F = (1 - m) F + m u, m = clip(k * |D_8(u)| / p99(|D_8(u)|), 0, 1);

and their combinations on a small grid. It prints the goal's checks per group and overall and
whether any point meets all of them at once on the training pairs.

Usage::

    python bench/functional_frontier.py [--model NAME] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import eval_cnn as E  # noqa: E402

from MedFusionLib.metrics import compute_metrics  # noqa: E402

#: training-side slices (the held-out Colin27 groups use 75-110 of another subject; training
#: excludes the MNI slab 75-114) and phantom seeds (eval_cnn uses 1601-1604, training 1-9)
SLICES = list(range(42, 71, 4))
SEEDS = {"fdg": (7101, 7102), "spect": (7103, 7104)}
KEYS = ["MI", "SCD", "VIF", "Qabf", "SSIM", "FS", "FI"]
GRID = {"beta": (0.0, 0.5, 1.0, 1.5, 2.0), "c": (0.0, 0.5, 1.0), "k": (0.0, 0.3, 0.6)}
#: second sweep: detail at the functional source's own scales (s = 4, 8, 16 px), a saliency-gated
#: blend toward pixel maximum (``km``) and a global blend toward pixel maximum (``t``)
EXTRA = ([{"beta": b, "c8": c} for b in (0.0, 1.0, 2.0) for c in (0.5, 1.0, 2.0)]
         + [{"beta": b, "km": k} for b in (0.0, 1.0) for k in (0.3, 0.6, 1.0, 2.0)]
         + [{"t": t} for t in (0.25, 0.5, 0.75, 1.0)]
         + [{"beta": 1.0, "c8": 1.0, "km": 0.6}, {"beta": 2.0, "c8": 2.0, "km": 1.0},
            {"beta": 0.0, "c8": 2.0, "t": 0.5}])


def training_cases():
    """``(group, mr, functional, z, lesions)`` on the MNI152 anatomy (training side)."""
    from MedFusionLib import functional_phantoms as fp

    tissues = fp.mni_tissue_maps()
    tables = list(fp.CLINICAL_TABLES)
    cases = []
    for group, kind in (("mni-mr-fdg", "fdg"), ("mni-mr-spect-colour", "spect")):
        phantoms = [fp.functional_volume(tissues, kind, np.random.default_rng(s),
                                         z_range=(SLICES[0], SLICES[-1] + 1))
                    for s in SEEDS[kind]]
        for i, z in enumerate(SLICES):
            ph = phantoms[i % 2]
            func = ph.values[z]
            if group.endswith("colour"):
                func = fp.pseudo_colour_luminance(func, tables[i % len(tables)])
            cases.append((group, tissues.t1[z].astype(np.float32), func.astype(np.float32), z,
                          E._lesion_list(ph, z)))
    return cases


def heldout_cases():
    """The held-out Colin27 groups of ``bench/eval_cnn.py``, for ``--heldout-diagnostic`` only."""
    return [(g, a, b, z, E.LESIONS.get((g, z)))
            for g, a, b, z in E.functional_cases()]


def net_fusion(a, b, beta: float, model: str = "fusionnet"):
    """The model's feature-level fusion with its logit of ``a`` shifted by ``-beta``."""
    import torch

    from MedFusionLib.nets.weights import load_model

    net = load_model(model, device="cpu")
    orig = type(net).weight_logits
    net.weight_logits = lambda fa, fb: orig(net, fa, fb) - beta
    try:
        with torch.no_grad():
            f, w = net(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])
    finally:
        del net.weight_logits
    return np.clip(f[0, 0].numpy(), 0, 1), w[0, 0].numpy()


def _dog(x, s):
    return ndimage.gaussian_filter(x, s / 2) - ndimage.gaussian_filter(x, 2 * s)


def add_detail(f, u, c, scales=(2.0, 4.0)):
    if c == 0:
        return f
    out = f.copy()
    for s in scales:
        du, df = _dog(u, s), _dog(f, s)
        num = ndimage.gaussian_filter(du * df, 2 * s)
        den = ndimage.gaussian_filter(du * du, 2 * s) + 1e-6
        g = num / den
        out = out + c * np.clip(1.0 - g, 0, None) * du
    return out


def mix(f, u, k):
    if k == 0:
        return f
    d = np.abs(_dog(u, 8.0))
    m = np.clip(k * d / max(float(np.percentile(d, 99)), 1e-6), 0, 1)
    return (1 - m) * f + m * u


def mix_max(f, a, u, k):
    if k == 0:
        return f
    d = np.abs(_dog(u, 8.0))
    m = np.clip(k * d / max(float(np.percentile(d, 99)), 1e-6), 0, 1)
    return (1 - m) * f + m * np.maximum(a, u)


def extra_fusion(f, a, u, p):
    f = add_detail(f, u, p.get("c8", 0.0), scales=(4.0, 8.0, 16.0))
    f = mix_max(f, a, u, p.get("km", 0.0))
    t = p.get("t", 0.0)
    return (1 - t) * f + t * np.maximum(a, u)


def score(cases, fuse):
    per = {}
    for group, a, b, z, les in cases:
        f = np.clip(fuse(a, b), 0, 1).astype(np.float32)
        m = compute_metrics(a, b, f, keys=KEYS, data_range=1.0)
        m["LC"] = E.lesion_contrast(f, b, les)
        per.setdefault(group, []).append(m)
    return {g: {k: float(np.nanmean([m[k] for m in ms])) for k in KEYS + ["LC"]}
            for g, ms in per.items()}


def checks(r, mx, ref):
    return {"FS": r["FS"] <= mx["FS"], "FI": r["FI"] <= mx["FI"], "SCD": r["SCD"] >= mx["SCD"],
            "LC": r["LC"] >= mx["LC"], "Qabf": r["Qabf"] >= 0.995 * ref["Qabf"],
            "VIF": r["VIF"] >= 0.995 * ref["VIF"], "SSIM": r["SSIM"] >= 0.995 * ref["SSIM"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="fusionnet")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None, help="SCD/VIF frontier plot (PNG)")
    ap.add_argument("--heldout-diagnostic", action="store_true",
                    help="score the same fixed grid on the held-out Colin27 groups instead: a "
                         "reachability check only; nothing may be chosen from it")
    args = ap.parse_args(argv)
    cases = heldout_cases() if args.heldout_diagnostic else training_cases()
    groups = sorted({c[0] for c in cases})
    mx = score(cases, np.maximum)
    nets = {beta: [net_fusion(a, b, beta, args.model)[0] for _, a, b, _, _ in cases]
            for beta in GRID["beta"]}
    idx = {id(c[1]): i for i, c in enumerate(cases)}
    ref = score(cases, lambda a, b: nets[0.0][idx[id(a)]])
    print(f"{len(cases)} {'HELD-OUT (diagnostic only)' if args.heldout_diagnostic else 'training-side'} pairs ({', '.join(groups)})")
    hdr = f"{'beta':>5s}{'c':>5s}{'k':>5s} " + "".join(f"{k:>7s}" for k in KEYS + ["LC"])
    for g in groups:
        print(f"[{g}] max     " + "".join(f"{mx[g][k]:7.3f}" for k in KEYS + ["LC"]))
        print(f"[{g}] default " + "".join(f"{ref[g][k]:7.3f}" for k in KEYS + ["LC"]))
    rows = []
    print(hdr + "  failed checks per group")
    for beta, c, k in itertools.product(*GRID.values()):
        r = score(cases, lambda a, b: mix(add_detail(nets[beta][idx[id(a)]], b, c), b, k))
        fails = {g: [n for n, ok in checks(r[g], mx[g], ref[g]).items() if not ok]
                 for g in groups}
        rows.append({"beta": beta, "c": c, "k": k, "results": r, "fails": fails})
        for g in groups:
            print(f"{beta:5.1f}{c:5.1f}{k:5.1f} " + "".join(f"{r[g][key]:7.3f}"
                                                          for key in KEYS + ["LC"])
                  + f"  {g}: {','.join(fails[g]) or 'ALL MET'}", flush=True)
    for p in EXTRA:
        beta = p.get("beta", 0.0)
        r = score(cases, lambda a, b: extra_fusion(nets[beta][idx[id(a)]], a, b, p))
        fails = {g: [n for n, ok in checks(r[g], mx[g], ref[g]).items() if not ok]
                 for g in groups}
        rows.append({**p, "results": r, "fails": fails})
        for g in groups:
            print(f"{json.dumps(p):40s} " + "".join(f"{r[g][key]:7.3f}" for key in KEYS + ["LC"])
                  + f"  {g}: {','.join(fails[g]) or 'ALL MET'}", flush=True)
    met = [r for r in rows if not any(r["fails"].values())]
    print(f"\npoints meeting every check on both groups: {len(met)}")
    for r in met:
        print("  " + json.dumps({k: v for k, v in r.items() if k not in ("results", "fails")}))
    if args.json:
        args.json.write_text(json.dumps({"maximum": mx, "default": ref, "grid": rows}, indent=1))
    if args.plot:
        plot(rows, mx, ref, groups, args.plot)
    return 0


def plot(rows, mx, ref, groups, out: Path) -> None:
    """Per group: VIF and Q^AB/F relative to the default against SCD relative to pixel maximum,
    for every point; filled where FS, FI and LC are met too. The goal is the top-right quadrant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, g in zip(axes[0], groups):
        for key, colour in (("VIF", "tab:blue"), ("Qabf", "tab:orange")):
            for r in rows + [{"results": {g: mx[g]}, "fails": {g: ["max"]}, "pt": "max"}]:
                v = r["results"][g]
                ok = not (set(r["fails"][g]) & {"FS", "FI", "LC", "max"})
                ax.scatter(v["SCD"] - mx[g]["SCD"], v[key] / ref[g][key] - 1,
                           c=colour if ok else "none", edgecolors=colour,
                           marker="*" if r.get("pt") else "o", s=90 if r.get("pt") else 25,
                           label=f"{key} / default - 1" if r is rows[0] else None)
        ax.axhline(-0.005, c="k", lw=0.6)
        ax.axvline(0, c="k", lw=0.6)
        ax.set_xlabel("SCD - SCD(pixel maximum)")
        ax.set_ylabel("relative to the default fusionnet")
        ax.set_title(f"{g}: goal = top-right quadrant\n(filled: FS, FI, LC also met; star: max)",
                     fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

"""Validation of the CNN fusion model against the pixel-average, pixel-maximum and DWT baselines.

Prints, per validation group and overall, the mean of the review's quality metrics (EN, SD, SF, MI,
SCD, VIF, Q^AB/F, SSIM) for each method, the fusion symmetry FS = |I_AF / (I_AF + I_BF) - 0.5|
(0 = both sources equally represented in the fused image; a method that passes one source
through scores near 0.5), the share of the Colin27 PET-like lesions' contrast kept in the fused
image LC (1 = as in the PET; 0 = the lesion is lost), and whether the default CNN meets the quality bar: better than all three
baselines on at least 6 of the 8 metrics, and within 2 % of pixel-maximum on Q^AB/F, VIF and SSIM.

Validation set (none of it is used in training, see models/MODEL_CARD.md):

- ``itk-t1-pd``: the ITK example BrainWeb-simulated T1 and proton-density slices (real MR
  contrasts, 181 x 217), from ``.data/itk`` (``make data``);
- ``mni-mr-ct`` and ``mni-mr-pet``: axial slices 80, 83, ..., 107 of the MNI152 T1 and the
  synthetic CT-like / PET-like volumes (:func:`MedFusionLib.datasets.sample_volumes`); training
  excludes slices 75-114;
- ``colin-mr-pet``: Colin27 (a single subject, not in training) T1 slices with a PET-like image
  derived from its own tissue classes (k-means on the brain), from ``.data/mricron/ch2bet.nii.gz``
  (``Resources/SampleData/fetch-colin27.sh``, part of ``make data``). Skipped with a note when the
  file is absent.
- ``colin-mr-fdg`` and ``colin-mr-spect-colour`` (issue #16, anatomical + functional): Colin27 T1
  slices 75, 80, ..., 110 with an FDG-PET-like volume (greyscale, as a DICOM PET gives it) and a
  perfusion-SPECT-like volume rendered through a clinical colour table (hot, jet, NIH, spectrum in
  turn) and fused on its luminance, as the literature's pseudo-colour benchmark pairs are
  (:mod:`MedFusionLib.functional_phantoms`; seeds 1601-1604, lesions drawn inside the slab).
  Training uses the MNI152 anatomy only, with other seeds.

For the anatomical + functional groups the script also checks issue #16's goal: the candidate
``--model`` against pixel maximum (FS and FI no higher, SCD and lesion contrast no lower) and
against ``--reference`` (the previous default: Q^AB/F, VIF and SSIM no lower).

Real pairs (issue #24): ``--atlas DIR`` (the Harvard atlas folder of
``Resources/SampleData/fetch-aanlib.sh``) reports every pair type (CT-MR, PET-MR, SPECT-MR) on
the held-out ``test`` cases of ``Resources/SampleData/aanlib-split.json`` instead: the ten
metrics and FS for the per-pair-type models, today's default, pixel maximum, DWT and the other
classical baselines, the targets met, and the time per slice (:mod:`atlas_eval`).

Usage::

    python bench/eval_cnn.py [--model NAME] [--reference NAME] [--groups G,...] [--variants]
                             [--png DIR] [--json OUT]
    python bench/eval_cnn.py --atlas DIR [--part test|val] [--atlas-figures DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from MedFusionLib.driver import fuse_arrays  # noqa: E402
from MedFusionLib.metrics import compute_metrics  # noqa: E402

import atlas_eval  # noqa: E402  (bench/atlas_eval.py: issue #24's real pairs)

KEYS = ["EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM"]
#: printed columns: the eight, fusion symmetry FS (lower = balanced), fusion index FI = I(A;F) /
#: I(B;F) (A is the anatomical source: lower = more of the functional one), lesion contrast kept LC
COLUMNS = KEYS + ["FS", "FI", "LC"]
#: anatomical + functional groups of issue #16 (B is the functional source)
FUNCTIONAL_GROUPS = ("colin-mr-fdg", "colin-mr-spect-colour")
BASELINES = ["average", "maximum", "dwt"]
MNI_SLICES = list(range(80, 110, 3))
#: (group, slice) -> boolean mask (or list of masks, one per lesion) of the functional image's
#: lesions (Colin27 cases)
LESIONS: dict = {}
#: (group, slice) -> (uptake in [0, 1], colour table) of the pseudo-colour cases, for display
RENDERED: dict = {}
COLIN = ROOT / ".data" / "mricron" / "ch2bet.nii.gz"
COLIN_SLICES = list(range(75, 111, 5))


def _load_itk():
    from MedFusionLib.datasets import itk_example
    from MedFusionLib.io import read_image
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(read_image(itk_example("BrainT1Slice.png"))).astype(np.float32)
    b = sitk.GetArrayFromImage(read_image(itk_example("BrainProtonDensitySlice.png"))).astype(
        np.float32)
    return [("itk-t1-pd", a / 255.0, b / 255.0, 0)]


def _load_mni():
    from MedFusionLib.datasets import sample_volumes
    from MedFusionLib.normalize import normalize

    vols = sample_volumes()
    mr, _ = normalize(vols["mr_t1"], "MR")
    ct, _ = normalize(vols["ct"], "CT")
    pet, _ = normalize(vols["pet"], "PET")
    cases = []
    for z in MNI_SLICES:
        cases.append(("mni-mr-ct", mr[z], ct[z], z))
        cases.append(("mni-mr-pet", mr[z], pet[z], z))
    return cases


def _kmeans_1d(x: np.ndarray, k: int = 3, iters: int = 30) -> np.ndarray:
    centres = np.percentile(x, np.linspace(15, 85, k))
    for _ in range(iters):
        labels = np.argmin(np.abs(x[:, None] - centres[None]), axis=1)
        centres = np.array([x[labels == i].mean() if np.any(labels == i) else centres[i]
                            for i in range(k)])
    return labels


def _load_colin():
    import SimpleITK as sitk
    from scipy import ndimage

    path = COLIN
    if not path.is_file():
        print(f"note: {path} not found (Resources/SampleData/fetch-colin27.sh); colin-mr-pet "
              "skipped", file=sys.stderr)
        return []
    t1 = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    brain = t1 > np.percentile(t1[t1 > 0], 2)
    labels = np.zeros(t1.shape, np.int8)
    labels[brain] = _kmeans_1d(t1[brain]) + 1  # 1 CSF, 2 GM, 3 WM (sorted by T1 intensity)
    uptake = np.select([labels == 1, labels == 2, labels == 3], [0.3, 8.0, 2.5], 0.0)
    uptake = uptake.astype(np.float32)
    rng = np.random.default_rng(7)
    zz, yy, xx = np.ogrid[tuple(slice(0, s) for s in t1.shape)]
    lesions = np.zeros(t1.shape, bool)
    for centre, radius, value in (((90, 120, 60), 6, 20.0), ((95, 80, 110), 5, 16.0)):
        sphere = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
        uptake[(sphere <= radius ** 2) & brain] = value
        lesions |= (sphere <= (radius - 1) ** 2) & brain
    pet = ndimage.gaussian_filter(uptake, 6.0 / 2.355)
    pet = np.clip(pet + rng.normal(0, 0.15, pet.shape).astype(np.float32) * np.sqrt(pet), 0, None)
    lo, hi = np.percentile(t1, [0.5, 99.5])
    mr = np.clip((t1 - lo) / (hi - lo), 0, 1)
    pet = np.clip(pet / np.percentile(pet, 99.9), 0, 1)
    for z in range(70, 111, 5):
        LESIONS[("colin-mr-pet", z)] = lesions[z]
    return [("colin-mr-pet", mr[z].astype(np.float32), pet[z].astype(np.float32), z)
            for z in range(70, 111, 5)]


def _lesion_list(phantom, z: int) -> list:
    """One boolean mask per lesion (hot and cold cores) of a phantom's slice ``z``."""
    from scipy import ndimage

    out = []
    for mask in (phantom.hot[z], phantom.cold[z]):
        lab, n = ndimage.label(mask)
        out.extend(lab == i for i in range(1, n + 1) if (lab == i).sum() >= 5)
    return out


def functional_cases():
    """Issue #16's held-out anatomical + functional groups on Colin27 (see the module docstring):
    ``(group, mr, functional, z)`` with the functional source's lesions in :data:`LESIONS`."""
    from MedFusionLib import functional_phantoms as fp

    if not COLIN.is_file():
        print(f"note: {COLIN} not found (Resources/SampleData/fetch-colin27.sh); the functional "
              "groups are skipped", file=sys.stderr)
        return []
    tissues = fp.colin_tissue_maps(COLIN)
    tables = list(fp.CLINICAL_TABLES)
    cases = []
    for group, kind, seeds in (("colin-mr-fdg", "fdg", (1601, 1602)),
                               ("colin-mr-spect-colour", "spect", (1603, 1604))):
        phantoms = [fp.functional_volume(tissues, kind, np.random.default_rng(seed),
                                         z_range=(COLIN_SLICES[0], COLIN_SLICES[-1] + 1))
                    for seed in seeds]
        for i, z in enumerate(COLIN_SLICES):
            ph = phantoms[i % len(phantoms)]
            func = ph.values[z]
            if group.endswith("colour"):
                RENDERED[(group, z)] = (func, tables[i % len(tables)])
                func = fp.pseudo_colour_luminance(func, tables[i % len(tables)])
            LESIONS[(group, z)] = _lesion_list(ph, z)
            cases.append((group, tissues.t1[z], func, z))
    return cases


def validation_cases(groups=None):
    """List of ``(group, a, b, slice_index)`` slice pairs in [0, 1] (only ``groups`` if given)."""
    cases = []
    for loader in (_load_itk, _load_mni, _load_colin, functional_cases):
        try:
            cases.extend(loader())
        except Exception as exc:  # noqa: BLE001 - report a missing data set and go on
            print(f"note: {loader.__name__} validation data unavailable: {exc}", file=sys.stderr)
    if groups:
        cases = [c for c in cases if c[0] in groups]
    return cases


def evaluate(cases, methods: dict) -> dict:
    """``{method_label: {group: {key: mean}}}`` plus an ``"all"`` group."""
    results: dict = {}
    for label, (method, params) in methods.items():
        per_group: dict = {}
        for group, a, b, z in cases:
            f = fuse_arrays(a, b, method=method, device="cpu", **params)
            m = compute_metrics(a, b, f, keys=KEYS + ["FS", "FI"], data_range=1.0)
            m["LC"] = lesion_contrast(f, b, LESIONS.get((group, z)))
            # "all" keeps the #3 validation set (the functional groups are reported on their own)
            for g in (group,) if group in FUNCTIONAL_GROUPS else (group, "all"):
                per_group.setdefault(g, []).append(m)
        results[label] = {g: {k: float(np.nanmean([m[k] for m in ms])) if any(
            np.isfinite(m[k]) for m in ms) else float("nan") for k in COLUMNS}
            for g, ms in per_group.items()}
    return results


def lesion_contrast(f: np.ndarray, b: np.ndarray, mask) -> float:
    """Share of the functional lesions' contrast kept in F: (F_lesion - F_around) / (B_lesion -
    B_around), "around" being a 4-pixel ring; for a list of masks the mean over the lesions whose
    contrast in B is at least 0.02; NaN without a (visible) lesion in the slice."""
    from scipy import ndimage

    if isinstance(mask, list):
        values = [lesion_contrast(f, b, m) for m in mask]
        values = [v for v in values if np.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")
    if mask is None or mask.sum() < 5:
        return float("nan")
    ring = ndimage.binary_dilation(mask, iterations=4) & ~ndimage.binary_dilation(mask)
    den = b[mask].mean() - b[ring].mean()
    if abs(den) < 0.02:
        return float("nan")
    return float((f[mask].mean() - f[ring].mean()) / den)


def functional_goal(results: dict, cnn: str = "cnn", reference: str = "reference") -> dict:
    """Issue #16's goal per anatomical + functional group: ``{group: {check: bool}}``.

    Against pixel maximum: FS <= (more balanced), FI <= (no more anatomy-dominated), SCD >= and
    LC >= ; against ``reference`` (the previous default): Q^AB/F, VIF, SSIM >= (0.5 % slack for
    the 8-bit metrics' rounding)."""
    out = {}
    for g in FUNCTIONAL_GROUPS:
        if g not in results.get(cnn, {}):
            continue
        c, mx = results[cnn][g], results["maximum"][g]
        checks = {"FS<=max": c["FS"] <= mx["FS"], "FI<=max": c["FI"] <= mx["FI"],
                  "SCD>=max": c["SCD"] >= mx["SCD"], "LC>=max": c["LC"] >= mx["LC"]}
        if reference in results:
            r = results[reference][g]
            checks.update({f"{k}>=ref": c[k] >= r[k] * 0.995 for k in ("Qabf", "VIF", "SSIM")})
        out[g] = checks
    return out


def verdict(results: dict, cnn: str = "cnn", group: str = "all") -> tuple[int, list, dict]:
    """Metrics where ``cnn`` beats every baseline, and its relative gap to maximum."""
    wins = [k for k in KEYS
            if all(results[cnn][group][k] > results[b][group][k] for b in BASELINES)]
    gaps = {k: results[cnn][group][k] / results["maximum"][group][k] - 1.0
            for k in ("Qabf", "VIF", "SSIM")}
    return len(wins), wins, gaps


def print_table(results: dict, groups) -> None:
    for g in groups:
        if not any(g in res for res in results.values()):
            continue
        print(f"\n[{g}]")
        print(f"{'method':22s}" + "".join(f"{k:>8s}" for k in COLUMNS))
        for label, res in results.items():
            if g in res:
                print(f"{label:22s}" + "".join(f"{res[g][k]:8.3f}" for k in COLUMNS))


def save_pngs(cases, methods, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    seen = set()
    for group, a, b, _ in cases:
        if group in seen:
            continue
        seen.add(group)
        cols = [("A", a), ("B", b)] + [
            (label, fuse_arrays(a, b, method=m, device="cpu", **p)) for label, (m, p) in
            methods.items()]
        fig, axes = plt.subplots(1, len(cols), figsize=(2.2 * len(cols), 2.6))
        for ax, (title, img) in zip(axes, cols):
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / f"{group}.png", dpi=110)
        plt.close(fig)


def save_functional_figure(cases, methods: dict, out: Path, picks=None) -> None:
    """Before/after figure of issue #16: one MR-FDG slice (greyscale, as fused) and one MR-SPECT
    slice in colour (the fused luminance with the SPECT's own chroma, as the colour path shows
    it), each fused by the ``methods`` ``{label: (method, params)}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from MedFusionLib import functional_phantoms as fp
    from MedFusionLib.colour import apply_colour_table, rgb_to_ycbcr, ycbcr_to_rgb

    picks = picks or {"colin-mr-fdg": 95, "colin-mr-spect-colour": 85}
    rows = [c for c in cases if picks.get(c[0]) == c[3]]
    cols = ["MR (Colin27 T1)", "functional"] + list(methods)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.3 * len(cols), 2.5 * len(rows)),
                             squeeze=False)
    for r, (group, a, b, z) in enumerate(rows):
        colour = (group, z) in RENDERED
        if colour:
            uptake, table = RENDERED[(group, z)]
            _, cb, cr = rgb_to_ycbcr(apply_colour_table(uptake, fp.clinical_table(table)))
        images = [a, b] + [fuse_arrays(a, b, method=m, device="cpu", **p)
                           for m, p in methods.values()]
        for c, img in enumerate(images):
            ax = axes[r, c]
            if colour and c > 0:
                ax.imshow(ycbcr_to_rgb(img, cb, cr), origin="lower")
            else:
                ax.imshow(img, cmap="gray", vmin=0, vmax=1, origin="lower")
            title = cols[c] if c != 1 else (f"SPECT-like ({table})" if colour else "FDG-PET-like")
            ax.set_title(f"{title}\n{group} z={z}" if c == 0 else title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", help="CNN model (registry name or .pt)")
    ap.add_argument("--reference", default="fusionnet",
                    help="previous default CNN model for issue #16's comparison ('' for none)")
    ap.add_argument("--groups", default="", help="comma-separated groups to run (default: all)")
    ap.add_argument("--variants", action="store_true", help="also score every CNN level/rule")
    ap.add_argument("--png", type=Path, default=None, help="write one montage per group here")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    ap.add_argument("--figure", type=Path, default=None,
                    help="write issue #16's before/after figure (MR-FDG and MR-SPECT) here")
    ap.add_argument("--atlas", type=Path, default=None, metavar="DIR",
                    help="issue #24: evaluate every pair type of the Harvard atlas in DIR instead")
    ap.add_argument("--part", choices=("test", "val"), default="test",
                    help="with --atlas: the split part to report (default: the held-out test)")
    ap.add_argument("--atlas-figures", type=Path, default=None, metavar="DIR",
                    help="with --atlas: write one before/after figure per pair type here")
    args = ap.parse_args(argv)
    if args.atlas is not None:
        atlas_eval.run(args.atlas, args.part, figures=args.atlas_figures, json_out=args.json)
        return 0

    cases = validation_cases([g for g in args.groups.split(",") if g])
    groups = sorted({c[0] for c in cases}) + ["all"]
    print(f"{len(cases)} validation pairs: " + ", ".join(
        f"{g} ({sum(1 for c in cases if c[0] == g)})" for g in groups[:-1]))
    methods = {m: (m, {}) for m in BASELINES}
    methods["cnn"] = ("cnn", {"model": args.model})
    if args.reference:
        methods["reference"] = ("cnn", {"model": args.reference})
    if args.variants:
        for level in ("feature", "pixel"):
            for rule in ("learned", "addition", "average", "maximum", "l1"):
                if (level, rule) != ("feature", "learned"):
                    methods[f"cnn-{level}-{rule}"] = ("cnn", {"model": args.model, "level": level,
                                                              "rule": rule})
        methods["cnn-enhance"] = ("cnn", {"model": args.model, "enhance": True})
    t0 = time.perf_counter()
    results = evaluate(cases, methods)
    print_table(results, groups)
    ok = False
    if "all" in results["cnn"]:
        ok = _print_bar(results, t0)
    goal = functional_goal(results)
    for g, checks in goal.items():
        print(f"#16 goal on {g}: {'MET' if all(checks.values()) else 'NOT met'} ("
              + ", ".join(f"{k} {'ok' if v else 'NO'}" for k, v in checks.items()) + ")")
    if args.png:
        save_pngs(cases, methods, args.png)
    if args.figure:
        save_functional_figure(cases, {"pixel maximum": ("maximum", {}),
                                       f"before ({args.reference or 'default'})":
                                           ("cnn", {"model": args.reference or "default"}),
                                       f"after ({Path(args.model).stem})":
                                           ("cnn", {"model": args.model})},
                               args.figure)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "bar_met": ok,
                                         "functional_goal": goal}, indent=2))
    return 0


def _print_bar(results: dict, t0: float) -> bool:
    """Print issue #3's quality bar on the "all" group; return whether it is met."""
    n, wins, gaps = verdict(results)
    print(f"\nCNN beats average, maximum and DWT on {n}/8 metrics: {', '.join(wins) or 'none'}")
    print("CNN vs maximum: " + ", ".join(f"{k} {100 * v:+.1f}%" for k, v in gaps.items()))
    ok = n >= 6 and all(v >= -0.02 for v in gaps.values())
    print(f"quality bar of #3 {'MET' if ok else 'NOT met'} ({time.perf_counter() - t0:.0f} s)")
    return ok


if __name__ == "__main__":
    raise SystemExit(main())

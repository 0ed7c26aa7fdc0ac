"""The metric table (key, direction, range, citation, group) and :func:`compute_metrics`."""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence


from ..errors import InvalidInputError, UnknownOptionError
from . import _fmi, _gradient, _hvs, _information, _statistics, _structural, _vif
from ._common import prepare

__all__ = ["MetricInfo", "METRICS", "REVIEW_KEYS", "STANDARD_KEYS", "ALL_KEYS", "compute_metrics",
           "resolve_keys", "is_better", "best_index"]


@dataclass(frozen=True)
class MetricInfo:
    """What the library knows of one metric.

    Attributes
    ----------
    key : str
        Result key (``"SCD"``, ``"Qabf"``, ...).
    name : str
        Human-readable name.
    direction : {"higher", "lower", "target"}
        Which values are better; ``"target"`` means closest to :attr:`target` (only FI, whose
        balanced value is 1).
    range : tuple of float
        (low, high) of the values as computed here; ``inf`` for unbounded.
    citation : str
        Short citation of the original paper.
    group : {"review", "standard"}
        ``"review"``: the eight metrics of the review's Tables 2-3; ``"standard"``: the set the
        fusion literature reports.
    func : callable
        The public function computing it for one 2D slice.
    inputs : {"abf", "f"}
        Whether it needs both sources and the fused image, or the fused image alone.
    scale : {"per_image", "common", "none"}
        Invariance on scaling: to a positive affine map of each image, to a common positive
        scaling of A, B and F, or not invariant (depends on the 0..255 scale).
    min_side : int
        Smallest slice side (pixels) it can be computed on.
    target : float or None
        Best value when ``direction == "target"``.
    """

    key: str
    name: str
    direction: str
    range: tuple
    citation: str
    group: str
    func: Callable = field(repr=False)
    core: Callable = field(repr=False)
    inputs: str = "abf"
    scale: str = "none"
    min_side: int = 1
    target: float | None = None

    def __getitem__(self, item: str):
        """Mapping-style access, e.g. ``METRICS["SCD"]["direction"]``."""
        return getattr(self, item)

    @property
    def direction_text(self) -> str:
        """"higher is better", "lower is better" or "closest to 1 is best"."""
        if self.direction == "target":
            return f"closest to {self.target:g} is best"
        return f"{self.direction} is better"


_INF = math.inf


def _m(key, name, direction, rng, citation, group, func, core, **kw) -> MetricInfo:
    return MetricInfo(key, name, direction, rng, citation, group, func, core, **kw)


_S, _I, _F = _statistics, _information, _fmi
_G, _H, _V, _T = _gradient, _hvs, _vif, _structural

_TABLE: list[MetricInfo] = [
    # -- the review's eight (Tables 2 and 3) ------------------------------------------------------
    _m("SCD", "Sum of the correlations of differences", "higher", (-2.0, 2.0),
       "Aslantas & Bendes, AEU 69(12):1890-1896, 2015", "review", _S.scd, _S._scd,
       scale="common"),
    _m("FS", "Fusion symmetry |I_AF/(I_AF+I_BF) - 0.5|", "lower", (0.0, 0.5),
       "Ramesh & Ranjith, Proc. FUSION 2002, 317-320", "review", _I.fusion_symmetry, _I._fs,
       scale="per_image"),
    _m("FMI_pixel", "Feature mutual information, pixels (Fast-FMI)", "higher", (0.0, 1.0),
       "Haghighat et al., Comput. Electr. Eng. 37(5):744-756, 2011", "review", _F.fmi_pixel,
       lambda t: _F._fmi(t, "none"), scale="common", min_side=3),
    _m("FF", "Fusion factor I_AF + I_BF (bits)", "higher", (0.0, 16.0),
       "Ramesh & Ranjith, Proc. FUSION 2002, 317-320", "review", _I.fusion_factor, _I._mi,
       scale="per_image"),
    _m("SD", "Standard deviation of F", "higher", (0.0, 127.5),
       "Rao, Meas. Sci. Technol. 8(4):355-375, 1997", "review", _S.standard_deviation, _S._sd,
       inputs="f"),
    _m("M", "Mean grey level of F", "higher", (0.0, 255.0), "the review's M", "review",
       _S.mean_intensity, _S._mean, inputs="f"),
    _m("EN", "Entropy of F (bits; the review's E)", "higher", (0.0, 8.0),
       "Roberts et al., J. Appl. Remote Sens. 2(1):023522, 2008", "review", _I.entropy, _I._en,
       inputs="f"),
    _m("FI", "Fusion index I_AF / I_BF", "target", (0.0, _INF),
       "Singh & Khare, Information Fusion 19:49-60, 2014", "review", _I.fusion_index, _I._fi,
       scale="per_image", target=1.0),
    # -- the standard set --------------------------------------------------------------------------
    _m("SF", "Spatial frequency", "higher", (0.0, _INF),
       "Eskicioglu & Fisher, IEEE Trans. Commun. 43(12):2959-2965, 1995", "standard",
       _S.spatial_frequency, _S._sf, inputs="f"),
    _m("AG", "Average gradient", "higher", (0.0, _INF),
       "Cui et al., Opt. Commun. 341:199-209, 2015", "standard", _S.average_gradient, _S._ag,
       inputs="f"),
    _m("MI", "Mutual information I_AF + I_BF (bits)", "higher", (0.0, 16.0),
       "Qu et al., Electron. Lett. 38(7):313-315, 2002", "standard", _I.mutual_information,
       _I._mi, scale="per_image"),
    _m("NMI", "Normalised mutual information (Hossny Q_MI)", "higher", (0.0, 2.0),
       "Hossny et al., Electron. Lett. 44(18):1066-1067, 2008", "standard",
       _I.normalized_mutual_information, _I._nmi, scale="per_image"),
    _m("Q_TE", "Tsallis-entropy MI (Nava form)", "higher", (0.0, _INF),
       "Nava et al., SPIE Newsroom 2007; Cvejic et al., Electron. Lett. 42(11), 2006",
       "standard", _I.tsallis_mutual_information, _I._qte, scale="per_image"),
    _m("Q_NCIE", "Nonlinear correlation information entropy", "higher", (0.0, 1.0),
       "Wang et al., in Stathaki (ed.), Image Fusion, ch. 19, 2008", "standard", _I.ncie,
       _I._ncie, scale="per_image"),
    _m("FMI_dct", "Feature mutual information, DCT features", "higher", (0.0, 1.0),
       "Haghighat & Razian, AICT 2014", "standard", _F.fmi_dct, lambda t: _F._fmi(t, "dct"),
       scale="common", min_side=3),
    _m("FMI_w", "Feature mutual information, wavelet features", "higher", (0.0, 1.0),
       "Haghighat & Razian, AICT 2014", "standard", _F.fmi_wavelet,
       lambda t: _F._fmi(t, "wavelet"), scale="common", min_side=3),
    _m("Qabf", "Edge preservation Q^AB/F", "higher", (0.0, 1.0),
       "Xydeas & Petrovic, Electron. Lett. 36(4):308-309, 2000", "standard", _G.qabf,
       _G._qabf, scale="common"),
    _m("Q_CB", "Chen-Blum HVS metric", "higher", (0.0, 1.0),
       "Chen & Blum, Image Vis. Comput. 27(10):1421-1432, 2009", "standard", _H.chen_blum,
       _H._qcb, scale="per_image"),
    _m("Q_CV", "Chen-Varshney HVS metric", "lower", (0.0, _INF),
       "Chen & Varshney, Information Fusion 8(2):193-207, 2007", "standard",
       _H.chen_varshney, _H._qcv, scale="per_image"),
    _m("VIFF", "Visual information fidelity for fusion (Han)", "higher", (0.0, 1.0),
       "Han et al., Information Fusion 14(2):127-135, 2013", "standard", _V.viff, _V._viff,
       min_side=_V.VIF_MIN_SIDE),
    _m("VIF", "VIFp(A,F) + VIFp(B,F), sigma_n^2 = 2", "higher", (0.0, 2.0),
       "Sheikh & Bovik, IEEE TIP 15(2):430-444, 2006", "standard", _V.vif, _V._vif,
       min_side=_V.VIF_MIN_SIDE),
    _m("SSIM", "SSIM(A,F) + SSIM(B,F)", "higher", (-2.0, 2.0),
       "Wang et al., IEEE TIP 13(4):600-612, 2004", "standard", _T.ssim, _T._ssim, min_side=11),
    _m("MS_SSIM", "MS-SSIM(A,F) + MS-SSIM(B,F)", "higher", (0.0, 2.0),
       "Wang et al., Asilomar 2003", "standard", _T.ms_ssim, _T._ms_ssim, min_side=11),
    _m("Q_Y", "Yang's SSIM-based metric", "higher", (0.0, 1.0),
       "Yang et al., Information Fusion 9(2):156-160, 2008", "standard", _T.yang, _T._qy,
       scale="common", min_side=11),
    _m("Q_C", "Cvejic's similarity metric", "higher", (0.0, 1.0),
       "Cvejic et al., Int. J. Inf. Commun. Eng. 2(3):178-182, 2006", "standard", _T.cvejic,
       _T._qc, scale="common", min_side=11),
    _m("Q_S", "Piella's fusion quality index", "higher", (-1.0, 1.0),
       "Piella & Heijmans, ICIP 2003, 3:173-176", "standard", _T.piella_s, _T._piella,
       min_side=11),
    _m("Q_W", "Piella's weighted fusion quality index", "higher", (-1.0, 1.0),
       "Piella & Heijmans, ICIP 2003, 3:173-176", "standard", _T.piella_w,
       lambda t: _T._piella(t, weighted=True), min_side=11),
    _m("Q_E", "Piella's edge-dependent fusion quality index", "higher", (-1.0, 1.0),
       "Piella & Heijmans, ICIP 2003, 3:173-176", "standard", _T.piella_e, _T._qe, min_side=11),
    _m("PSNR", "Peak signal-to-noise ratio (dB)", "higher", (0.0, _INF),
       "Jagalingam & Hegde, Aquatic Procedia 4:133-142, 2015", "standard", _S.psnr, _S._psnr),
    _m("CC", "Correlation coefficient (r_AF + r_BF)/2", "higher", (-1.0, 1.0),
       "Zhao et al., CDDFuse, CVPR 2023", "standard", _S.correlation_coefficient, _S._cc,
       scale="per_image"),
]

#: Every metric by result key, in the order of the review's tables then the standard set.
METRICS: Mapping[str, MetricInfo] = {m.key: m for m in _TABLE}
#: The review's eight, in the column order of its Table 2 (SCD, FS, FMI, FF) and Table 3.
REVIEW_KEYS: tuple[str, ...] = tuple(m.key for m in _TABLE if m.group == "review")
#: The literature's standard set.
STANDARD_KEYS: tuple[str, ...] = tuple(m.key for m in _TABLE if m.group == "standard")
#: All keys.
ALL_KEYS: tuple[str, ...] = REVIEW_KEYS + STANDARD_KEYS

_FOLDED = {k.lower(): k for k in ALL_KEYS}


def resolve_keys(keys: str | Iterable[str] | None) -> tuple[str, ...]:
    """Validate metric keys (case-insensitive; a comma-separated string is accepted).

    ``None`` means all keys; ``"review"`` and ``"standard"`` name the two groups.

    Raises
    ------
    UnknownOptionError
        For an unknown key, with a "did you mean" suggestion and the list of keys.
    """
    if keys is None:
        return ALL_KEYS
    if isinstance(keys, str):
        keys = [k for k in keys.split(",")]
    out: list[str] = []
    for raw in keys:
        k = str(raw).strip()
        if not k:
            continue
        low = k.lower()
        if low in ("review", "standard", "all"):
            group = {"review": REVIEW_KEYS, "standard": STANDARD_KEYS, "all": ALL_KEYS}[low]
            out.extend(g for g in group if g not in out)
            continue
        if low not in _FOLDED:
            close = difflib.get_close_matches(low, list(_FOLDED), n=1, cutoff=0.5)
            hint = f" Did you mean '{_FOLDED[close[0]]}'?" if close else ""
            raise UnknownOptionError(
                f"unknown metric '{k}'.{hint} Available: {', '.join(ALL_KEYS)} "
                "(or 'review', 'standard')."
            )
        if _FOLDED[low] not in out:
            out.append(_FOLDED[low])
    if not out:
        raise UnknownOptionError("no metric keys given; pass None for all of them.")
    return tuple(out)


def _min_side_check(shape, keys: Sequence[str], func: str) -> None:
    side = min(shape)
    too_small = [k for k in keys if METRICS[k].min_side > side]
    if too_small:
        need = max(METRICS[k].min_side for k in too_small)
        raise InvalidInputError(
            f"{func}: slices of {shape[0]} x {shape[1]} pixels are too small for "
            f"{', '.join(too_small)} (they need at least {need} pixels a side); leave them out "
            "with keys=..."
        )


def compute_metrics(a, b, f, *, keys=None, data_range: float = 1.0,
                    options: Mapping[str, Mapping] | None = None) -> dict[str, float]:
    """Compute fusion metrics for one 2D slice.

    Parameters
    ----------
    a, b : ndarray, shape (H, W)
        The two co-registered sources, values in ``[0, data_range]``.
    f : ndarray, shape (H, W)
        The fused image, values in ``[0, data_range]``.
    keys : str or sequence of str, optional
        Metric keys (see :data:`METRICS`), ``"review"``/``"standard"`` for a group, or a
        comma-separated string; all of them by default.
    data_range : float, optional
        Intensity span of the inputs (1.0 for the engine's [0, 1] images). Internally every image
        is mapped to the 0..255 grey scale (float64) that the metric definitions assume.
    options : mapping, optional
        Per-key keyword options of the underlying function, e.g.
        ``{"FS": {"variant": "two_minus"}, "SF": {"variant": "mean"}}``.

    Returns
    -------
    dict of str to float
        Values in the order of ``keys``. A metric that is undefined for the slice (e.g. Q^AB/F
        when neither source has an edge) is NaN.

    Raises
    ------
    InvalidInputError
        If the shapes differ, an image is not 2D, holds NaN/Inf or values outside
        ``[0, data_range]``, or the slice is too small for a requested metric.
    UnknownOptionError
        For an unknown key or option.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.random((64, 64)), rng.random((64, 64))
    >>> m = compute_metrics(a, b, (a + b) / 2, keys=["EN", "SCD"])
    >>> sorted(m)
    ['EN', 'SCD']
    """
    keys = resolve_keys(keys)
    options = _check_options(options, keys)
    t = prepare(a, b, f, data_range, "compute_metrics")
    _min_side_check(t.f.shape, keys, "compute_metrics")
    return {k: float(METRICS[k].core(t, **options.get(k, {}))) for k in keys}


#: Allowed string values of the options that select a variant.
_CHOICES = {("SF", "variant"): ("vifb", "mean"), ("AG", "variant"): ("vifb", "mean"),
            ("PSNR", "variant"): ("standard", "vifb"), ("Q_TE", "variant"): ("nava", "cvejic")}


def _check_options(options, keys) -> dict:
    """Validate per-key options against the keyword options of each metric's public function."""
    out = {}
    for k, opts in dict(options or {}).items():
        if k not in keys:
            raise UnknownOptionError(f"compute_metrics: options given for '{k}', which is not "
                                     f"among the requested keys {', '.join(keys)}.")
        params = inspect.signature(METRICS[k].func).parameters
        allowed = [n for n, p in params.items()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "data_range"]
        for name, value in dict(opts).items():
            if name not in allowed:
                raise UnknownOptionError(
                    f"compute_metrics: '{k}' has no option '{name}'; its options: "
                    f"{', '.join(allowed) or 'none'}.")
            choices = _CHOICES.get((k, name))
            if choices and value not in choices:
                raise UnknownOptionError(f"compute_metrics: {k} {name} must be one of "
                                         f"{', '.join(choices)}, got {value!r}.")
        out[k] = dict(opts)
    return out


def is_better(key: str, x: float, y: float) -> bool:
    """True when value ``x`` of metric ``key`` is strictly better than ``y`` (NaN never is)."""
    info = METRICS[resolve_keys([key])[0]]
    if math.isnan(x):
        return False
    if math.isnan(y):
        return True
    if info.direction == "higher":
        return x > y
    if info.direction == "lower":
        return x < y
    return abs(x - info.target) < abs(y - info.target)


def best_index(key: str, values: Sequence[float]) -> int | None:
    """Index of the best of ``values`` for metric ``key`` (first on ties), None if all NaN."""
    best = None
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if best is None or is_better(key, float(v), float(values[best])):
            best = i
    return best

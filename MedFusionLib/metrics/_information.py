"""Information-theoretic fusion metrics: EN, MI (= FF), FS, FI, NMI (Hossny), Q_TE, Q_NCIE.

MI-family conventions (recorded in :data:`MI_SETTINGS`): each image is min-max quantised to
256 integer levels (Liu's ``normalize1``, MATLAB rounding), joint histograms have 256 x 256 bins,
and information is in bits. EN instead bins the fused image by ``floor(F)`` on the 0..255 scale
(VIFB). FS and FI follow the documented forms; the review's absolute FS, FI (and FMI) values
cannot be reproduced from any published formula (see the package notes).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import UnknownOptionError
from ._common import Triplet, prepare, prepare_fused

__all__ = ["entropy", "mutual_information", "fusion_factor", "fusion_symmetry", "fusion_index",
           "normalized_mutual_information", "tsallis_mutual_information", "ncie", "MI_SETTINGS"]

#: How MI, FF, FS, FI, NMI, Q_TE and Q_NCIE quantise and measure information.
MI_SETTINGS = {"unit": "bits", "bins": 256, "quantisation": "min-max to 0..255, rounded (normalize1)"}

_NBINS = 256


def _plogp(p: np.ndarray, base: float = 2.0) -> float:
    """-sum p log_base p over the non-zero entries."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(base))


def _joint(t: Triplet, x: str, y: str) -> np.ndarray:
    """Joint probability table p[i, j] of the quantised images ``x`` (rows) and ``y`` (columns)."""
    def compute():
        q = t.quantised
        h = np.bincount((q[x] * _NBINS + q[y]).ravel(), minlength=_NBINS * _NBINS)
        return h.reshape(_NBINS, _NBINS) / q[x].size
    return t.cached(("joint", x, y), compute)


def _marginal(t: Triplet, x: str) -> np.ndarray:
    def compute():
        q = t.quantised[x]
        return np.bincount(q.ravel(), minlength=_NBINS) / q.size
    return t.cached(("marginal", x), compute)


def _h(t: Triplet, x: str) -> float:
    return t.cached(("H", x), lambda: _plogp(_marginal(t, x)))


def _mi_pair(t: Triplet, x: str, y: str) -> float:
    """I(X;Y) = H(X) + H(Y) - H(X,Y) in bits (clamped at 0 against rounding)."""
    def compute():
        return max(0.0, _h(t, x) + _h(t, y) - _plogp(_joint(t, x, y)))
    return t.cached(("I", x, y), compute)


# ---- cores ----------------------------------------------------------------------------------

def _en(t: Triplet) -> float:
    # floor(F); the 1e-4 nudge puts 8-bit levels stored as float32 fractions of 1 (k/255 * 255 =
    # k - 2e-5) back into their own bin
    idx = np.clip(np.floor(t.f + 1e-4), 0, 255).astype(np.int64)
    p = np.bincount(idx.ravel(), minlength=_NBINS) / idx.size
    return _plogp(p)


def _mi(t: Triplet) -> float:
    return _mi_pair(t, "a", "f") + _mi_pair(t, "b", "f")


_FS_VARIANTS: dict[str, Callable[[float, float], float]] = {
    "abs": lambda iaf, ibf: abs(iaf / (iaf + ibf) - 0.5) if iaf + ibf > 0 else 0.0,
    "two_minus": lambda iaf, ibf: 2.0 - abs(iaf / (iaf + ibf) - 0.5) if iaf + ibf > 0 else 2.0,
}

_FI_VARIANTS: dict[str, Callable[[float, float], float]] = {
    "ratio": lambda iaf, ibf: iaf / ibf if ibf > 0 else (float("inf") if iaf > 0 else 1.0),
    "balance": lambda iaf, ibf: abs(iaf / ibf - 1.0) if ibf > 0 else (float("inf") if iaf > 0 else 0.0),
}


def _pluggable(variant, table: dict, func: str) -> Callable[[float, float], float]:
    if callable(variant):
        return variant
    if variant not in table:
        raise UnknownOptionError(
            f"{func}: unknown variant {variant!r}; use one of {', '.join(table)} or a function "
            "(i_af, i_bf) -> float."
        )
    return table[variant]


def _fs(t: Triplet, variant="abs") -> float:
    return float(_pluggable(variant, _FS_VARIANTS, "fusion_symmetry")(
        _mi_pair(t, "a", "f"), _mi_pair(t, "b", "f")))


def _fi(t: Triplet, variant="ratio") -> float:
    return float(_pluggable(variant, _FI_VARIANTS, "fusion_index")(
        _mi_pair(t, "a", "f"), _mi_pair(t, "b", "f")))


def _nmi(t: Triplet) -> float:
    total = 0.0
    for x in ("a", "b"):
        den = _h(t, x) + _h(t, "f")
        total += _mi_pair(t, x, "f") / den if den > 0 else 0.0
    return 2.0 * total


def _tsallis_pair(t: Triplet, x: str, y: str, q: float, faithful: bool) -> float:
    p = _joint(t, x, y)
    px, py = _marginal(t, x), _marginal(t, y)
    if faithful:  # Liu's tsallis.m swaps the marginals: p(i, j) / (p_Y(i) p_X(j))
        outer = py[:, None] * px[None, :]
    else:
        outer = px[:, None] * py[None, :]
    m = (p > 0) & (outer > 0)
    s = float((p[m] ** q / outer[m] ** (q - 1.0)).sum())
    return (1.0 - s) / (1.0 - q)


def _qte(t: Triplet, variant: str = "nava", faithful: bool = False) -> float:
    if variant == "cvejic":
        q = 1.85
        return _tsallis_pair(t, "a", "f", q, faithful) + _tsallis_pair(t, "b", "f", q, faithful)
    q = 0.43137
    num = _tsallis_pair(t, "a", "f", q, faithful) + _tsallis_pair(t, "b", "f", q, faithful)
    iab = _tsallis_pair(t, "a", "b", q, faithful)
    # Liu's metricMI.m adds I_q(A;B) in the denominator; the spec's (Nava's) form subtracts it.
    den = _h(t, "a") ** q + _h(t, "b") ** q + (iab if faithful else -iab)
    return float(num / den) if den != 0 else 0.0


def _ncc(t: Triplet, x: str, y: str) -> float:
    b = float(_NBINS)
    return (_h(t, x) + _h(t, y) - _plogp(_joint(t, x, y))) / np.log2(b)


def _ncie(t: Triplet) -> float:
    nab, naf, nbf = _ncc(t, "a", "b"), _ncc(t, "a", "f"), _ncc(t, "b", "f")
    r = np.array([[1.0, nab, naf], [nab, 1.0, nbf], [naf, nbf, 1.0]])
    lam = np.linalg.eigvalsh(r) / 3.0
    lam = lam[lam > 0]
    return float(1.0 + (lam * np.log(lam)).sum() / np.log(_NBINS))


# ---- public functions ------------------------------------------------------------------------

def entropy(fused, *, data_range=None) -> float:
    """Shannon entropy EN of the fused image in bits (the review's "E").

    The 256-bin histogram uses ``floor(F)`` on the 0..255 scale as the bin index (VIFB), after
    a 1e-4 grey-level nudge so that 8-bit levels stored as float32 fractions keep their bin.
    Direction: higher is better. Range [0, 8].

    Parameters
    ----------
    fused : ndarray, shape (H, W)
        Values in ``[0, data_range]``.
    data_range : float, optional
        Required for float input.

    Examples
    --------
    >>> import numpy as np
    >>> entropy(np.array([[0, 255], [0, 255]], dtype=np.uint8))
    1.0

    References
    ----------
    J.W. Roberts, J.A. van Aardt, F.B. Ahmed, "Assessment of image fusion procedures using
    entropy, image quality, and multispectral classification", J. Appl. Remote Sens.
    2(1):023522, 2008; C.E. Shannon, Bell Syst. Tech. J. 27:379-423, 1948.
    """
    return _en(Triplet(None, None, prepare_fused(fused, data_range, "entropy")))


def mutual_information(source_a, source_b, fused, *, data_range=None) -> float:
    """MI = I(A;F) + I(B;F) in bits from 256 x 256 joint histograms (min-max quantisation).

    Direction: higher is better. Range [0, 16]. Invariant to a positive affine map of each
    image (each is min-max quantised). VIFB and CDDFuse report nats (nats = bits x ln 2).

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
    data_range : float, optional

    References
    ----------
    G. Qu, D. Zhang, P. Yan, "Information measure for performance of image fusion", Electron.
    Lett. 38(7):313-315, 2002.
    """
    return _mi(prepare(source_a, source_b, fused, data_range, "mutual_information"))


def fusion_factor(source_a, source_b, fused, *, data_range=None) -> float:
    """Fusion factor FF = I(A;F) + I(B;F) (bits); identical to :func:`mutual_information`.

    Direction: higher is better. Range [0, 16].

    References
    ----------
    C. Ramesh, T. Ranjith, "Fusion performance measures and a lifting wavelet transform based
    algorithm for image fusion", Proc. FUSION 2002, pp. 317-320.
    """
    return _mi(prepare(source_a, source_b, fused, data_range, "fusion_factor"))


def fusion_symmetry(source_a, source_b, fused, *, data_range=None, variant="abs") -> float:
    """Fusion symmetry FS = |I(A;F) / (I(A;F) + I(B;F)) - 0.5|.

    Direction: lower is better (0: both sources contributed equally). Range [0, 0.5]. When
    neither source shares information with F (I(A;F) + I(B;F) = 0), FS is 0 by convention.

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
    data_range : float, optional
    variant : {"abs", "two_minus"} or callable, optional
        ``"two_minus"`` gives 2 - |...| (range [1.5, 2], higher is better). A function
        ``(i_af, i_bf) -> float`` (MI in bits) plugs in another definition.

    Notes
    -----
    The review reports FS = 0.86 (CNN) to 0.99, "lower is better", which no published form gives
    (|.| is <= 0.5, 2 - |.| is >= 1.5): its absolute FS values cannot be reproduced.

    References
    ----------
    C. Ramesh, T. Ranjith, Proc. FUSION 2002, pp. 317-320.
    """
    _pluggable(variant, _FS_VARIANTS, "fusion_symmetry")
    return _fs(prepare(source_a, source_b, fused, data_range, "fusion_symmetry"), variant)


def fusion_index(source_a, source_b, fused, *, data_range=None, variant="ratio") -> float:
    """Fusion index FI = I(A;F) / I(B;F) (MI in bits); 1 means balanced.

    Direction: closest to 1 is best (use ``variant="balance"``, |FI - 1|, lower is better, for a
    score). Range [0, inf]; ``inf`` when I(B;F) = 0 < I(A;F), 1 when both are 0.

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
    data_range : float, optional
    variant : {"ratio", "balance"} or callable, optional
        A function ``(i_af, i_bf) -> float`` plugs in another definition.

    Notes
    -----
    The review's FI values (about 20-32) are on the grey-level scale, not an MI ratio; their
    definition is unknown and cannot be reproduced.

    References
    ----------
    Used with FF and FS in the medical-fusion papers of R. Singh, A. Khare (e.g. Information
    Fusion 19:49-60, 2014).
    """
    _pluggable(variant, _FI_VARIANTS, "fusion_index")
    return _fi(prepare(source_a, source_b, fused, data_range, "fusion_index"), variant)


def normalized_mutual_information(source_a, source_b, fused, *, data_range=None) -> float:
    """Hossny's normalised MI, Q_MI = 2 [I(A;F)/(H(A)+H(F)) + I(B;F)/(H(B)+H(F))].

    Direction: higher is better. Range [0, 2] (some papers report half of it).

    References
    ----------
    M. Hossny, S. Nahavandi, D. Creighton, "Comments on 'Information measure for performance of
    image fusion'", Electron. Lett. 44(18):1066-1067, 2008.
    """
    return _nmi(prepare(source_a, source_b, fused, data_range, "normalized_mutual_information"))


def tsallis_mutual_information(source_a, source_b, fused, *, data_range=None,
                               variant: str = "nava", faithful: bool = False) -> float:
    """Tsallis-entropy fusion metric Q_TE.

    I_q(X;Y) = (1 - sum p(i,j)^q / (p_X(i) p_Y(j))^(q-1)) / (1 - q).

    Parameters
    ----------
    source_a, source_b, fused : ndarray, shape (H, W)
    data_range : float, optional
    variant : {"nava", "cvejic"}, optional
        ``"nava"`` (default, q = 0.43137): (I_q(A;F) + I_q(B;F)) / (H(A)^q + H(B)^q - I_q(A;B)),
        H the Shannon entropy in bits, roughly [0, 1]. ``"cvejic"`` (q = 1.85): I_q(A;F) + I_q(B;F),
        unbounded.
    faithful : bool, optional
        Reproduce Liu's ``tsallis.m``/``metricMI.m`` (swapped marginals, and + I_q(A;B) in
        Nava's denominator) instead of the textbook form.

    Returns
    -------
    float
        Direction: higher is better.

    References
    ----------
    N. Cvejic, C.N. Canagarajah, D.R. Bull, "Image fusion metric based on mutual information and
    Tsallis entropy", Electron. Lett. 42(11):626-627, 2006. R. Nava, B. Escalante-Ramirez,
    G. Cristobal, "Mutual information improves image fusion quality assessments", SPIE Newsroom,
    2007.
    """
    if variant not in ("nava", "cvejic"):
        raise UnknownOptionError(f"tsallis_mutual_information: unknown variant {variant!r}; use "
                                 "'nava' or 'cvejic'.")
    t = prepare(source_a, source_b, fused, data_range, "tsallis_mutual_information")
    return _qte(t, variant, bool(faithful))


def ncie(source_a, source_b, fused, *, data_range=None) -> float:
    """Nonlinear correlation information entropy Q_NCIE.

    NCC(X,Y) = H(X) + H(Y) - H(X,Y) in base-256 units; R is the 3 x 3 matrix of the NCCs of
    (A, B, F) with eigenvalues l_k; Q_NCIE = 1 + sum (l_k/3) log_256(l_k/3).
    Direction: higher is better. Range [0, 1].

    References
    ----------
    Q. Wang, Y. Shen, J. Jin, "Performance evaluation of image fusion techniques", in
    T. Stathaki (ed.), Image Fusion: Algorithms and Applications, ch. 19, pp. 469-492, Academic
    Press, 2008.
    """
    return _ncie(prepare(source_a, source_b, fused, data_range, "ncie"))

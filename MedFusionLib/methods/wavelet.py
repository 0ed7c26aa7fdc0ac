"""Wavelet-domain fusion baselines: DWT, SWT and wavelet packets (WPD), via PyWavelets.

Each method decomposes both sources with the same wavelet, averages the approximation
(low-pass) coefficients, keeps the larger-magnitude detail coefficient (optionally with the 3 x 3
consistency check of Li, Manjunath and Mitra), and inverts the transform. The whole batch and both
sources are transformed in one PyWavelets call over the last two axes, so the cost per slice is
that of the C filtering code. All functions follow the registry contract: ``a``, ``b`` are
``float32 (N, H, W)`` in [0, 1] and the result is ``float32 (N, H, W)`` in [0, 1]; any ``H``,
``W`` (odd, non-square) is accepted.
"""

from __future__ import annotations

import warnings

import numpy as np

from .. import optional
from ._registry import register
from ._rules import check_bool, check_choice, check_int, select_maxabs

__all__ = ["dwt", "swt", "wpd"]

pywt = optional.lazy("pywt", what="the wavelet methods (dwt, swt, wpd)")

_MAX_LEVEL = 8


def _check_wavelet(method: str, wavelet) -> pywt.Wavelet:
    name = check_choice(method, "wavelet", wavelet, pywt.wavelist(kind="discrete"))
    return pywt.Wavelet(name)


def _check_mode(method: str, mode) -> str:
    return check_choice(method, "mode", mode, pywt.Modes.modes)


def _effective_level(level: int, shape: tuple[int, int], wavelet: pywt.Wavelet) -> int:
    """``level`` capped at the deepest level the slice size supports (at least 1)."""
    deepest = pywt.dwt_max_level(min(shape), wavelet.dec_len)
    return max(1, min(level, deepest))


def _fuse_levels(coeffs: list, consistency: bool) -> list:
    """Fuse a two-source ``wavedec2``/``swt2`` coefficient list (source on axis 0): average the
    approximation, choose the larger-magnitude detail coefficient (optionally with the 3 x 3
    consistency check)."""
    fused = [coeffs[0].mean(axis=0)]
    for details in coeffs[1:]:
        fused.append(tuple(select_maxabs(d[0], d[1], consistency=consistency) for d in details))
    return fused


def _finish(fused: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop to ``shape`` (the inverse may return one extra row/column for odd sizes), clip to
    [0, 1] and return C-contiguous float32."""
    out = np.clip(fused[..., : shape[0], : shape[1]], 0.0, 1.0)
    return np.ascontiguousarray(out, dtype=np.float32)


@register("dwt", title="Discrete wavelet transform (DWT)", family="multiscale",
          requires=("pywt",),
          reference="Y. Liu, S. Liu, Z. Wang, Information Fusion 24:147-164, 2015 (MST toolbox "
                    "defaults); H. Li, B.S. Manjunath, S.K. Mitra, Graph. Models Image Process. "
                    "57(3):235-245, 1995.")
def dwt(a: np.ndarray, b: np.ndarray, *, wavelet: str = "db1", level: int = 4,
        mode: str = "periodization", consistency: bool = True, device: str = "cpu") -> np.ndarray:
    """Fuse in the discrete wavelet domain (``pywt.wavedec2`` / ``waverec2``).

    Parameters
    ----------
    a, b : ndarray, float32, shape (N, H, W)
        Co-registered sources in [0, 1].
    wavelet : str, optional
        Any discrete PyWavelets wavelet name. Default ``'db1'`` (Haar), as in the MST toolbox.
    level : int, optional
        Decomposition levels, 1 to 8 (default 4); capped at the deepest level the slice size
        allows.
    mode : str, optional
        Signal extension mode (a ``pywt.Modes`` name). Default ``'periodization'`` (MATLAB
        ``'per'``).
    consistency : bool, optional
        Apply the 3 x 3 majority consistency check to the detail decision maps (default True).
    device : str, optional
        Ignored (CPU only).

    Returns
    -------
    ndarray, float32, shape (N, H, W), values in [0, 1]
    """
    w = _check_wavelet("dwt", wavelet)
    level = check_int("dwt", "level", level, 1, _MAX_LEVEL)
    mode = _check_mode("dwt", mode)
    consistency = check_bool("dwt", "consistency", consistency)
    shape = a.shape[-2:]
    level = _effective_level(level, shape, w)

    with warnings.catch_warnings():
        # Slices smaller than the filter still get one level (with boundary effects).
        warnings.filterwarnings("ignore", message="Level value of", category=UserWarning)
        coeffs = pywt.wavedec2(np.stack([a, b]), w, mode=mode, level=level, axes=(-2, -1))
    return _finish(pywt.waverec2(_fuse_levels(coeffs, consistency), w, mode=mode,
                                 axes=(-2, -1)), shape)


@register("swt", title="Stationary wavelet transform (SWT)", family="multiscale",
          requires=("pywt",),
          reference="V.P.S. Naidu, J.R. Raol, Defence Sci. J. 58(3):338-352, 2008; "
                    "G.P. Nason, B.W. Silverman, Lecture Notes in Statistics 103:281-299, 1995.")
def swt(a: np.ndarray, b: np.ndarray, *, wavelet: str = "sym2", level: int = 2,
        consistency: bool = False, device: str = "cpu") -> np.ndarray:
    """Fuse in the stationary (undecimated) wavelet domain (``pywt.swt2`` / ``iswt2``).

    The slices are padded symmetrically to a multiple of ``2**level`` (as the SWT requires) and
    the result is cropped back.

    Parameters
    ----------
    a, b : ndarray, float32, shape (N, H, W)
        Co-registered sources in [0, 1].
    wavelet : str, optional
        Any discrete PyWavelets wavelet name. Default ``'sym2'`` (Naidu's SWT demo).
    level : int, optional
        Decomposition levels, 1 to 8 (default 2; the literature uses 1 to 3).
    consistency : bool, optional
        Apply the 3 x 3 majority consistency check to the detail decision maps (default False,
        plain max-abs as in the SWT literature).
    device : str, optional
        Ignored (CPU only).

    Returns
    -------
    ndarray, float32, shape (N, H, W), values in [0, 1]
    """
    w = _check_wavelet("swt", wavelet)
    level = check_int("swt", "level", level, 1, _MAX_LEVEL)
    consistency = check_bool("swt", "consistency", consistency)
    shape = a.shape[-2:]
    step = 2 ** level
    pad = [(0, 0), (0, 0)] + [(0, (-n) % step) for n in shape]
    x = np.pad(np.stack([a, b]), pad, mode="symmetric")

    coeffs = pywt.swt2(x, w, level=level, axes=(-2, -1), trim_approx=True, norm=False)
    return _finish(pywt.iswt2(_fuse_levels(coeffs, consistency), w, axes=(-2, -1), norm=False),
                   shape)


@register("wpd", title="Wavelet packet decomposition (WPD)", family="multiscale",
          requires=("pywt",),
          reference="R.R. Coifman, M.V. Wickerhauser, IEEE Trans. Inf. Theory 38(2):713-718, "
                    "1992; fusion rules as in Y. Liu et al., Information Fusion 24:147-164, 2015.")
def wpd(a: np.ndarray, b: np.ndarray, *, wavelet: str = "db1", level: int = 2,
        mode: str = "symmetric", consistency: bool = False, device: str = "cpu") -> np.ndarray:
    """Fuse in the full wavelet-packet domain.

    Every node of the packet tree is split again at each level (4**level leaves). The leaf that
    is the approximation of approximations is averaged; every other leaf is fused max-abs. The
    tree is computed level by level with one ``pywt.dwt2`` call per level over all nodes, both
    sources and the whole batch, and inverted with ``pywt.idwt2`` (cropping each level to its
    parent's size, as ``pywt.WaveletPacket2D.reconstruct`` does).

    Parameters
    ----------
    a, b : ndarray, float32, shape (N, H, W)
        Co-registered sources in [0, 1].
    wavelet : str, optional
        Any discrete PyWavelets wavelet name. Default ``'db1'``.
    level : int, optional
        Packet tree depth, 1 to 8 (default 2); capped at the deepest level the slice size allows.
    mode : str, optional
        Signal extension mode (a ``pywt.Modes`` name). Default ``'symmetric'``.
    consistency : bool, optional
        Apply the 3 x 3 majority consistency check to the detail decision maps (default False).
    device : str, optional
        Ignored (CPU only).

    Returns
    -------
    ndarray, float32, shape (N, H, W), values in [0, 1]
    """
    w = _check_wavelet("wpd", wavelet)
    level = check_int("wpd", "level", level, 1, _MAX_LEVEL)
    mode = _check_mode("wpd", mode)
    consistency = check_bool("wpd", "consistency", consistency)
    shape = a.shape[-2:]
    level = _effective_level(level, shape, w)

    nodes = np.stack([a, b])[None]  # (nodes, source, N, h, w)
    parent_shapes = []
    for _ in range(level):
        parent_shapes.append(nodes.shape[-2:])
        ca, (ch, cv, cd) = pywt.dwt2(nodes, w, mode=mode, axes=(-2, -1))
        nodes = np.stack([ca, ch, cv, cd], axis=1).reshape((-1,) + ca.shape[1:])

    fused = np.empty_like(nodes[:, 0])
    fused[0] = nodes[0].mean(axis=0)  # node 'aa...a': the approximation
    fused[1:] = select_maxabs(nodes[1:, 0], nodes[1:, 1], consistency=consistency)

    for parent in reversed(parent_shapes):
        quads = fused.reshape((-1, 4) + fused.shape[1:])
        up = pywt.idwt2((quads[:, 0], (quads[:, 1], quads[:, 2], quads[:, 3])), w, mode=mode,
                        axes=(-2, -1))
        fused = up[..., : parent[0], : parent[1]]
    return _finish(fused[0], shape)

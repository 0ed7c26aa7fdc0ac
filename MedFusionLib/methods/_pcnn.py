"""Fusion rules of NSST-PAPCNN (Yin, Liu, Liu and Chen 2019), batched in torch.

M. Yin, X. Liu, Y. Liu, X. Chen, "Medical image fusion with parameter-adaptive pulse coupled
neural network in nonsubsampled shearlet transform domain", IEEE Trans. Instrum. Meas.
68(1):49-64, 2019.

* **Low-pass:** keep the coefficient with the larger activity ``WLE x WSEML``: the weighted local
  energy and the weighted sum of the eight-neighbour modified Laplacian, both weighted over a
  3 x 3 window by ``[1 2 1; 2 4 2; 1 2 1] / 16``.
* **High-pass:** a parameter-adaptive pulse coupled neural network is run on the absolute
  coefficients of each subband; the coefficient whose neuron fired more often over the
  iterations is kept. Its parameters are set per subband from the stimulus ``S``:
  ``alpha_f = log10(1 / std(S))``, ``lambda = (S_max / S' - 1) / 6``,
  ``V_E = exp(-alpha_f) + S_max / S'`` and
  ``alpha_e = ln(V_E / (S' (1 - exp(-3 alpha_f)) / (1 - exp(-alpha_f)) + (S_max - S') exp(-alpha_f)))``
  with ``S'`` the Otsu threshold of ``S`` (256 bins over ``[0, S_max]``; see
  :func:`papcnn_firing`). Equal firing counts are resolved by max-abs (see :func:`papcnn_select`).

All functions take torch tensors whose last two axes are the image plane.
"""

from __future__ import annotations

import math

from .. import optional

torch = optional.lazy("torch", what="fusion rule 'papcnn'")
F = optional.lazy("torch.nn.functional", what="fusion rule 'papcnn'")

__all__ = ["activity_select", "papcnn_firing", "papcnn_select", "otsu_threshold", "ITERATIONS"]

#: Number of PCNN iterations (Yin et al. 2019).
ITERATIONS = 110

_SMOOTH = ((1.0, 2.0, 1.0), (2.0, 4.0, 2.0), (1.0, 2.0, 1.0))


def _as_planes(x):
    """``(..., H, W)`` -> ``(P, 1, H, W)`` float32."""
    return x.reshape(-1, 1, x.shape[-2], x.shape[-1]).to(torch.float32)


def _kernel(values, scale, like):
    return torch.tensor(values, dtype=like.dtype, device=like.device).mul(scale)[None, None]


def _pad_reflect(x, pad: int = 1):
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    return F.pad(x, (pad, pad, pad, pad), mode=mode)


def _activity(low):
    """WLE x WSEML activity of lowpass planes ``(P, 1, H, W)``."""
    smooth = _kernel(_SMOOTH, 1.0 / 16.0, low)
    wle = F.conv2d(_pad_reflect(low * low), smooth)
    p = _pad_reflect(low)
    c = p[..., 1:-1, 1:-1]
    eml = ((2 * c - p[..., 1:-1, :-2] - p[..., 1:-1, 2:]).abs()
           + (2 * c - p[..., :-2, 1:-1] - p[..., 2:, 1:-1]).abs()
           + ((2 * c - p[..., :-2, :-2] - p[..., 2:, 2:]).abs()
              + (2 * c - p[..., :-2, 2:] - p[..., 2:, :-2]).abs()) / math.sqrt(2.0))
    wseml = F.conv2d(_pad_reflect(eml), smooth)
    return wle * wseml


def activity_select(la, lb):
    """Low-pass rule: ``la`` where its WLE x WSEML activity is at least that of ``lb``, else ``lb``.

    Parameters
    ----------
    la, lb : Tensor (..., H, W)
        Low-pass coefficients of the two sources.
    """
    act_a = _activity(_as_planes(la)).reshape(la.shape)
    act_b = _activity(_as_planes(lb)).reshape(lb.shape)
    return torch.where(act_a >= act_b, la, lb)


def otsu_threshold(s):
    """Otsu threshold of each plane of ``s`` (``(P, H, W)``, values clipped to [0, 1]).

    The planes are quantised to 256 levels as MATLAB's ``graythresh`` does (``im2uint8``); where
    the between-class variance is maximal over several levels their mean is taken. The threshold
    is returned on the [0, 1] scale, shape ``(P,)``.
    """
    planes = s.shape[0]
    q = torch.round(s.clamp(0.0, 1.0) * 255.0).to(torch.int64).reshape(planes, -1)
    offsets = torch.arange(planes, device=s.device)[:, None] * 256
    hist = torch.bincount((q + offsets).reshape(-1), minlength=planes * 256)
    p = hist.reshape(planes, 256).to(torch.float64)
    p = p / p.sum(dim=1, keepdim=True)
    levels = torch.arange(256, device=s.device, dtype=torch.float64)
    omega = p.cumsum(dim=1)
    mu = (p * levels).cumsum(dim=1)
    mu_t = mu[:, -1:]
    denom = omega * (1.0 - omega)
    between = torch.where(denom > 0, (mu_t * omega - mu) ** 2 / denom.clamp_min(1e-300),
                          torch.zeros_like(denom))
    # Like MATLAB's otsuthresh: the mean position of the maxima (the criterion is flat over empty
    # bins between two modes).
    at_max = (between == between.max(dim=1, keepdim=True).values).to(torch.float64)
    level = (at_max * levels).sum(dim=1) / at_max.sum(dim=1)
    return (level / 255.0).to(s.dtype)


def papcnn_firing(s, iterations: int = ITERATIONS):
    """Firing counts of the parameter-adaptive PCNN for stimuli ``s`` (``(P, H, W)``, >= 0).

    Returns
    -------
    Tensor (P, H, W)
        Number of iterations in which each neuron fired.
    """
    s = s.to(torch.float32)
    flat = s.reshape(s.shape[0], -1)
    eps = 1e-6
    sigma = flat.std(dim=1, unbiased=False).clamp_min(eps)
    s_max = flat.max(dim=1).values.clamp_min(eps)
    # Otsu on S / S_max: band-pass magnitudes of a [0, 1] image are mostly far below 1, and 256
    # bins over [0, 1] (MATLAB graythresh on the raw values) would leave S' at 0 or 1/255.
    s_otsu = (otsu_threshold(s / s_max.reshape(-1, 1, 1)) * s_max).clamp_min(eps)
    s_otsu = torch.minimum(s_otsu, s_max)
    alpha_f = torch.log10(1.0 / sigma)
    decay_f = torch.exp(-alpha_f)
    lam = (s_max / s_otsu - 1.0) / 6.0
    v_e = decay_f + s_max / s_otsu
    # (1 - e^{-3a}) / (1 - e^{-a}) = 1 + e^{-a} + e^{-2a}: finite for every alpha_f.
    geometric = 1.0 + decay_f + decay_f ** 2
    alpha_e = torch.log(v_e / (s_otsu * geometric + (s_max - s_otsu) * decay_f))
    decay_e = torch.exp(-alpha_e)

    shape = (-1, 1, 1)
    decay_f, decay_e, lam, v_e = (t.reshape(shape) for t in (decay_f, decay_e, lam, v_e))
    h, w = s.shape[-2:]
    u = torch.zeros_like(s)
    e = torch.zeros_like(s)
    fired = torch.zeros_like(s)
    # Y lives inside a zero border so that the linking sum W * Y ('same' size, zero padded) is
    # eight shifted additions: weight 1 for the 4-neighbours, 0.5 for the diagonals.
    y_pad = torch.zeros(s.shape[0], h + 2, w + 2, dtype=s.dtype, device=s.device)
    y = y_pad[:, 1:-1, 1:-1]
    for _ in range(iterations):
        rows = y_pad[:, :-2, :] + y_pad[:, 2:, :]  # up + down, width w + 2
        coupling = rows[:, :, 1:-1] + y_pad[:, 1:-1, :-2] + y_pad[:, 1:-1, 2:]
        coupling += 0.5 * (rows[:, :, :-2] + rows[:, :, 2:])
        u.mul_(decay_f).add_(s * coupling.mul_(lam).add_(1.0))
        y.copy_(u > e)
        e.mul_(decay_e).add_(v_e * y)
        fired += y
    return fired


def papcnn_select(ca, cb, iterations: int = ITERATIONS):
    """High-pass rule: per pixel, the coefficient whose PA-PCNN neuron fired more often.

    Parameters
    ----------
    ca, cb : Tensor (..., H, W)
        Coefficients of one or more subbands of the two sources (each plane gets its own PCNN
        parameters).

    Notes
    -----
    With these adaptive parameters the threshold decays by orders of magnitude per iteration,
    so firing counts take only a few distinct values (neurons fire every 2nd or 3rd iteration)
    and ties are frequent; a tie is broken by the larger magnitude (max-abs), not in favour of
    either source.
    """
    planes = ca.reshape(-1, ca.shape[-2], ca.shape[-1])
    other = cb.reshape(-1, cb.shape[-2], cb.shape[-1])
    mag_a, mag_b = planes.abs(), other.abs()
    fired = papcnn_firing(torch.cat([mag_a, mag_b]), iterations)
    fa, fb = fired[: planes.shape[0]], fired[planes.shape[0]:]
    choose_a = (fa > fb) | ((fa == fb) & (mag_a >= mag_b))
    return torch.where(choose_a, planes, other).reshape(ca.shape)

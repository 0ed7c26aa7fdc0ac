"""Differentiable fusion-quality terms for unsupervised training (torch; imported lazily).

Every function takes ``(N, 1, H, W)`` tensors in [0, 1] and returns one value per image ``(N,)``.
They are smooth counterparts of the metrics of :mod:`MedFusionLib.metrics` (same definitions and
constants, computed on the 0..255 grey scale): SSIM, Q^AB/F, VIF (sum of pixel-domain VIF),
SCD, SD, SF and a soft-histogram entropy. They differ from the metrics only where the metric is not
differentiable (division guards, the orientation at ``s_x = 0``, histogram binning), so the
library's numpy metrics remain the reference for evaluation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["ssim", "qabf", "vif", "scd", "std", "spatial_frequency", "soft_entropy", "sobel",
           "gradient_magnitude", "local_contrast", "contrast_fidelity", "functional_saliency"]

_SCALE = 255.0


def _gauss(n: int, sigma: float, ref: torch.Tensor) -> torch.Tensor:
    t = torch.arange(n, dtype=ref.dtype, device=ref.device) - (n - 1) / 2
    g = torch.exp(-(t * t) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return F.conv2d(F.conv2d(x, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))


def _sum(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=(1, 2, 3))


def sobel(x: torch.Tensor, *, padding: str = "zeros") -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel responses ``(s_x, s_y)`` of ``x`` (same size; zero or replicate padding)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype,
                      device=x.device)
    w = torch.stack([kx, kx.t()])[:, None]
    xp = F.pad(x, (1, 1, 1, 1), mode="constant" if padding == "zeros" else "replicate")
    g = F.conv2d(xp, w)
    return g[:, :1], g[:, 1:]


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude (replicate padding), same scale as ``x``."""
    sx, sy = sobel(x, padding="replicate")
    return torch.sqrt(sx * sx + sy * sy + 1e-8)


def local_contrast(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Band-pass detail ``x - gauss(x, sigma)`` (replicate padding), same size and scale as ``x``."""
    radius = max(1, int(math.ceil(3 * sigma)))
    g = _gauss(2 * radius + 1, sigma, x)
    xp = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return x - _filter_valid(xp, g)


def contrast_fidelity(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor,
                      sigmas: tuple[float, ...] = (2.0, 4.0)) -> torch.Tensor:
    """Mean ``|L_s(F) - L_s(S)|`` over scales ``s``, where ``L_s`` is :func:`local_contrast` and
    ``S`` picks, per pixel, the source whose local contrast is larger in magnitude.

    The multi-scale "choose max-abs detail" rule of classical transform fusion as a loss: a blob
    that stands out in one source (a PET lesion, a calcification) keeps its contrast against
    its surroundings even where the other source is brighter. Zero for ``F = A`` when ``A = B``.
    Per image, on the [0, 1] scale.
    """
    total = f.new_zeros(f.shape[0])
    for sigma in sigmas:
        la, lb, lf = (local_contrast(x, sigma) for x in (a, b, f))
        target = torch.where(la.abs() >= lb.abs(), la, lb)
        total = total + (lf - target).abs().mean(dim=(1, 2, 3))
    return total / len(sigmas)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    g = _gauss(2 * radius + 1, sigma, x)
    return _filter_valid(F.pad(x, (radius,) * 4, mode="replicate"), g)


def functional_saliency(func: torch.Tensor, f: torch.Tensor,
                        scales: tuple[float, ...] = (2.0, 4.0)) -> torch.Tensor:
    """How much of the functional source's own local contrast, at its own scale, F lacks.

    For each scale ``s`` the band ``D_s(x) = gauss(x, s / 2) - gauss(x, 2 s)`` (a difference of
    Gaussians: a PET/SPECT image at 4-12 mm resolution has its contrast there) of the functional
    source ``u`` and of F are compared by their local regression gain
    ``g = gauss(D_s(u) D_s(F), 2 s) / gauss(D_s(u)^2, 2 s)``: how much of the functional band F
    carries, in the same direction (a hot lesion stays brighter than its surroundings, a
    perfusion defect darker). The term is ``relu(1 - g)`` weighted by where the functional source
    has contrast (``gauss(D_s(u)^2, 2 s)`` over its mean): one-sided, so F may add the anatomy's
    contrast on top (uncorrelated detail averages out of ``g``), but keeping less than the
    functional source's own contrast costs. Scale-free: a low-contrast SPECT counts as much as a
    high-contrast FDG-PET. About 0 for ``F = u``, about 1 for an F without the functional source.
    Scales above 2 px are computed on an ``s / 2``-times average-pooled grid. Per image; ``func``,
    ``f`` ``(N, 1, H, W)``.
    """
    total = f.new_zeros(f.shape[0])
    for s in scales:
        k = max(1, int(round(s / 2.0)))
        u, v = (F.avg_pool2d(x, k) if k > 1 else x for x in (func, f))
        lo, hi = 0.5 * s / k, 2.0 * s / k
        with torch.no_grad():
            bu = _blur(u, lo) - _blur(u, hi)
            den = _blur(bu * bu, hi)
            scale = den.mean(dim=(1, 2, 3), keepdim=True) + 1e-12
        bf = _blur(v, lo) - _blur(v, hi)
        gain = _blur(bu * bf, hi) / (den + 1e-2 * scale)
        total = total + (F.relu(1.0 - gain) * den / scale).mean(dim=(1, 2, 3))
    return total / len(scales)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (Gaussian window 11, sigma 1.5, L = 255, 'valid' filtering) per image."""
    g = _gauss(11, 1.5, x)
    x, y = x * _SCALE, y * _SCALE
    c1, c2 = (0.01 * _SCALE) ** 2, (0.03 * _SCALE) ** 2
    mx, my = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mx * mx
    syy = _filter_valid(y * y, g) - my * my
    sxy = _filter_valid(x * y, g) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return m.mean(dim=(1, 2, 3))


def qabf(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Q^AB/F edge preservation (Xydeas & Petrovic constants), per image, in [0, 1]."""
    def strength_orientation(x):
        sx, sy = sobel(x * _SCALE)
        g = torch.sqrt(sx * sx + sy * sy + 1e-6)
        safe = torch.where(sx.abs() < 1e-4, torch.full_like(sx, 1e-4), sx)
        return g, torch.atan(sy / safe)

    ga, aa = strength_orientation(a)
    gb, ab = strength_orientation(b)
    gf, af = strength_orientation(f)

    def preservation(gx, ax):
        rel = torch.minimum(gx, gf) / (torch.maximum(gx, gf) + 1e-6)
        orient = 1.0 - (ax - af).abs() / (math.pi / 2)
        qg = 0.9994 / (1.0 + torch.exp(-15.0 * (rel - 0.5)))
        qa = 0.9879 / (1.0 + torch.exp(-22.0 * (orient - 0.8)))
        return qg * qa

    num = _sum(preservation(ga, aa) * ga + preservation(gb, ab) * gb)
    return num / _sum(ga + gb).clamp_min(1e-6)


def _vifp(ref: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    ref, dist = ref * _SCALE, dist * _SCALE
    num = ref.new_zeros(ref.shape[0])
    den = ref.new_zeros(ref.shape[0])
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        g = _gauss(n, n / 5.0, ref)
        if scale > 1:
            ref = _filter_valid(ref, g)[..., ::2, ::2]
            dist = _filter_valid(dist, g)[..., ::2, ::2]
        m1, m2 = _filter_valid(ref, g), _filter_valid(dist, g)
        s1 = F.relu(_filter_valid(ref * ref, g) - m1 * m1)
        s2 = F.relu(_filter_valid(dist * dist, g) - m2 * m2)
        s12 = _filter_valid(ref * dist, g) - m1 * m2
        gain = F.relu(s12) / (s1 + 1e-3)
        sv = F.relu(s2 - gain * s12) + 1e-10
        num = num + _sum(torch.log10(1.0 + gain * gain * s1 / (sv + 2.0)))
        den = den + _sum(torch.log10(1.0 + s1 / 2.0))
    return num / den.clamp_min(1e-8)


def vif(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """VIF = VIFp(A, F) + VIFp(B, F) (Sheikh & Bovik pixel domain, sigma_n^2 = 2), per image.

    Needs images of at least 48 x 48 pixels.
    """
    return _vifp(a, f) + _vifp(b, f)


def _corr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    y = y - y.mean(dim=(1, 2, 3), keepdim=True)
    return _sum(x * y) / torch.sqrt(_sum(x * x) * _sum(y * y) + 1e-12)


def scd(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Sum of the correlations of differences: corr(F - B, A) + corr(F - A, B), per image."""
    return _corr(f - b, a) + _corr(f - a, b)


def std(f: torch.Tensor) -> torch.Tensor:
    """Standard deviation on the 0..255 scale, per image."""
    x = f * _SCALE
    var = (x - x.mean(dim=(1, 2, 3), keepdim=True)).pow(2).mean(dim=(1, 2, 3))
    return torch.sqrt(var + 1e-6)  # finite gradient on a constant image


def spatial_frequency(f: torch.Tensor) -> torch.Tensor:
    """Spatial frequency sqrt(RF^2 + CF^2) on the 0..255 scale (denominator MN), per image."""
    f = f * _SCALE
    dx = f[..., :, 1:] - f[..., :, :-1]
    dy = f[..., 1:, :] - f[..., :-1, :]
    n = f.shape[-1] * f.shape[-2]
    return torch.sqrt((_sum(dx * dx) + _sum(dy * dy)) / n + 1e-12)


def soft_entropy(f: torch.Tensor, *, bins: int = 64) -> torch.Tensor:
    """Entropy (bits, on the 256-level scale) of a Gaussian-kernel soft histogram, per image."""
    centres = torch.linspace(0.0, 1.0, bins, dtype=f.dtype, device=f.device)
    width = 0.5 / (bins - 1)
    w = torch.exp(-((f.flatten(1)[:, :, None] - centres) ** 2) / (2 * width * width))
    p = w.sum(1)
    p = p / p.sum(1, keepdim=True)
    return -(p * torch.log2(p + 1e-12)).sum(1) + math.log2(256 / bins)

"""Loss terms for training on real anatomical + functional pairs (torch; imported lazily).

Every function takes ``(N, 1, H, W)`` tensors in [0, 1] and returns one value per image ``(N,)``.

- :func:`soft_mutual_information`: I(X; F) in bits from a Parzen (Gaussian-kernel) joint
  histogram, the differentiable counterpart of the MI metric (256 bins there, ``bins`` here).
- :func:`information_terms`: how much less balanced (the review's fusion symmetry FS, made
  smooth) and less informative (I(A;F) + I(B;F)) F is than pixel maximum.
- :func:`salient_intensity`: ``|F - T|`` for a target T that follows, per pixel, the source that
  is clearly more *salient* there: the one whose intensity stands further above its own typical
  level (its foreground median), so a PET/SPECT uptake region counts even where the MR is
  brighter in absolute grey level; where neither stands out, the brighter source (pixel
  maximum).
- :func:`hot_focus`: how far F stays below a source where that source is clearly brighter than
  the other (a PET/SPECT hot focus over the MR, the MR over a dark functional image), one-sided
  and normalised by the area of those pixels, so a focus of a few per cent of the image weighs
  as much as the rest of the slice.
"""

from __future__ import annotations

import torch

__all__ = ["soft_mutual_information", "information_terms", "salient_intensity",
           "salient_target", "hot_focus", "FOCUS_MARGIN"]


def _linear_bins(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bin index ``(N, P)`` and the weight of the upper bin ``(N, P)`` of each pixel for
    linear (triangular-kernel) binning of [0, 1] into ``bins`` centres."""
    pos = x.flatten(1).clamp(0.0, 1.0) * (bins - 1)
    lower = pos.detach().floor().clamp(max=bins - 2)
    return lower.long(), pos - lower


def soft_mutual_information(x: torch.Tensor, f: torch.Tensor, *, bins: int = 32) -> torch.Tensor:
    """Mutual information I(X; F) in bits, per image, from a soft joint histogram.

    Each pixel's value is shared between its two nearest of ``bins`` equally spaced centres on
    [0, 1] in proportion to its distance to them (linear binning); the joint histogram counts the
    four products of the two images' shares. Piecewise smooth in F (gradient through the shares).
    With 32 bins it ranks images as the 256-bin metric does but is smaller in value.
    """
    n = x.shape[0]
    ix, ux = _linear_bins(x, bins)
    jf, uf = _linear_bins(f, bins)
    joint = f.new_zeros(n, bins * bins)
    for dx, wx in ((0, 1.0 - ux), (1, ux)):
        for df, wf in ((0, 1.0 - uf), (1, uf)):
            joint = joint.scatter_add(1, (ix + dx) * bins + (jf + df), wx * wf)
    joint = (joint / x[0].numel()).view(n, bins, bins)
    px, pf = joint.sum(2, keepdim=True), joint.sum(1, keepdim=True)
    ratio = joint / (px * pf).clamp_min(1e-12)
    return (joint * torch.log2(ratio.clamp_min(1e-12))).sum(dim=(1, 2))


def _symmetry(ia: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    return (ia / (ia + ib).clamp_min(1e-6) - 0.5).abs()


def information_terms(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, *,
                      bins: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Balance and amount of the information F takes from its sources, against pixel maximum.

    With ``I_x = I(x; F)`` (:func:`soft_mutual_information`) and ``M = max(A, B)``:

    - ``balance = relu(FS(F) - FS(M))``, ``FS = |I_A / (I_A + I_B) - 0.5|`` (the review's fusion
      symmetry, smooth): no less balanced than pixel maximum;
    - ``amount = relu(1 - (I_A + I_B)(F) / (I_A + I_B)(M))``: as much mutual information as
      pixel maximum.

    Returns both, per image ``(N,)``; the pixel maximum's values carry no gradient.
    """
    ia, ib = soft_mutual_information(a, f, bins=bins), soft_mutual_information(b, f, bins=bins)
    with torch.no_grad():
        top = torch.maximum(a, b)
        ma, mb = (soft_mutual_information(x, top, bins=bins) for x in (a, b))
    balance = torch.relu(_symmetry(ia, ib) - _symmetry(ma, mb))
    amount = torch.relu(1.0 - (ia + ib) / (ma + mb).clamp_min(1e-6))
    return balance, amount


def _foreground_median(x: torch.Tensor, threshold: float = 0.02) -> torch.Tensor:
    """``(N, 1, 1, 1)`` median of each image's pixels above ``threshold`` (0.5 if none)."""
    out = []
    for img in x.flatten(1):
        fg = img[img > threshold]
        out.append(fg.median() if fg.numel() else img.new_tensor(0.5))
    return torch.stack(out).view(-1, 1, 1, 1)


def salient_target(a: torch.Tensor, b: torch.Tensor, *, margin: float = 0.25,
                   sharpness: float = 20.0) -> torch.Tensor:
    """Per-pixel target following the more salient source (no gradient flows through it).

    Saliency of a source is its intensity relative to its own foreground median, ``s = x /
    med(x)``. Where one source's saliency exceeds the other's by more than ``margin`` the target
    is that source (soft switch: ``sigmoid(sharpness * (s_b - s_a - margin))``); where neither
    stands out it is the brighter one, ``max(a, b)``. Swapping the sources swaps the roles;
    ``a = b`` gives ``a``.
    """
    with torch.no_grad():
        sa = a / _foreground_median(a).clamp_min(1e-3)
        sb = b / _foreground_median(b).clamp_min(1e-3)
        wb = torch.sigmoid(sharpness * (sb - sa - margin))
        wa = torch.sigmoid(sharpness * (sa - sb - margin))
        return wb * b + wa * a + (1.0 - wa - wb) * torch.maximum(a, b)


def salient_intensity(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``mean |F - T|`` per image for the :func:`salient_target` T, on the [0, 1] scale."""
    return (f - salient_target(a, b)).abs().mean(dim=(1, 2, 3))


#: Default of :func:`hot_focus`'s ``margin`` (a training config's ``caps.hot``), [0, 1] scale.
FOCUS_MARGIN = 0.15


def hot_focus(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, *, margin: float = FOCUS_MARGIN,
              floor: float = 0.1, sharpness: float = 30.0) -> torch.Tensor:
    """Shortfall of F at each source's hot foci, per image ``(N,)``, on the [0, 1] scale.

    For each direction (``b`` over ``a``, then ``a`` over ``b``) the pixels where the brighter
    source ``y`` exceeds the other by more than ``margin`` and exceeds ``floor`` are weighted by
    ``w = sigmoid(sharpness * (y - x - margin))``, and the term is
    ``sum(w * relu(y - F)) / (sum(w) + 16)``: F darker than the focus costs, F at or above it
    does not. The two directions are averaged, so the term is symmetric in the sources; for
    ``a = b`` it is 0. The 16-pixel floor of the denominator keeps a focus of a few pixels from
    dominating the batch.
    """
    out = []
    for x, y in ((a, b), (b, a)):
        with torch.no_grad():
            w = torch.sigmoid(sharpness * (y - x - margin)) * (y > floor).to(y.dtype)
        out.append((w * torch.relu(y - f)).sum(dim=(1, 2, 3)) / (w.sum(dim=(1, 2, 3)) + 16.0))
    return 0.5 * (out[0] + out[1])

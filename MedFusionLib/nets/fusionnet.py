"""FusionNet: the review's CNN fusion algorithm (§2.5, §2.7) as a small, fast torch network.

The network follows the review's steps literally:

1. **Feature extraction** (§2.7.3): one *shared* (Siamese) encoder is applied to each normalised
   source slice, giving two feature pyramids (half and quarter resolution).
2. **Weights** (§2.7.4): a weight head scores every (quarter-resolution) position of each source
   from its own features and those of the other source; a softmax over the two sources turns the
   scores into per-pixel weights ``w_a + w_b = 1``. The head is applied symmetrically, so swapping
   the sources swaps the weights.
3. **Fusion** (§2.5.4): the fused feature maps are the weighted sums ``w_a * F_a + w_b * F_b`` at
   every level (feature-level fusion), or the weights are applied to the source pixels
   (pixel-level fusion). Fixed rules (average, addition, element-wise maximum, L1 activity) can
   replace the learned weights at inference, as in the review's list of strategies.
4. **Reconstruction** (§2.5.5): a decoder with pixel-shuffle up-sampling turns the fused features
   back into a slice.
5. **Enhancement** (§2.5.6, optional): an unsharp mask.

Design for a 2-core CPU: the first layer works on a space-to-depth (pixel-unshuffle) view of the
slice, so every convolution runs at half or quarter resolution with 16 or 32 channels (the channel
counts for which oneDNN kernels are efficient, in channels-last layout). The network is fully
convolutional: any slice size is padded to a multiple of :attr:`FusionNet.stride` and cropped back.
It has no batch normalisation or dropout, so eval mode is deterministic.

This module imports torch at import time; import it lazily (only the ``cnn`` method does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .losses import local_contrast

__all__ = ["FusionNet", "FEATURE_RULES", "LEVELS", "unsharp_mask"]

#: Fusion rules accepted by :meth:`FusionNet.forward`.
FEATURE_RULES = ("learned", "addition", "average", "maximum", "l1")
#: Fusion levels accepted by :meth:`FusionNet.forward`.
LEVELS = ("feature", "pixel")

_EPS = 1e-6


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def unsharp_mask(x: torch.Tensor, *, sigma: float = 1.0, amount: float = 0.6) -> torch.Tensor:
    """Unsharp-mask enhancement ``x + amount * (x - gauss(x, sigma))``, clipped to [0, 1].

    Parameters
    ----------
    x : Tensor
        ``(N, 1, H, W)`` slices in [0, 1].
    sigma : float
        Gaussian standard deviation in pixels.
    amount : float
        Gain of the high-pass detail added back.

    Returns
    -------
    Tensor
        Same shape and dtype as ``x``, in [0, 1].
    """

    return (x + amount * local_contrast(x, sigma)).clamp(0.0, 1.0)


class FusionNet(nn.Module):
    """Siamese encoder -> weight head (softmax over the 2 sources) -> weighted feature fusion ->
    decoder.

    Parameters
    ----------
    channels : tuple of int, optional
        Feature channels at half and quarter resolution, ``(c1, c2)``.
    head_channels : int, optional
        Width of the weight head.
    residual : bool, optional
        Add the rule's pixel-level fusion of the sources to the decoder's output (a long skip
        connection: the decoder reconstructs what the weighted pixels miss).

    Shape
    -----
    - Inputs ``a``, ``b``: ``(N, 1, H, W)``, values in [0, 1], any ``H, W >= 1``.
    - Outputs: fused ``(N, 1, H, W)`` (not clipped; the caller clips to [0, 1]) and the weight of
      source ``a`` ``(N, 1, H, W)`` in [0, 1] (the weight of ``b`` is ``1 - w_a``).
    """

    #: Input sizes are padded to a multiple of this (two stride-2 stages).
    stride = 4
    #: Pixels mirrored around each slice before the network runs, cropped off after (a multiple
    #: of ``stride``).
    margin = 8

    def __init__(self, *, channels: tuple[int, int] = (16, 32), head_channels: int = 16,
                 residual: bool = False):
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        if c1 < 1 or c2 < 1 or head_channels < 1:
            raise ValueError(f"channel counts must be positive, got {channels}, {head_channels}.")
        self.channels = (c1, c2)
        self.head_channels = int(head_channels)
        self.residual = bool(residual)
        # Siamese encoder (shared by both sources).
        self.enc1 = _conv(4, c1)                 # on the 2x2 space-to-depth view: H/2
        self.enc2 = _conv(c1, c2, stride=2)      # H/4
        self.enc3 = _conv(c2, c2)                # H/4
        # Weight head: own features + the other source's features -> one score per position.
        self.head1 = _conv(2 * c2, head_channels, k=1)
        self.head2 = _conv(head_channels, head_channels)
        self.head3 = _conv(head_channels, 1)
        # Decoder.
        self.dec1 = _conv(c2, c2)                # H/4
        self.dec2 = _conv(c2, 4 * c1, k=1)       # -> pixel shuffle -> H/2
        self.dec3 = _conv(2 * c1, c1)            # [up, fused skip] at H/2
        self.dec4 = _conv(c1, 4)                 # -> pixel shuffle -> H
        if self.residual:
            # the decoder adds a correction to the rule's pixel-level fusion: start from none, so
            # an untrained network already returns the weighted sources (and A for A = B)
            nn.init.zeros_(self.dec4.weight)
            nn.init.zeros_(self.dec4.bias)

    def as_residual(self) -> "FusionNet":
        """A residual copy of this network: same encoder, weight head and decoder, with the
        decoder's last layer restarted from zero, so the copy begins as the weighted source
        pixels (fine-tuning then learns what the decoder should add to them)."""
        net = FusionNet(channels=self.channels, head_channels=self.head_channels, residual=True)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("dec4.")}
        net.load_state_dict(state, strict=False)
        return net.to(next(self.parameters()).device)

    # -- building blocks -------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of a batch of slices: ``(N, c1, H/2, W/2)`` and ``(N, c2, H/4, W/4)``."""
        f1 = F.relu(self.enc1(F.pixel_unshuffle(x, 2)))
        f2 = F.relu(self.enc3(F.relu(self.enc2(f1))))
        return f1, f2

    def _score(self, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.head1(torch.cat([own, other], 1)))
        return self.head3(F.relu(self.head2(h)))

    def weight_logits(self, fa2: torch.Tensor, fb2: torch.Tensor) -> torch.Tensor:
        """Logit of source ``a``'s weight, ``score_a - score_b``, ``(N, 1, H/4, W/4)``.

        ``sigmoid(score_a - score_b)`` is the two-way softmax; the head sees the sources in both
        orders, so swapping ``a`` and ``b`` negates the logit.
        """
        return self._score(fa2, fb2) - self._score(fb2, fa2)

    def decode(self, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``(N, 1, H, W)`` from fused features at H/2 and H/4."""
        u = F.pixel_shuffle(self.dec2(F.relu(self.dec1(g2))), 2)
        h = F.relu(self.dec3(torch.cat([u, g1], 1)))
        return F.pixel_shuffle(self.dec4(h), 2)

    # -- fusion rules ----------------------------------------------------------------------
    @staticmethod
    def _activity(f: torch.Tensor) -> torch.Tensor:
        """L1 activity of a feature map (mean |f| over channels, 3x3 box-averaged)."""
        act = f.abs().mean(1, keepdim=True)
        return F.avg_pool2d(act, 3, stride=1, padding=1, count_include_pad=False)

    def _fuse_level(self, fa, fb, rule, wa):
        """Fused features of one level and the share of ``a`` at that level's resolution."""
        if rule in ("learned", "average"):
            return wa * fa + (1.0 - wa) * fb, wa
        if rule == "addition":
            act_a, act_b = self._activity(fa), self._activity(fb)
            return fa + fb, act_a / (act_a + act_b + _EPS)
        if rule == "maximum":
            take_a = (fa >= fb).to(fa.dtype)
            return torch.maximum(fa, fb), take_a.mean(1, keepdim=True)
        # l1
        act_a, act_b = self._activity(fa), self._activity(fb)
        w = (act_a + _EPS) / (act_a + act_b + 2 * _EPS)
        return w * fa + (1.0 - w) * fb, w

    @staticmethod
    def _pixel_fusion(a, b, rule, share):
        """Pixel-level fusion of the sources with a rule's full-resolution share of ``a``."""
        if rule == "maximum":
            return torch.maximum(a, b), (a >= b).to(a.dtype)
        if rule == "addition":  # probabilistic sum: addition that saturates softly at 1
            return a + b - a * b, (a + _EPS) / (a + b + 2 * _EPS)
        return share * a + (1.0 - share) * b, share

    # -- forward ---------------------------------------------------------------------------
    def forward(self, a: torch.Tensor, b: torch.Tensor, *, rule: str = "learned",
                level: str = "feature") -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse two batches of slices.

        Parameters
        ----------
        a, b : Tensor
            ``(N, 1, H, W)`` in [0, 1], same shape.
        rule : {"learned", "addition", "average", "maximum", "l1"}
            How the two feature maps (or, at pixel level, the two slices) are combined.
            ``addition`` sums them and saturates softly (pixel level: ``A + B - AB``; feature
            level: the decoded sum ``y`` mapped by ``y - y^2 / 4``), so overlapping bright
            regions do not clip to white.
        level : {"feature", "pixel"}
            ``feature``: fuse the encoder features and decode (the default). ``pixel``: apply the
            rule's weight map to the source pixels.

        Returns
        -------
        fused : Tensor
            ``(N, 1, H, W)``; clip to [0, 1] for display.
        weight_a : Tensor
            ``(N, 1, H, W)`` in [0, 1]: the per-pixel share of ``a``.
        """
        if rule not in FEATURE_RULES:
            raise ValueError(f"unknown fusion rule {rule!r}; expected one of {FEATURE_RULES}.")
        if level not in LEVELS:
            raise ValueError(f"unknown fusion level {level!r}; expected one of {LEVELS}.")
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 1:
            raise ValueError(f"expected two (N, 1, H, W) tensors of the same shape, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}.")
        n, _, h, w = a.shape
        # mirror a margin around the slice (and up to a multiple of the stride): the convolutions'
        # zero padding then falls outside the slice, so its border is fused like its interior
        # (training crops come from inside the anatomy; a decoder that learnt to compensate
        # their zero-padded edges would otherwise draw on the black border of a whole slice)
        m, s = self.margin, self.stride
        ph, pw = m + (-h) % s, m + (-w) % s
        mode = "reflect" if (h > max(m, ph) and w > max(m, pw)) else "replicate"
        a = F.pad(a, (m, pw, m, ph), mode=mode)
        b = F.pad(b, (m, pw, m, ph), mode=mode)
        f1, f2 = self.encode(torch.cat([a, b], 0))
        fa1, fb1, fa2, fb2 = f1[:n], f1[n:], f2[:n], f2[n:]

        if rule == "learned":
            logit = self.weight_logits(fa2, fb2)
            w2 = torch.sigmoid(logit)
            w1 = torch.sigmoid(F.interpolate(logit, scale_factor=2, mode="bilinear",
                                             align_corners=False))
        elif rule == "average":
            w2 = fa2.new_full((n, 1) + fa2.shape[2:], 0.5)
            w1 = fa1.new_full((n, 1) + fa1.shape[2:], 0.5)
        else:
            w1 = w2 = None

        g1, share1 = self._fuse_level(fa1, fb1, rule, w1)
        if level == "feature":
            g2, _ = self._fuse_level(fa2, fb2, rule, w2)
            fused = self.decode(g1, g2)
            share = F.interpolate(share1, scale_factor=2, mode="bilinear", align_corners=False)
            if self.residual:
                # long skip: the decoder adds its reconstruction to the rule's pixel-level fusion
                fused = fused + self._pixel_fusion(a, b, rule, share)[0]
            elif rule == "addition":
                # the decoded feature sum is ~A + B in [0, 2]: saturate softly, y - y^2 / 4, which
                # equals the pixel rule's A + B - AB where A = B, instead of clipping to white
                y = fused.clamp(0.0, 2.0)
                fused = y - 0.25 * y * y
        else:
            share = F.interpolate(share1, scale_factor=2, mode="bilinear", align_corners=False)
            fused, share = self._pixel_fusion(a, b, rule, share)
        share = share.clamp(0.0, 1.0)
        return fused[..., m:m + h, m:m + w], share[..., m:m + h, m:m + w]

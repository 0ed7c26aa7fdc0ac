"""Fast CPU inference of :class:`~MedFusionLib.nets.fusionnet.FusionNet`'s default fusion.

:meth:`FusionNet.forward` is written for training: each step is its own torch operation, so a
512 x 512 slice spends as long in ReLUs, ``torch.cat`` copies, pixel shuffles and weight blends as
in its convolutions (issue #23). :class:`FastFusion` computes the same function for the default
fusion (rule ``learned``, level ``feature``, residual or not) with less memory traffic:

- every convolution is oneDNN's (``torch.ops.mkldnn._convolution_pointwise``) in channels-last
  layout, with its ReLU fused into it;
- the weight head's first convolution on ``cat([own, other])`` is split into its ``own`` and
  ``other`` halves and summed inside the convolution (a fused add), with no concatenated copy;
  the two orders of the head share it, and since ``score_a - score_b`` is linear in the head's
  last convolution, that convolution runs once, on the difference (its bias cancels);
- likewise the decoder's convolution of ``cat([up-sampled, skip])`` is the fused sum of two
  convolutions, one per half (as fast as the one on 32 channels, without the copy);
- the residual pixel fusion and the crop are done on the kept region only.

The arithmetic is the same up to rounding order: in float32 the result differs from
:meth:`FusionNet.forward` by at most :data:`FP32_TOLERANCE` (tested). The bf16 kernels
(``precision="bf16"``) run the convolutions after the first on bfloat16 features (AVX512-BF16 or
AMX); the first convolution (on the image itself), the weight map (sigmoid, up-sampling) and the
residual pixel fusion stay in float32, and so do the blends of the features by the weights (the
CPUs' bf16 element-wise kernels are several times slower than their fp32 ones). ``auto`` chooses
bf16 where the CPU has it natively (the bf16 kernels met issue #23's accuracy conditions,
:data:`BF16_AUTO`); ``--param precision=fp32`` turns it off. Results are deterministic: the same bytes on every run and thread count.

This module imports torch; import it lazily (the ``cnn`` method does).
"""

from __future__ import annotations

import ctypes
import platform
import sys
import threading
import weakref

import torch
import torch.nn.functional as F

from ..threads import run_in_ranges
from .fusionnet import FusionNet

__all__ = ["FastFusion", "PRECISIONS", "FP32_TOLERANCE", "BF16_AUTO", "GRAIN_PIXELS",
           "MMAP_THRESHOLD", "TRIM_THRESHOLD", "fast_path_available",
           "bf16_supported", "resolve_precision", "fast_fusion_for"]

#: Values of the ``precision`` parameter of the ``cnn`` method.
PRECISIONS = ("auto", "fp32", "bf16")
#: Largest difference of the fp32 fast path from ``FusionNet.forward`` (output in [0, 1]).
FP32_TOLERANCE = 1e-5
#: Whether ``precision="auto"`` picks bf16 on CPUs that have it. On by the evidence of
#: ``bench/bf16_check.py`` (issue #23's conditions): on the bundled 3D pairs (MNI T1 with the
#: synthetic CT and PET, fused whole) >= 99.999 % of voxels within one 8-bit grey level of fp32
#: (at most 2) and every volume metric within 0.04 %; on slice sets of the bundled and synthetic
#: pairs (ITK T1/PD, MNI T1 with CT and PET, Colin27 T1 with PET-, FDG- and SPECT-like images,
#: the 512^2 CT/MR study) >= 99.988 % of pixels within one level and every metric's mean within
#: 0.40 % (single slices: Q_CV and FMI_w up to 0.57 %, and FS, a distance near 0, up to 5.2 %).
BF16_AUTO = True

#: Pixels per call of :meth:`FastFusion.run` (one 256 x 256 slice; 512 x 512 slices go one at a
#: time): the features of a call stay in the caches, and Python's per-call cost stays small.
GRAIN_PIXELS = 256 * 256

#: glibc malloc settings for the fast path (:func:`_keep_feature_memory`): blocks up to this size
#: come from the heap instead of their own mapping, and this much freed memory stays mapped.
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 128 << 20

_conv = None  # torch.ops.mkldnn._convolution_pointwise, when this torch build has it
_malloc_tuned = False


def _keep_feature_memory() -> None:
    """Let glibc reuse the memory of freed feature maps (once per process; Linux/glibc only).

    Each convolution allocates its output (up to ~10 MB per 512 x 512 slice). Above glibc's
    mmap threshold every such block is a fresh mapping that the kernel zero-fills page by page and
    unmaps again when freed: a third of the fp32 path's CPU time went to page faults (15 ms of
    system time per slice). Raising the threshold to :data:`MMAP_THRESHOLD` (volume-sized arrays
    stay mappings, returned to the system when freed) and the trim threshold to
    :data:`TRIM_THRESHOLD` keeps those blocks in the heap for the next slice.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def fast_path_available() -> bool:
    """True when this torch build has oneDNN's fused convolutions (every x86 and ARM wheel)."""
    global _conv
    if _conv is None:
        ops = getattr(torch.ops, "mkldnn", None)
        try:
            _conv = ops._convolution_pointwise if ops is not None else False
        except (AttributeError, RuntimeError):
            _conv = False
    return bool(_conv) and torch.backends.mkldnn.is_available()


def bf16_supported() -> bool:
    """True when the CPU runs bfloat16 convolutions natively (AVX512-BF16 or AMX)."""
    if not fast_path_available():
        return False
    native = False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            native = native or bool(fn and fn())
        except RuntimeError:
            pass
    try:
        return native and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str = "auto") -> str:
    """``"fp32"`` or ``"bf16"``: what the fast path runs for a ``precision`` parameter.

    ``auto`` is bf16 only where :data:`BF16_AUTO` is on and :func:`bf16_supported`; ``bf16`` on a
    CPU without native bf16 falls back to fp32 (emulated bf16 would be slower).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "fp32" or not bf16_supported():
        return "fp32"
    if precision == "bf16" or BF16_AUTO:
        return "bf16"
    return "fp32"


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class _Conv:
    """One convolution's weights, prepared for oneDNN (dtype, channels-last) with its geometry."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, stride: int = 1,
                 dtype=torch.float32):
        k = weight.shape[-1]
        self.weight = _cl(weight.detach().to(dtype))
        self.bias = None if bias is None else bias.detach().to(torch.float32).contiguous()
        self.padding, self.stride = [k // 2] * 2, [stride] * 2

    def __call__(self, x: torch.Tensor, act: str = "none") -> torch.Tensor:
        return _conv.default(x, self.weight, self.bias, self.padding, self.stride, [1, 1], 1, act,
                             [None], "")

    def add(self, x: torch.Tensor, other: torch.Tensor, act: str = "none") -> torch.Tensor:
        """``act(conv(x) + other)`` in one pass (``other`` has the output's shape and layout)."""
        return _conv.binary(x, other, self.weight, self.bias, self.padding, self.stride, [1, 1], 1,
                            "add", None, act, [None], "")


class FastFusion:
    """The default fusion of a :class:`FusionNet` (rule ``learned``, level ``feature``) for CPU
    inference; same inputs and outputs as ``net(a, b)``.

    Parameters
    ----------
    net : FusionNet
        The trained network (its weights are copied; later changes to ``net`` are not seen).
    precision : {"fp32", "bf16"}
        Precision of the convolutions and the features between them.

    Shape
    -----
    ``a``, ``b``: ``(N, 1, H, W)`` float32 in [0, 1] -> fused ``(N, 1, H, W)`` (not clipped) and
    the weight of ``a`` ``(N, 1, H, W)`` in [0, 1].
    """

    def __init__(self, net: FusionNet, precision: str = "fp32"):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}.")
        if not fast_path_available():
            raise RuntimeError("this torch build has no oneDNN fused convolutions.")
        _keep_feature_memory()
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.margin, self.stride = net.margin, net.stride
        self.residual = net.residual
        self.c1, self.c2 = net.channels
        dt = self.dtype
        # the first convolution reads the image itself: bf16 would round the input to 1/512 of its
        # value (half a grey level), so it runs in fp32 and only its output is bf16
        self.enc1 = _Conv(net.enc1.weight, net.enc1.bias)
        self.enc2 = _Conv(net.enc2.weight, net.enc2.bias, stride=2, dtype=dt)
        self.enc3 = _Conv(net.enc3.weight, net.enc3.bias, dtype=dt)
        w = net.head1.weight
        self.head_own = _Conv(w[:, :self.c2], None, dtype=dt)
        self.head_other = _Conv(w[:, self.c2:], net.head1.bias, dtype=dt)
        self.head2 = _Conv(net.head2.weight, net.head2.bias, dtype=dt)
        self.head3 = _Conv(net.head3.weight, None, dtype=dt)  # on score differences: no bias
        self.dec1 = _Conv(net.dec1.weight, net.dec1.bias, dtype=dt)
        self.dec2 = _Conv(net.dec2.weight, net.dec2.bias, dtype=dt)
        w = net.dec3.weight
        self.dec3_up = _Conv(w[:, :self.c1], None, dtype=dt)
        self.dec3_skip = _Conv(w[:, self.c1:], net.dec3.bias, dtype=dt)
        self.dec4 = _Conv(net.dec4.weight, net.dec4.bias, dtype=dt)

    def _in_fp32(self, op, *args: torch.Tensor) -> torch.Tensor:
        """``op(*args)`` computed in float32, returned in the features' dtype."""
        if self.dtype == torch.float32:
            return op(*args)
        return op(*(a.float() for a in args)).to(self.dtype)

    @staticmethod
    def _upsample2(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def run(self, a: torch.Tensor, b: torch.Tensor, *, workers: int = 1
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse a batch a few slices per call (:data:`GRAIN_PIXELS`), the calls shared among
        ``workers`` threads (:func:`MedFusionLib.threads.run_in_ranges`); the same bytes whatever
        ``workers``."""
        grain = max(1, GRAIN_PIXELS // max(1, a.shape[-2] * a.shape[-1]))
        parts = run_in_ranges(lambda lo, hi: self(a[lo:hi], b[lo:hi]), a.shape[0],
                              workers=workers, grain=grain)
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.inference_mode()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 1:
            raise ValueError(f"expected two (N, 1, H, W) tensors of the same shape, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}.")
        n, _, h, w = a.shape
        m, s, dt = self.margin, self.stride, self.dtype
        ph, pw = m + (-h) % s, m + (-w) % s
        mode = "reflect" if (h > max(m, ph) and w > max(m, pw)) else "replicate"
        x = F.pad(torch.cat([a, b], 0), (m, pw, m, ph), mode=mode)  # (2n, 1, H', W') float32
        # encoder (shared by both sources): (2n, c1, H'/2, W'/2) and (2n, c2, H'/4, W'/4)
        f1_32 = self.enc1(_cl(F.pixel_unshuffle(x, 2)), "relu")  # fp32, kept for the blend
        f1 = f1_32.to(dt)
        f2 = self.enc3(self.enc2(f1, "relu"), "relu")
        fa2, fb2 = f2[:n], f2[n:]
        # weight head: score(own, other), both orders; logit = score_a - score_b
        ra = self.head2(self.head_own.add(fa2, self.head_other(fb2), "relu"), "relu")
        rb = self.head2(self.head_own.add(fb2, self.head_other(fa2), "relu"), "relu")
        logit = self.head3(self._in_fp32(torch.sub, ra, rb)).float()  # (n, 1, H'/4, W'/4)
        w2 = torch.sigmoid(logit)
        w1 = torch.sigmoid(self._upsample2(logit))  # (n, 1, H'/2, W'/2)
        share = self._upsample2(w1)  # (n, 1, H', W')
        # decoder: dec3 on [pixel_shuffle(dec2(relu(dec1(g2)))), g1] as the sum of its halves;
        # the blends in fp32 (CPUs' bf16 element-wise kernels are 10 x slower than fp32's)
        g2 = self._in_fp32(torch.lerp, fb2, fa2, w2)
        u = F.pixel_shuffle(self.dec2(self.dec1(g2, "relu")), 2)  # (n, c1, H'/2, W'/2)
        g1 = torch.lerp(f1_32[n:], f1_32[:n], w1).to(dt)
        o = self.dec4(self.dec3_up.add(u, self.dec3_skip(g1), "relu"))  # (n, 4, H'/2, W'/2)
        fused = F.pixel_shuffle(o.float(), 2)  # (n, 1, H', W')
        keep = (Ellipsis, slice(m, m + h), slice(m, m + w))
        fused, share = fused[keep], share[keep]
        if self.residual:
            fused = fused + torch.lerp(x[n:][keep], x[:n][keep], share)
        return fused, share.clamp(0.0, 1.0)


_FAST: "weakref.WeakKeyDictionary[FusionNet, dict]" = weakref.WeakKeyDictionary()
_FAST_LOCK = threading.Lock()


def fast_fusion_for(net: FusionNet, precision: str) -> FastFusion:
    """The (cached) :class:`FastFusion` of ``net`` at ``precision`` (``fp32`` or ``bf16``)."""
    with _FAST_LOCK:
        per_net = _FAST.setdefault(net, {})
        fast = per_net.get(precision)
        if fast is None:
            fast = per_net[precision] = FastFusion(net, precision)
    return fast

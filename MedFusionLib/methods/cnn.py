"""CNN fusion (the review's algorithm, §2.5 and §2.7) with the shipped, SHA-256 verified weights.

The method runs :class:`MedFusionLib.nets.fusionnet.FusionNet` on batches of slices. torch is
imported only when the method runs (:mod:`MedFusionLib.optional`), so the engine imports without it.
"""

from __future__ import annotations

import threading

import numpy as np

from .. import optional
from ..nets import weights
from ..options import look_up
from ..threads import configure_torch
from ._registry import register

__all__ = ["cnn_fusion", "LEVELS", "RULES", "PRECISIONS", "last_kernels"]

torch = optional.lazy("torch", what="fusion method 'cnn'")
fusionnet = optional.lazy("MedFusionLib.nets.fusionnet", needs="torch", what="fusion method 'cnn'")
inference = optional.lazy("MedFusionLib.nets.inference", needs="torch", what="fusion method 'cnn'")

LEVELS = ("feature", "pixel")
RULES = ("learned", "addition", "average", "maximum", "l1")
#: Values of ``precision`` (as :data:`MedFusionLib.nets.inference.PRECISIONS`, without torch).
PRECISIONS = ("auto", "fp32", "bf16")

_LAST = threading.local()


def last_kernels() -> str:
    """What the last CNN fusion on this thread ran: ``"fp32 fast path"``, ``"bf16 fast path"``,
    ``"fp32 FusionNet.forward"`` (other rules and levels, no oneDNN) or ``"fp16
    FusionNet.forward"`` (CUDA); ``""`` before any."""
    return getattr(_LAST, "kernels", "")


@register("cnn", title="CNN fusion (Siamese encoder, learned weights)", family="deep",
          reference="Multi-modal medical image fusion with a Siamese CNN, per-pixel weights and a "
                    "reconstruction decoder, following the algorithm of the MedFusion review "
                    "(sections 2.5 and 2.7); MedFusion model card: models/MODEL_CARD.md.",
          requires=("torch",), supports_cuda=True, provides_weights=True, slices_per_batch=16)
def cnn_fusion(a: np.ndarray, b: np.ndarray, *, level: str = "feature", rule: str = "learned",
               model: str = "default", enhance: bool = False, modalities=None,
               device: str = "cpu", return_weights: bool = False, precision: str = "auto"):
    """Fuse batches of slices with the trained CNN.

    Parameters
    ----------
    a, b : ndarray
        ``float32 (N, H, W)`` co-registered slices in [0, 1].
    level : {"feature", "pixel"}, optional
        ``feature`` (default): fuse the encoder's feature maps with the rule's weights and decode
        them (feature-level fusion). ``pixel``: apply the rule's weight map directly to the source
        pixels (pixel-level fusion; ``maximum`` and ``addition`` then act on the pixels).
    rule : {"learned", "addition", "average", "maximum", "l1"}, optional
        ``learned`` (default): the network's weight head (softmax over the two sources).
        ``addition``: sum of the feature maps (pixel level: ``A + B - AB``), saturating softly. ``average``: equal weights. ``maximum``: element-wise
        maximum. ``l1``: weights proportional to the L1 activity of each source's features.
    model : str, optional
        Name of a model in ``models/models.json``, or the path of a registered ``.pt`` file (e.g.
        one written by ``medfusion train``). ``default``: the registry's model for the pair's
        type when ``modalities`` tells it (an anatomical + functional pair gets the registry's
        ``pair_defaults`` model, see :func:`MedFusionLib.nets.weights.model_for_modalities`),
        else the registry's default.
    modalities : (str, str), optional
        Modalities of ``a`` and ``b`` (``CT``, ``MR``, ``PET``, ``SPECT``, ``8BIT``); the
        pipeline passes the ones it normalised with. Only used to choose the ``default`` model.
    enhance : bool, optional
        Post-process the fused slice with an unsharp mask (review §2.5.6).
    device : str
        ``cpu`` or ``cuda`` (resolved by the driver). On CUDA the network runs in half precision.
    return_weights : bool
        Also return the per-pixel share of ``a`` in [0, 1].
    precision : {"auto", "fp32", "bf16"}, optional
        CPU kernels of the default fusion (rule ``learned``, level ``feature``), which runs on
        :class:`MedFusionLib.nets.inference.FastFusion`: ``fp32`` (within 1e-5 of the network's
        reference forward), ``bf16`` (bfloat16 convolutions, on CPUs with AVX512-BF16 or AMX;
        fp32 elsewhere), ``auto`` (default: see
        :func:`MedFusionLib.nets.inference.resolve_precision`). ``--param precision=fp32`` turns
        bf16 off. Other rules and levels, and CUDA, run the reference forward.
        :func:`last_kernels` tells which ran.

    Returns
    -------
    fused : ndarray
        ``float32 (N, H, W)`` in [0, 1].
    weight_a : ndarray
        Only with ``return_weights``: ``float32 (N, H, W)`` in [0, 1].

    Raises
    ------
    UnknownOptionError
        For an unknown ``level``, ``rule`` or ``model``.
    WeightsError
        If the model's weights file is missing or fails its SHA-256 check.
    torch.cuda.OutOfMemoryError
        On CUDA when a batch does not fit; the driver then continues on the CPU.
    """
    configure_torch(torch)
    level = look_up(level, LEVELS, what="CNN fusion level")
    rule = look_up(rule, RULES, what="CNN fusion rule")
    precision = look_up(precision, PRECISIONS, what="CNN precision")
    if not isinstance(enhance, (bool, np.bool_)):
        raise TypeError(f"enhance must be True or False, got {enhance!r}.")
    cuda = str(device).startswith("cuda")
    if model in (None, "", "default"):
        model = weights.model_for_modalities(modalities)
    net = weights.load_model(model, device=device, half=cuda)
    dtype = torch.float16 if cuda else torch.float32
    try:
        with torch.inference_mode():
            ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[:, None]
            tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))[:, None]
            ta = ta.to(device=device, dtype=dtype, non_blocking=True)
            tb = tb.to(device=device, dtype=dtype, non_blocking=True)
            if not cuda and rule == "learned" and level == "feature" and \
                    inference.fast_path_available():
                fast = inference.fast_fusion_for(net, inference.resolve_precision(precision))
                fused, share = fast.run(ta, tb, workers=torch.get_num_threads())
                _LAST.kernels = f"{fast.precision} fast path"
            else:
                fused, share = net(ta, tb, rule=rule, level=level)
                _LAST.kernels = f"{'fp16' if cuda else 'fp32'} FusionNet.forward"
            fused = fused.clamp(0.0, 1.0)
            if enhance:
                fused = fusionnet.unsharp_mask(fused)
            out = fused[:, 0].float().cpu().numpy()
            wa = share[:, 0].float().cpu().numpy() if return_weights else None
    except torch.cuda.OutOfMemoryError:
        # release what this batch held; the driver catches the error and continues on the CPU
        torch.cuda.empty_cache()
        raise
    if return_weights:
        return out, wa
    return out
